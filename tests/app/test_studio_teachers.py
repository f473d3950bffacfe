"""The Teachers tab's handlers as plain functions (docs/study.md#handlers-first): which folders may be imported,
the teacher table and queueing a teacher run, against a real migrated SQLite database in a temporary data dir."""

from __future__ import annotations

import pytest

from app.studio import teachers
from tests.app.studio_ctx import all_runs, get

# -- Teachers: what may be imported ---------------------------------------------------------------------------

def test_check_import_path(make_ctx, tmp_path):
    root, other = tmp_path / "imports", tmp_path / "elsewhere"
    (root / "pipe").mkdir(parents=True)
    (root / "nested/deeper").mkdir(parents=True)
    (root / "file.txt").write_text("not a folder")
    other.mkdir()
    (tmp_path / "imports-evil").mkdir()
    (root / "link").symlink_to(other, target_is_directory=True)
    ctx = make_ctx(import_roots=f"{tmp_path / 'unused'}:{root}")
    assert teachers.check_import_path(ctx, f"  {root / 'pipe'}  ") == (root / "pipe").resolve()
    assert teachers.check_import_path(ctx, str(root / "nested/deeper")) == (root / "nested/deeper").resolve()
    assert teachers.check_import_path(ctx, str(root)) == root.resolve()
    refused = {
        "": "give a local diffusers folder", "   ": "give a local diffusers folder",
        "pipe": "must be absolute", "imports/pipe": "must be absolute", "./pipe": "must be absolute",
        str(other): "only folders under", f"{root}/../elsewhere": "only folders under",
        str(tmp_path / "imports-evil"): "only folders under", str(root / "link"): "only folders under",
        "/etc": "only folders under",
        str(root / "file.txt"): "is not a folder", str(root / "missing"): "is not a folder",
    }
    for text, rule in refused.items():
        with pytest.raises(ValueError, match=rf"^path: .*{rule}"):
            teachers.check_import_path(ctx, text)


def test_import_root_defaults_to_the_data_dirs_import_folder(ctx, tmp_path):
    assert teachers.import_roots(ctx) == [(ctx.data_dir / "import").resolve()]
    (ctx.data_dir / "import/pipe").mkdir(parents=True)
    assert teachers.check_import_path(ctx, str(ctx.data_dir / "import/pipe")) == (ctx.data_dir / "import/pipe").resolve()
    with pytest.raises(ValueError, match="^path: only folders under"):
        teachers.check_import_path(ctx, str(tmp_path))


def test_teacher_rows_and_training(ctx):
    rows = {r[0]: r for r in teachers.teacher_rows(ctx)}
    assert rows["digits"][1:6] == ["built-in", "unet", "digits", "1×16×16", 10]
    with pytest.raises(ValueError, match="^iterations: "):
        teachers.train_teacher(ctx, "local", "digits", 2.5)
    with pytest.raises(ValueError, match="^name: "):
        teachers.train_teacher(ctx, "local", "no-such-teacher", 10)
    assert all_runs(ctx) == []
    assert teachers.train_teacher(ctx, "local", "digits", 10.0).startswith("Teacher run 1 queued")
    assert get(ctx, 1).spec["iterations"] == 10


# -- Imported teachers: text-to-image pipelines and class-conditional folders --------------------------------

def test_an_sd_teacher_is_listed_and_its_card_draws_fixed_prompts_at_its_guidance(ctx, tmp_path):
    from core.eval_prompts import SHOWCASE_PROMPTS
    from core.teachers.imported import import_folder
    from tests.tiny_pipelines import save_tiny_sd

    manifest = import_folder(save_tiny_sd(tmp_path / "sdxl", xl=True), "sd-tiny", ctx.data_dir)
    rows = {r[0]: r for r in teachers.teacher_rows(ctx)}
    assert rows["sd-tiny"][1:6] == ["imported", "sdxl", "imported", "64×64 px (latent 4×32×32)", ""]
    assert "StableDiffusionXLPipeline (64 px)" in rows["sd-tiny"][6]

    cells, status, pending = teachers.sample_grid(ctx, "local", "sd-tiny")
    assert (status, pending, len(cells)) == ("generating…", True, 16)
    assert [c for _, c in cells[:5]] == [f'"{SHOWCASE_PROMPTS[0]}" · seed {s}' for s in range(4)] + \
        [f'"{SHOWCASE_PROMPTS[1]}" · seed 0']
    [run] = all_runs(ctx)  # one sample job: every prompt at every seed, at SDXL's own default guidance
    assert (run.kind, run.total) == ("sample", 16)
    assert (run.spec["prompts"], run.spec["seeds"], run.spec["guidance"]) == (list(SHOWCASE_PROMPTS), [0, 1, 2, 3], 5.0)
    assert teachers.sample_grid(ctx, "local", "sd-tiny")[1] == "generating…" and len(all_runs(ctx)) == 1  # not twice
    assert teachers.import_message(manifest) == \
        "Imported **sd-tiny**: StableDiffusionXLPipeline, epsilon, 64×64 px (latent 4×32×32)."


def test_import_passes_the_null_class_to_the_cli(make_ctx, tmp_path):
    from tests.tiny_pipelines import save_tiny_ddpm

    root = tmp_path / "imports"
    folder = save_tiny_ddpm(root / "cond", num_class_embeds=5)
    ctx = make_ctx(import_roots=str(root))
    with pytest.raises(ValueError, match=r"^null_class: must be a whole number"):
        teachers.import_teacher(ctx, str(folder), "cond", 1.5)
    with pytest.raises(ValueError, match=r"class-conditional.*--null-class"):
        teachers.import_teacher(ctx, str(folder), "cond")
    assert teachers.import_teacher(ctx, str(folder), "cond", 4.0) == \
        "Imported **cond**: epsilon, 3×8×8, classes 4."
    rows = {r[0]: r for r in teachers.teacher_rows(ctx)}
    assert rows["cond"][1:6] == ["imported", "diffusers", "imported", "3×8×8", 4]


def test_sd_and_sdxl_folders_import_from_the_browser_with_the_clis_rules_and_messages(make_ctx, tmp_path):
    from tests.tiny_pipelines import save_tiny_sd

    root = tmp_path / "imports"
    sd, sdxl = save_tiny_sd(root / "sd", "v_prediction"), save_tiny_sd(root / "sdxl", xl=True)
    ctx = make_ctx(import_roots=str(root))
    assert teachers.import_teacher(ctx, str(sd), "sd-tiny") == \
        "Imported **sd-tiny**: StableDiffusionPipeline, v_prediction, 64×64 px (latent 4×32×32)."
    assert teachers.import_teacher(ctx, str(sdxl), "sdxl-tiny") == \
        "Imported **sdxl-tiny**: StableDiffusionXLPipeline, epsilon, 64×64 px (latent 4×32×32)."
    with pytest.raises(ValueError, match=r"^null_class: StableDiffusionPipeline folders are prompt-conditioned"):
        teachers.import_teacher(ctx, str(sd), "sd-again", 3)
    (sd / "unet" / "config.json").write_text("{}")  # a broken part: the CLI names it, and so does the tab
    with pytest.raises(ValueError, match=r"^unet: "):
        teachers.import_teacher(ctx, str(sd), "sd-broken")
    assert sorted(r[0] for r in teachers.teacher_rows(ctx) if r[1] == "imported") == ["sd-tiny", "sdxl-tiny"]
