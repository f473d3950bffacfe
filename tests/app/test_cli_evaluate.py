"""`distill-studio evaluate`, `fid` and `leaderboard`: results are stored and listed, `fid` is core.metrics.folder_fid,
`evaluate --submit` queues one run, and every bad input is one line on stderr naming the field, with exit code 2.

Through typer's CliRunner on a fresh data dir: the default SQLite database, or a throw-away PostgreSQL one where
marked; `--submit` on a real Redis (database 9 of 127.0.0.1:6379, or STUDIO_TEST_REDIS_URL), one queue per test.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import pytest
import redis

from core.data import digits_tensors
from core.images import save_png, to_uint8
from core.metrics import folder_fid
from storage import repo
from storage.db import make_engine, make_session_factory, session_scope
from storage.settings import get_settings
from tests.app.cli_helpers import ok, one_error_line
from tests.services import REDIS_URL, clear_studio_caches
from tests.tiny_pipelines import save_tiny_sd, write_shapes_prompts

TOY = ["--model", "teacher:toy2d-ring@4", "--model", "teacher:toy2d-ring@50"]


def _evaluations(url: str | None = None):
    engine = make_engine(url or get_settings().database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return [(e.model, e.steps, e.metric, e.run_id) for e in repo.list_evaluations(session=session)]
    finally:
        engine.dispose()


def _digit_folder(folder: Path, lo: int, hi: int) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(to_uint8(digits_tensors()[0][lo:hi])):
        save_png(img, folder / f"{i:04d}.png")
    return folder


# -- evaluate and leaderboard --------------------------------------------------------------------------------

@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_evaluate_stores_results_that_the_leaderboard_lists(cli, request, monkeypatch, database):
    if database == "postgres":
        monkeypatch.setenv("STUDIO_DATABASE_URL", request.getfixturevalue("postgres").create())
        clear_studio_caches()
    result = ok(cli("evaluate", *TOY, "--metrics", "fid,modes,speed", "--n", "256", "--seed", "1", "--json"))
    four, fifty = result["models"]
    assert (four["steps"], fifty["steps"], result["n"], result["seed"]) == (4, 50, 256, 1)
    assert {k: four[k] for k in ("n", "extractor", "reference", "seed_first", "seed_last", "small_sample")} == {
        "n": 256, "extractor": "toy2d", "reference": "toy2d-ring-toy2d-0-256", "seed_first": 1, "seed_last": 256,
        "small_sample": True}
    assert four["reference_hash"].startswith("sha256:") and fifty["reference_hash"] == four["reference_hash"]
    assert fifty["values"]["fid"] < four["values"]["fid"]
    stored = _evaluations()
    assert len(stored) == 2 * 5 and {(m, run_id) for m, _, _, run_id in stored} == {("teacher:toy2d-ring", None)}

    board = ok(cli("leaderboard", "--json"))
    assert [(r["model"], r["steps"], r["nfe"]) for r in board["rows"]] == [("teacher:toy2d-ring", 50, 50),
                                                                            ("teacher:toy2d-ring", 4, 4)]
    assert board["rows"][0]["metrics"]["fid"] == fifty["values"]["fid"]
    assert board["rows"][0]["reference"] == "toy2d-ring-toy2d-0-256"
    assert (board["rows"][0]["reference_hash"], board["rows"][0]["seed_first"], board["rows"][0]["seed_last"]) == (
        four["reference_hash"], 1, 256)
    assert board["rows"][0]["small_sample"] is True and board["rows"][0]["provenance"]["fid"]["small_sample"] is True
    assert board["fid_vs_nfe"] == {"teacher:toy2d-ring": [[4, four["values"]["fid"]], [50, fifty["values"]["fid"]]]}
    text = cli("leaderboard")
    assert text.exit_code == 0 and text.stdout.splitlines()[0].split()[:5] == ["model", "steps", "nfe", "fid",
                                                                                 "modes_covered"]
    assert len(text.stdout.splitlines()) == 3
    assert text.stdout.splitlines()[0].split()[-3:] == ["n", "seeds", "reference"]
    assert all(line.endswith(f"256  1-256  toy2d-ring-toy2d-0-256 {four['reference_hash']}  "
                             "(small-sample estimate: n < 2000)") for line in text.stdout.splitlines()[1:])


def test_evaluate_prints_one_line_per_model(cli):
    result = cli("evaluate", "--model", "teacher:toy2d-ring-gmm@8", "--metrics", "fid", "--n", "64")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("teacher:toy2d-ring-gmm @8 (NFE 8, toy2d-ring-toy2d-0-64): fid ")
    assert len(result.stdout.splitlines()) == 1
    assert re.search(r"\): fid [0-9.e+-]+ \(n=64, extractor toy2d, reference toy2d-ring-toy2d-0-64 sha256:[0-9a-f]{12}, "
                     r"seeds 0-63; small-sample estimate: n < 2000\)$", result.stdout.strip()), result.stdout


def test_an_evaluation_of_at_least_2000_samples_is_not_labelled_a_small_sample_estimate(cli):
    args = ["evaluate", "--model", "teacher:toy2d-ring-gmm@8", "--metrics", "fid,speed", "--n", "2000", "--seed", "5"]
    (model,) = ok(cli(*args, "--json"))["models"]
    assert (model["n"], model["seed_first"], model["seed_last"], model["small_sample"]) == (2000, 5, 2004, False)
    text = cli(*args).stdout.strip()
    assert re.search(r"\): fid [0-9.e+-]+ \(n=2000, extractor toy2d, reference toy2d-ring-toy2d-0-2000 "
                     rf"{model['reference_hash']}, seeds 5-2004\), ms_per_image ", text), text
    assert "small-sample" not in text
    (row,) = ok(cli("leaderboard", "--json"))["rows"]
    assert (row["small_sample"], row["n"], row["reference_hash"]) == (False, 2000, model["reference_hash"])
    assert "small-sample" not in cli("leaderboard").stdout


def test_a_text_to_image_teacher_is_evaluated_on_a_prompt_file_given_by_a_relative_path(cli, tmp_path, monkeypatch):
    assert cli("teachers", "import", save_tiny_sd(tmp_path / "sd"), "--name", "sd-tiny").exit_code == 0
    prompts = write_shapes_prompts(tmp_path / "shapes.txt")
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--model", "teacher:sd-tiny@1", "--prompts", "shapes.txt", "--metrics", "alignment,speed",
            "--n", "10"]
    (model,) = ok(cli(*args, "--json"))["models"]
    label = f"{prompts.resolve()} sha256:{hashlib.sha256(prompts.read_bytes()).hexdigest()[:12]}"  # made absolute
    assert (model["prompts"], model["nfe"], model["reference"]) == (label, 1, "")
    assert 0 <= model["values"]["alignment"] <= 1 and 0 <= model["values"]["alignment_all"] <= 1
    assert cli(*args).stdout.startswith(f"teacher:sd-tiny @1 (NFE 1, prompts {label}): alignment ")
    table = cli("leaderboard").stdout.splitlines()
    assert table[0].split()[-1] == "prompts" and table[1].endswith(f"-  {label}")
    assert [(r["model"], r["prompts"]) for r in ok(cli("leaderboard", "--json"))["rows"]] == [("teacher:sd-tiny", label)]


def test_an_empty_leaderboard(cli):
    assert ok(cli("leaderboard", "--json")) == {"rows": [], "fid_vs_nfe": {}}
    assert cli("leaderboard").stdout.startswith("no evaluations yet")


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics", "fid,sharpness"], "error: metrics: unknown metric 'sharpness' (known: fid, kid, precision"),
    (["--model", "teacher:digits", "--metrics", "fid", "--n", "2000"],
     "error: n: 2000 is larger than the digits reference (1797 images)"),
    (["--n", "3"], "error: n: Input should be greater than or equal to 10"),
    (["--model", "teacher:nope"], "error: model: unknown name 'nope' (known: "),
    (["--model", "teacher:toy2d-ring@fifty"], "error: model: 'teacher:toy2d-ring@fifty' has a bad step count 'fifty'"),
    (["--model", "run:12"], "error: model: run 12 is not a distill run"),
    (["--model", "no/such/student"], "error: model: 'no/such/student' is neither teacher:NAME[@STEPS], run:ID nor"),
    (["--metrics", "accuracy"], "error: metrics: accuracy needs a class-conditional digits model"),
    (["--extractor", "inception"], "error: extractor: 'inception' does not apply to toy2d-ring (use: toy2d)"),
    (["--seed", "-1"], "error: seed: Input should be greater than or equal to 0"),
    (["--prompts", "shapes-test"],
     "error: prompts: teacher:toy2d-ring is not a text-to-image model ('toy2d-ring' takes no prompts); leave prompts out"),
])
@pytest.mark.parametrize("submit", [False, True])
def test_bad_evaluate_input_is_one_line_naming_the_field(cli, data_dir, args, message, submit):
    defaults = {"--model": "teacher:toy2d-ring", "--metrics": "fid", "--n": "256"}
    given = {args[i] for i in range(0, len(args), 2)}
    base = [x for k, v in defaults.items() if k not in given for x in (k, v)]
    line = one_error_line(cli("evaluate", *base, *args, *(["--submit"] if submit else [])))
    assert line.startswith(message), line
    assert not (data_dir / "reference").exists()
    if (data_dir / "studio.db").exists():
        assert _evaluations() == []


# -- evaluate --submit ---------------------------------------------------------------------------------------

@pytest.fixture
def queue(data_dir, monkeypatch):
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # a failure, not a skip (docs/architecture.md#set-up-and-tests)
        pytest.fail(f"these tests need Redis at {REDIS_URL} (set STUDIO_TEST_REDIS_URL): {exc}", pytrace=False)
    name = f"test-eval-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("STUDIO_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("STUDIO_QUEUE", name)
    clear_studio_caches()
    yield lambda: client.llen(name)
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    client.close()


def test_evaluate_submit_queues_one_run(cli, queue):
    out = ok(cli("evaluate", *TOY, "--metrics", "fid,kid", "--n", "128", "--submit", "--json"))
    assert out == {"id": 1, "kind": "evaluate", "status": "queued"}
    assert queue() == 1
    (run,) = ok(cli("runs", "list", "--json"))
    assert (run["kind"], run["status"], run["total"]) == ("evaluate", "queued", 256)
    assert run["spec"] == {"models": ["teacher:toy2d-ring@4", "teacher:toy2d-ring@50"], "metrics": ["fid", "kid"],
                           "n": 128, "seed": 0, "extractor": None, "guidance": 1.0, "prompts": None}
    assert "evaluate teacher:toy2d-ring@4 teacher:toy2d-ring@50 on fid,kid" in cli("runs", "list").stdout
    assert _evaluations() == []  # the worker measures it


# -- fid -----------------------------------------------------------------------------------------------------

def test_fid_equals_core_metrics_folder_fid(cli, tmp_path):
    a, b = _digit_folder(tmp_path / "a", 0, 120), _digit_folder(tmp_path / "b", 120, 240)
    result = ok(cli("fid", a, b, "--extractor", "digits", "--json"))
    assert result == {"fid": folder_fid(a, b, "digits"), "dir_a": str(a), "dir_b": str(b), "extractor": "digits",
                      "n_a": 120, "n_b": 120, "small_sample": True}
    assert result["fid"] > 0
    assert ok(cli("fid", a, a, "--extractor", "digits", "--json"))["fid"] == pytest.approx(0, abs=1e-6)
    text = cli("fid", a, b, "--extractor", "digits")
    assert text.exit_code == 0 and text.stdout.startswith("FID ") and "(digits; 120 vs 120 images)" in text.stdout
    assert text.stdout.rstrip().endswith("(digits; 120 vs 120 images); small-sample estimate: n < 2000")


def test_bad_fid_input_is_one_line_naming_the_field(cli, tmp_path):
    good = _digit_folder(tmp_path / "good", 0, 20)
    empty = tmp_path / "empty"
    empty.mkdir()
    mixed = _digit_folder(tmp_path / "mixed", 0, 5)
    save_png(to_uint8(digits_tensors(8)[0][:1])[0], mixed / "small.png")

    assert one_error_line(cli("fid", good, empty, "--extractor", "digits")).startswith(
        f"error: folder: {empty} holds no images")
    line = one_error_line(cli("fid", mixed, good, "--extractor", "digits"))
    assert line.startswith(f"error: folder: {mixed} mixes image sizes: 16x16 (5 files"), line
    assert one_error_line(cli("fid", good, tmp_path / "nowhere", "--extractor", "digits")).startswith(
        f"error: folder: {tmp_path / 'nowhere'} does not exist")
    assert one_error_line(cli("fid", good, good, "--extractor", "clip")).startswith(
        "error: extractor: unknown name 'clip' (known: inception, digits, shapes, toy2d)")
    assert one_error_line(cli("fid", good, good, "--extractor", "toy2d")).startswith(
        "error: extractor: 'toy2d' works on points, not on images")


def test_a_missing_inception_file_fails_before_any_sampling(cli, data_dir, tmp_path, monkeypatch):
    import core.metrics.extractors as extractors

    monkeypatch.setattr(extractors, "inception_dirs", lambda weights_dir=None: [tmp_path / "weights"])
    line = one_error_line(cli("evaluate", "--model", "teacher:digits@50", "--extractor", "inception", "--metrics", "fid",
                               "--n", "1000"))
    assert line.startswith("error: extractor 'inception': weights file inception-2015-12-05.pt not found in "), line
    assert _evaluations() == [] and not (data_dir / "reference").exists()
