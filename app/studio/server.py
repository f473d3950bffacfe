"""Serve the studio: one FastAPI app with the Gradio page mounted at /, locked down and offline (docs/study.md#gradio-specifics)."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from app.rate.page import mount_rate_page
from app.studio.access import Accounts, check_single_user_host
from app.studio.context import Studio
from app.studio.files import served_dir
from app.studio.page import build_studio
from storage.settings import Settings

MAX_UPLOAD = "10mb"


def offline_environment(data_dir: Path) -> None:
    """No analytics, no hub, temp files on the data volume: set before anything of Gradio's runs."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(data_dir / "gradio-tmp"))


def mount_kwargs(data_dir: Path) -> dict:
    """Only served/ is reachable; checkpoints, weights, the database and the broker's file are blocked outright."""
    data_dir = Path(data_dir)
    blocked = [data_dir / p for p in ("runs", "teachers", "teacher-runs", "reference", "import")]
    blocked += [data_dir / p for p in ("studio.db", "broker.db")]
    return {"allowed_paths": [str(served_dir(data_dir))], "blocked_paths": [str(p) for p in blocked],
            "max_file_size": MAX_UPLOAD, "theme": gr.themes.Default(), "footer_links": [], "enable_monitoring": False,
            "mcp_server": False, "ssr_mode": False, "show_error": True}


def build_app(settings: Settings, accounts: Accounts, host: str):
    """The ASGI app and the Studio context behind it."""
    from fastapi import FastAPI

    if accounts.single_user:
        check_single_user_host(host)
    offline_environment(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    served_dir(settings.data_dir).mkdir(parents=True, exist_ok=True)
    ctx = Studio.open(settings, accounts)
    demo = build_studio(ctx)
    demo.queue(default_concurrency_limit=None)  # studio events are cheap database reads; GPU work runs in workers
    app = FastAPI(title="Distill Studio", docs_url=None, redoc_url=None, openapi_url=None)
    if not accounts.single_user:  # the rating page needs rater accounts; mounted first, so "/" cannot shadow it
        app = mount_rate_page(app, ctx, mount_kwargs(settings.data_dir))
    # Raters never get past this login: their page is /rate, and the studio's page config holds run and model names.
    auth = None if accounts.single_user else accounts.checker("researcher")
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth,
                              auth_message="Distill Studio: researcher sign-in. Raters rate at /rate.",
                              **mount_kwargs(settings.data_dir))
    return app, ctx


def serve(settings: Settings, accounts: Accounts, host: str, port: int) -> None:
    import uvicorn

    app, _ = build_app(settings, accounts, host)
    print(f"Distill Studio on http://{'[' + host + ']' if ':' in host else host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
