"""Benchmark: the recommendation service's fast path beside the framework floor, and /rerank.

    python benchmarks/bench_serving.py [--profile demo] [--data-dir data] [--domain crime]
        [--requests 5000] [--concurrency 50] [--users 1000] [--rerank] [--rerank-requests 10]

Each arm is a uvicorn server in its own process on 127.0.0.1, driven from this process by
an aiohttp client on uvloop with ``--concurrency`` keep-alive connections, ``--requests``
timed after ``2 x --concurrency`` untimed warm-up requests:
- floor: a bare FastAPI app answering the same path with a constant body (the bytes of one
  real answer), so the rows differ by what the snapshot lookup and validation add;
- ours, saturated: ``python -m cprec_core.serving``, ``GET /recommendations/<domain>/<user>``
  for users in a fixed shuffled order, each worker sending as soon as it is answered;
- ours, paced: the same requests offered at ``--rate`` per second (open loop, latency from
  each request's due time);
- rerank (``--rerank``): ``POST /rerank`` with 20 candidates and 10 history items, one
  request at a time, with the reranker of ``cprec_core.recommend.rerank.load_reranker``;
  then the same requests to a second service whose config reads each candidate's title
  alone (``sft.rank.candidate_vectors: false``, the prompt before candidate vectors), the
  baseline the vectors' cost is read against (goal: within 1.1x).
Data: the profile's published snapshot of ``--domain`` when there is one, else a synthetic
one (``--users`` users x 10 items) in a temporary folder; rerank needs the profile's.
The client shares the machine (2 cores here) with the server: latencies include its time,
and the server's CPU time per request (from /proc) is the server's own cost.
Goals: fast path p99 < 10 ms and >= 1,000 requests/s; rerank of 20 < 0.3 s, and with
candidate vectors within 1.1x of the titles alone (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import uvicorn
import uvloop
from fastapi import FastAPI
from fastapi.responses import Response

from cprec_core.layout import Layout, RecommendationFiles
from cprec_core.provenance import processor
from cprec_core.reporting import md_table

FLOOR_BODY = "BENCH_FLOOR_BODY"  # the floor server's constant answer, from the environment
K = 10


def floor_app() -> FastAPI:
    """The framework floor (run by uvicorn ``--factory``): the same route, a constant body."""
    app, body = FastAPI(), os.environ[FLOOR_BODY].encode()

    @app.get("/recommendations/{domain}/{user_id}")
    async def constant(domain: str, user_id: str) -> Response:
        return Response(body, media_type="application/json")

    return app


def write_synthetic(files: RecommendationFiles, users: int, items: int = 5000) -> None:
    """A snapshot in the batch job's format: ``users`` x 10 items, random scores."""
    rng, version = np.random.default_rng(0), "synthetic"
    files.path.mkdir(parents=True)
    titles = [f"Movie {i} ({1950 + i % 70})" for i in range(items)]
    pq.write_table(pa.table({"item_idx": pa.array(range(items), pa.int32()),
                             "item_id": [f"i{i}" for i in range(items)], "title": titles}),
                   files.items(version))
    picks = np.stack([rng.choice(items, K, replace=False) for _ in range(users)]).ravel()
    n = users * K
    pq.write_table(pa.table({
        "domain": ["Synthetic"] * n,
        "user_id": [f"u{u}" for u in range(users) for _ in range(K)],
        "user_idx": pa.array(np.repeat(np.arange(users), K), pa.int32()),
        "rank": pa.array(np.tile(np.arange(1, K + 1), users), pa.int32()),
        "item_id": [f"i{i}" for i in picks], "item_idx": pa.array(picks, pa.int32()),
        "title": [titles[i] for i in picks],
        "score": np.sort(rng.random((users, K)))[:, ::-1].ravel(),
        "stage": ["retrieval"] * n, "retrieval_model": ["synthetic"] * n,
        "rerank_system": pa.nulls(n, pa.string()), "data_version": ["synthetic"] * n,
        "snapshot": [version] * n}), files.recommendations(version))
    files.current.write_text(json.dumps({
        "version": version, "recommendations": files.recommendations(version).name,
        "items": files.items(version).name, "domain": "Synthetic", "k": K,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_version": "synthetic", "models": {}}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process; ready once ``ready_path`` answers."""

    def __init__(self, command: list[str], port: int, ready_path: str, log: Path,
                 env: dict[str, str] | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                sys.exit(f"server exited ({self.process.returncode}):"
                         f"\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                sys.exit(f"server not ready after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def drive(server: Server, paths: list[str], requests: int, concurrency: int,
                rate: float | None = None) -> dict:
    """p50/p99 latency and requests/s of ``requests`` GETs (cycling through ``paths``).

    Unpaced, each of ``concurrency`` workers sends its next request as soon as the last is
    answered (the server's saturation). Paced at ``rate``, request i is due at i / rate
    seconds and its latency counts from then, so a stall delays the requests behind it and
    shows in their latencies (no coordinated omission).

    The client is aiohttp on uvloop, ``concurrency`` keep-alive connections: it spends
    about a fifth of httpx's CPU per request, which matters when it shares 2 cores with the
    server it measures.
    """
    latencies, errors = [], 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(server.url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def run(count: int, timed: bool) -> None:
            nonlocal errors
            order = itertools.count()

            async def worker() -> None:
                nonlocal errors
                while (i := next(order)) < count:
                    started = time.perf_counter()
                    if rate and timed:
                        due = first + i / rate
                        if due > started:
                            await asyncio.sleep(due - started)
                        started = due
                    async with http.get(paths[i % len(paths)]) as answer:
                        await answer.read()
                    if timed:
                        latencies.append(time.perf_counter() - started)
                        errors += answer.status != 200

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run(2 * concurrency, timed=False)
        cpu, started = server.cpu_seconds(), time.perf_counter()
        first = started
        await run(requests, timed=True)
        wall, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu
    ms = np.array(latencies) * 1000
    return {"requests": requests, "concurrency": concurrency,
            "p50 ms": float(np.percentile(ms, 50)), "p99 ms": float(np.percentile(ms, 99)),
            "requests/s": requests / wall, "server CPU us/request": cpu / requests * 1e6,
            "errors": errors}


def rerank_latency(server: Server, slug: str, items: list[str], requests: int) -> dict:
    """Seconds per /rerank of 20 candidates, one request at a time, after one warm-up."""
    rng, seconds, errors = random.Random(0), [], 0
    with httpx.Client(base_url=server.url, timeout=300) as http:
        for k in range(requests + 1):
            picks = rng.sample(items, 30)
            started = time.perf_counter()
            answer = http.post("/rerank", json={"domain": slug, "history": picks[20:],
                                                "candidates": picks[:20]})
            if k:
                seconds.append(time.perf_counter() - started)
                errors += answer.status_code != 200
            elif answer.status_code != 200:
                sys.exit(f"rerank: {answer.status_code} {answer.text}")
    ms = np.array(seconds) * 1000
    return {"requests": requests, "concurrency": 1, "p50 ms": float(np.percentile(ms, 50)),
            "p99 ms": float(np.percentile(ms, 99)), "requests/s": requests / sum(seconds),
            "server CPU us/request": None, "errors": errors}


def titles_alone_rerank(args, data_dir: str, tmp: Path, items: list) -> dict | None:
    """/rerank latency of a service reading each candidate's title alone (no candidate
    vectors): the same model, snapshot and requests."""
    config = tmp / "titles_alone.yaml"
    config.write_text(f"profile: {args.profile}\nsft:\n  rank:\n    candidate_vectors: false\n")
    server = Server([sys.executable, "-m", "cprec_core.serving", "--config", str(config),
                     "--data-dir", data_dir, "--port", str(port := free_port()),
                     "--domain", args.domain], port, "/health", tmp / "titles.log")
    try:
        if not httpx.get(server.url + "/health").json()["rerank"]["available"]:
            print("rerank, titles alone: not measured, no reranker loaded")
            return None
        return rerank_latency(server, args.domain, items, args.rerank_requests)
    finally:
        server.stop()


def reranker_importable() -> bool:
    try:
        from cprec_core.recommend.rerank import load_reranker  # noqa: F401
    except ImportError as exc:
        print(f"rerank: not measured, cprec_core.recommend.rerank.load_reranker does not"
              f" import ({exc})")
        return False
    return True


def row(arm: str, m: dict, goal: str) -> list:
    cpu = m["server CPU us/request"]
    return [arm, m["requests"], m["concurrency"], round(m["p50 ms"], 2), round(m["p99 ms"], 2),
            round(m["requests/s"], 1), "" if cpu is None else round(cpu), m["errors"], goal]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="requests/s offered in the paced arm (the goal's throughput)")
    parser.add_argument("--users", type=int, default=1000, help="synthetic snapshot's users")
    parser.add_argument("--rerank", action="store_true", help="also time /rerank of 20")
    parser.add_argument("--rerank-requests", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = Layout(Path(args.data_dir), args.profile).recommendation_files(args.domain)
        data_dir, source = args.data_dir, f"profile {args.profile}, {args.domain}"
        if not files.current.is_file():
            if args.rerank:
                sys.exit(f"--rerank needs the profile's published snapshot ({files.current})")
            data_dir, source = tmp, f"synthetic, {args.users} users x {K}"
            files = Layout(Path(tmp), args.profile).recommendation_files(args.domain)
            write_synthetic(files, args.users)
        info = json.loads(files.current.read_text())
        users = sorted(set(pq.read_table(files.recommendations(info["version"]),
                                         columns=["user_id"])["user_id"].to_pylist()))
        random.Random(0).shuffle(users)
        paths = [f"/recommendations/{args.domain}/{u}" for u in users]
        rerank = args.rerank and reranker_importable()
        ours = Server([sys.executable, "-m", "cprec_core.serving", "--profile", args.profile,
                       "--data-dir", data_dir, "--port", str(port := free_port()),
                       "--domain", args.domain] + ([] if rerank else ["--no-rerank"]),
                      port, "/health", Path(tmp) / "ours.log")
        try:
            body = httpx.get(ours.url + paths[0]).text
            results = {"ours": uvloop.run(drive(ours, paths, args.requests, args.concurrency)),
                       "ours paced": uvloop.run(drive(ours, paths, args.requests,
                                                      args.concurrency, args.rate))}
            if rerank:
                health = httpx.get(ours.url + "/health").json()
                if health["rerank"]["available"]:
                    items = pq.read_table(files.items(info["version"]),
                                          columns=["item_id"])["item_id"].to_pylist()
                    results["rerank"] = rerank_latency(ours, args.domain, items,
                                                       args.rerank_requests)
                    results["rerank, titles alone"] = titles_alone_rerank(
                        args, data_dir, Path(tmp), items)
                else:
                    print("rerank: not measured, the service loaded no reranker (its log:"
                          f" {(Path(tmp) / 'ours.log').read_text()[-500:]})")
        finally:
            ours.stop()
        floor = Server([sys.executable, "-m", "uvicorn", "--factory", "--app-dir",
                        str(Path(__file__).parent), "bench_serving:floor_app", "--port",
                        str(port := free_port()), "--no-access-log", "--log-level", "warning"],
                       port, paths[0], Path(tmp) / "floor.log", {FLOOR_BODY: body})
        try:
            results["floor"] = uvloop.run(drive(floor, paths, args.requests, args.concurrency))
        finally:
            floor.stop()
    def goal(m: dict, what: str) -> str:
        met = m["p99 ms"] < 10 and m["requests/s"] >= 1000 * 0.98 and not m["errors"]
        return f"{what}: {'met' if met else 'NOT met'}"

    rows = [row("floor (bare FastAPI, constant body)", results["floor"], ""),
            row("ours (snapshot lookup), saturated", results["ours"],
                goal(results["ours"], "p99 < 10 ms at full load")),
            row(f"ours, paced at {args.rate:,.0f} req/s", results["ours paced"],
                goal(results["ours paced"], "p99 < 10 ms at >= 1,000 req/s"))]
    if "rerank" in results:
        fast_enough = results["rerank"]["p99 ms"] < 300 and not results["rerank"]["errors"]
        rows.append(row("rerank, 20 candidates", results["rerank"],
                        f"p99 < 0.3 s: {'met' if fast_enough else 'NOT met'}"))
        titles = results.get("rerank, titles alone")
        if titles:
            ratio = results["rerank"]["p50 ms"] / titles["p50 ms"]
            rows.append(row("rerank, titles alone (no candidate vectors)", titles,
                            f"vectors / titles p50 {ratio:.2f}x <= 1.1x:"
                            f" {'met' if ratio <= 1.1 else 'NOT met'}"))
    print(f"Serving on {processor()}, {os.cpu_count()} cores; {source} ({len(users)} users,"
          f" {len(body)} B per answer); uvicorn {uvicorn.__version__}, aiohttp {aiohttp.__version__}"
          " client on uvloop in this process")
    print(md_table(["arm", "requests", "concurrency", "p50 ms", "p99 ms", "requests/s",
                    "server CPU us/request", "errors", "goal"], rows))
    for arm, m in results.items():
        print("BENCH " + json.dumps({"bench": "serving", "arm": arm, "source": source, **m}))


if __name__ == "__main__":
    main()
