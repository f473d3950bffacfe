"""The `distill-studio` CLI: listing, sampling, training and importing teachers; every user error is one line on
stderr naming the problem, with exit code 2. In-process through typer's CliRunner, plus one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.app.cli_helpers import ok, one_error_line

BUILTINS = {"toy2d-ring-gmm": ([2], 0), "toy2d-grid-gmm": ([2], 0), "toy2d-ring": ([2], 0), "toy2d-grid": ([2], 0),
            "digits": ([1, 16, 16], 10), "shapes": ([4, 16, 16], 0)}


# -- teachers list / import --------------------------------------------------------------------------------

def test_teachers_list_json_has_the_builtins_then_imports(cli, tmp_path, data_dir):
    rows = ok(cli("teachers", "list", "--json"))
    assert {r["name"]: (r["data_shape"], r["num_classes"]) for r in rows} == BUILTINS
    assert all(r["builtin"] for r in rows)

    from tests.tiny_pipelines import save_tiny_ddpm
    folder = save_tiny_ddpm(tmp_path / "pipe", "v_prediction")
    info = ok(cli("teachers", "import", folder, "--name", "tiny-v", "--json"))
    assert (info["name"], info["prediction_type"], info["data_shape"]) == ("tiny-v", "v_prediction", [3, 8, 8])
    assert (data_dir / "teachers" / "tiny-v" / "teacher.json").is_file()

    rows = ok(cli("teachers", "list", "--json"))
    assert [r["name"] for r in rows] == [*BUILTINS, "tiny-v"]
    tiny = rows[-1]
    assert (tiny["data_shape"], tiny["num_classes"], tiny["builtin"], tiny["kind"]) == ([3, 8, 8], 0, False, "diffusers")

    text = cli("teachers", "list")
    assert text.exit_code == 0 and "tiny-v" in text.stdout and "3x8x8" in text.stdout


# -- sample ------------------------------------------------------------------------------------------------

def _sample(cli, out: Path, seed: int, n: int) -> tuple[dict, np.ndarray]:
    summary = ok(cli("sample", "--model", "teacher:toy2d-ring-gmm", "--n", n, "--seed", seed, "--steps", 10,
                      "--out", out, "--json"))
    return summary, np.load(out / "samples.npy")


def test_sample_gmm_is_deterministic_per_seed(cli, tmp_path):
    summary, x = _sample(cli, tmp_path / "a", 0, 64)
    assert (summary["n"], summary["steps"], summary["nfe"], summary["sampler"]) == (64, 10, 10, "ddim")
    assert summary["seeds"] == list(range(64))
    assert summary["grid"] == str(tmp_path / "a" / "scatter.png")
    assert (tmp_path / "a" / "scatter.png").stat().st_size > 0
    assert x.shape == (64, 2) and np.isfinite(x).all()
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.median(radius) - 2.0) < 0.3  # the ring of 8 has radius 2

    _, again = _sample(cli, tmp_path / "b", 0, 64)
    assert np.array_equal(again, x)
    _, upper = _sample(cli, tmp_path / "c", 32, 32)
    np.testing.assert_allclose(upper, x[32:], rtol=0, atol=1e-12)  # noise per seed, not per batch
    assert not np.allclose(upper, x[:32])


def test_sample_a_students_checkpoint(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    student = tmp_path / "student"
    ok(cli("distill", "--teacher", "toy2d-ring", "--method", "dmd2", "--preset", "toy2d", "--iterations", 20,
            "--checkpoint-every", 10, "--out", student, "--json"))
    early = ok(cli("sample", "--model", student, "--n", 32, "--checkpoint", 10, "--out", tmp_path / "a", "--json"))
    final = ok(cli("sample", "--model", student, "--n", 32, "--out", tmp_path / "b", "--json"))
    assert (early["checkpoint"], final["checkpoint"], early["steps"]) == (10, 20, 1)
    assert not np.allclose(np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy"))
    line = one_error_line(cli("sample", "--model", student, "--checkpoint", 15, "--out", tmp_path / "c"))
    assert line == "error: checkpoint: run has no snapshot at step 15; saved: 10, 20"
    assert not (tmp_path / "c").exists()


# -- errors: exit 2, one line on stderr naming the problem ------------------------------------------------

SAMPLE = ("sample", "--n", "2", "--steps", "2")
SAMPLE_ERRORS = {
    "unknown teacher": (("--model", "teacher:nope"), ["teacher", "unknown name 'nope'"]),
    "bad model ref": (("--model", "nope"), ["model", "'nope'", "teacher:NAME"]),
    "class on unconditional": (("--model", "teacher:toy2d-ring-gmm", "--class", "3"), ["class", "unconditional"]),
    "guidance without class": (("--model", "teacher:toy2d-ring-gmm", "--guidance", "2"), ["guidance", "--class"]),
    "unknown sampler": (("--model", "teacher:toy2d-ring-gmm", "--sampler", "euler"), ["sampler", "'euler'"]),
    "checkpoint of a teacher": (("--model", "teacher:toy2d-ring-gmm", "--checkpoint", "10"), ["checkpoint", "teacher"]),
}


@pytest.mark.parametrize("case", list(SAMPLE_ERRORS))
def test_sample_errors(cli, tmp_path, case):
    args, words = SAMPLE_ERRORS[case]
    out = tmp_path / "out"
    line = one_error_line(cli(*SAMPLE, *args, "--out", out))
    for word in words:
        assert word in line
    assert not out.exists()  # refused before any work


def test_sample_unwritable_out(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(cli(*SAMPLE, "--model", "teacher:toy2d-ring-gmm", "--out", blocker / "out"))
    assert line.startswith("error: out: cannot write to")
    assert str(blocker / "out") in line


def test_teacher_command_errors(cli, tmp_path):
    line = one_error_line(cli("teachers", "train", "nope"))
    assert "teacher: 'nope' is not a trainable built-in teacher" in line and "toy2d-ring" in line
    line = one_error_line(cli("teachers", "train", "toy2d-ring-gmm", "--out", tmp_path / "run"))
    assert "'toy2d-ring-gmm' is not a trainable" in line
    assert not (tmp_path / "run").exists()

    line = one_error_line(cli("teachers", "import", "/nonexistent-distill-studio", "--name", "x"))
    assert "path:" in line and "/nonexistent-distill-studio does not exist" in line
    line = one_error_line(cli("teachers", "import", tmp_path, "--name", "Bad Name!"))
    assert "name: 'Bad Name!' is not a valid name" in line
    line = one_error_line(cli("teachers", "import", tmp_path, "--name", "digits"))
    assert "'digits' is a built-in teacher" in line
    line = one_error_line(cli("teachers", "import", tmp_path, "--name", "empty"))
    assert "unet config is missing" in line


# -- teachers train (the real loop, tiny) ------------------------------------------------------------------

def test_train_toy2d_ring_runs_the_loop(cli, tmp_path):
    out = tmp_path / "run"
    result = ok(cli("teachers", "train", "toy2d-ring", "--iterations", 30, "--out", out, "--json"))
    assert (result["name"], result["status"], result["step"]) == ("toy2d-ring", "completed", 30)
    assert "installed" not in result
    assert result["model"] == str(out / "model.safetensors")
    assert result["training"]["iterations"] == 30 and result["training"]["seed"] == 0
    assert (out / "model.safetensors").stat().st_size > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30
    losses = [v for k, v in rows[-1].items() if "loss" in k]
    assert losses and all(np.isfinite(losses))
    assert list((out / "checkpoints").glob("*.safetensors"))

    from safetensors.torch import load_file
    state = load_file(out / "model.safetensors")
    assert state and all(v.isfinite().all() for v in state.values())


# -- a real process ----------------------------------------------------------------------------------------

def test_console_script_error_is_one_line_and_exit_2(tmp_path):
    script = Path(sys.executable).parent / "distill-studio"
    env = {**os.environ, "STUDIO_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([str(script), "sample", "--model", "teacher:nope", "--n", "1", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'nope'" in lines[0], proc.stderr
    assert proc.stdout == ""
