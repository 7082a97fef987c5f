#!/usr/bin/env python
"""Load test for `sfedge serve`: N streamed chat completions at concurrency C, over real HTTP.

Starts `sfedge serve ENGINES` (or targets --url, with --pid for its memory) and sends --requests
streamed requests, --concurrency at a time, alternating over the given videos (file:// URLs under
their directories) with a different question each time. Reports throughput, latency and time to
first token percentiles (client side), failures by status, and the server's RSS after the warm-up
requests and at the end. Exit code 1 when a request failed, a 5xx came back, or RSS grew more than
--max-rss-growth percent after warm-up.

    python scripts/serve_load.py ENGINES VIDEO [VIDEO ...] --requests 200 --concurrency 8 --json
    python scripts/serve_load.py ENGINES VIDEO [VIDEO ...] --requests 200 --direct --json   # no HTTP: the floor
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sfedge.serve.launch import ServerProcess  # noqa: E402


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {"p50": round(q[49], 4), "p90": round(q[89], 4), "p99": round(q[98], 4), "max": round(max(xs), 4)}


async def one(client: httpx.AsyncClient, url: str, model: str, video: Path, i: int, max_tokens: int) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": video.resolve().as_uri()}},
                {"type": "text", "text": f"Question {i}: what happens in this video?"}]}]}
    t0 = time.perf_counter()
    ttft, tokens, error = None, 0, None
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"status": r.status_code, "latency": time.perf_counter() - t0, "error": r.text[:200]}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]["message"]
                elif event["choices"] and event["choices"][0]["delta"].get("content") and ttft is None:
                    ttft = time.perf_counter() - t0
                elif event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        return {"status": 200 if error is None else "stream_error", "latency": time.perf_counter() - t0,
                "ttft": ttft, "tokens": tokens, "error": error}
    except httpx.HTTPError as e:
        return {"status": "transport_error", "latency": time.perf_counter() - t0, "error": repr(e)}


async def run_load(url: str, model: str, videos: list[Path], n: int, concurrency: int, max_tokens: int,
                   pid: int | None, warmup: int) -> dict:
    proc = psutil.Process(pid) if pid else None
    results: list[dict] = []
    rss: dict[str, int] = {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=concurrency)) as c:
        for i in range(warmup):  # every video once, then a few more, one at a time
            await one(c, url, model, videos[i % len(videos)], -1 - i, max_tokens)
        if proc:
            rss["after_warmup"] = proc.memory_info().rss
        peak = rss.get("after_warmup", 0)

        async def task(i: int):
            nonlocal peak
            async with sem:
                results.append(await one(c, url, model, videos[i % len(videos)], i, max_tokens))
                if proc:
                    peak = max(peak, proc.memory_info().rss)

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(n)))
        wall = time.perf_counter() - t0
    if proc:
        rss["end"], rss["peak"] = proc.memory_info().rss, peak
    ok = [r for r in results if r["status"] == 200]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    report = {
        "requests": n, "concurrency": concurrency, "max_tokens": max_tokens, "videos": len(videos),
        "ok": len(ok), "failed": n - len(ok), "statuses": statuses,
        "server_errors_5xx": sum(1 for r in results if isinstance(r["status"], int) and r["status"] >= 500),
        "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
        "latency_s": percentiles([r["latency"] for r in ok]),
        "ttft_s": percentiles([r["ttft"] for r in ok if r["ttft"] is not None]),
        "errors": [r["error"] for r in results if r["status"] != 200][:5],
    }
    if rss:
        report["rss_mb"] = {k: round(v / 2**20, 1) for k, v in rss.items()}
        report["rss_growth_pct"] = round(100 * (rss["end"] - rss["after_warmup"]) / rss["after_warmup"], 2)
    return report


def run_direct(engines: str, videos: list[Path], n: int, max_tokens: int, warmup: int) -> dict:
    """The same questions through `Pipeline.stream` in this process, one after another: the server's floor."""
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec

    pipe = Pipeline(engines)
    gen = GenerationSpec(max_new_tokens=max_tokens)

    def one(i: int) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        ttft = None
        stream = pipe.stream(videos[i % len(videos)], f"Question {i}: what happens in this video?", gen=gen)
        for _ in stream:
            ttft = ttft or time.perf_counter() - t0
        return time.perf_counter() - t0, ttft or 0.0, len(pipe.last_result.token_ids)

    for i in range(warmup):
        one(-1 - i)
    t0 = time.perf_counter()
    runs = [one(i) for i in range(n)]
    wall = time.perf_counter() - t0
    return {"mode": "direct", "requests": n, "max_tokens": max_tokens, "videos": len(videos), "wall_s": round(wall, 3),
            "requests_per_s": round(n / wall, 3), "tokens_per_s": round(sum(r[2] for r in runs) / wall, 2),
            "latency_s": percentiles([r[0] for r in runs]), "ttft_s": percentiles([r[1] for r in runs])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engines", nargs="?", help="engines directory (a server is started; omit with --url)")
    p.add_argument("videos", nargs="+", type=Path, help="video files (their directories are allowed)")
    p.add_argument("--url", default=None, help="target a running server instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for its RSS")
    p.add_argument("--model", default=None, help="model id (default: the server's /v1/models)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=8, help="the started server's --max-queue (default 8)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=8, help="sequential requests before RSS is first read")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="percent; exit 1 beyond it (negative: no check)")
    p.add_argument("--direct", action="store_true",
                   help="no server: the same questions through Pipeline.stream in this process, sequentially")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    if args.direct:
        report = run_direct(args.engines, args.videos, args.requests, args.max_tokens, args.warmup)
        print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
        return 0
    if args.url is None and args.engines is None:
        p.error("give ENGINES (a server is started) or --url")
    if args.url is not None and args.engines is not None:
        args.videos.insert(0, Path(args.engines))
    server = None
    if args.url is None:
        dirs = sorted({str(v.resolve().parent) for v in args.videos})
        log = Path(tempfile.mkdtemp(prefix="serve-load-")) / "server.log"
        server = ServerProcess(args.engines, "--max-queue", str(args.max_queue), "--log-level", "warning",
                               *[a for d in dirs for a in ("--allowed-dir", d)], log=log)
        url, pid = server.url, server.pid
    else:
        url, pid = args.url.rstrip("/"), args.pid
    try:
        model = args.model or httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        report = asyncio.run(run_load(url, model, args.videos, args.requests, args.concurrency, args.max_tokens,
                                      pid, args.warmup))
    finally:
        if server is not None:
            report_exit = server.terminate()
    if server is not None:
        report["server_exit_code"] = report_exit
    bad = report["failed"] or report["server_errors_5xx"] or (
        args.max_rss_growth >= 0 and report.get("rss_growth_pct", 0) > args.max_rss_growth)
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
