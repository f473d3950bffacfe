"""The rating page's HTTP API as a browser's Submit uses it: its events skip Gradio's queue, so one POST to
/rate/gradio_api/run/NAME answers with the outputs as JSON. Shared by the HTTP tests (tests/app/test_rate_http.py)
and the latency benchmark (benchmarks/study.py)."""

from __future__ import annotations

import httpx


def call_rate_api(http: httpx.Client, api: str, *data, session_hash: str | None = None) -> list:
    """The outputs of `api` on /rate for a signed-in client; RuntimeError on an error reply. `session_hash` names the
    page's Gradio session as a browser tab does (one per tab; without one every call is a new session)."""
    body = {"data": list(data), **({"session_hash": session_hash} if session_hash else {})}
    reply = http.post(f"/rate/gradio_api/run/{api}", json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"{api}: HTTP {reply.status_code}: {reply.text[:500]}")
    return reply.json()["data"]
