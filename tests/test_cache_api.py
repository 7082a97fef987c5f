"""The reference's KV-cache argument: transformers' current `cache=` where the model takes it,
`past_key_values=` on the 5.x releases before the rename (the tested range starts at 5.17)."""

from __future__ import annotations


def test_new_cache_follows_the_forward_signature():
    from transformers import DynamicCache, LlamaConfig

    from sfedge.reference.model import new_cache

    config = LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64)

    class Current:
        def __init__(self):
            self.config = config

        def forward(self, inputs_embeds=None, cache=None, use_cache=None):
            pass

    class Older(Current):
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None):
            pass

    (name, cache), = new_cache(Current()).items()
    assert name == "cache" and isinstance(cache, DynamicCache)
    assert list(new_cache(Older())) == ["past_key_values"]


def test_the_installed_llm_takes_the_current_name_without_a_deprecation_warning(reference_llama):
    import warnings

    import torch

    from sfedge.reference.model import new_cache
    from sfedge.spec import GenerationSpec

    lm = reference_llama.model.model.language_model
    embeds = reference_llama._embed([1, 5, 7]).unsqueeze(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ids = reference_llama.generate(embeds, GenerationSpec(max_new_tokens=4, ignore_eos=True))
    assert len(ids) == 4
    kw = new_cache(lm)
    with torch.no_grad():
        lm(inputs_embeds=embeds, use_cache=True, **kw)
    assert next(iter(kw.values())).get_seq_length() == 3  # updated in place: nothing read back from outputs
