"""Readers of the CLI's replies in tests: a successful --json reply, or the one-line error of a refused command (the
`cli` and `data_dir` fixtures are in tests/app/conftest.py)."""

from __future__ import annotations

import json


def ok(result) -> dict | list:
    assert result.exit_code == 0, (result.exit_code, result.output)
    return json.loads(result.stdout)


def one_error_line(result) -> str:
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]
