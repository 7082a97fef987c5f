"""int4, half a: the exported decoder's packed weights, scales and zero points are bit-identical to
an independent numpy quantization of the checkpoint (`sfedge.export.int4.quantize_blocks`), and
that quantization is ONNX Runtime's own (`quantize_matmul_4bits`, the kernel the builder's
quantizer calls) on adversarial inputs: ties between +m and -m, halves that round, zero blocks,
partial last blocks. Half b (the arithmetic, vs a reference running these dequantized weights)
is export validation's int4 llm / chain check, run in test_mutations.py."""

from __future__ import annotations

import numpy as np
import pytest

from sfedge.export.int4 import check_weights, dequantize_blocks, int4_weights, quantize_blocks


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_quantize_blocks_is_onnxruntimes_quantizer(block_size):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rng = np.random.default_rng(block_size)
    for trial in range(40):
        k, n = int(rng.integers(1, 6)) * 32 + int(rng.integers(0, 4)) * 8, 19
        if trial % 2:  # multiples of 0.5: exact ties of +m / -m and of x.5 steps
            w = (rng.integers(-16, 17, (k, n)) * 0.5).astype(np.float32)
        else:
            w = (rng.standard_normal((k, n)) * 10 ** rng.uniform(-4, 2)).astype(np.float32)
        w[:, 0], w[:, 1] = 0, np.abs(w[:, 1])
        blocks = -(-k // block_size)
        packed = np.zeros((n, blocks, block_size // 2), np.uint8)
        scales = np.zeros(n * blocks, np.float32)
        zero = np.zeros(n * ((blocks + 1) // 2), np.uint8)
        quantize_matmul_4bits(packed, w, scales, zero, block_size, n, k, True)
        mine, my_scales = quantize_blocks(w, block_size)
        assert np.array_equal(mine, packed), (trial, k, int((mine != packed).sum()))
        assert np.array_equal(my_scales.ravel().view(np.uint32), scales.view(np.uint32)), trial
        deq = dequantize_blocks(mine, my_scales, k)
        step = np.repeat(np.abs(my_scales), block_size, axis=1)[:, :k]
        # RTN: half a step, one step where +8 clips to 7 (the extreme's opposite sign)
        assert np.all(np.abs(deq - w.T) <= step * 1.0 + 1e-6 * np.abs(w.T)), trial
        assert np.mean(np.abs(deq - w.T) <= step * 0.5 + 1e-6 * np.abs(w.T)) > 0.95, trial


def test_tiny_int4_weights_are_bit_identical(engines_int4, reference_llama):
    import torch

    report = check_weights(reference_llama, engines_int4 / "llm" / "model.onnx")
    assert report["passed"], report
    assert report["checked"] == 2 * 5 + 1  # per layer: fused qkv, o, gate, up, down; lm_head
    before = reference_llama.model.lm_head.weight.detach().clone()
    with int4_weights(reference_llama, 32):
        inside = reference_llama.model.lm_head.weight.detach().clone()
    assert torch.equal(reference_llama.model.lm_head.weight, before) and not torch.equal(inside, before)


def test_int4_export_validates_on_the_real_tokenizer_checkpoint(sp_mistral_dir, tmp_path):
    """llava-v1.6-mistral-7b's layout and SentencePiece tokenizer (32,064 rows): the int4 export's
    validation runs both halves (weights bit for bit, logits vs the dequantized reference) and passes."""
    from sfedge.export import export_model

    manifest = export_model(sp_mistral_dir, tmp_path / "e", precision="int4", device="cpu", max_frames=7, progress=False)
    report = manifest["validation"]
    assert report["passed"] and report["int4_weights"]["passed"] and report["int4_weights"]["checked"] >= 11
    assert report["llm"]["rel"] < report["llm"]["rel_tol"] <= 0.1 and report["chain"]["rel_tol"] <= 0.05
    print(f"\nreal-tokenizer int4: llm rel {report['llm']['rel']:.3g}, chain rel {report['chain']['rel']:.3g}, "
          f"cosine {report['llm']['cosine']:.4f}")
