"""Imported teachers: a local diffusers DDPM folder is checked, copied and registered, all or nothing, and then
loads as a denoiser that equals the UNet applied by hand with the DDPM alphas_cumprod."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.catalogue import MANIFEST, get_teacher_info, imported_dir, list_teachers
from core.specs import SampleRequest
from core.teachers import load_teacher
from core.teachers.imported import TeacherImportError, import_folder
from tests.tiny_pipelines import save_tiny_ddpm, tiny_unet

F64 = torch.float64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One random UNet saved twice: as an epsilon and as a v_prediction pipeline (so the parametrisation is
    the only difference between the two folders)."""
    root = tmp_path_factory.mktemp("pipelines")
    unet = tiny_unet(seed=0)
    folders = {kind: save_tiny_ddpm(root / kind, kind, unet=unet) for kind in ("epsilon", "v_prediction")}
    from diffusers import DDPMScheduler
    acp = DDPMScheduler.from_pretrained(folders["epsilon"] / "scheduler").alphas_cumprod.to(F64)
    return {"unet": unet, "folders": folders, "acp": acp}


@pytest.fixture
def src(tiny, tmp_path) -> Path:
    """A private, editable copy of the epsilon pipeline."""
    return Path(shutil.copytree(tiny["folders"]["epsilon"], tmp_path / "src"))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def _entries(data_dir: Path) -> list[str]:
    root = imported_dir(data_dir)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# -- Registration ------------------------------------------------------------------------------------------

def test_import_writes_manifest_and_copies_the_folder(tiny, src, data_dir):
    unet = tiny["unet"]
    manifest = import_folder(src, "tiny-eps", data_dir)

    dest = imported_dir(data_dir) / "tiny-eps"
    assert _entries(data_dir) == ["tiny-eps"]  # no temporary sibling left behind
    assert json.loads((dest / MANIFEST).read_text()) == json.loads(json.dumps(manifest))
    assert manifest["name"] == "tiny-eps"
    assert manifest["data_shape"] == [3, 8, 8]
    assert manifest["num_classes"] == 0
    assert manifest["prediction_type"] == "epsilon"
    assert manifest["num_train_timesteps"] == 1000
    assert manifest["parameters"] == sum(p.numel() for p in unet.parameters())
    assert manifest["source"] == str(src.resolve())
    for rel in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel

    info = get_teacher_info("tiny-eps", data_dir)
    assert (info.builtin, info.kind, info.data_shape, info.num_classes, info.prediction_type) == \
        (False, "diffusers", (3, 8, 8), 0, "epsilon")
    assert info.is_image
    assert [i.name for i in list_teachers(data_dir)][-1] == "tiny-eps"


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_loaded_teacher_equals_the_unet_applied_by_hand(tiny, tmp_path, data_dir, kind):
    src = Path(shutil.copytree(tiny["folders"][kind], tmp_path / "src"))
    import_folder(src, "tiny", data_dir)
    shutil.rmtree(src)  # the registered copy must be self-contained
    denoiser = load_teacher("tiny", data_dir)
    assert not denoiser.training
    assert not any(p.requires_grad for p in denoiser.parameters())

    unet, acp = tiny["unet"], tiny["acp"]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, 8, 8, generator=g)
    # Off-grid times too: 0.3337 * 999 = 333.37 -> index 333, 0.7504 * 999 = 749.65 -> 750.
    t = torch.tensor([0.0, 0.1, 0.3337, 0.5, 0.7504, 0.95], dtype=F64)
    index = torch.round(t * 999).long()
    assert index.tolist() == [0, 100, 333, 500, 750, 949]

    with torch.no_grad():
        got = denoiser(z, t).to(F64)
        out = unet(z, index).sample.to(F64)
    a, s = acp[index].sqrt().view(-1, 1, 1, 1), (1 - acp[index]).sqrt().view(-1, 1, 1, 1)
    zz = z.to(F64)
    expected = (zz - s * out) / a if kind == "epsilon" else a * zz - s * out
    assert out.abs().mean() > 1e-2  # a random net, not a zero output that would make both formulas agree
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # The same z at one shared time (scalar t broadcast over the batch).
    with torch.no_grad():
        got_scalar = denoiser(z, torch.tensor(0.5, dtype=F64)).to(F64)
        out_scalar = unet(z, torch.full((6,), 500)).sample.to(F64)
    a5, s5 = acp[500].sqrt(), (1 - acp[500]).sqrt()
    expected_scalar = (zz - s5 * out_scalar) / a5 if kind == "epsilon" else a5 * zz - s5 * out_scalar
    torch.testing.assert_close(got_scalar, expected_scalar, rtol=1e-5, atol=1e-5)


