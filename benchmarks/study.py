"""Study statistics and rating-page speed (docs/study.md#statistics), as sub-commands.

  bt   Bradley-Terry fit plus a 1000-round condition-cluster bootstrap on 100k simulated votes (teacher and three
       students, 500 conditions, 20 raters, 20 % ties, clustered within conditions); target < 2 s. Times the point
       fit and the bootstrap (the median of --repeats runs after one warm-up; run it with OMP_NUM_THREADS=1). Ties
       count as half-wins, so the ratings sit nearer the teacher than the simulated truth (-30, -80, -150).

  latency  next-pair latency of the rating page with 20 concurrent raters against a live `distill-studio up`
       (--no-worker, SQLite in a temporary data dir, or --database-url): each rater signs in at /rate and submits
       answers through the page's HTTP API (POST /rate/gradio_api/run/rate_submit, off Gradio's queue, with its own
       session hash), as the Submit button does. Latency = Submit sent -> the next pair's token and image URLs
       received (the vote is written and the next assignment drawn in between), and the same plus fetching both
       images. Three loads, each rater pausing uniformly 0..2x a mean between votes:
         rater pace   --think (5 s): docs/study.md#votes-needed estimates 5-10 s per judgement and a pair asks two, so 5 s is
                      a fast rater; the target p95 < 100 ms is checked here
         stress       --stress-think (1 s): five times that pace
         closed loop  no pause: every rater submits again as soon as the page answers (the server's capacity)

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study.py bt [--votes 100000] [--rounds 1000] [--repeats 3]
      OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study.py latency [--raters 20] [--votes 30] [--think 5]
Writes benchmarks/results/study.json (a sub-command replaces only its own section; latency has one per database)
and study.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.study.bootstrap import bootstrap_ratings  # noqa: E402
from core.study.bradley_terry import fit_bt  # noqa: E402
from core.study.simulate import simulate_votes  # noqa: E402
from core.study.votes import canonical_outcomes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TRUE = {"teacher": 0.0, "s1": -30.0, "s2": -80.0, "s3": -150.0}


def bench_bt(votes: int, rounds: int, repeats: int) -> dict:
    """Seconds for the point fit and for fit + bootstrap of `votes` simulated votes."""
    canon = canonical_outcomes(simulate_votes(TRUE, votes=votes, conditions=500, raters=20, kappa=10.0, tie_rate=0.2, seed=0))
    a, b, s = canon["a"].to_numpy(str), canon["b"].to_numpy(str), canon["score"].to_numpy(float)
    cond = canon["condition"].to_numpy()
    times_fit, times_boot = [], []
    for _ in range(repeats + 1):  # the first run warms caches and imports
        t0 = time.perf_counter()
        fit = fit_bt(a, b, s, teacher="teacher")
        t1 = time.perf_counter()
        boot = bootstrap_ratings(a, b, s, cond, teacher="teacher", n_boot=rounds, seed=0)
        t2 = time.perf_counter()
        times_fit.append(t1 - t0)
        times_boot.append(t2 - t1)
    ratings = {v: {"rating": round(float(r), 1), "lower": round(float(lo), 1), "upper": round(float(hi), 1)}
               for v, r, lo, hi in zip(fit.variants, fit.ratings, boot.lower, boot.upper)}
    fit_s, boot_s = float(np.median(times_fit[1:])), float(np.median(times_boot[1:]))
    return {"votes": votes, "rounds": rounds, "repeats": repeats, "fit_s": fit_s, "bootstrap_s": boot_s,
            "total_s": fit_s + boot_s, "target_s": 2.0, "met": fit_s + boot_s < 2.0, "ratings": ratings,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


class _Rater:
    """One rater's signed-in HTTP session on the rating page's API (what the Submit button sends)."""

    def __init__(self, url: str, name: str, password: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=60)
        if self.http.post("/rate/login", data={"username": name, "password": password}).status_code != 200:
            raise RuntimeError(f"{name}: login refused")

        self.session_hash = secrets.token_hex(6)  # one browser tab

    def call(self, api: str, *data) -> list:
        from tests.rate_client import call_rate_api

        return call_rate_api(self.http, api, *data, session_hash=self.session_hash)


def _seed_study(url: str, data_dir: Path, conditions: int, seeds: int, quota: int) -> None:
    """'Bench study': a teacher and two students on conditions x seeds, images blind-copied from real PNGs."""
    from PIL import Image

    from app.rate.blind import blind_copy
    from storage.db import make_engine, make_session_factory, session_scope
    from storage.migrate import upgrade
    from storage.studies import add_pair, create_study, set_status, study_variants

    upgrade(url)
    engine = make_engine(url)
    sources = []
    for i in range(8):
        sources.append(data_dir.parent / f"src{i}.png")
        Image.new("RGB", (32, 32), (30 * i, 90, 240 - 30 * i)).save(sources[-1])
    variants = [{"model": "teacher:bench", "steps": 40, "label": "teacher", "is_teacher": True},
                {"model": "run:1", "steps": 4, "label": "student 4"}, {"model": "run:2", "steps": 1, "label": "student 1"}]
    with session_scope(make_session_factory(engine)) as s:
        study = create_study(session=s, name="Bench study", teacher="bench", config={"quota": quota}, variants=variants)
        teacher, *students = [v.id for v in study_variants(session=s, study_id=study.id)]
        for c in range(conditions):
            for seed in range(seeds):
                for student in students:
                    add_pair(session=s, study_id=study.id, kind="normal", variant_a_id=teacher, variant_b_id=student,
                             image_a=blind_copy(random.choice(sources), data_dir),
                             image_b=blind_copy(random.choice(sources), data_dir), condition=str(c),
                             condition_text=f"the digit {c % 10}", seed=seed)
        set_status(session=s, study_id=study.id, status="open")
    engine.dispose()


def _percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": round(at(0.50), 1), "p95_ms": round(at(0.95), 1), "max_ms": round(ordered[-1], 1)}


def _run_raters(url: str, raters: int, votes: int, think: float) -> dict:
    """Every rater signs in, loads the page, then submits `votes` times; latencies of Submit -> next pair (+ images)."""
    pair_ms, with_images_ms, errors = [], [], []
    ready = threading.Barrier(raters)

    def rate(i: int) -> None:
        try:
            rater = _Rater(url, f"bench{i:02d}", f"pw{i:02d}")
            shown = rater.call("rate_pick", "Bench study")
            ready.wait(120)
            rng = random.Random(i)
            for _ in range(votes):
                if think:
                    time.sleep(rng.uniform(0, 2 * think))
                t0 = time.perf_counter()
                shown = rater.call("rate_submit", "Bench study", shown[0], "left", "tie", 1000.0, False)
                t1 = time.perf_counter()
                if shown[0]:  # a next pair came back (not the end of the quota)
                    for image in shown[1:3]:
                        rater.http.get(f"/rate/gradio_api/file={image['path']}").raise_for_status()
                    with_images_ms.append((time.perf_counter() - t0) * 1000)
                    pair_ms.append((t1 - t0) * 1000)
            rater.http.close()
        except Exception as exc:  # noqa: BLE001 (reported)
            errors.append(f"rater {i}: {exc!r}")

    threads = [threading.Thread(target=rate, args=(i,)) for i in range(raters)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    elapsed = time.perf_counter() - t0
    return {"think_s": think, "next_pair": _percentiles(pair_ms), "with_images": _percentiles(with_images_ms),
            "votes_per_s": round(raters * votes / elapsed, 1)}


def bench_latency(raters: int, votes: int, think: float, stress_think: float, database_url: str | None) -> dict:
    """Next-pair latency against a live server: at the rater pace, at the stress pace, then a closed loop."""
    import httpx

    folder = Path(tempfile.mkdtemp(prefix="study-latency-"))
    data = folder / "data"
    data.mkdir()
    url = database_url or f"sqlite:///{data / 'studio.db'}"
    _seed_study(url, data, conditions=40, seeds=10, quota=3 * votes)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    users = ",".join(f"bench{i:02d}:pw{i:02d}:rater" for i in range(raters))
    env = {**os.environ, "STUDIO_DATA_DIR": str(data), "STUDIO_DATABASE_URL": url, "STUDIO_USERS": users,
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("STUDIO_USERS_FILE", None)
    log = (folder / "server.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "distill-studio"), "up", "--no-worker", "--port",
                               str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/rate/", timeout=2).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        load_before = os.getloadavg()[0]
        paced = _run_raters(base, raters, votes, think)
        stress = _run_raters(base, raters, votes, stress_think)  # each load takes a third of every rater's quota
        closed = _run_raters(base, raters, votes, 0.0)
        load_after = os.getloadavg()[0]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
    backend = url.split(":")[0].split("+")[0]
    return {"raters": raters, "votes_per_rater": votes, "database": backend, "paced": paced, "stress": stress,
            "closed_loop": closed,
            "target_p95_ms": 100.0, "met": paced["next_pair"]["p95_ms"] < 100.0,
            "load_average": [round(load_before, 2), round(load_after, 2)]}


def latency_markdown(r: dict) -> str:
    m = r["machine"]
    rows = []
    for name, load in (("rater pace", r["paced"]), ("stress", r["stress"]), ("closed loop", r["closed_loop"])):
        pause = f"{load['think_s']:g} s mean pause" if load["think_s"] else "no pause"
        for what, key in (("next pair", "next_pair"), ("next pair + both images", "with_images")):
            p = load[key]
            verdict = ("met" if p["p95_ms"] < r["target_p95_ms"] else "missed") if (name, key) == ("rater pace", "next_pair") \
                else "—"
            rows.append(f"| {name} ({pause}, {load['votes_per_s']} votes/s) | {what} | {p['n']} | {p['p50_ms']:.0f} ms | "
                        f"{p['p95_ms']:.0f} ms | {p['max_ms']:.0f} ms | {verdict} |")
    return "\n".join([
        f"## latency: next pair on the rating page ({r['database']})", "",
        f"{r['raters']} concurrent raters x {r['votes_per_rater']} votes per load against a live `distill-studio up` "
        f"({r['database']}), over the page's HTTP API with each rater's login cookie. Next pair = Submit sent -> the "
        f"next token and image URLs received (vote written, next assignment drawn). Client and server share this "
        f"machine: git {m['git']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}; 1-minute load average "
        f"{r['load_average'][0]:g} before and {r['load_average'][1]:g} after (other work on the machine inflates the "
        f"tail).", "",
        "| load | figure | samples | p50 | p95 | max | p95 < 100 ms |", "|---|---|---|---|---|---|---|", *rows])


def machine() -> dict:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"git": rev, "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def render(results: dict) -> str:
    """study.md from every section present in study.json."""
    lines = ["# Study statistics and rating page", "", "Generated by `benchmarks/study.py`; one section per sub-command.", ""]
    if "bt" in results:
        r = results["bt"]
        lines += ["## bt: Bradley-Terry + cluster bootstrap", "",
                  f"{r['votes']:,} simulated votes (teacher + 3 students, 500 conditions, 20 % ties), {r['rounds']} "
                  f"condition-cluster rounds; median of {r['repeats']} runs after a warm-up; OMP_NUM_THREADS="
                  f"{r['omp_num_threads']}; git {r['machine']['git']}, {r['machine']['cpus']} CPUs "
                  f"({r['machine']['processor']}), Python {r['machine']['python']}.", "",
                  "| figure | measured | target | verdict |", "|---|---|---|---|",
                  f"| point fit | {r['fit_s'] * 1000:.0f} ms | — | — |",
                  f"| {r['rounds']} bootstrap rounds (aggregation + one joint L-BFGS-B refit) | {r['bootstrap_s']:.2f} s | — | — |",
                  f"| fit + bootstrap | {r['total_s']:.2f} s | < {r['target_s']:.0f} s | {'met' if r['met'] else 'missed'} |",
                  "", "| variant | rating | 95 % interval |", "|---|---|---|"]
        lines += [f"| {v} | {x['rating']:.1f} | {x['lower']:.1f} – {x['upper']:.1f} |" for v, x in r["ratings"].items()]
        lines.append("")
    for name, section in results.items():
        if name != "bt" and isinstance(section, dict) and "markdown" in section:
            lines += [section["markdown"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bt = sub.add_parser("bt", help="Bradley-Terry + 1000 bootstrap rounds on 100k simulated votes")
    bt.add_argument("--votes", type=int, default=100_000)
    bt.add_argument("--rounds", type=int, default=1000)
    bt.add_argument("--repeats", type=int, default=3)
    lat = sub.add_parser("latency", help="next-pair latency of /rate with concurrent raters against a live server")
    lat.add_argument("--raters", type=int, default=20)
    lat.add_argument("--votes", type=int, default=30, help="votes per rater in each of the two loads")
    lat.add_argument("--think", type=float, default=5.0, help="mean pause between a rater's votes at the rater pace (s)")
    lat.add_argument("--stress-think", type=float, default=1.0, help="mean pause in the stress load (s)")
    lat.add_argument("--database-url", default=None, help="e.g. a PostgreSQL database to use (default: SQLite)")
    args = parser.parse_args()

    path = RESULTS / "study.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.command == "bt":
        results["bt"] = {**bench_bt(args.votes, args.rounds, args.repeats), "machine": machine()}
        r = results["bt"]
        print(f"bt: {r['votes']:,} votes, {r['rounds']} rounds: fit {r['fit_s'] * 1000:.0f} ms, "
              f"bootstrap {r['bootstrap_s']:.2f} s, total {r['total_s']:.2f} s (target < 2 s: {'met' if r['met'] else 'missed'})")
    elif args.command == "latency":
        r = {**bench_latency(args.raters, args.votes, args.think, args.stress_think, args.database_url), "machine": machine()}
        # one section per database, so the SQLite and PostgreSQL figures stand side by side
        results["latency" if r["database"] == "sqlite" else f"latency-{r['database']}"] = {**r, "markdown": latency_markdown(r)}
        for name in ("paced", "stress", "closed_loop"):
            p = r[name]["next_pair"]
            print(f"latency {name}: next pair p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms ({p['n']} samples)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "study.md").write_text(render(results))


if __name__ == "__main__":
    main()
