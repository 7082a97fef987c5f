"""What the second session of the greedy decode loop costs per token (issue 15 item 1).

The decode loop (sfedge/runtime/generate.py) runs, per token, the LLM's static-shape step
(`decode_one`) and then greedy_step.onnx (ArgMax + Gather, `next_token`) in a second ONNX Runtime
session, and reads the token id (8 bytes) back. Folding ArgMax + Gather into the LLM graph would
save that second run's fixed cost (a session run: dispatch, and on a GPU a launch and a stream
synchronisation) but not its compute (an ArgMax over V logits, a Gather of D values) nor the read.

`measure` times, side by side on one Decoder (the production loop's `prefill` and `decode_one`;
`next_token`'s greedy branch, two lines, is inlined to time its run and its read apart), in rounds
that alternate which mode goes first:

* loop: per token `decode_one` (timed as `llm_ms`), the greedy session run (`greedy_ms`), the token
  read (`read_ms`); `step_ms` is the whole step as `generate` runs it;
* llm_only: per token `decode_one` alone (the LLM step without the greedy session);

each round after a fresh prefill of the same prompt, so both modes decode the same positions.
Medians over every token of every round. Before timing, the loop's tokens are checked against
`generate` (the production greedy loop) on the same prompt and against the host argmax of the
logits at every step, and every timed loop round must give those tokens again: a measurement of a
loop that decodes something else is refused.

Only the LLM is opened (`open_decoder`): no vision engine, so a real-width decoder loads in seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

MODES = ("loop", "llm_only")


def open_decoder(engines: str | Path, provider: str = "cpu", *, cuda_graph: bool = False):
    """The LLM Decoder of an engines directory, opened as Pipeline opens it (same engine options),
    without the vision and slowfast engines. Reads only the manifest's llm, embeddings and greedy_step
    entries (engines exported before the splice graph existed measure too)."""
    from sfedge.runtime.engines import OrtEngine
    from sfedge.runtime.pipeline import open_decoder as open_pipeline_decoder
    from sfedge.runtime.pipeline import shares_buffer

    root = Path(engines)
    manifest = json.loads((root / "manifest.json").read_text())
    comps = manifest["components"]
    shared = shares_buffer(root, comps["llm"])
    # as Pipeline: the LLM's GroupQueryAttention runs on the CUDA EP when the vision graphs use TensorRT
    llm = OrtEngine(root / comps["llm"]["path"], "cuda" if provider == "tensorrt" else provider, io=comps["llm"].get("inputs", []),
                    fp16=manifest.get("precision") == "fp16", mem_reuse=shared,
                    cuda_graph=cuda_graph and shared and provider == "cuda")
    return open_pipeline_decoder(root, manifest, llm, shared)


def _prompt(dec, positions: int, seed: int = 0) -> np.ndarray:
    """Prompt embeddings [1, P, D]: table rows of random token ids (what a text prompt is)."""
    ids = np.random.default_rng(seed).integers(0, dec.table.shape[0], positions)
    return np.ascontiguousarray(dec.table[ids][None])


def _check(dec, prompt: np.ndarray, tokens: int) -> list[int]:
    """The loop's tokens (as `measure` runs it) == `generate`'s on the same prompt, and each == the
    host argmax of its logits. Returns them."""
    from sfedge.runtime.generate import decode_one, generate, prefill
    from sfedge.spec import GenerationSpec

    want = list(generate(dec, prompt, GenerationSpec(max_new_tokens=tokens + 1, ignore_eos=True), []))
    prefill(dec, prompt)
    got = []
    rng = np.random.default_rng(0)
    for i in range(tokens + 1):
        if i:
            decode_one(dec, got[-1])
        host = int(np.argmax(dec.host_logits()))
        got.append(_greedy(dec, rng))
        if got[-1] != host:
            raise AssertionError(f"greedy step gave token {got[-1]}, the host argmax {host} (step {i})")
    if got != want:
        raise AssertionError(f"measured loop tokens {got} != generate's {want}")
    return got


def _greedy(dec, rng) -> int:
    from sfedge.runtime.generate import next_token
    from sfedge.spec import GenerationSpec

    return next_token(dec, GenerationSpec(max_new_tokens=1), rng)


def measure(dec, *, tokens: int = 32, rounds: int = 5, prompt_positions: int = 64, warmup_rounds: int = 1) -> dict:
    """Per-token medians (ms) of the loop and of the LLM step alone (module docstring), side by side."""
    from sfedge.runtime.generate import decode_one, prefill

    if prompt_positions + tokens + 1 > dec.max_length:
        raise ValueError(f"{prompt_positions} + {tokens} positions do not fit {dec.max_length}")
    prompt = _prompt(dec, prompt_positions)
    expected = _check(dec, prompt, tokens)
    times: dict[str, list[float]] = {k: [] for k in ("loop_llm_ms", "loop_greedy_ms", "loop_read_ms",
                                                     "loop_step_ms", "llm_only_ms")}
    clock = time.perf_counter
    load = [os.getloadavg()[0]]
    for r in range(warmup_rounds + rounds):
        record = r >= warmup_rounds
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            prefill(dec, prompt)
            dec.step.run_with_iobinding(dec.step_binding)  # the first token, from the prefill's logits
            token = int(dec.token.numpy()[0, 0])
            got = [token]
            for _ in range(tokens):
                if mode == "loop":  # as generate: decode_one, then next_token (greedy run + token read)
                    t0 = clock()
                    decode_one(dec, token)
                    t1 = clock()
                    dec.step.run_with_iobinding(dec.step_binding)
                    t2 = clock()
                    token = int(dec.token.numpy()[0, 0])
                    t3 = clock()
                    got.append(token)
                    if record:
                        for k, v in (("loop_llm_ms", t1 - t0), ("loop_greedy_ms", t2 - t1), ("loop_read_ms", t3 - t2),
                                     ("loop_step_ms", t3 - t0)):
                            times[k].append(v * 1e3)
                else:  # the LLM step alone: the same position, the embedding left as it is
                    t0 = clock()
                    decode_one(dec, token)
                    t1 = clock()
                    if record:
                        times["llm_only_ms"].append((t1 - t0) * 1e3)
            if mode == "loop" and got != expected:
                raise AssertionError(f"round {r}: tokens {got} != {expected}")
    load.append(os.getloadavg()[0])
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    med["greedy_share_of_step"] = round(med["loop_greedy_ms"] / med["loop_step_ms"], 4)
    med["step_minus_llm_only_ms"] = round(med["loop_step_ms"] - med["llm_only_ms"], 4)
    vocab, hidden = dec.table.shape
    return {"medians_ms": med, "tokens_per_round": tokens, "rounds": rounds, "samples": len(times["llm_only_ms"]),
            "prompt_positions": prompt_positions, "vocab": int(vocab), "hidden": int(hidden),
            "dtype": np.dtype(dec.dtype).name, "device": dec.device, "cuda_graph": dec.cuda_graph,
            "kv_layout": "shared" if dec.shared else "concat", "tokens_checked": len(expected),
            "loadavg_1min": [round(x, 2) for x in load]}


def measure_engines(engines: str | Path, provider: str = "cpu", *, cuda_graph: bool = False, **kw) -> dict:
    """`measure` on a freshly opened Decoder of `engines`, with where it came from."""
    t0 = time.perf_counter()
    dec = open_decoder(engines, provider, cuda_graph=cuda_graph)
    opened = time.perf_counter() - t0
    man = json.loads((Path(engines) / "manifest.json").read_text())
    out = {"engines": str(engines), "precision": man.get("precision"), "num_layers": man["model"]["num_layers"],
           "provider": provider, "open_s": round(opened, 2), **measure(dec, **kw)}
    del dec
    return out
