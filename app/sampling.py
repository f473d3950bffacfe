"""Sampling for the web process without loading torch into it.

Requests run in one long-lived child process (spawn, not fork: torch must never run in a forked child of a
threaded parent). Results are cached on disk by request, under DATA_DIR/samples/<key>/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from core.specs import SampleRequest


def request_key(request: SampleRequest) -> str:
    """A stable folder name for a request: the same request reuses its images."""
    doc = json.dumps(dataclasses.asdict(request), sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


def _run(request: SampleRequest, out_dir: str, data_dir: str, device: str) -> dict:
    # Runs in the child process: the only place torch is imported.
    from workers.local import sample_model

    return sample_model(request, Path(out_dir), data_dir=Path(data_dir), device=device)


class SamplerPool:
    """One spawned worker process that samples teachers; reused across requests so models load once per call."""

    def __init__(self, data_dir: Path, device: str = "cpu"):
        self.data_dir = Path(data_dir)
        self.device = device
        self.samples_dir = self.data_dir / "samples"
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def sample(self, request: SampleRequest, timeout: float = 600.0) -> dict:
        out_dir = self.samples_dir / request_key(request)
        cached = out_dir / "sample.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        return self._executor().submit(_run, request, str(out_dir), str(self.data_dir), self.device).result(timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
