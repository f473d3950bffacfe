"""The studio over HTTP: server.build_app served by uvicorn in a thread on a free port, driven with httpx. Only copies
under DATA_DIR/served are fetchable, and only after signing in; the database, weights and system files never are.
Single-user mode serves the page without signing in, and only on localhost."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.studio.access import Account, Accounts, hash_password
from app.studio.files import servable
from app.studio.server import build_app
from tests.app.studio_env import close_studio, migrated_template, use_data_dir, write_png

SQLITE_MAGIC = b"SQLite format 3\0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A built studio app on a uvicorn server in a background thread."""

    def __init__(self, data_dir: Path, accounts: Accounts):
        self.data_dir = data_dir
        from storage.settings import get_settings

        self.app, self.ctx = build_app(get_settings(), accounts, "127.0.0.1")
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=free_port(), log_level="warning",
                                                    lifespan="on"))
        self.url = f"http://127.0.0.1:{self.server.config.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # wait for start-up, not for anything timed
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the studio's uvicorn server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        close_studio(self.ctx)

    def file(self, client: httpx.Client, path: str | Path) -> httpx.Response:
        return client.get(f"{self.url}/gradio_api/file={path}")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("template"))


def _studio(tmp_path_factory, template, accounts: Accounts) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("http") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(data / "gradio-tmp"))  # build_app only sets it if unset: keep it ours
        use_data_dir(mp, data, template)
        (data / "runs/1").mkdir(parents=True)
        (data / "runs/1/model.safetensors").write_bytes(b"secret weights")
        write_png(data / "runs/1/previews/step-0000010.png", (250, 0, 0))
        with Served(data, accounts) as served:
            yield served


@pytest.fixture(scope="module")
def studio(tmp_path_factory, template) -> Iterator[Served]:
    accounts = Accounts([Account("alice", hash_password("a-pass", iterations=1000), "researcher"),
                         Account("bob", "b-pass", "rater")])
    yield from _studio(tmp_path_factory, template, accounts)


@pytest.fixture(scope="module")
def single_user(tmp_path_factory, template) -> Iterator[Served]:
    yield from _studio(tmp_path_factory, template, Accounts(None))


@pytest.fixture
def signed_in(studio) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        response = client.post(f"{studio.url}/login", data={"username": "alice", "password": "a-pass"})
        assert response.status_code == 200 and response.json() == {"success": True}
        yield client


def _forbidden(studio: Served, client: httpx.Client, path) -> httpx.Response:
    response = studio.file(client, path)
    assert response.status_code in (401, 403, 404), (path, response.status_code)
    assert SQLITE_MAGIC not in response.content and b"secret weights" not in response.content
    assert b"root:" not in response.content
    return response


def test_nothing_is_served_before_signing_in(studio):
    preview = servable(studio.data_dir, "runs/1/previews/step-0000010.png")
    with httpx.Client(timeout=20) as client:
        for path in (studio.data_dir / "studio.db", "/etc/passwd", preview):
            assert _forbidden(studio, client, path).status_code == 401


def test_wrong_passwords_get_no_session(studio):
    with httpx.Client(timeout=20) as client:
        for user, password in (("alice", "b-pass"), ("alice", "a-pass "), ("alice", ""), ("carol", "a-pass")):
            response = client.post(f"{studio.url}/login", data={"username": user, "password": password})
            assert response.status_code in (400, 422) and not client.cookies  # 422: an empty field
        assert studio.file(client, servable(studio.data_dir, "runs/1/previews/step-0000010.png")).status_code == 401


def test_signed_in_only_served_copies_are_fetchable(studio, signed_in):
    data = studio.data_dir
    assert (data / "studio.db").read_bytes().startswith(SQLITE_MAGIC)  # there is something to leak
    for path in (data / "studio.db", "/etc/passwd", data / "runs/1/model.safetensors",
                 data / "runs/1/previews/step-0000010.png",  # the original: only its copy is served
                 f"{data}/served/../studio.db", data / "broker.db", data):
        assert _forbidden(studio, signed_in, path).status_code == 403, path
    preview = servable(data, "runs/1/previews/step-0000010.png")
    response = studio.file(signed_in, preview)
    assert response.status_code == 200
    assert response.content == (data / "runs/1/previews/step-0000010.png").read_bytes()
    assert response.headers["content-type"] == "image/png"


def test_a_link_in_served_to_the_database_is_refused(studio, signed_in):
    link = studio.data_dir / "served" / "innocent.png"
    link.symlink_to(studio.data_dir / "studio.db")
    try:
        assert _forbidden(studio, signed_in, link).status_code == 403
    finally:
        link.unlink()


def test_a_rater_cannot_sign_in_to_the_studio(studio):
    with httpx.Client(timeout=20) as client:
        response = client.post(f"{studio.url}/login", data={"username": "bob", "password": "b-pass"})
        assert response.status_code == 400 and not client.cookies  # raters rate at /rate
        preview = servable(studio.data_dir, "runs/1/previews/step-0000010.png")
        assert studio.file(client, preview).status_code == 401


def test_single_user_mode_serves_the_page_without_signing_in(single_user):
    with httpx.Client(timeout=20) as client:
        page = client.get(f"{single_user.url}/")
        assert page.status_code == 200 and "Distill Studio" in page.text
        assert _forbidden(single_user, client, single_user.data_dir / "studio.db").status_code == 403
        assert _forbidden(single_user, client, "/etc/passwd").status_code == 403
        preview = servable(single_user.data_dir, "runs/1/previews/step-0000010.png")
        response = single_user.file(client, preview)
        assert response.status_code == 200 and response.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20"])
def test_single_user_mode_is_refused_on_other_hosts(tmp_path, monkeypatch, template, host):
    settings = use_data_dir(monkeypatch, tmp_path / "data", template)
    with pytest.raises(ValueError, match=r"^host: --no-auth serves only localhost"):
        build_app(settings, Accounts(None), host)
    assert not (tmp_path / "data" / "served").exists()  # refused before building anything
