"""What a distillation of a text-to-image teacher trains on: a prompt set, or an image folder with captions. Torch-free,
so a job is checked (every file read and every image verified) before anything is queued.

The data-free methods (EMD, Diff-Instruct, DMD2 without the GAN) draw prompts from `--prompts FILE`; the methods that
train on real images (MMD, MMD-instant, DMD2 with the GAN or without backward simulation) read `--data FOLDER` and use
its captions as their prompts. A data-free method also accepts `--data` alone and then draws the captions as prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.datasets import ImageFolder, read_image_folder
from core.prompts import PromptSet, read_prompt_file
from core.specs import TeacherInfo

PREVIEW_PROMPTS = 4  # fixed validation prompts (the first of the training prompts), each at PREVIEW_SEEDS seeds
PREVIEW_SEEDS = 2


@dataclass(frozen=True)
class TextInputs:
    prompts: PromptSet | None
    data: ImageFolder | None
    benchmark: str | None = None  # a built-in teacher's own generator (shapes): captioned scenes drawn per batch

    @property
    def has_data(self) -> bool:
        """Real images to train on: the data folder's, or the benchmark's rendered scenes."""
        return self.data is not None or self.benchmark is not None

    @property
    def train_prompts(self) -> tuple[str, ...]:
        """The prompts the student trains on: the prompt set's, else the data's captions (a benchmark draws its
        training captions per batch; its fixed ones are the first of its test prompt set)."""
        if self.prompts is not None:
            return self.prompts.prompts
        if self.benchmark is not None:
            from core.shapes import evaluation_scenes

            return tuple(scene.caption for scene in evaluation_scenes("shapes-test", PREVIEW_PROMPTS))
        return tuple(caption for _, caption in self.data.items)

    def preview_prompts(self) -> list[str]:
        """One prompt per preview image (PREVIEW_PROMPTS x PREVIEW_SEEDS): the first PREVIEW_PROMPTS training prompts,
        each at PREVIEW_SEEDS seeds; a smaller set is cycled."""
        first = self.train_prompts[:PREVIEW_PROMPTS]
        return [first[(i // PREVIEW_SEEDS) % len(first)] for i in range(PREVIEW_PROMPTS * PREVIEW_SEEDS)]

    def record(self) -> dict:
        """What a run stores about its inputs (the prompt file's sha256 pins the exact file)."""
        out: dict = {}
        if self.benchmark is not None:
            out["benchmark"] = self.benchmark
        if self.prompts is not None:
            out["prompts"] = {"file": str(self.prompts.source), "sha256": self.prompts.sha256, "count": len(self.prompts)}
        if self.data is not None:
            out["data"] = {"folder": str(self.data.root), "images": self.data.count, "size": list(self.data.size)}
        return out


def check_text_inputs(info: TeacherInfo, needs_data: bool, method: str, prompts: str | Path | None,
                      data: str | Path | None) -> TextInputs | None:
    """The checked inputs of a text-to-image distillation (None for other teachers, which take neither); ValueError
    naming `prompts` or `data` (and the file and line) otherwise."""
    if not info.is_text_to_image:
        for field, value in (("prompts", prompts), ("data", data)):
            if value is not None:
                raise ValueError(f"{field}: {info.name!r} is not a text-to-image teacher; it trains on its own "
                                 f"{'benchmark' if info.builtin else 'samples'} (leave --{field} out)")
        return None
    if info.builtin and prompts is None and data is None:  # shapes: scenes and captions from its own generator
        return TextInputs(prompts=None, data=None, benchmark=info.benchmark)
    if needs_data:
        if data is None:
            raise ValueError(f"data: {method} with these settings trains on real images; give --data FOLDER (images "
                             "and a metadata.jsonl with file_name and text), or use a data-free method or preset")
        if prompts is not None:
            raise ValueError(f"prompts: {method} with these settings trains on --data's images and their captions; "
                             "leave --prompts out")
    elif prompts is None and data is None:
        raise ValueError(f"prompts: {info.name!r} is a text-to-image teacher; give --prompts FILE (one prompt per line) "
                         "or --data FOLDER (its captions are the prompts)")
    elif prompts is not None and data is not None:
        raise ValueError(f"data: {method} with these settings is data-free and trains on --prompts alone; leave --data "
                         "out")
    return TextInputs(prompts=None if prompts is None else read_prompt_file(prompts),
                      data=None if data is None else read_image_folder(data, resolution=info.resolution))
