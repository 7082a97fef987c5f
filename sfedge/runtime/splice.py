"""The prompt as segments, and its embeddings made on the LLM's device (one design for every family).

A prompt is a sequence of segments: text token ids, and visual blocks of N tokens identified by a
content key (`families.VisualBlock`). SlowFast-LLaVA has one block; an interleaved family (a
timestamp before each frame) has one per frame, with text between. `SplicePlan` lays the segments
out once:

* `items`: what each position holds, for the prefix cache: a text id, or (block key, i);
* `ids`: the text ids with 0 at every visual position (a valid row of the table, overwritten);
* `positions`: where the visual tokens go, in order: the pooled visual tokens of the window are the
  blocks' tokens concatenated, so row r of them goes to position positions[r].

`Splicer` makes the embeddings [1, L - start, D] of the positions from `start` on with the exported
splice graph (export/step.py: Gather(table, ids), Gather(visual, rows), Cast to the table's dtype,
ScatterND at the positions), run on the LLM's device through an IOBinding: the pooled visual tokens
(an OrtValue, or a TensorRT DeviceTensor, already on the device) are bound where they are and never
come back to the host; the result stays there for prefill. On the CPU it equals the old host
concatenation bit for bit (Gather and ScatterND copy, Cast rounds as numpy's astype).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..errors import SfedgeError
from ..families import VisualBlock
from .engines import session_options, session_providers



def segments_from_marked(ids: Sequence[int], marker: int, blocks: Sequence[VisualBlock]) -> list:
    """A family's prompt ids (one `marker` per visual block, in order) -> segments."""
    ids = list(ids)
    if ids.count(marker) != len(blocks):
        raise SfedgeError(f"the prompt must hold {len(blocks)} image token{'s' if len(blocks) != 1 else ''} "
                          f"(one per visual block), found {ids.count(marker)}")
    segments: list = []
    text: list[int] = []
    blocks_left = iter(blocks)
    for i in ids:
        if i == marker:
            segments += [text, next(blocks_left)]
            text = []
        else:
            text.append(i)
    return [s for s in [*segments, text] if not isinstance(s, list) or s]


@dataclass(frozen=True)
class SplicePlan:
    items: list
    ids: np.ndarray  # int64 [L]
    positions: np.ndarray  # int64 [N]
    visual_end: int  # the position after the last visual token (0: no visual tokens)

    @classmethod
    def build(cls, segments: Sequence) -> SplicePlan:
        items: list = []
        positions: list[int] = []
        for seg in segments:
            if isinstance(seg, VisualBlock):
                positions.extend(range(len(items), len(items) + seg.n))
                items.extend((seg.key, i) for i in range(seg.n))
            else:
                items.extend(int(i) for i in seg)
        ids = np.array([0 if isinstance(it, tuple) else it for it in items], np.int64)
        return cls(items, ids, np.array(positions, np.int64), positions[-1] + 1 if positions else 0)

    @property
    def num_visual(self) -> int:
        return len(self.positions)

    @property
    def num_text(self) -> int:
        return len(self.items) - len(self.positions)

    def tail(self, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, visual rows, positions relative to `start`) of the positions from `start` on."""
        rows = np.flatnonzero(self.positions >= start).astype(np.int64)
        return self.ids[start:], rows, (self.positions[rows] - start)[:, None]


def num_rows(visual) -> int:
    """Rows of pooled visual tokens: an OrtValue (shape() is a method), an array or a DeviceTensor."""
    shape = visual.shape() if callable(visual.shape) else visual.shape
    return int(shape[0])


class Splicer:
    """The splice graph on the LLM's device, with the decoder's device copy of the embedding table."""

    def __init__(self, path, table: ort.OrtValue, device: str):
        provider = "cpu" if device == "cpu" else "cuda"
        self.session = ort.InferenceSession(str(path), sess_options=session_options(provider),
                                            providers=session_providers(provider))
        self.device, self.table = device, table
        self.visual_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}[
            next(i.type for i in self.session.get_inputs() if i.name == "visual")]
        self.binding = self.session.io_binding()

    def embeds(self, plan: SplicePlan, visual, start: int = 0) -> ort.OrtValue:
        """Embeddings [1, L - start, D] on the device of the plan's positions from `start` on.
        `visual`: the pooled tokens [N, D]: an OrtValue on this device (bound as is), a DeviceTensor of
        an engine on this device (bound by its pointer), else copied through the host (a numpy array;
        a fake TensorRT engine's buffer in the tests, whose LLM runs on the CPU)."""
        ids, rows, positions = plan.tail(start)
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        keep = [self._value(ids), self._value(rows), self._value(positions)]
        b.bind_ortvalue_input("ids", keep[0])
        b.bind_ortvalue_input("rows", keep[1])
        b.bind_ortvalue_input("positions", keep[2])
        b.bind_ortvalue_input("table", self.table)
        if isinstance(visual, ort.OrtValue) and visual.device_name().lower() == self.device:
            b.bind_ortvalue_input("visual", visual)
        elif hasattr(visual, "ptr") and getattr(getattr(visual, "engine", None), "device", None) == self.device:
            # a TensorRT DeviceTensor on this device: read in place
            b.bind_input("visual", self.device, 0, np.dtype(visual.dtype), list(visual.shape), visual.ptr)
        else:  # host tokens, or tokens on another device: through the host (never on sfedge's own paths)
            host = visual if isinstance(visual, np.ndarray) else visual.numpy()
            keep.append(self._value(np.ascontiguousarray(host, dtype=self.visual_dtype)))
            b.bind_ortvalue_input("visual", keep[-1])
        b.bind_output("embeds", self.device, 0)
        self.session.run_with_iobinding(b)
        return b.get_outputs()[0]

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)
