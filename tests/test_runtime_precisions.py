"""The runtime beyond fp32 engines (the `--llm mistral` checkpoint's token parity is in test_parity.py):
fp16 / int4 engines end to end with their logit error reported (printed; loose sanity bounds)."""

from __future__ import annotations

import numpy as np
import pytest

from sfedge.parity import reference_visual_tokens, rel_error
from sfedge.spec import GenerationSpec

pytestmark = pytest.mark.slow
# loose: a random tiny model's logits are large; these only catch a broken chain
LOGIT_BOUNDS = {"fp16": 5e-2, "int4": 0.5}


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_low_precision_engines_run_end_to_end(precision, request, clip_path, short_clips,
                                              pipeline_fp32, reference_llama):
    from sfedge.runtime.pipeline import Pipeline

    pipe = Pipeline(request.getfixturevalue(f"engines_{precision}"))
    gen = GenerationSpec(max_new_tokens=12)
    for video in (clip_path, short_clips["dir-5"]):
        got = pipe.ask(video, "What is moving in the video?", gen=gen, record_logits=True)
        ref = pipeline_fp32.ask(video, "What is moving in the video?", gen=gen, record_logits=True)
        _, _, visual = reference_visual_tokens(reference_llama, pipeline_fp32, video)
        ref_logits = reference_llama.first_step_logits(
            reference_llama.inputs_embeds(reference_llama.prompt_ids("What is moving in the video?"), visual)).numpy()
        err = rel_error(got.first_logits, ref_logits)
        same = sum(a == b for a, b in zip(got.token_ids, ref.token_ids))
        print(f"\n{precision} engines on {video.name}: first-step logits rel err {err:.3e} vs the fp32 reference; "
              f"{same}/{len(ref.token_ids)} greedy tokens equal to fp32's; {got.tokens_per_s:.0f} tokens/s")
        assert np.isfinite(got.first_logits).all() and len(got.token_ids) >= 1
        assert err < LOGIT_BOUNDS[precision]
