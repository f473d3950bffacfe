"""The reaper: runs whose worker died go back to the queue (docs/architecture.md#jobs).

Redis redelivers the unacked message of a worker that died whole only after its visibility timeout (an hour), and
kombu's SQLite transport never does, so every worker's main process runs this loop every lease_s / 3 seconds:

- a running run whose lease expired is requeued (or ends cancelled if a cancel was pending) and its task re-sent;
- a running run held by a dead process on this host is released at once, without waiting for the lease;
- when the broker queue is empty, a queued run whose message was sent long ago and never taken lost its message
  (a broker restarted without persistence) and is sent again.

Every change is a compare-and-set, so several reapers on several machines can run at once; a re-sent duplicate
is a no-op for the worker that receives it. Torch-free: it runs in the worker's main process.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import func, select

from storage import repo
from storage.db import session_scope
from storage.models import Run
from workers.jobs import owner_is_dead, session_factory
from workers.submit import BrokerUnavailable, Jobs

log = logging.getLogger("distill_studio.reaper")


def queue_length(app, queue: str) -> int:
    """Messages waiting in the queue (Redis deletes an empty list, so a missing queue counts as empty)."""
    from amqp.exceptions import ChannelError  # what kombu's virtual transports raise; amqp is kombu's dependency

    try:
        with app.connection_for_write() as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError:
        return 0


def reap_once(jobs: Jobs) -> list[int]:
    """One pass; the ids whose task was re-sent."""
    from workers.celery_app import get_app

    settings = jobs.settings
    with session_scope(jobs.factory) as session:
        running = session.execute(select(Run.id, Run.lease_owner).where(Run.status == "running")).all()
        released = [run_id for run_id, owner in running
                    if owner_is_dead(owner) and repo.release_run(session=session, run_id=run_id, owner=owner)]
        expired = repo.requeue_expired(session=session)
    for run_id in released:
        log.warning("run %s: its worker process on this host is dead; requeued", run_id)
    for run_id in expired:
        log.warning("run %s: lease expired; requeued", run_id)
    sent = _send(jobs, released + expired)
    grace = max(30.0, settings.lease_s)  # longer than a message takes from the queue to a claim
    with session_scope(jobs.factory) as session:
        waiting = session.scalar(select(func.count()).select_from(Run).where(Run.status == "queued"))
    if waiting and queue_length(get_app(), settings.queue) == 0:  # a message still in the queue is not lost
        with session_scope(jobs.factory) as session:
            lost = repo.take_undispatched(session=session, older_than_s=grace)
        for run_id in lost:
            log.warning("run %s: queued, but its message is gone from the broker; sent again", run_id)
        sent += _send(jobs, lost)
    return sent


def _send(jobs: Jobs, run_ids: list[int]) -> list[int]:
    sent = []
    with session_scope(jobs.factory) as session:
        kinds = dict(session.execute(select(Run.id, Run.kind).where(Run.id.in_(run_ids), Run.status == "queued")).all())
    for run_id in sorted(kinds):
        try:
            jobs.send(run_id, kinds[run_id])
        except BrokerUnavailable as exc:
            log.warning("%s", exc)
            break
        sent.append(run_id)
    return sent


class Reaper:
    """The loop in a thread of the worker's main process."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        jobs = Jobs(factory=session_factory())
        while True:
            try:
                reap_once(jobs)
            except Exception:  # a database or broker blip: try again next round
                log.exception("reaper pass failed")
            if self._stop.wait(self.interval_s):
                return
