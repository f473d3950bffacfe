"""The rating page's HTTP API as a browser's Submit uses it: POST the event, read its result from the event stream.
Shared by the HTTP tests (tests/app/test_rate_http.py) and the latency benchmark (benchmarks/study.py)."""

from __future__ import annotations

import json

import httpx


def call_rate_api(http: httpx.Client, api: str, *data) -> list:
    """The outputs of `api` on /rate for a signed-in client; RuntimeError on an error event or a cut stream."""
    reply = http.post(f"/rate/gradio_api/call/{api}", json={"data": list(data)})
    reply.raise_for_status()
    event_id = reply.json()["event_id"]
    event = None
    with http.stream("GET", f"/rate/gradio_api/call/{api}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"{api}: {line}")
                return json.loads(line.removeprefix("data:"))
    raise RuntimeError(f"{api}: the stream ended without a result")