# -- Refusals: a clear message, nothing registered ----------------------------------------------------------

def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _truncate_weights(src: Path) -> Path:
    w = src / "unet" / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    return src


def _only_bin(src: Path) -> Path:
    shutil.rmtree(src)
    return save_tiny_ddpm(src, safe_serialization=False)


def _file_instead(src: Path) -> Path:
    shutil.rmtree(src)
    src.write_text("not a folder")
    return src


def _delete(rel: str):
    def edit(src: Path) -> Path:
        (src / rel).unlink()
        return src
    return edit


def _rebuild(**unet_overrides):
    def edit(src: Path) -> Path:
        shutil.rmtree(src)
        return save_tiny_ddpm(src, **unet_overrides)
    return edit


def _condition_unet_config(src: Path) -> Path:
    from diffusers import UNet2DConditionModel
    (src / "unet" / "config.json").write_text(json.dumps(
        {**dict(UNet2DConditionModel.load_config(src / "unet")), "_class_name": "UNet2DConditionModel"}))
    return src


REFUSALS = {
    "missing folder": (lambda src: src.parent / "does-not-exist", FileNotFoundError, r"does not exist"),
    "a file, not a folder": (_file_instead, NotADirectoryError, r"is not a folder"),
    "no unet config": (_delete("unet/config.json"), TeacherImportError, r"unet config is missing"),
    "no scheduler config": (_delete("scheduler/scheduler_config.json"), TeacherImportError,
                            r"scheduler config is missing"),
    "corrupt weights": (_truncate_weights, TeacherImportError, r"cannot load the UNet weights"),
    "unsupported class": (_condition_unet_config, TeacherImportError, r"unsupported model class 'UNet2DConditionModel'"),
    "edited class name": (lambda src: (_edit_json(src / "unet" / "config.json", _class_name="VQModel"), src)[1],
                          TeacherImportError, r"unsupported model class 'VQModel'"),
    "flow prediction": (lambda src: (_edit_json(src / "scheduler" / "scheduler_config.json", prediction_type="flow"),
                                     src)[1], TeacherImportError, r"unsupported prediction_type 'flow'"),
    "class-conditional": (_rebuild(num_class_embeds=10), TeacherImportError, r"class-conditional.*pass --null-class K"),
    "pickled weights only": (_only_bin, TeacherImportError, r"no safetensors weights"),
    "learned variance": (_rebuild(out_channels=6), TeacherImportError,
                         r"out_channels \(6\) must equal in_channels \(3\)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_folders_are_refused_and_register_nothing(src, data_dir, case):
    edit, exc_type, message = REFUSALS[case]
    path = edit(src)
    with pytest.raises(exc_type, match=message):
        import_folder(path, "tiny", data_dir)
    assert _entries(data_dir) == []
    assert [i.name for i in list_teachers(data_dir) if not i.builtin] == []
    with pytest.raises(ValueError, match="unknown name 'tiny'"):
        get_teacher_info("tiny", data_dir)


@pytest.mark.parametrize("null_class, unet_overrides, message", [
    (10, {"num_class_embeds": 10}, r"^null_class: must be in \[0, 9\] \(num_class_embeds 10\), got 10"),
    (0, {}, r"^null_class: the UNet is unconditional"),
])
def test_bad_null_classes_are_refused(tmp_path, data_dir, null_class, unet_overrides, message):
    src = save_tiny_ddpm(tmp_path / "src", **unet_overrides)
    with pytest.raises(TeacherImportError, match=message):
        import_folder(src, "tiny", data_dir, null_class=null_class)
    assert _entries(data_dir) == []


@pytest.mark.parametrize("name, message", [
    ("digits", r"name: 'digits' is a built-in teacher"),
    ("toy2d-ring-gmm", r"is a built-in teacher"),
    ("Bad Name!", r"name: 'Bad Name!' is not a valid name"),
    ("", r"is not a valid name"),
    ("x" * 65, r"is not a valid name"),
])
def test_bad_names_are_refused(src, data_dir, name, message):
    with pytest.raises(ValueError, match=message):
        import_folder(src, name, data_dir)
    assert _entries(data_dir) == []


def test_name_clash_with_an_existing_import_keeps_the_first(tiny, src, data_dir):
    first = import_folder(src, "tiny", data_dir)
    v_src = tiny["folders"]["v_prediction"]
    with pytest.raises(ValueError, match=r"name: a teacher called 'tiny' is already imported"):
        import_folder(v_src, "tiny", data_dir)
    assert _entries(data_dir) == ["tiny"]
    kept = json.loads((imported_dir(data_dir) / "tiny" / MANIFEST).read_text())
    assert kept["prediction_type"] == first["prediction_type"] == "epsilon"


# -- Sampling an imported teacher -------------------------------------------------------------------------

def test_sample_model_writes_a_png_per_seed_and_a_grid(src, data_dir, tmp_path):
    from workers.local import sample_model

    import_folder(src, "tiny", data_dir)
    out = tmp_path / "samples"
    summary = sample_model(SampleRequest(model="teacher:tiny", seeds=(0, 1, 2), steps=4), out, data_dir=data_dir)

    assert (summary["n"], summary["steps"], summary["nfe"], summary["files"]) == (3, 4, 4, 3)
    assert summary["grid"] == str(out / "grid.png")
    assert json.loads((out / "sample.json").read_text()) == summary
    pixels = []
    for seed in (0, 1, 2):
        with Image.open(out / f"seed-{seed:06d}.png") as img:
            assert (img.size, img.mode) == ((8, 8), "RGB")
            pixels.append(np.asarray(img))
    assert Image.open(out / "grid.png").size[0] > 8
    assert not np.array_equal(pixels[0], pixels[1])  # different seeds, different noise

    # Per-sample seeded noise: seed 1 alone reproduces its image from the batch of three.
    alone = tmp_path / "alone"
    sample_model(SampleRequest(model="teacher:tiny", seeds=(1,), steps=4), alone, data_dir=data_dir)
    with Image.open(alone / "seed-000001.png") as img:
        diff = np.abs(np.asarray(img).astype(int) - pixels[1].astype(int))
    assert diff.max() <= 1


# -- Class-conditional UNet2DModel folders with a named null class ---------------------------------------------

@pytest.mark.parametrize("null_class", [10, 3])
def test_class_conditional_folder_uses_the_named_null_class(tiny, tmp_path, data_dir, null_class):
    """Studio classes 0..9 are the model's labels in order without the null one, and the studio's null id (10,
    num_classes, as for the digits teacher) reaches the model as `null_class`."""
    unet = tiny_unet(seed=1, num_class_embeds=11)
    src = save_tiny_ddpm(tmp_path / "src", "v_prediction", unet=unet)
    manifest = import_folder(src, "tiny-cond", data_dir, null_class=null_class)
    assert (manifest["num_classes"], manifest["null_class"], manifest["num_class_embeds"]) == (10, null_class, 11)
    info = get_teacher_info("tiny-cond", data_dir)
    assert (info.num_classes, info.null_class) == (10, null_class)

    denoiser = load_teacher("tiny-cond", data_dir)
    assert denoiser.num_classes == 10
    z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.5, dtype=F64)
    acp = tiny["acp"]
    a, s = acp[500].sqrt(), (1 - acp[500]).sqrt()
    studio = torch.tensor([0, 5, 10])  # two classes and the null id
    model = [0, 5 + (5 >= null_class), null_class]
    with torch.no_grad():
        got = denoiser(z, t, studio).to(F64)
        unconditional = denoiser(z, t).to(F64)
        out = unet(z, torch.full((3,), 500), class_labels=torch.tensor(model)).sample.to(F64)
    expected = a * z.to(F64) - s * out
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unconditional[2], expected[2], rtol=1e-5, atol=1e-5)


def test_class_conditional_teacher_samples_like_the_digits_teacher(tmp_path, data_dir):
    from workers.local import sample_model

    src = save_tiny_ddpm(tmp_path / "src", num_class_embeds=4)
    import_folder(src, "tiny-cond", data_dir, null_class=0)
    request = SampleRequest(model="teacher:tiny-cond", seeds=(0, 1), steps=2, class_id=2, guidance=3.0)
    summary = sample_model(request, tmp_path / "out", data_dir=data_dir)
    assert (summary["n"], summary["nfe"], summary["class"]) == (2, 4, 2)  # a guided step costs 2
    with pytest.raises(ValueError, match=r"class: must be in \[0, 2\]"):
        sample_model(SampleRequest(model="teacher:tiny-cond", seeds=(0,), steps=2, class_id=3), tmp_path / "x",
                     data_dir=data_dir)
