"""What every handler needs: settings, the database, the job queue, accounts; built once per server."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from sqlalchemy.orm import Session, sessionmaker

from app.studio.access import LOCAL_USER, Accounts
from storage.settings import Settings
from workers.submit import Jobs

SUBMITS_PER_MINUTE = 30  # why: a double-clicking user is fine, a script hammering "Start run" is not


@dataclass
class Studio:
    settings: Settings
    factory: sessionmaker[Session]
    jobs: Jobs
    accounts: Accounts
    _recent: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, accounts: Accounts) -> Studio:
        jobs = Jobs(settings)
        return cls(settings=settings, factory=jobs.factory, jobs=jobs, accounts=accounts)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def user(self, request: gr.Request | None) -> str:
        """The signed-in user (the local user in single-user mode); requests without one are refused."""
        if self.accounts.single_user:
            return LOCAL_USER
        name = getattr(request, "username", None) if request is not None else None
        if not name:
            raise PermissionError("sign in first")
        return name

    def require_researcher(self, request: gr.Request | None) -> str:
        name = self.user(request)
        if self.accounts.role(name) != "researcher":
            raise PermissionError(f"{name} is a rater account; only researchers can use the studio")
        return name

    def throttle(self, user: str, now: float | None = None) -> None:
        """Per-user submission limit (the handler's job, docs/study.md#gradio-specifics)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._recent.setdefault(user, deque())
            while recent and now - recent[0] > 60:
                recent.popleft()
            if len(recent) >= SUBMITS_PER_MINUTE:
                raise ValueError(f"too many submissions: at most {SUBMITS_PER_MINUTE} a minute per user")
            recent.append(now)
