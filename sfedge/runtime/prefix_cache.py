"""Prefix reuse: a new prompt is prefilled only after the longest beginning it shares with a prompt
whose keys and values are still at hand.

SPEC 5's prompts put the ~3,700 visual tokens before the question, so a second question about the
same frames shares everything up to the question with the first: its prefill shrinks from thousands
of positions to a few dozen. Positions are compared as `items`: text positions by token id, visual
positions by (content key of the frames and the engines' settings, index) — never by file name.

Two places hold prefixes:
* the decoder's own KV buffer, which still holds the last prompt (and its answer): reusing it costs
  nothing, it is simply not overwritten;
* saved copies: when a prompt would overwrite the visual tokens of the one before it (a question
  about other frames), those positions are first copied to host memory, least recently used first
  out, within `max_bytes` (0: keep none). A later question about those frames copies them back,
  which costs far less than prefilling them again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .generate import Decoder


def common_prefix(a: Sequence, b: Sequence) -> int:
    """The number of leading items `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """Chooses how much of a new prompt need not be prefilled, and sets the decoder's cache to it."""

    def __init__(self, decoder: Decoder, max_bytes: int, enabled: bool = True):
        """`enabled` False: every prompt is prefilled whole (benchmarks of a cold prefill)."""
        self.dec, self.max_bytes, self.enabled = decoder, max(0, int(max_bytes)), enabled
        self.saved: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()  # items -> KV, LRU first
        self.keep = 0  # leading positions of the buffer's prompt worth saving (through its visual tokens)
        self.hits = 0  # prompts that reused a prefix (in place or restored)
        self.reused_tokens = 0

    @property
    def saved_bytes(self) -> int:
        return sum(a.nbytes for snap in self.saved.values() for a in snap.values())

    def prepare(self, items: Sequence, keep: int) -> int:
        """Make the decoder's cache hold the longest available prefix of `items` (at most all but the
        last item: the last position must run, its logits start the answer) and return its length;
        the caller prefills the rest. `keep`: this prompt's leading positions worth saving later."""
        if not self.enabled:
            return 0
        limit = len(items) - 1
        in_place = min(common_prefix(self.dec.items, items), limit)
        best, source = in_place, None
        for key in self.saved:
            n = min(common_prefix(key, items), limit)
            if n > best:
                best, source = n, key
        self._save_buffer(overwritten_from=in_place)
        if source is not None:
            self.saved.move_to_end(source)
            self.dec.restore(self.saved[source], list(source))
        self.keep = keep
        if best:
            self.hits += 1
            self.reused_tokens += best
        return best

    def _save_buffer(self, overwritten_from: int) -> None:
        """Copy the buffer's worth-keeping prefix out before positions inside it are overwritten."""
        keep = min(self.keep, self.dec.length)
        size = keep * self.dec.bytes_per_token
        if overwritten_from >= keep or keep == 0 or size > self.max_bytes:
            return
        key = tuple(self.dec.items[:keep])
        if key in self.saved:
            self.saved.move_to_end(key)
            return
        while self.saved and self.saved_bytes + size > self.max_bytes:
            self.saved.popitem(last=False)
        self.saved[key] = self.dec.snapshot(keep)

    def clear(self) -> None:
        self.saved.clear()
