"""The generation loop, gpt-fast style: a few plain functions over state allocated once.

The LLM graph is onnxruntime-genai's decoder built with exclude_embeds: inputs `inputs_embeds`
[1, S, D], `attention_mask` [1, past + S] (int64 ones), `position_ids` [1, S] in some builds,
`past_key_values.{i}.key/value`; outputs `logits` [1, 1, V] (the last position: export slices the
graph before lm_head) and `present.{i}.key/value`.

Two KV layouts, as the builder declares in genai_config.json (`past_present_share_buffer`):

* shared (GroupQueryAttention: fp32/int4 on CPU, every precision on CUDA): one buffer per past
  tensor, [1, H_kv, max_length, d], allocated once on the device and bound as both `past_*` and
  `present_*`; GQA writes the new keys/values in place at positions past..past+S-1. It reads the
  past length from the attention mask (seqlens_k = sum(mask) - 1, total = mask width).
* concat (plain attention: fp16 on CPU): `present` = concat(past, new); each step's presents are
  left on the device (ORT allocates them) and bound as the next step's pasts.

Prefill (uncaptured): the attention mask and position ids are windows onto two device buffers made
once (ones and 0..max_length-1), bound by pointer with the run's shape.

Decode, shared layout: a static-shape step that CUDA graphs can capture, bound once in its own
IOBinding (`Decoder.decode_binding`) and never rebound: `inputs_embeds` = the [1, 1, D] embeds buffer,
`attention_mask` = one fixed [1, max_length] buffer whose first length + 1 entries are 1 and the rest
0 (as onnxruntime-genai's static mask for graph capture: GQA's total length is then max_length while
seqlens_k = sum(mask) - 1 tracks the real one), `position_ids` (if the graph has it) = a [1, 1]
buffer, the KV buffers, `logits` = the [1, 1, V] buffer. Between steps only the mask's content
changes: on the CPU one entry is written through a view of the buffer; on a GPU the host copy of the
mask (max_length int64) is written into the same device buffer (`OrtValue.update_inplace`, one
host-to-device copy between graph replays; `_write_mask`). With `cuda_graph` (CUDA engines opened
with `cuda_graph=True`) the decode step and the greedy step are captured and replayed by ONNX
Runtime (graph id 0) and prefill runs with gpu_graph_id -1. The concat layout decodes as it
prefills (its presents are new tensors every step: not capturable).

Greedy decoding runs ArgMax + embedding Gather on the device (the exported greedy_step.onnx, a
second session with fixed bindings) into the buffer the LLM reads as `inputs_embeds` and a [1, 1]
token buffer on the device: between decode steps only the new token id (8 bytes) reaches the host.
Sampling reads the logits ([V] floats) on the host, samples with numpy and writes the next embedding back.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

import numpy as np
import onnxruntime as ort

from ..errors import SfedgeError
from ..spec import GenerationSpec
from .engines import _ORT_DTYPES, OrtEngine, session_options, session_providers


class Decoder:
    """The LLM engine and everything allocated once for it: KV cache, mask and position buffers,
    the [1, 1, V] logits and [1, 1, D] embeds buffers, the embedding table and the greedy step."""

    def __init__(self, engine: OrtEngine, table: np.ndarray, step_path, *, kv_names: list[tuple[str, str]],
                 num_kv_heads: int, head_dim: int, max_length: int, shared: bool):
        """`step_path`: the exported greedy_step.onnx; `kv_names`: (past input, present output) name
        pairs, one per key and per value tensor."""
        self.engine, self.max_length, self.shared = engine, max_length, shared
        self.device = engine.device
        self.has_positions = "position_ids" in engine.inputs
        self.dtype = engine.inputs["inputs_embeds"].dtype
        self.table = np.ascontiguousarray(table, dtype=self.dtype)  # host copy: prompt embeddings
        vocab, hidden = self.table.shape
        kv_len = max_length if shared else 0
        self.present_of = dict(kv_names)
        self.past_names = list(self.present_of)
        self.kv = {n: self._alloc([1, num_kv_heads, kv_len, head_dim], self.dtype) for n in self.past_names}
        self.ones = self._upload(np.ones((1, max_length), np.int64))
        self.positions = self._upload(np.arange(max_length, dtype=np.int64)[None])
        if engine.outputs["logits"].shape[1] != 1:
            raise SfedgeError("the LLM graph returns logits for every position; sfedge's runtime needs the "
                              "last-position graph that `sfedge export` writes (re-export the engines)")
        self.logits = self._alloc([1, 1, vocab], engine.outputs["logits"].dtype)
        self.embeds = self._alloc([1, 1, hidden], self.dtype)
        self.device_table = self._upload(self.table)
        self.token = self._alloc([1, 1], np.int64)  # the greedy step's token id, on the device
        step_provider = "cpu" if self.device == "cpu" else "cuda"
        self.cuda_graph = bool(getattr(engine, "cuda_graph", False))
        self.step = ort.InferenceSession(str(step_path), sess_options=session_options(step_provider),
                                         providers=session_providers(step_provider, cuda_graph=self.cuda_graph))
        self.step_binding = self.step.io_binding()  # fixed for good: the greedy step is capturable
        self.step_binding.bind_ortvalue_input("logits", self.logits)
        self.step_binding.bind_ortvalue_input("table", self.device_table)
        self.step_binding.bind_ortvalue_output("token", self.token)
        self.step_binding.bind_ortvalue_output("embeds", self.embeds)
        self.length = 0  # tokens now in the cache
        self.items: list = []  # what each cached position holds: prompt items, then fed-back token ids
        self.bytes_per_token = len(self.past_names) * num_kv_heads * head_dim * np.dtype(self.dtype).itemsize
        if shared:
            self._make_decode_binding()

    def _make_decode_binding(self) -> None:
        """The static-shape decode step's buffers and its IOBinding, bound once (module docstring)."""
        self.mask = self._alloc([1, self.max_length], np.int64)
        # the mask's content on the host: on the CPU a view of the buffer itself, elsewhere a copy
        self.mask_host = self.mask.numpy() if self.device == "cpu" else np.zeros((1, self.max_length), np.int64)
        self.mask_host[:] = 0
        self.mask_ones = 0  # leading ones in the device buffer (the rest are zeros)
        self._write_mask()
        b = self.decode_binding = self.engine.session.io_binding()
        b.bind_ortvalue_input("inputs_embeds", self.embeds)
        b.bind_ortvalue_input("attention_mask", self.mask)
        if self.has_positions:
            self.position = self._alloc([1, 1], np.int64)
            self.position_host = self.position.numpy() if self.device == "cpu" else np.zeros((1, 1), np.int64)
            b.bind_ortvalue_input("position_ids", self.position)
        for name in self.past_names:
            b.bind_ortvalue_input(name, self.kv[name])
            b.bind_ortvalue_output(self.present_of[name], self.kv[name])
        b.bind_ortvalue_output("logits", self.logits)

    def _write_mask(self) -> None:
        """Copy the host mask into the device buffer (a GPU's; on the CPU the host mask is the buffer)."""
        if self.device != "cpu":
            self.mask.update_inplace(self.mask_host)

    def set_mask(self, ones: int) -> None:
        """Make the decode mask's first `ones` entries 1 and the rest 0, changing only what differs
        (one entry per decode step)."""
        if ones == self.mask_ones:
            return
        if ones == self.mask_ones + 1:
            self.mask_host[0, ones - 1] = 1
        else:
            self.mask_host[0, :ones] = 1
            self.mask_host[0, ones:] = 0
        self.mask_ones = ones
        self._write_mask()

    def _alloc(self, shape: list[int], dtype) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, 0)

    def _upload(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def reset(self) -> None:
        """Forget the cached sequence (the shared buffers are simply overwritten next time)."""
        self.truncate(0)

    def truncate(self, n: int) -> None:
        """Keep the first `n` cached positions (a prefix the next prompt shares) and forget the rest."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot keep {n} of {self.length} cached positions")
        if not self.shared and n < self.length:  # concat layout: the pasts are exactly `length` long
            self.kv = {name: self._upload(v.numpy()[:, :, :n]) if n else
                       self._alloc([1, v.shape()[1], 0, v.shape()[3]], self.dtype) for name, v in self.kv.items()}
        self.length = n
        del self.items[n:]

    def snapshot(self, n: int) -> dict[str, np.ndarray]:
        """Host copies of the first `n` cached positions of every KV tensor."""
        if not 0 < n <= self.length:
            raise ValueError(f"cannot copy {n} of {self.length} cached positions")
        return {name: v.numpy()[:, :, :n].copy() for name, v in self.kv.items()}

    def restore(self, snapshot: dict[str, np.ndarray], items: list) -> None:
        """Put a `snapshot` of len(items) positions back as the cached sequence. On the CPU the
        buffers are written in place; on a GPU the whole buffer goes through the host (a copy there
        and back: cheaper than the prefill it saves, and rare)."""
        n = len(items)
        for name, v in self.kv.items():
            if not self.shared:
                self.kv[name] = self._upload(snapshot[name])
            elif self.device == "cpu":
                v.numpy()[:, :, :n] = snapshot[name]  # a view of the buffer
            else:
                host = v.numpy()
                host[:, :, :n] = snapshot[name]
                v.update_inplace(host)
        self.length, self.items = n, list(items)

    def host_logits(self) -> np.ndarray:
        """The last step's logits [V] as float32 on the host (sampling, tests, verify)."""
        return self.logits.numpy()[0, -1].astype(np.float32)


def _run(dec: Decoder, embeds: ort.OrtValue, seq: int, logits_out: ort.OrtValue | None, at: int = 0) -> None:
    """One LLM run over `seq` new positions: rows at..at+seq of `embeds`, an OrtValue [1, S, D] on the
    device (bound in place by pointer: a window, no copy).
    Shared layout: the 2 x layers KV bindings never change, so they are made once and each run
    rebinds only what moves (binding a name again replaces its binding); concat layout: everything
    is rebound (the presents are new tensors every run)."""
    b = dec.engine.binding
    if not (dec.shared and dec.engine.binding_owner is dec):  # (anyone else's use cleared the binding)
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        if dec.shared:
            for name in dec.past_names:
                b.bind_ortvalue_input(name, dec.kv[name])
                b.bind_ortvalue_output(dec.present_of[name], dec.kv[name])
            dec.engine.binding_owner = dec
    total = dec.length + seq
    hidden = embeds.shape()[-1]
    b.bind_input("inputs_embeds", dec.device, 0, dec.dtype, [1, seq, hidden],
                 embeds.data_ptr() + at * hidden * np.dtype(dec.dtype).itemsize)
    b.bind_input("attention_mask", dec.device, 0, np.int64, [1, total], dec.ones.data_ptr())
    if dec.has_positions:
        ptr = dec.positions.data_ptr() + 8 * dec.length
        b.bind_input("position_ids", dec.device, 0, np.int64, [1, seq], ptr)
    if logits_out is None:
        b.bind_output("logits", dec.device, 0)
    else:
        b.bind_ortvalue_output("logits", logits_out)
    if not dec.shared:
        for name in dec.past_names:
            b.bind_ortvalue_input(name, dec.kv[name])
            b.bind_output(dec.present_of[name], dec.device, 0)
    dec.engine.run_binding()
    if not dec.shared:  # outputs come back in binding order: logits, then the presents
        dec.kv = dict(zip(dec.past_names, b.get_outputs()[1:]))
    dec.length = total


def prefill(dec: Decoder, embeds: np.ndarray | ort.OrtValue, chunk: int | None = None, *, start: int = 0,
            items: list | None = None) -> None:
    """Run prompt embeddings [1, S, D] (a host array, or an OrtValue on the LLM's device in its
    dtype, as the splice graph makes them: read in place) through the LLM after the first `start` cached positions,
    which are kept (a prefix shared with the previous prompt; 0: a fresh prompt), in chunks of
    `chunk` positions (None: one run). The concat layout's graph cannot extend a past by several
    positions at once: after a kept prefix it takes the new positions one at a time. The graph
    returns the last position's logits only (export inserts the slice), and the last run writes them
    into `dec.logits`. (Chunking changes nothing: each query row attends to the same keys.)
    `items`: what the S new positions hold (see `Decoder.items`; None: nothing a later prompt can match)."""
    if isinstance(embeds, ort.OrtValue):
        if embeds.device_name().lower() != dec.device or _ORT_DTYPES.get(embeds.data_type()) != dec.dtype:
            raise SfedgeError(f"prompt embeddings on {embeds.device_name()} as {embeds.data_type()}: the LLM "
                              f"reads {np.dtype(dec.dtype).name} on {dec.device}")
    else:
        embeds = dec._upload(np.ascontiguousarray(embeds, dtype=dec.dtype))
    seq = embeds.shape()[1]
    if seq < 1 or start + seq > dec.max_length:
        raise SfedgeError(f"a prompt of {start + seq} tokens does not fit the engines' context of "
                          f"{dec.max_length} positions")
    items = list(items) if items is not None else [object() for _ in range(seq)]
    dec.truncate(start)
    step = (chunk or seq) if dec.shared else (seq if start == 0 else 1)
    for at in range(0, seq, step):
        n = min(step, seq - at)
        last = at + step >= seq
        _run(dec, embeds, n, dec.logits if last else None, at)
        dec.items.extend(items[at:at + step])


def decode_one(dec: Decoder, token: int | None = None) -> None:
    """One decode step on the embedding in `dec.embeds` (that of `token`); its logits land in `dec.logits`.
    Shared layout: the static-shape step (module docstring): only the mask's content (and the
    position, where the graph takes one) changes, then the fixed binding runs (captured under CUDA graphs)."""
    if not dec.shared:
        _run(dec, dec.embeds, 1, dec.logits)
    else:
        if dec.length >= dec.max_length:
            raise SfedgeError(f"the cache is full ({dec.max_length} positions)")
        dec.set_mask(dec.length + 1)
        if dec.has_positions:
            dec.position_host[0, 0] = dec.length
            if dec.device != "cpu":
                dec.position.update_inplace(dec.position_host)
        dec.engine.run_binding(dec.decode_binding, captured=True)
        dec.length += 1
    dec.items.append(token)


def next_token(dec: Decoder, gen: GenerationSpec, rng: np.random.Generator) -> int:
    """Choose the next token from `dec.logits` and put its embedding in `dec.embeds`."""
    if gen.greedy:
        dec.step.run_with_iobinding(dec.step_binding)  # captured under CUDA graphs: fixed bindings
        return int(dec.token.numpy()[0, 0])  # the one read back per step: 8 bytes
    token = sample_next(dec.host_logits(), gen, rng)
    dec.embeds.update_inplace(dec.table[token][None, None])
    return token


def generate(dec: Decoder, embeds: np.ndarray, gen: GenerationSpec, eos_token_ids: Collection[int], *,
             prefill_chunk: int | None = None, start: int = 0, items: list | None = None,
             on_first_logits: Callable[[np.ndarray], None] | None = None) -> Iterator[int]:
    """Prefill `embeds` [1, S, D] after `start` kept positions (see `prefill`), then yield up to
    gen.max_new_tokens token ids as they are made; stops at EOS (not yielded; unless gen.ignore_eos)
    or when the cache is full (`dec.length == dec.max_length`). `on_first_logits`, if given,
    receives the first step's logits [V] on the host (for parity checks)."""
    rng = np.random.default_rng(gen.seed)
    prefill(dec, embeds, prefill_chunk, start=start, items=items)
    if on_first_logits is not None:
        on_first_logits(dec.host_logits())
    for i in range(gen.max_new_tokens):
        token = next_token(dec, gen, rng)
        if token in eos_token_ids and not gen.ignore_eos:
            return
        yield token
        if i + 1 == gen.max_new_tokens or dec.length >= dec.max_length:
            return
        decode_one(dec, token)


def sample_next(logits: np.ndarray, gen: GenerationSpec, rng: np.random.Generator) -> int:
    """Greedy (argmax) when gen.temperature <= 0; otherwise softmax(logits / temperature) restricted
    to the top_k most likely tokens (0: all), then to the most likely tokens whose probability
    reaches top_p (nucleus), sampled with `rng`."""
    if gen.greedy:
        return int(np.argmax(logits))
    x = np.asarray(logits, dtype=np.float64) / gen.temperature
    if 0 < gen.top_k < x.size:
        kth = np.partition(x, -gen.top_k)[-gen.top_k]
        x = np.where(x < kth, -np.inf, x)
    if gen.top_p < 1.0:  # as transformers' TopPLogitsWarper (and the reference)
        order = np.argsort(x, kind="stable")  # ascending
        cumulative = np.cumsum(_softmax(x[order]))
        drop = cumulative <= 1.0 - gen.top_p
        drop[-1] = False  # always keep the most likely token
        x[order[drop]] = -np.inf
    probs = _softmax(x)
    return int(rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
