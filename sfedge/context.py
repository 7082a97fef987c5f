"""The LLM context the engines are built for, and what its KV cache costs.

Torch-free (the docs and any runtime report can use `kv_cache_bytes`). `sfedge export
--max-context N` (default 4096, SPEC 1's LLM context, never above the checkpoint's
max_position_embeddings) hands the builder a text config with max_position_embeddings = N, so
the decoder's KV buffers and its rotary cos / sin caches hold N positions, not the checkpoint's
32,768 (Mistral). RoPE scaling: the builder gets what gives the reference's results below N.
"""

from __future__ import annotations

from .errors import SfedgeError

DEFAULT_MAX_CONTEXT = 4096  # SPEC 1: the LLM context SlowFast-LLaVA runs at
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, context: int,
                   dtype: str = "float16") -> dict:
    """KV-cache size: keys and values of every layer, per token and for `context` positions."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"KV dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    per_token = 2 * num_layers * num_kv_heads * head_dim * DTYPE_BYTES[dtype]
    return {"dtype": dtype, "per_token": per_token, "context": context, "total": per_token * context}


def resolve_max_context(requested: int | None, max_position_embeddings: int) -> int:
    """The context to build for: `requested`, else min(4096, the checkpoint's); SfedgeError
    (exit 2) outside 1 .. max_position_embeddings."""
    if requested is None:
        return min(DEFAULT_MAX_CONTEXT, max_position_embeddings)
    if not 1 <= requested <= max_position_embeddings:
        raise SfedgeError(f"--max-context must be between 1 and the checkpoint's max_position_embeddings "
                          f"{max_position_embeddings}, got {requested}")
    return requested


def rope_for_context(rope: dict | None, max_position_embeddings: int, context: int) -> tuple[dict | None, str]:
    """(rope parameters for the builder, why). Dynamic NTK scaling rescales only past the
    checkpoint's max_position_embeddings (transformers' `dynamic_rope_update`), so below it the
    reference computes plain RoPE: the builder (which has no dynamic RoPE) gets rope_type "default"
    with the same theta. Every other type is handed over as the checkpoint has it."""
    if not rope or rope.get("rope_type", rope.get("type", "default")) != "dynamic":
        return rope, "as the checkpoint"
    if context > max_position_embeddings:
        raise SfedgeError(f"dynamic RoPE scaling past {max_position_embeddings} positions is not supported "
                          f"(--max-context {context})")
    plain = {k: v for k, v in rope.items() if k in ("rope_theta", "partial_rotary_factor")}
    return dict(plain, rope_type="default"), (
        f"dynamic scaling changes nothing at or below {max_position_embeddings} positions (context {context})")
