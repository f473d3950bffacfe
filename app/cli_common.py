"""What every `distill-studio` command shares: one-line errors, output, the progress bar, the job queue."""

from __future__ import annotations

import functools
import json
import sys

import typer

from storage.db import DatabaseUnavailable
from storage.settings import SettingsError, get_settings
from workers.submit import BrokerUnavailable, Jobs

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, SettingsError, DatabaseUnavailable,
               BrokerUnavailable)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def cli_errors(fn):
    """Turn user errors into one clear line and exit code 2; anything else is a bug and keeps its traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))
    return wrapper


def emit(as_json: bool, data: dict | list, text: str) -> None:
    typer.echo(json.dumps(data, indent=1) if as_json else text)


class Bar:
    """A tqdm progress bar on stderr, created on first use so quick commands print nothing."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int, metrics: dict | None = None):
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if metrics:
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items()
                                  if k != "step" and not k.startswith("time/")}, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def jobs() -> Jobs:
    """Jobs on the configured database, migrated first (a no-op when up to date), as `worker` and `up` do: on a data
    dir no process has set up yet, a job command would otherwise fail with a traceback (no such table)."""
    from storage.migrate import upgrade

    upgrade(get_settings().database_url)
    return Jobs()


def submit_job(kind: str, spec: dict, as_json: bool) -> None:
    run_id = jobs().submit(kind, spec)
    emit(as_json, {"id": run_id, "kind": kind, "status": "queued"}, str(run_id))
