"""The prompt splice, before and after issue 15 item 3: the host concatenation of table rows and
pooled visual tokens (what answer.py did) vs the exported splice.onnx on the LLM's device (what it
does now), on one engines directory, medians of --runs, measured side by side in one process.

    python scripts/splice_cost.py ENGINES [--frames 50] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    from sfedge.families import VisualBlock
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.runtime.splice import SplicePlan, segments_from_marked

    ap = argparse.ArgumentParser()
    ap.add_argument("engines")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    pipe = Pipeline(args.engines)
    ans = pipe.answerer
    rng = np.random.default_rng(0)
    features = rng.normal(size=(args.frames, 576, pipe.manifest["model"]["hidden_size"])).astype(np.float32)
    pooled_dev = ans.pool(features, on_device=True)
    pooled = ans.pool(features)
    ids = pipe.prompt_ids("What is moving in the video?")
    at, table = ids.index(ans.image_token_id), pipe.decoder.table
    plan = SplicePlan.build(segments_from_marked(ids, ans.image_token_id, [VisualBlock(b"", len(pooled))]))

    def host():
        return np.concatenate([table[ids[:at]], pooled.astype(table.dtype), table[ids[at + 1:]]])[None]

    def device():
        return ans.splicer.embeds(plan, pooled_dev)

    assert np.array_equal(host(), device().numpy())
    times = {"host_concat_ms": [], "splice_graph_ms": []}
    for _ in range(args.runs):  # interleaved: both see the same machine load
        for name, fn in (("host_concat_ms", host), ("splice_graph_ms", device)):
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    out = {k: round(statistics.median(v), 3) for k, v in times.items()}
    out.update(positions=len(plan.items), visual_tokens=len(pooled), hidden=int(table.shape[1]), runs=args.runs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
