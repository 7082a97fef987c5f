"""The PyTorch reference's LLM prefill and decode step on one thread, in process CPU time: the
reference side of scripts/cpu_ab.py's engine figures on a shared machine (issue 18).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/cpu_ref_prefill.py CHECKPOINT [--positions 3008] [--rounds 2]

Loads `SlowFastLlava` (fp32, sdpa, as `sfedge bench` does), sets torch to one thread, and per round
times the language model + lm_head over N random prompt embeddings with a KV cache (`use_cache`, as
`generate` prefills), then 8 single-token steps through that cache; wall and CPU time, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--positions", type=int, default=3008)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import torch

    from sfedge.reference.model import SlowFastLlava

    torch.set_num_threads(1)
    ref = SlowFastLlava.from_pretrained(args.checkpoint, torch.float32, "cpu")
    lm, head = ref.model.model.language_model, ref.model.lm_head
    hidden = lm.config.hidden_size
    g = torch.Generator().manual_seed(0)
    out = {"prefill_ms": [], "prefill_cpu_ms": [], "decode_ms": [], "decode_cpu_ms": []}
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        for _ in range(args.rounds):
            x = torch.randn(1, args.positions, hidden, generator=g) * 0.02
            t, c = time.perf_counter(), time.process_time()
            o = lm(inputs_embeds=x, use_cache=True)
            head(o.last_hidden_state[:, -1:])
            out["prefill_ms"].append((time.perf_counter() - t) * 1e3)
            out["prefill_cpu_ms"].append((time.process_time() - c) * 1e3)
            past = o.past_key_values
            steps_wall, steps_cpu = [], []
            for _ in range(8):
                y = torch.randn(1, 1, hidden, generator=g) * 0.02
                t, c = time.perf_counter(), time.process_time()
                o = lm(inputs_embeds=y, past_key_values=past, use_cache=True)
                head(o.last_hidden_state)
                past = o.past_key_values
                steps_wall.append((time.perf_counter() - t) * 1e3)
                steps_cpu.append((time.process_time() - c) * 1e3)
            out["decode_ms"].append(statistics.median(steps_wall))
            out["decode_cpu_ms"].append(statistics.median(steps_cpu))
            print(json.dumps({k: v[-1] for k, v in out.items()}), file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])
    print(json.dumps({"positions": args.positions, "threads": torch.get_num_threads(), "runs": out,
                      "median": {k: statistics.median(v) for k, v in out.items()}, "load_average": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
