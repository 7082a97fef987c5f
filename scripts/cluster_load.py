#!/usr/bin/env python
"""Load test for `sfedge serve --ray`: the same streamed workload as scripts/serve_load.py against one
Ray Serve deployment per replica count (default: 1, then 2), one after another, side by side.

Each run starts `sfedge serve ENGINES --ray --replicas N --ray-cpus C` (a local Ray cluster on loopback,
CPU replicas with --threads-per-replica ONNX Runtime threads), sends --requests streamed requests,
--concurrency at a time, alternating over the videos, and stops it with SIGTERM. Reports per run:
throughput, latency and TTFT percentiles (client side), failures, the replicas that answered (the
X-Sfedge-Replica header is not read by the streaming client, so from /metrics), and the ratio of the
last run's throughput to the first's. Exit code 1 when a request failed.

    python scripts/cluster_load.py ENGINES VIDEO [VIDEO ...] --requests 100 --concurrency 8 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import run_load  # noqa: E402

from sfedge.serve.launch import ServerProcess  # noqa: E402


def replica_counts(url: str) -> dict[str, float]:
    """Answers per engine replica, from the ingress's sfedge_replica_requests_total."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for m in re.finditer(r'^sfedge_replica_requests_total\{outcome="done",replica="([^"]+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def one_run(args, replicas: int, ray_tmp: str) -> dict:
    dirs = sorted({str(v.resolve().parent) for v in args.videos})
    log = Path(tempfile.mkdtemp(prefix="cluster-load-")) / "server.log"
    server = ServerProcess(args.engines, "--ray", "--replicas", str(replicas), "--ray-cpus", str(args.ray_cpus),
                           "--threads-per-replica", str(args.threads_per_replica), "--max-queue", str(args.max_queue),
                           "--log-level", "warning", *[a for d in dirs for a in ("--allowed-dir", d)], log=log,
                           env={"RAY_TMPDIR": ray_tmp}, timeout=600)
    try:
        model = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
        report = asyncio.run(run_load(server.url, model, args.videos, args.requests, args.concurrency,
                                      args.max_tokens, None, args.warmup))
        report["answers_by_replica"] = replica_counts(server.url)
    finally:
        report_exit = server.terminate(timeout=180)
    return {"replicas": replicas, **report, "server_exit_code": report_exit}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engines", help="engines directory")
    p.add_argument("videos", nargs="+", type=Path, help="video files (their directories are allowed)")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts, run in order (1 2)")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    p.add_argument("--threads-per-replica", type=int, default=1)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=16, help="the engine deployment's max_queued_requests")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4, help="sequential requests before the timed ones")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # AF_UNIX socket paths: at most 107 bytes
    runs = [one_run(args, n, ray_tmp) for n in args.replicas]
    report = {"runs": runs, "loadavg_end": os.getloadavg(),
              "throughput_ratio_last_vs_first": round(runs[-1]["requests_per_s"] / runs[0]["requests_per_s"], 3)}
    if args.json:
        print(json.dumps(report))
    else:
        for r in runs:
            print(f"{r['replicas']} replica(s): {r['ok']} ok / {r['failed']} failed, {r['requests_per_s']} req/s, "
                  f"latency {r['latency_s']}, ttft {r['ttft_s']}, by replica {r['answers_by_replica']}")
        print(f"throughput ratio: {report['throughput_ratio_last_vs_first']}")
    return 1 if any(r["failed"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
