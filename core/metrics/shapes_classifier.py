"""The shapes attribute classifier: a small CNN, trained by the studio, that reads a 32x32 scene's attributes back.

Scenes put their objects at five fixed positions (core/shapes.py), so the classifier has one set of heads per position
(is an object there, its shape, colour and size) plus the background's. Its pooled last conv layer is the `shapes`
feature extractor for FID, KID and precision/recall; its attribute predictions give the alignment metric
(core/metrics/alignment.py).

Train and install:  python -m core.metrics.shapes_classifier --install
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoints import load_state, save_state
from core.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, evaluation_scene, render

WEIGHTS = Path(__file__).parent / "weights" / "shapes-classifier.safetensors"
INSTALL_COMMAND = "python -m core.metrics.shapes_classifier --install"
TRAIN_SEED_BASE = 2 * 10**12  # training scenes, apart from the evaluation sets' seeds (core/shapes.py)
TEST_SEED_BASE = 3 * 10**12
HEADS = {"background": list(BACKGROUNDS), "present": ["no", "yes"], "shape": list(SHAPES), "colour": list(COLOURS),
         "size": list(SIZES)}
SLOTS = list(POSITIONS)


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int, int] = (16, 48, 96)  # stages at 32, 16 and 8 pixels; the last is the feature size


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ShapesClassifier(nn.Module):
    """[B,3,32,32] in [-1, 1] -> {head: logits}: "background" [B,3] and, per position, "present" [B,5,2], "shape"
    [B,5,4], "colour" [B,5,6], "size" [B,5,2]; `features` is the pooled last conv layer [B,channels[-1]]."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        c1, c2, c3 = config.channels
        self.body = nn.Sequential(conv_block(3, c1), nn.MaxPool2d(2), conv_block(c1, c2), conv_block(c2, c2),
                                  nn.MaxPool2d(2), conv_block(c2, c3))
        self.slots = nn.AdaptiveAvgPool2d(4)  # where an object is stays in the map the heads read
        widths = [len(HEADS[h]) for h in ("present", "shape", "colour", "size")]
        self.object_head = nn.Linear(c3 * 16, len(SLOTS) * sum(widths))
        self.background_head = nn.Linear(c3, len(BACKGROUNDS))
        self.widths = widths

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.body(x)
        out = {"background": self.background_head(maps.mean(dim=(2, 3)))}
        objects = self.object_head(self.slots(maps).flatten(1)).reshape(x.shape[0], len(SLOTS), -1)
        for name, part in zip(("present", "shape", "colour", "size"), objects.split(self.widths, dim=2)):
            out[name] = part
        return out


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Label tensors for `scenes`; an empty position's shape, colour and size are -1 (ignored by the loss)."""
    b = len(scenes)
    out = {"background": torch.tensor([HEADS["background"].index(s.background) for s in scenes])}
    for name in ("present", "shape", "colour", "size"):
        out[name] = torch.full((b, len(SLOTS)), -1 if name != "present" else 0, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for thing in scene.things:
            j = SLOTS.index(thing.position)
            out["present"][i, j] = 1
            out["shape"][i, j] = HEADS["shape"].index(thing.shape)
            out["colour"][i, j] = HEADS["colour"].index(thing.colour)
            out["size"][i, j] = HEADS["size"].index(thing.size)
    return out


def batch(seeds) -> tuple[torch.Tensor, list[Scene]]:
    scenes = [evaluation_scene(int(s)) for s in seeds]  # every colour-shape pair: it must read held-out ones too
    pixels = np.stack([render(s) for s in scenes]).astype(np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0, scenes


def loss_fn(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(F.cross_entropy(logits[k].reshape(-1, logits[k].shape[-1]), labels[k].reshape(-1), ignore_index=-1)
               for k in logits)


@torch.no_grad()
def predict(model: ShapesClassifier, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predicted label indices per head (images [B,3,32,32] in [-1, 1])."""
    return {k: v.argmax(-1) for k, v in model(images).items()}


@torch.no_grad()
def accuracy(model: ShapesClassifier, n: int = 2000, seed_base: int = TEST_SEED_BASE) -> dict[str, float]:
    """Per-head accuracy on n fresh scenes: background over images, present over positions, the others over the
    positions that hold an object."""
    images, scenes = batch(range(seed_base, seed_base + n))
    labels, preds = targets(scenes), predict(model.eval(), images)
    out = {"background": float((preds["background"] == labels["background"]).float().mean()),
           "present": float((preds["present"] == labels["present"]).float().mean())}
    held = labels["present"] == 1
    for name in ("shape", "colour", "size"):
        out[name] = float((preds[name][held] == labels[name][held]).float().mean())
    return out


def train(iterations: int = 1500, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
          config: ClassifierConfig = ClassifierConfig(), log=print) -> tuple[ShapesClassifier, dict]:
    torch.manual_seed(seed)
    model = ShapesClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations)
    rng = np.random.default_rng(seed)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(iterations):
        images, scenes = batch(TRAIN_SEED_BASE + rng.integers(0, 10**12, batch_size))
        model.train()
        loss = loss_fn(model(images), targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"step {step + 1}/{iterations} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    record = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed, "config": asdict(config),
              "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
              "wall_minutes": round((time.perf_counter() - t0) / 60, 2), "test_accuracy": accuracy(model)}
    return model.eval(), record


def shapes_input(x: torch.Tensor) -> torch.Tensor:
    """clean-fid batch [B,3,H,W] in 0..255 -> the classifier's input [B,3,32,32] in [-1, 1]."""
    x = x.float() / 127.5 - 1
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    return x


class ShapesExtractor(nn.Module):
    """The `shapes` extractor: clean-fid batch [B,3,H,W] in 0..255 -> pooled last-conv features [B,channels[-1]]."""

    extractor_name = "shapes"

    def __init__(self, classifier: ShapesClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(shapes_input(x))


def load_classifier(path: Path | str = WEIGHTS, device: str = "cpu") -> ShapesClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shapes classifier: weights {path} are missing; train them with `{INSTALL_COMMAND}`")
    state, meta = load_state(path)
    model = ShapesClassifier(ClassifierConfig(**{k: tuple(v) for k, v in meta["config"].items()}))
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the shapes attribute classifier.")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--install", action="store_true", help=f"write {WEIGHTS}")
    args = parser.parse_args()
    model, record = train(args.iterations)
    print(json.dumps(record["test_accuracy"]))
    if args.install:
        save_state(WEIGHTS, model.state_dict(), record)
        print(f"installed {WEIGHTS}")


if __name__ == "__main__":
    main()
