"""One job from claim to terminal status: what every task runs in a pool child (docs/architecture.md#jobs).

1. Claim the run (compare-and-set + lease); a run someone else holds is a duplicate delivery and a no-op.
2. A heartbeat thread renews the lease every lease_s / 3 seconds and watches the cancel flag; the training loop's
   progress callback writes step, metrics and a heartbeat every log interval and honours a cancel at once.
3. The job resumes from its latest checkpoint on disk (metric rows logged after it are dropped first, since the loop
   logs those steps again), records checkpoints as it writes them, and ends succeeded, failed (with a readable
   error) or cancelled. A failure is recorded, never re-raised: Celery acks it, so a bad job cannot crash-loop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import traceback
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.artifacts import relative_path, resolve
from storage.db import make_engine, make_session_factory, session_scope
from storage.settings import get_settings

log = logging.getLogger("distill_studio.jobs")
# One line per logging interval, only into the run's own log file (the worker's console stays quiet).
progress_log = logging.getLogger("distill_studio.run")
progress_log.propagate = False
progress_log.setLevel(logging.INFO)


class Stop(Exception):
    """Raised from a progress callback of a job that has no cooperative stop (sampling)."""


# Set in a pool child when its worker shuts down (SIGUSR2 from workers/worker.py): the job checkpoints, hands its run
# back to the queue and returns, instead of holding the shutdown until the run ends or the process is killed.
SHUTDOWN = threading.Event()


def request_shutdown(*_args) -> None:
    SHUTDOWN.set()


def _listen_for_shutdown() -> None:
    """Installed when a job starts, not at pool start-up: billiard resets every signal after its initializers run."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR2, request_shutdown)


@lru_cache(maxsize=1)
def _factory_for(pid: int) -> sessionmaker[Session]:
    # Keyed by pid: a connection pool must never cross a fork.
    return make_session_factory(make_engine(get_settings().database_url))


def session_factory() -> sessionmaker[Session]:
    return _factory_for(os.getpid())


