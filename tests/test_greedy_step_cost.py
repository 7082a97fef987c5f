"""sfedge/bench/greedy_step.py: the greedy session's cost measurement runs the production loop (its
tokens checked against generate and the host argmax) and refuses a loop that decodes something else."""

import pytest

from sfedge.bench import greedy_step


def test_measure_on_the_tiny_engines(engines_fp32):
    r = greedy_step.measure_engines(engines_fp32, tokens=4, rounds=1, prompt_positions=8)
    med = r["medians_ms"]
    assert r["tokens_checked"] == 5 and r["samples"] == 4 and r["vocab"] == 1024 and r["kv_layout"] == "shared"
    assert all(med[k] > 0 for k in ("loop_llm_ms", "loop_greedy_ms", "loop_step_ms", "llm_only_ms"))
    assert med["loop_step_ms"] >= med["loop_llm_ms"] + med["loop_greedy_ms"]


def test_a_greedy_step_that_disagrees_with_the_logits_is_refused(engines_fp32):
    dec = greedy_step.open_decoder(engines_fp32)
    orig = dec.step.run_with_iobinding

    def wrong(binding):
        orig(binding)
        dec.token.numpy()[0, 0] = (dec.token.numpy()[0, 0] + 1) % 1024

    dec.step.run_with_iobinding = wrong
    with pytest.raises(AssertionError, match="host argmax"):
        greedy_step.measure(dec, tokens=2, rounds=1, prompt_positions=4)
