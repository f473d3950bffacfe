"""What a text-to-image distillation trains on is checked before any work: a data-free method takes --prompts (or
--data's captions), a method that trains on images needs --data, other teachers take neither, and a bad file is refused
in one line naming it. The same checks run in the foreground (distill) and at submit time (validate_spec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalogue import get_teacher_info
from core.method_specs import build_method_config
from core.teachers.imported import import_folder
from core.text_inputs import check_text_inputs
from tests.tiny_pipelines import save_tiny_sd, write_image_folder, write_prompts
from workers.submit import validate_spec


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    import_folder(save_tiny_sd(root / "sd"), "sd-tiny", root / "data")
    return {"data_dir": root / "data", "prompts": write_prompts(root / "prompts.txt"),
            "data": write_image_folder(root / "images"), "small": write_image_folder(root / "small", size=32),
            "root": root}


def _check(world, teacher: str, method: str, preset: str = "default", prompts=None, data=None):
    config = build_method_config(method, preset=preset)
    return check_text_inputs(get_teacher_info(teacher, world["data_dir"]), config.needs_data, method, prompts, data)


REFUSALS = {
    "no inputs": ("emd", "default", None, None,
                  r"^prompts: 'sd-tiny' is a text-to-image teacher; give --prompts FILE \(one prompt per line\) or "
                  r"--data FOLDER \(its captions are the prompts\)$"),
    "mmd without data": ("mmd", "default", "prompts", None,
                         r"^data: mmd with these settings trains on real images; give --data FOLDER"),
    "dmd2's GAN without data": ("dmd2", "default", "prompts", None,
                                r"^data: dmd2 with these settings trains on real images"),
    "mmd with prompts too": ("mmd", "default", "prompts", "data",
                             r"^prompts: mmd with these settings trains on --data's images and their captions; "
                             r"leave --prompts out$"),
    "data-free with data too": ("dmd2", "sd15", "prompts", "data",
                                r"^data: dmd2 with these settings is data-free and trains on --prompts alone; "
                                r"leave --data out$"),
    "images too small": ("mmd", "default", None, "small",
                         r"^data: \S+metadata.jsonl line 1: img-0.png is 32x32; at resolution 64 images must be "
                         r"square and at least 64x64$"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_inputs_that_do_not_fit_the_method_are_refused_naming_the_field(world, case):
    method, preset, prompts, data, message = REFUSALS[case]
    with pytest.raises(ValueError, match=message):
        _check(world, "sd-tiny", method, preset, world.get(prompts), world.get(data))


def test_inputs_that_fit_are_accepted(world):
    free = _check(world, "sd-tiny", "dmd2", "sd15", prompts=world["prompts"])
    assert (free.data, len(free.prompts), free.train_prompts[0]) == (None, 3, "a red circle on the left")
    captions = _check(world, "sd-tiny", "emd", data=world["data"])  # a data-free method drawing the captions
    assert captions.train_prompts == tuple(f"picture number {i}" for i in range(5))
    images = _check(world, "sd-tiny", "mmd", data=world["data"])
    assert (images.data.count, images.data.size) == (5, (64, 64))
    assert images.record()["data"]["images"] == 5 and free.record()["prompts"]["count"] == 3


@pytest.mark.parametrize("field", ["prompts", "data"])
def test_other_teachers_take_neither(world, field):
    with pytest.raises(ValueError, match=rf"^{field}: 'digits' is not a text-to-image teacher; it trains on its own "
                                         rf"benchmark \(leave --{field} out\)$"):
        _check(world, "digits", "emd", **{field: world[field]})
    assert _check(world, "digits", "emd") is None


def test_bad_files_get_one_line_naming_the_file_and_line(world, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=rf"^prompts: {empty} has no prompts \(every line is blank\)$"):
        _check(world, "sd-tiny", "emd", prompts=empty)
    folder = write_image_folder(tmp_path / "captionless", count=2)
    (folder / "metadata.jsonl").write_text('{"file_name": "img-0.png", "text": "ok"}\n{"file_name": "img-1.png"}\n')
    with pytest.raises(ValueError, match=r"^data: \S+metadata.jsonl line 2: has no text \(the caption\)$"):
        _check(world, "sd-tiny", "mmd", data=folder)
    (folder / "img-1.png").write_bytes(b"not a png")
    (folder / "metadata.jsonl").write_text('{"file_name": "img-1.png", "text": "broken"}\n')
    with pytest.raises(ValueError, match=r"^data: \S+metadata.jsonl line 1: img-1.png is not a readable image"):
        _check(world, "sd-tiny", "mmd", data=folder)


def test_submit_checks_the_same_and_wants_absolute_paths(world, tmp_path):
    spec = {"teacher": "sd-tiny", "method": "mmd", "iterations": 2}
    with pytest.raises(ValueError, match=r"^data: mmd with these settings trains on real images"):
        validate_spec("distill", spec, data_dir=world["data_dir"])
    with pytest.raises(ValueError, match=r"^data: must be an absolute path \(the worker may run in another folder\), "
                                         r"got 'images'$"):
        validate_spec("distill", {**spec, "data": "images"}, data_dir=world["data_dir"])
    clean = validate_spec("distill", {**spec, "data": str(world["data"])}, data_dir=world["data_dir"])
    assert (clean["data"], clean["prompts"]) == (str(world["data"]), None)


def test_a_refused_foreground_run_writes_nothing(world, tmp_path):
    from workers.local import distill

    with pytest.raises(ValueError, match=r"^data: mmd with these settings trains on real images"):
        distill("sd-tiny", "mmd", tmp_path / "run", iterations=1, data_dir=world["data_dir"],
                prompts=world["prompts"])
    assert not (tmp_path / "run").exists()
    assert not Path(world["data_dir"] / "cache").exists()


@pytest.mark.parametrize("method", ["mmd", "emd"])
def test_the_builtin_shapes_teacher_trains_on_its_generator_without_inputs(method):
    from core.shapes import evaluation_scenes
    from core.specs import BUILTIN_TEACHERS

    config = build_method_config(method)
    inputs = check_text_inputs(BUILTIN_TEACHERS["shapes"], config.needs_data, method, None, None)
    assert (inputs.benchmark, inputs.has_data, inputs.record()) == ("shapes", True, {"benchmark": "shapes"})
    # The fixed preview prompts are the first of its test prompt set.
    assert inputs.train_prompts == tuple(s.caption for s in evaluation_scenes("shapes-test", 4))


def test_the_builtin_shapes_teacher_also_takes_a_prompt_file(tmp_path):
    from core.specs import BUILTIN_TEACHERS

    inputs = check_text_inputs(BUILTIN_TEACHERS["shapes"], False, "emd", write_prompts(tmp_path / "p.txt"), None)
    assert inputs.benchmark is None and inputs.prompts is not None and not inputs.has_data