def worker_id() -> str:
    """host:pid of this process: the lease owner. The reaper releases runs of dead pids on its own host at once."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str | None) -> bool:
    """True only for an owner on this host whose process is gone (a pid reused in between keeps the lease: safe)."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def proc_stat(pid: int | str) -> list[str]:
    """Fields 3 on of /proc/PID/stat (state, ppid, ...), split after the ")" that ends the command name; [] if gone
    or where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _is_zombie(pid: int) -> bool:
    """A killed pool child stays a zombie until init reaps it (seconds): dead for our purpose."""
    return proc_stat(pid)[:1] == ["Z"]


class Lease:
    """The worker's hold on a run: heartbeats, progress, and the reasons to stop (cancel, or the run was lost)."""

    def __init__(self, factory: sessionmaker[Session], run_id: int, worker: str, lease_s: float, step: int = 0,
                 total: int | None = None):
        self.factory, self.run_id, self.worker, self.lease_s = factory, run_id, worker, lease_s
        # Start from the run's recorded progress: a heartbeat before the job has found its checkpoint must not report 0.
        self.step, self.total = step, total
        self.cancelled, self.lost = False, False
        self._lock = threading.Lock()  # the heartbeat thread and the job both write
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{run_id}", daemon=True)

    @property
    def stopping(self) -> bool:
        return self.cancelled or self.lost or SHUTDOWN.is_set()

    def beat(self, metrics: dict[str, float] | None = None) -> None:
        with self._lock, session_scope(self.factory) as session:
            if metrics:
                repo.record_metrics(session=session, run_id=self.run_id, step=self.step, values=metrics)
            if not repo.heartbeat(session=session, run_id=self.run_id, worker=self.worker, lease_s=self.lease_s,
                                  step=self.step, total=self.total):
                self.lost = True
            elif repo.is_cancel_requested(session=session, run_id=self.run_id):
                self.cancelled = True

    def progress(self, done: int, total: int, metrics: dict | None = None) -> None:
        self.step, self.total = int(done), int(total)
        values = {k: float(v) for k, v in (metrics or {}).items() if k != "step" and isinstance(v, (int, float))}
        losses = " ".join(f"{k}={v:.4g}" for k, v in values.items() if k.startswith("loss/"))
        progress_log.info("step %d/%d %s", self.step, self.total, losses)
        self.beat(values)

    def _loop(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                self.beat()
            except Exception:  # a database blip must not kill the thread; the next beat retries
                log.exception("run %s: heartbeat failed", self.run_id)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def execute(run_id: int, kind: str) -> str:
    """Run one job; returns how it ended (for logs): succeeded, failed, cancelled, requeued, lost, skipped or
    unknown."""
    settings = get_settings()
    factory, worker = session_factory(), worker_id()
    with session_scope(factory) as session:
        run = repo.get_run(session=session, run_id=run_id)
        if run is None:
            log.warning("run %s: no such run; message ignored", run_id)
            return "unknown"
        if run.kind != kind:
            log.error("run %s: is a %s run, not %s; message ignored", run_id, run.kind, kind)
            return "unknown"
        claimed = repo.claim_run(session=session, run_id=run_id, worker=worker, lease_s=settings.lease_s)
        if not claimed and run.status == "running" and owner_is_dead(run.lease_owner):
            claimed = repo.take_over(session=session, run_id=run_id, dead_owner=run.lease_owner, worker=worker,
                                     lease_s=settings.lease_s)  # a pool child of this host was killed mid-run
        spec, out_rel, previous, step, total = dict(run.spec), run.out_dir, run.status, run.step, run.total
    if not claimed:
        log.info("run %s: %s, held by %s; duplicate delivery ignored", run_id, previous, run.lease_owner)
        return "skipped"

    log.info("run %s: claimed by %s", run_id, worker)
    _listen_for_shutdown()
    lease = Lease(factory, run_id, worker, settings.lease_s, step=step, total=total)
    out_dir = resolve(settings.data_dir, out_rel)
    status, error = "failed", None
    with run_log(out_dir):
        log.info("run %s: %s job started by %s at step %s", run_id, kind, worker, step)
        try:
            with lease:
                status = JOBS[kind](spec, out_dir, lease, factory, settings)
        except Stop:
            status = "stopped"
        except Exception as exc:  # every failure becomes a readable error on the run
            error = describe_error(exc)
            log.error("run %s failed: %s\n%s", run_id, error, traceback.format_exc())
        if status == "stopped":
            status = "cancelled" if lease.cancelled else ("lost" if lease.lost else "requeued")
        log.info("run %s: job ended: %s at step %s", run_id, status, lease.step)
    if status == "lost":
        log.warning("run %s: lease lost to another worker; stopped without finishing it", run_id)
        return "lost"
    if status == "requeued":
        return _hand_back(factory, run_id, kind, worker)
    with session_scope(factory) as session:
        if not repo.finish_run(session=session, run_id=run_id, worker=worker, status=status, error=error):
            log.warning("run %s: could not record %s (the lease was lost)", run_id, status)
            return "lost"
    log.info("run %s: %s", run_id, status)
    return status


@contextmanager
def run_log(out_dir: Path):
    """Append this job's events and progress lines to out_dir/run.log, the log the studio's run view tails."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out_dir / "run.log", encoding="utf-8")
    except OSError:  # an unwritable run folder fails the job itself, with its own message; no log then
        yield
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    for logger in (log, progress_log):
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in (log, progress_log):
            logger.removeHandler(handler)
        handler.close()


def _hand_back(factory: sessionmaker[Session], run_id: int, kind: str, worker: str) -> str:
    """The worker is shutting down: queue the run again (it resumes from the checkpoint just written) and send it."""
    from workers.submit import BrokerUnavailable, Jobs

    with session_scope(factory) as session:
        if not repo.release_run(session=session, run_id=run_id, owner=worker):
            return "cancelled"  # a cancel arrived meanwhile: release_run ended it cancelled
    try:
        Jobs(factory=factory).send(run_id, kind)
    except BrokerUnavailable as exc:
        log.warning("%s", exc)  # the reaper of a running worker re-sends it
    log.info("run %s: worker shutting down; requeued from its checkpoint", run_id)
    return "requeued"


def describe_error(exc: BaseException) -> str:
    """One readable line for the run's error column; CUDA out-of-memory gets advice of its own."""
    name = type(exc).__name__
    first = " ".join(str(exc).split("\n", 1)[0].split())
    if name == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return f"CUDA out of memory: lower batch_size (or student_steps), or use a larger GPU ({first})"
    if isinstance(exc, CorruptCheckpoint):
        return str(exc)
    return f"{name}: {first}" if first else name


class CorruptCheckpoint(RuntimeError):
    pass


@contextmanager
def _checkpoints(out_dir: Path, lease: Lease, factory: sessionmaker[Session], data_dir: Path):
    """Check that the checkpoint the loop will resume from loads, drop metrics logged after it, and yield the
    on_checkpoint callback that records new ones."""
    from core.checkpoints import list_checkpoints, load_state

    found = list_checkpoints(out_dir / "checkpoints")
    resumed_from = 0
    if found:
        step, path = found[-1]
        try:
            load_state(path)
        except Exception as exc:
            raise CorruptCheckpoint(f"checkpoint {path.name} cannot be read ({describe_error(exc)}); delete it to "
                                    "resume from the one before, or delete the run folder to start over") from None
        resumed_from = step
    with lease._lock, session_scope(factory) as session:
        repo.truncate_metrics(session=session, run_id=lease.run_id, after_step=resumed_from)
    lease.step = resumed_from

    def on_checkpoint(step: int, path: Path) -> None:
        with lease._lock, session_scope(factory) as session:
            repo.record_checkpoint(session=session, run_id=lease.run_id, step=step, path=relative_path(data_dir, path))

    yield on_checkpoint


def run_distill(spec: dict[str, Any], out_dir: Path, lease: Lease, factory, settings) -> str:
    from workers.local import distill

    with _checkpoints(out_dir, lease, factory, settings.data_dir) as on_checkpoint:
        result = distill(spec["teacher"], spec["method"], out_dir, preset=spec["preset"],
                         student_steps=spec["student_steps"], sets=tuple(spec["sets"]), iterations=spec["iterations"],
                         batch_size=spec["batch_size"], seed=spec["seed"], data_dir=settings.data_dir,
                         device=settings.device, progress=lease.progress, checkpoint_every=spec["checkpoint_every"],
                         should_stop=lambda: lease.stopping, on_checkpoint=on_checkpoint,
                         # specs queued before text-to-image teachers had neither key
                         prompts=_path(spec.get("prompts")), data=_path(spec.get("data")), init=_path(spec.get("init")),
                         grad_accum=spec.get("grad_accum", 1))  # specs queued before gradient accumulation lack it
    return "succeeded" if result["status"] == "completed" else "stopped"


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def run_teacher(spec: dict[str, Any], out_dir: Path, lease: Lease, factory, settings) -> str:
    from workers.local import train_teacher

    with _checkpoints(out_dir, lease, factory, settings.data_dir) as on_checkpoint:
        result = train_teacher(spec["name"], out_dir, iterations=spec["iterations"], seed=spec["seed"],
                               device=settings.device, progress=lease.progress, should_stop=lambda: lease.stopping,
                               on_checkpoint=on_checkpoint)
    return "succeeded" if result["status"] == "completed" else "stopped"


def run_sample(spec: dict[str, Any], out_dir: Path, lease: Lease, factory, settings) -> str:
    """Sample a teacher or a run (its final model, or spec["checkpoint"]: the snapshot of that step); each PNG is
    recorded under the checkpoint step actually sampled (0 for teachers)."""
    from core.eval_specs import guided_model
    from core.refs import parse_ref
    from core.specs import SampleRequest
    from workers.local import default_steps, sample_model
    from workers.sample_text import prompt_png

    model, checkpoint = spec["model"], spec.get("checkpoint")  # specs queued before checkpoints existed lack it
    ref = parse_ref(model)
    if ref.kind == "run":
        with session_scope(factory) as session:
            model = str(resolve(settings.data_dir, repo.get_run(session=session, run_id=ref.run_id).out_dir))
    prompts = tuple(spec.get("prompts") or ())  # specs queued before prompts existed lack them
    request = SampleRequest(model=model, seeds=tuple(spec["seeds"]), steps=spec["steps"] or default_steps(model, checkpoint),
                            class_id=spec["class_id"], guidance=spec["guidance"], sampler=spec["sampler"],
                            eta=spec["eta"], checkpoint=checkpoint, prompts=prompts)

    def progress(done: int, total: int) -> None:
        lease.progress(done, total)
        if lease.stopping:
            raise Stop

    summary = sample_model(request, out_dir, data_dir=settings.data_dir, device=settings.device, progress=progress)
    # A guided teacher's images are kept under its guided key (teacher:NAME+cfgW, as evaluations are), so images drawn
    # with another guidance never stand in for them.
    key = guided_model(spec["model"], spec["guidance"])
    files = [(text, prompt_png(out_dir, p, seed), seed) for p, text in enumerate(prompts) for seed in request.seeds] or \
            [("", out_dir / f"seed-{seed:06d}.png", seed) for seed in request.seeds]
    with session_scope(factory) as session:
        for text, png, seed in files:
            if png.is_file():
                repo.record_image(session=session, model=key, seed=seed, class_id=request.class_id, prompt=text,
                                  steps=summary["steps"], checkpoint=summary["checkpoint"] or 0,
                                  path=relative_path(settings.data_dir, png), run_id=lease.run_id)
    return "succeeded"


def run_evaluate(spec: dict[str, Any], out_dir: Path, lease: Lease, factory, settings) -> str:
    """Evaluate the spec's models; each model's rows are stored as it finishes, so a resumed run skips those."""
    from workers.evaluate import evaluate
    from workers.local import check_writable

    def progress(done: int, total: int) -> None:
        lease.progress(done, total)
        if lease.stopping:
            raise Stop

    result = evaluate(spec["models"], spec["metrics"], spec["n"], spec["seed"], data_dir=settings.data_dir,
                      device=settings.device, extractor=spec["extractor"], guidance=spec["guidance"],
                      prompts=spec.get("prompts"), progress=progress, session_factory=factory, run_id=lease.run_id)
    (check_writable(out_dir) / "evaluation.json").write_text(json.dumps(result, indent=1))
    return "succeeded"


def run_export(spec: dict[str, Any], out_dir: Path, lease: Lease, factory, settings) -> str:
    """Write the student as a diffusers pipeline into pipeline/ of this run's folder (a resumed run starts the folder
    afresh), and its summary, with the lines that load it, into export.json."""
    import shutil

    from workers.export import export

    target = out_dir / "pipeline"
    shutil.rmtree(target, ignore_errors=True)  # a half-written folder of an interrupted attempt
    summary = export(spec["model"], target, step=spec.get("step"), data_dir=settings.data_dir, device=settings.device,
                     session_factory=factory)
    (out_dir / "export.json").write_text(json.dumps(summary, indent=1))
    lease.progress(1, 1)
    return "succeeded"


JOBS = {"distill": run_distill, "teacher": run_teacher, "sample": run_sample, "evaluate": run_evaluate,
        "export": run_export}
