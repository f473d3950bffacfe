"""The New-run form with text-to-image teachers (app/studio/run_inputs.py): the shipped shapes teacher trains on its
own captioned scenes, an uploaded prompt file or a data folder under the import roots; a method that needs images and
has none, a bad prompt file or a folder outside the roots is refused naming the field, with nothing queued or kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.studio import runs
from app.studio.prompt_fields import takes_prompts as is_text_to_image
from app.studio.run_inputs import PROMPTS_DIR, inputs_help
from tests.app.studio_ctx import all_runs
from tests.app.studio_env import write_png


def upload(tmp_path: Path, text: str | bytes, name: str = "my prompts.txt") -> str:
    """A file as Gradio hands an upload to a handler: a temporary copy under its own cache folder."""
    path = tmp_path / "gradio-cache" / "f00d" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def start(ctx, method="emd", preset="shapes", steps=1, teacher="shapes", **inputs):
    return runs.start_run(ctx, "local", teacher, method, preset, steps, 20, 0, {}, **inputs)


def test_the_form_offers_text_to_image_teachers_and_says_what_they_need(ctx):
    assert "shapes" in runs.network_teachers(ctx) and is_text_to_image(ctx, "shapes")
    assert not is_text_to_image(ctx, "digits") and inputs_help(ctx, "digits") == ""
    assert "32×32 px" in inputs_help(ctx, "shapes") and "own captioned scenes" in inputs_help(ctx, "shapes")
    assert runs.teacher_preset(ctx, "shapes", "mmd") == "shapes"
    assert runs.teacher_preset(ctx, "digits", "emd") == "digits"
    assert runs.teacher_preset(ctx, "toy2d-ring", "dmd2") == "toy2d"


def test_shapes_trains_on_its_own_scenes_when_given_nothing(ctx):
    run_id, message = start(ctx, method="mmd", steps=8)
    assert message.endswith("preset shapes, on its benchmark's captioned scenes.")
    [run] = all_runs(ctx)
    assert (run.id, run.spec["prompts"], run.spec["data"]) == (run_id, None, None)


def test_an_uploaded_prompt_file_is_kept_under_the_data_dir_by_content(ctx, tmp_path):
    text = "a red circle on the left\na large blue star at the top\n"
    run_id, message = start(ctx, prompt_file=upload(tmp_path, text))
    [run] = all_runs(ctx)
    kept = Path(run.spec["prompts"])
    assert kept.is_absolute() and kept.parent == (ctx.data_dir / PROMPTS_DIR).resolve()
    assert kept.read_text() == text and kept.name.startswith("my-prompts-")
    assert message.endswith(f"on the prompts of {kept.name}.")
    start(ctx, prompt_file=upload(tmp_path, text, "again.txt"))  # the same bytes again: one more run, a second name
    assert len(all_runs(ctx)) == 2 and len(list(kept.parent.iterdir())) == 2


@pytest.mark.parametrize("content, error", [
    ("\n  \n", r"^prompts: my prompts.txt has no prompts"),
    (b"caf\xe9\n", r"^prompts: my prompts.txt is not UTF-8 text"),
    ("fine\nbad \x07 bell\n", r"^prompts: my prompts.txt line 2 "),
])
def test_a_bad_prompt_file_is_refused_by_its_uploaded_name(ctx, tmp_path, content, error):
    with pytest.raises(ValueError, match=error):
        start(ctx, prompt_file=upload(tmp_path, content))
    assert all_runs(ctx) == [] and not (ctx.data_dir / PROMPTS_DIR).exists()


def test_a_method_that_needs_images_and_has_none_is_refused_naming_data(ctx, tmp_path):
    with pytest.raises(ValueError, match=r"^data: mmd with these settings trains on real images"):
        start(ctx, method="mmd", steps=8, prompt_file=upload(tmp_path, "a red circle\n"))
    assert all_runs(ctx) == []


def image_folder(root: Path, count: int = 3) -> Path:
    root.mkdir(parents=True)
    lines = []
    for i in range(count):
        write_png(root / f"{i}.png", color=(40 * i, 0, 0), size=32)
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"scene {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_data_folder_must_lie_under_the_import_roots(ctx, tmp_path):
    inside = image_folder(ctx.data_dir / "import" / "scenes")
    run_id, message = start(ctx, method="mmd", steps=8, data_folder=f"  {inside}  ")
    [run] = all_runs(ctx)
    assert run.spec["data"] == str(inside.resolve()) and message.endswith(f"on the images of {inside.resolve()}.")
    outside = image_folder(tmp_path / "elsewhere")
    for text, error in ((str(outside), r"^data: only folders under"), ("scenes", r"^data: must be absolute"),
                        (str(ctx.data_dir / "import" / "missing"), r"^data: .* is not a folder")):
        with pytest.raises(ValueError, match=error):
            start(ctx, method="mmd", steps=8, data_folder=text)
    assert len(all_runs(ctx)) == 1


def test_inputs_left_from_a_text_to_image_teacher_are_not_sent_for_another(ctx, tmp_path):
    run_id, _ = start(ctx, teacher="toy2d-ring", method="dmd2", preset="toy2d", prompt_file=upload(tmp_path, "x\n"),
                      data_folder="/nowhere")
    [run] = all_runs(ctx)
    assert (run.spec["prompts"], run.spec["data"]) == (None, None)
