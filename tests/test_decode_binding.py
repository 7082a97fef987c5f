"""The decode step is capturable (a CUDA graph replays fixed addresses and shapes): checked on the CPU
with a spy on the LLM session's IOBindings and on every read of a tensor back to the host.

* every decode step runs the same IOBinding, bound once: the same (name, address, shape) for every
  input and output, the attention mask one [1, max_length] buffer whose content is the only thing
  that changes (its first length + 1 entries are 1);
* prefill runs another binding, uncaptured (gpu_graph_id -1), decode runs with graph capture allowed;
* per greedy step the only tensor read back is the [1, 1] int64 token id;
* the tokens are those of the per-step rebinding loop (`_run`, today's prefill path).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from sfedge.runtime.engines import OrtEngine
from sfedge.runtime.generate import Decoder, _run, generate, next_token
from sfedge.spec import GenerationSpec

STEPS = 12


class SpyBinding:
    """An IOBinding that remembers what is bound to each name: (kind, address, shape, device)."""

    def __init__(self, real: ort.IOBinding):
        self.real, self.bound = real, {}

    def bind_ortvalue_input(self, name, value):
        self.bound[name] = ("in", value.data_ptr(), tuple(value.shape()), value.device_name())
        self.real.bind_ortvalue_input(name, value)

    def bind_ortvalue_output(self, name, value):
        self.bound[name] = ("out", value.data_ptr(), tuple(value.shape()), value.device_name())
        self.real.bind_ortvalue_output(name, value)

    def bind_input(self, name, device, device_id, dtype, shape, ptr):
        self.bound[name] = ("in", ptr, tuple(shape), device)
        self.real.bind_input(name, device, device_id, dtype, shape, ptr)

    def bind_output(self, name, device="cpu", *args):
        self.bound[name] = ("out", None, None, device)
        self.real.bind_output(name, device, *args)

    def clear_binding_inputs(self):
        self.bound = {k: v for k, v in self.bound.items() if v[0] != "in"}
        self.real.clear_binding_inputs()

    def clear_binding_outputs(self):
        self.bound = {k: v for k, v in self.bound.items() if v[0] != "out"}
        self.real.clear_binding_outputs()

    def get_outputs(self):
        return self.real.get_outputs()


class SpySession:
    """The LLM session, recording every run: (binding, what it binds, gpu_graph_id, mask content)."""

    def __init__(self, real: ort.InferenceSession, runs: list):
        self.real, self.runs = real, runs

    def __getattr__(self, name):
        return getattr(self.real, name)

    def io_binding(self):
        return SpyBinding(self.real.io_binding())

    def run_with_iobinding(self, binding, run_options=None):
        graph_id = run_options.get_run_config_entry("gpu_graph_id") if run_options is not None else "0"
        self.runs.append((binding, dict(binding.bound), graph_id))
        self.real.run_with_iobinding(binding.real, run_options)


@pytest.fixture(scope="module")
def decoders(pipeline_fp32):
    """(a Decoder over the tiny fp32 engines whose LLM session is spied on, the list of its runs)."""
    p, ref = pipeline_fp32, pipeline_fp32.decoder
    comps = p.manifest["components"]
    engine = OrtEngine(p.root / comps["llm"]["path"])
    runs: list = []
    engine.session = SpySession(engine.session, runs)
    engine.binding = SpyBinding(engine.binding.real if isinstance(engine.binding, SpyBinding) else engine.binding)
    _, heads, _, head_dim = ref.kv[ref.past_names[0]].shape()
    dec = Decoder(engine, ref.table, p.root / comps["greedy_step"]["path"], kv_names=list(ref.present_of.items()),
                  num_kv_heads=heads, head_dim=head_dim, max_length=ref.max_length, shared=ref.shared)
    assert dec.shared, "the tiny fp32 engines use the shared (GroupQueryAttention) layout"
    return dec, runs


def prompt(dec: Decoder, n: int = 40) -> np.ndarray:
    return dec.table[np.random.default_rng(1).integers(3, dec.table.shape[0], n)][None]


def test_every_decode_step_binds_the_same_addresses_and_shapes(decoders):
    dec, runs = decoders
    runs.clear()
    embeds = prompt(dec)
    got = list(generate(dec, embeds, GenerationSpec(max_new_tokens=STEPS + 1, ignore_eos=True), (), prefill_chunk=16))
    assert len(got) == STEPS + 1
    prefill, decode = runs[:3], runs[3:]  # 40 positions in chunks of 16: three prefill runs
    assert len(decode) == STEPS
    assert all(graph_id == "-1" for _, _, graph_id in prefill)  # never captured
    assert all(graph_id == "0" for _, _, graph_id in decode)  # capture / replay allowed
    assert all(b is dec.decode_binding for b, _, _ in decode)
    assert all(b is not dec.decode_binding for b, _, _ in prefill)
    first = decode[0][1]
    assert all(bound == first for _, bound, _ in decode)  # same names, addresses, shapes, devices
    names = set(dec.engine.inputs) | set(dec.engine.outputs)
    assert set(first) == names  # every input and output is bound, none left to ORT's allocator
    assert first["attention_mask"][2] == (1, dec.max_length)
    assert first["inputs_embeds"][1:3] == (dec.embeds.data_ptr(), (1, 1, dec.embeds.shape()[2]))
    assert first["logits"][1] == dec.logits.data_ptr()
    for past, present in dec.present_of.items():
        assert first[past][1] == first[present][1] == dec.kv[past].data_ptr()
    # the mask's content: the cached positions and the new one are 1, the rest 0
    assert dec.mask.numpy()[0].tolist() == [1] * dec.length + [0] * (dec.max_length - dec.length)


def test_only_the_token_id_is_read_back_per_greedy_step(decoders, monkeypatch):
    dec, _ = decoders
    list(generate(dec, prompt(dec), GenerationSpec(max_new_tokens=1), ()))
    reads, writes = [], []
    numpy, update = ort.OrtValue.numpy, ort.OrtValue.update_inplace
    monkeypatch.setattr(ort.OrtValue, "numpy", lambda self: reads.append(self.data_ptr()) or numpy(self))
    monkeypatch.setattr(ort.OrtValue, "update_inplace", lambda self, a: writes.append(self.data_ptr()) or update(self, a))
    from sfedge.runtime import generate as g

    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        reads.clear()
        token = next_token(dec, GenerationSpec(), rng)
        g.decode_one(dec, token)
        assert reads == [dec.token.data_ptr()]  # 8 bytes: the token id, nothing else
        assert writes == []  # on the CPU the mask is written through a view of its buffer


def test_static_decode_gives_the_rebinding_loops_tokens(decoders):
    """The static-shape loop against today's per-step rebinding (`_run`: the prefill binding with a
    [1, length + 1] mask), on the same decoder: the same tokens, the same logits bit for bit."""
    dec, _ = decoders
    embeds = prompt(dec, 33)
    gen = GenerationSpec(max_new_tokens=STEPS, ignore_eos=True)
    static = list(generate(dec, embeds, gen, ()))
    list(generate(dec, embeds, GenerationSpec(max_new_tokens=2, ignore_eos=True), ()))
    static_logits = dec.host_logits()  # after one static decode step
    list(generate(dec, embeds, GenerationSpec(max_new_tokens=1), ()))  # prefill; the first token's embedding
    rebinding, logits = [], []
    for _ in range(STEPS):
        rebinding.append(next_token(dec, gen, None))
        _run(dec, dec.embeds, 1, dec.logits)
        logits.append(dec.host_logits())
    assert static == rebinding
    np.testing.assert_array_equal(static_logits, logits[0])
