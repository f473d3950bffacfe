"""The database and broker URLs the studio accepts, in one place, so settings, engine and migrations agree.

Postgres goes through psycopg 3, the one Postgres driver we install: a plain `postgresql://` URL would make
SQLAlchemy (and kombu's SQLAlchemy transport) look for psycopg2, so it is mapped to `postgresql+psycopg://`.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg"}
DATABASE_HINT = "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
BROKER_HINT = "expected redis://HOST:PORT/N, rediss://..., or sqla+ followed by a database URL"


def database_url(url: str | URL) -> URL:
    """Parse a database URL and pin its driver; ValueError (never echoing the URL, which may hold a password)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL ({DATABASE_HINT})") from None
    driver = DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(f"unsupported scheme {parsed.drivername!r} ({DATABASE_HINT})")
    return parsed.set(drivername=driver)


def broker_url(url: str) -> str:
    """Check a Celery broker URL: Redis, or kombu's SQLAlchemy transport on a database URL we accept."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("redis", "rediss"):
        return url
    if scheme.startswith("sqla+"):
        return "sqla+" + database_url(url.removeprefix("sqla+")).render_as_string(hide_password=False)
    raise ValueError(f"unsupported scheme {scheme!r} ({BROKER_HINT})" if scheme else f"not a broker URL ({BROKER_HINT})")


def display_url(url: str | URL) -> str:
    """The URL as it may be shown in logs and errors: password masked."""
    return make_url(url).render_as_string(hide_password=True)
