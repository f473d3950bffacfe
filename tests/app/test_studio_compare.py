"""The Compare tab's handlers as plain functions (docs/study.md#handlers-first): teacher steps, paging, the
students' variants and checkpoints, and the image grid with its sample requests, against a real migrated SQLite
database and the embedded SQLite broker in a temporary data dir. Runs are put into each state through storage.repo."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.studio import compare, prompt_fields
from app.studio.files import served_dir
from storage import repo
from storage.db import session_scope
from tests.app.studio_ctx import checkpoints, claim, create, finish, get
from tests.app.studio_env import write_png

# -- Compare --------------------------------------------------------------------------------------------------

def test_parse_steps():
    assert compare.parse_steps("1,4,50") == [1, 4, 50]
    assert compare.parse_steps(" 4, 4 ,1,") == [4, 1]
    assert compare.parse_steps(1000) == [1000]


@pytest.mark.parametrize("text, rule", [("a", "comma-separated whole numbers"), ("1.5", "comma-separated"),
                                        ("4;8", "comma-separated"), ("", "one or more"), (",", "one or more"),
                                        ("0", "between 1 and 1000"), ("4,1001", "between 1 and 1000")])
def test_parse_steps_errors(text, rule):
    with pytest.raises(ValueError, match=rf"^teacher steps: .*{rule}"):
        compare.parse_steps(text)


def _cells(rows: int, cols: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(rows) for c in range(cols)]


def test_page_slices_whole_rows_of_seed_columns():
    assert compare.PAGE_CELLS == 64
    cells = _cells(3, 50)  # 3 rows: 21 seeds a page (63 cells), 3 pages
    out, index, pages, cols = compare.page(cells, 50, 3, 0)
    assert (index, pages, cols) == (0, 3, 21)
    assert out == [(r, c) for r in range(3) for c in range(21)]
    out, index, pages, cols = compare.page(cells, 50, 3, 1)
    assert (index, cols, out[0], out[20], out[21]) == (1, 21, (0, 21), (0, 41), (1, 21))
    last = [(r, c) for r in range(3) for c in range(42, 50)]
    assert compare.page(cells, 50, 3, 2) == (last, 2, 3, 8)
    assert compare.page(cells, 50, 3, 7) == (last, 2, 3, 8)  # past the end: the last page
    assert compare.page(cells, 50, 3, -1)[1:] == (0, 3, 21)


def test_page_edge_cases():
    assert compare.page(_cells(1, 8), 8, 1, 0) == (_cells(1, 8), 0, 1, 8)
    assert compare.page(_cells(2, 64), 64, 2, 0)[1:] == (0, 2, 32)
    assert compare.page(_cells(1, 64), 64, 1, 0)[1:] == (0, 1, 64)
    many = _cells(100, 2)  # more rows than a page holds: one seed column a page, every row
    out, index, pages, cols = compare.page(many, 2, 100, 1)
    assert (index, pages, cols) == (1, 2, 1) and out == [(r, 1) for r in range(100)]
    assert compare.page([], 0, 0, 0) == ([], 0, 1, 0)


def test_variants_pick_each_students_checkpoint_at_or_below_the_step(ctx, students):
    done, live = students
    rows = compare.variants(ctx, "digits", "1,4", [done, live], 250)
    assert [(v.model, v.steps, v.checkpoint, v.final) for v in rows] == [
        ("teacher:digits", 1, 0, True), ("teacher:digits", 4, 0, True), (done, 1, 200, False), (live, 4, 150, False)]
    assert [v.label for v in rows] == ["teacher digits", "teacher digits", "dmd2 run 1", "mmd run 2"]
    at = {step: [(v.checkpoint, v.final) for v in compare.variants(ctx, "digits", "50", [done, live], step)[1:]]
          for step in (None, 10, 100, 199, 299, 300, 5000)}
    assert at == {None: [(300, True), (150, False)], 10: [(100, False), (50, False)], 100: [(100, False), (50, False)],
                  199: [(100, False), (150, False)], 299: [(200, False), (150, False)], 300: [(300, True), (150, False)],
                  5000: [(300, True), (150, False)]}


def test_only_a_final_variant_samples_without_a_checkpoint(ctx, students):
    done, live = students
    rows = compare.variants(ctx, "digits", "50", [done, live], 200)
    assert rows[1].sample_spec([1, 2], None) == {"model": done, "seeds": [1, 2], "steps": 1, "class_id": None,
                                                 "checkpoint": 200}
    final = compare.variants(ctx, "digits", "50", [done], None)[1]
    assert final.sample_spec([3], 7) == {"model": done, "seeds": [3], "steps": 1, "class_id": 7}
    assert final.caption(3) == "dmd2 run 1 · step 300 · seed 3 · 1 NFE"
    assert rows[0].caption(None) == "teacher digits · 50 NFE"


def test_variants_errors(ctx, students):
    empty = create(ctx)
    sample = create(ctx, "sample", {"model": "teacher:digits", "seeds": [0]})
    for ref, rule in [("run:999", "is not a distill run"), (f"run:{sample}", "is not a distill run"),
                      (f"run:{empty}", "has no weights yet")]:
        with pytest.raises(ValueError, match=rf"^students: .*{rule}"):
            compare.variants(ctx, "digits", "4", [ref], None)
    with pytest.raises(ValueError, match="^teacher steps: "):
        compare.variants(ctx, "digits", "x", list(students), None)


def test_student_choices_list_runs_with_weights(ctx, students):
    create(ctx)  # queued, no weights
    other = create(ctx, spec={"teacher": "toy2d-ring", "method": "dmd2", "student_steps": 1})
    claim(ctx, other)
    checkpoints(ctx, other, 10)
    assert [ref for _, ref in compare.student_choices(ctx, "digits")] == [students[1], students[0]]
    assert compare.student_choices(ctx, "toy2d-ring") == [(f"run {other} · dmd2-1 · running", f"run:{other}")]
    assert compare.checkpoint_range(ctx, list(students)) == (50, 300)
    assert compare.checkpoint_range(ctx, []) == (0, 1)


def _record(ctx, model: str, steps: int, seed: int, checkpoint: int = 0, color=(9, 9, 9)) -> Path:
    relative = f"samples/{model.replace(':', '-')}/{steps}-{checkpoint}-{seed}.png"
    path = write_png(ctx.data_dir / relative, color)
    with session_scope(ctx.factory) as session:
        repo.record_image(session=session, model=model, seed=seed, class_id=None, steps=steps, path=relative,
                          checkpoint=checkpoint)
    return path


def test_grid_finds_recorded_images_and_reports_missing_seeds(ctx, students):
    done, _ = students
    rows = compare.variants(ctx, "digits", "4", [done], 200) + compare.variants(ctx, "digits", "4", [done], None)[1:]
    assert [(r.model, r.checkpoint) for r in rows] == [("teacher:digits", 0), (done, 200), (done, 300)]
    teacher0 = _record(ctx, "teacher:digits", 4, 0, color=(1, 0, 0))
    teacher2 = _record(ctx, "teacher:digits", 4, 2, color=(2, 0, 0))
    _record(ctx, "teacher:digits", 50, 1)  # another step count: not this row's
    student1 = _record(ctx, done, 1, 1, checkpoint=200, color=(3, 0, 0))
    got = compare.grid(ctx, "digits", rows, [0, 1, 2, 3], None)
    assert (got["columns"], got["points"], got["pending"]) == (4, False, [])
    assert got["missing"] == {0: [1, 3], 1: [0, 2, 3], 2: [0, 1, 2, 3]}
    paths = [p for p, _ in got["cells"]]
    assert len(paths) == 12 and [p is not None for p in paths] == [True, False, True, False, False, True] + [False] * 6
    assert Path(paths[0]).read_bytes() == teacher0.read_bytes() and Path(paths[2]).read_bytes() == teacher2.read_bytes()
    assert Path(paths[5]).read_bytes() == student1.read_bytes()
    assert all(Path(p).parent == served_dir(ctx.data_dir).resolve() for p in paths if p)
    assert got["cells"][5][1] == "dmd2 run 1 · step 200 · seed 1 · 1 NFE"


def test_grid_requests_then_waits_for_missing_images(ctx):
    rows = compare.variants(ctx, "digits", "4,8", [], None)
    _record(ctx, "teacher:digits", 8, 0)
    _record(ctx, "teacher:digits", 8, 1)
    got = compare.grid(ctx, "digits", rows, [0, 1], None)
    assert got["missing"] == {0: [0, 1]}
    ids = compare.request_missing(ctx, "local", rows, got["missing"], None)
    assert len(ids) == 1
    sample = get(ctx, ids[0])
    assert (sample.kind, sample.spec["model"], sample.spec["seeds"], sample.spec["steps"]) == ("sample", "teacher:digits",
                                                                                                [0, 1], 4)
    again = compare.grid(ctx, "digits", rows, [0, 1], None)
    assert (again["missing"], again["pending"]) == ({}, ids)  # no second request while it runs
    assert compare.grid(ctx, "digits", rows, [0, 1], 3)["missing"] == {0: [0, 1], 1: [0, 1]}  # another class


def test_grid_draws_again_an_image_whose_file_is_gone(ctx):
    rows = compare.variants(ctx, "digits", "4", [], None)
    _record(ctx, "teacher:digits", 4, 0)
    _record(ctx, "teacher:digits", 4, 1).unlink()  # recorded, then its file deleted (a cleaned-up sample run)
    got = compare.grid(ctx, "digits", rows, [0, 1], None)
    assert got["missing"] == {0: [1]}
    assert got["cells"][0][0] is not None and got["cells"][1][0] is None


def test_points_grid_shows_a_finished_scatter(ctx):
    rows = compare.variants(ctx, "toy2d-ring", "1,50", [], None)
    got = compare.grid(ctx, "toy2d-ring", rows, [0, 1, 2], None)
    assert (got["points"], got["columns"], got["missing"]) == (True, 1, {0: [0, 1, 2], 1: [0, 1, 2]})
    assert got["cells"] == [(None, "teacher toy2d-ring · 1 NFE · 3 seeds"), (None, "teacher toy2d-ring · 50 NFE · 3 seeds")]
    done = create(ctx, "sample", rows[1].sample_spec([0, 1, 2], None))
    claim(ctx, done)
    finish(ctx, done)
    scatter = write_png(ctx.data_dir / f"runs/{done}/scatter.png")
    got = compare.grid(ctx, "toy2d-ring", rows, [0, 1, 2], None)
    assert got["missing"] == {0: [0, 1, 2]}
    assert got["cells"][0][0] is None and Path(got["cells"][1][0]).read_bytes() == scatter.read_bytes()
    scatter.unlink()  # the run's folder cleaned up: draw it again rather than wait forever
    assert compare.grid(ctx, "toy2d-ring", rows, [0, 1, 2], None)["missing"] == {0: [0, 1, 2], 1: [0, 1, 2]}


# -- Compare with prompts (text-to-image teachers) ------------------------------------------------------------

def _record_prompt(ctx, model: str, steps: int, seed: int, prompt: str, color) -> Path:
    relative = f"runs/p/{hashlib.sha256(f'{model}|{steps}|{seed}|{prompt}'.encode()).hexdigest()[:16]}.png"
    path = write_png(ctx.data_dir / relative, color)
    with session_scope(ctx.factory) as session:
        repo.record_image(session=session, model=model, seed=seed, class_id=None, steps=steps, path=relative,
                          prompt=prompt)
    return path


def test_a_guided_teacher_row_costs_two_nfe_a_step_and_asks_for_its_prompts(ctx):
    [row] = compare.variants(ctx, "shapes", "4", [], None, guidance=4.0)
    assert (row.key, row.nfe, row.caption(2)) == ("teacher:shapes+cfg4", 8, "teacher shapes · w=4 · seed 2 · 8 NFE")
    assert row.sample_spec([0, 1], None, ["a red circle"]) == {
        "model": "teacher:shapes", "seeds": [0, 1], "steps": 4, "class_id": None, "prompts": ["a red circle"],
        "guidance": 4.0}
    [plain] = compare.variants(ctx, "shapes", "4", [], None)
    assert (plain.key, plain.nfe, "prompts" in plain.sample_spec([0], None)) == ("teacher:shapes", 4, False)


def test_a_prompt_grid_has_prompt_by_seed_columns_and_one_job_per_row_for_what_is_missing(ctx):
    prompts = ["a small red circle on the left, on a white background", "a large blue square at the top"]
    rows = compare.variants(ctx, "shapes", "4,50", [], None, guidance=4.0)
    red = _record_prompt(ctx, "teacher:shapes+cfg4", 4, 0, prompts[0], (200, 0, 0))
    blue = _record_prompt(ctx, "teacher:shapes+cfg4", 4, 1, prompts[1], (0, 0, 200))
    _record_prompt(ctx, "teacher:shapes", 4, 1, prompts[0], (9, 9, 9))  # unguided: not this row's
    got = compare.grid(ctx, "shapes", rows, [0, 1], None, prompts)
    assert got["columns"] == 4  # prompt-major: (p0, s0), (p0, s1), (p1, s0), (p1, s1)
    paths = [p for p, _ in got["cells"]]
    assert [p is not None for p in paths] == [True, False, False, True] + [False] * 4
    assert Path(paths[0]).read_bytes() == red.read_bytes() and Path(paths[3]).read_bytes() == blue.read_bytes()
    assert got["missing"] == {0: [0, 1], 1: [0, 1]}  # seeds absent for any prompt
    ids = compare.request_missing(ctx, "local", rows, got["missing"], None, prompts)
    specs = [get(ctx, i).spec for i in ids]
    assert [(s["steps"], s["prompts"], s["seeds"], s["guidance"]) for s in specs] == [(4, prompts, [0, 1], 4.0),
                                                                                     (50, prompts, [0, 1], 4.0)]
    again = compare.grid(ctx, "shapes", rows, [0, 1], None, prompts)
    assert (again["missing"], sorted(again["pending"])) == ({}, sorted(ids))  # not asked twice while they run
    assert compare.grid(ctx, "shapes", rows, [0, 1], None, prompts[:1] + ["another"])["missing"] == {0: [0, 1],
                                                                                                    1: [0, 1]}


def test_prompt_headers_and_typed_prompts(ctx):
    heads = compare.headers(ctx, ["a red circle", "a blue star"], [0, 7])
    assert [c for _, c in heads] == ["a red circle · seed 0", "a red circle · seed 7", "a blue star · seed 0",
                                     "a blue star · seed 7"]
    assert all(Path(p).parent == served_dir(ctx.data_dir).resolve() and Path(p).suffix == ".png" for p, _ in heads)
    assert len({Path(p).read_bytes() for p, _ in heads}) == 4
    assert prompt_fields.parse_prompts(" a red circle \n\n a blue star\na red circle\n") == ["a red circle", "a blue star"]
    for text, rule in (("\n \n", "type one or more prompts"), ("ok\nbad\x07", "line 2 "),
                       ("\n".join(f"p{i}" for i in range(65)), "at most 64 prompts")):
        with pytest.raises(ValueError, match=rf"^prompts: {rule}"):
            prompt_fields.parse_prompts(text)
    test_set = prompt_fields.set_prompts(ctx, "shapes", "shapes-test").splitlines()
    assert len(test_set) == 3 and all(" on a " in p and p.endswith("background") for p in test_set)
    assert prompt_fields.set_prompts(ctx, "shapes", "typed").splitlines() == test_set  # its card's prompts: the same set
    assert prompt_fields.takes_prompts(ctx, "shapes") and not prompt_fields.takes_prompts(ctx, "digits")
