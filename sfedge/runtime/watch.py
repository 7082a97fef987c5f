"""Live video: source -> fps sampler -> (frame skipping) -> encoder -> ring buffer; questions are
answered from the buffer.

Data flows one way. A reader thread pulls (t, frame) from the source (sources.py), paces a file at
its real rate in realtime mode, samples frames at `fps` on the source's timestamps and hands them,
with the questions that fall due, to the consumer (the caller's thread) through a `Handoff`. The
consumer resizes each sampled frame once, skips it when it is unchanged (frame_diff.py), else
encodes it once (the encoder stage) and appends its features to a ring buffer of `window` frames.
A question is answered from the buffer: SlowFast pooling over the buffered frames in arrival order,
then the LLM (the answer stage, `Pipeline.window` + `stream_visual`), so its cost does not grow
with the stream's length, and several questions at one instant share one prefill of the frames.

Backpressure: in realtime mode the handoff holds at most one frame; a newer frame replaces it and
the replaced one is counted in `frames_dropped` (the encoder, or an answer, fell behind). Without
realtime the reader waits for the consumer instead, so nothing is dropped and runs are reproducible.

Questions: scheduled at source times (`--questions-file`, `--question --every`): a question at t is
answered over the frames with timestamps <= t, before any later frame is added; questions of a
file timed after the end of the stream are answered over the last window. Questions on stdin
arrive while the stream runs (t is the source time of the latest frame read then); a question that
comes before the first frame is answered once that frame is in the buffer. TTFT counts from
a question's arrival (the reader reaching its time, or its line being read) to the first token.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SfedgeError
from ..spec import GenerationSpec
from .encoder import frame_key
from .frame_diff import FrameSkipper
from .preprocess import resize_frames
from .sources import OPEN_TIMEOUT_S, Source


@dataclass
class Question:
    question: str
    options: list[str] | None = None
    t: float | None = None  # source seconds it is asked at (None: when it arrives, stdin)
    arrival: float = 0.0  # perf_counter time it arrived


@dataclass
class Stats:
    frames_encoded: int = 0
    frames_skipped: int = 0  # unchanged: reused the last encoded frame's features
    frames_dropped: int = 0  # realtime backpressure
    answers: int = 0

    @property
    def frames_seen(self) -> int:
        """Sampled frames: each is encoded, skipped or dropped."""
        return self.frames_encoded + self.frames_skipped + self.frames_dropped

    def to_dict(self) -> dict:
        return {"frames_seen": self.frames_seen, **asdict(self)}


class FpsSampler:
    """Takes frames `1/fps` seconds apart on source timestamps (the first frame, then the first at or
    after each next tick; after a gap the ticks restart from the frame taken)."""

    def __init__(self, fps: float):
        if not fps > 0:
            raise SfedgeError(f"--fps must be > 0, got {fps}")
        self.period, self.next = 1.0 / fps, None

    def take(self, t: float) -> bool:
        if self.next is not None and t < self.next - 1e-9:
            return False
        self.next = t + self.period if self.next is None or t >= self.next + self.period else self.next + self.period
        return True


class FrameWindow:
    """The ring buffer: the last `size` frames' (content key, features [576, D]), in arrival order."""

    def __init__(self, size: int):
        if size < 1:
            raise SfedgeError(f"--window must be >= 1, got {size}")
        self.entries: deque[tuple[bytes, np.ndarray]] = deque(maxlen=size)

    def push(self, key: bytes, features: np.ndarray) -> None:
        self.entries.append((key, features))

    def __len__(self) -> int:
        return len(self.entries)

    def snapshot(self) -> tuple[list[bytes], list[np.ndarray]]:
        return [k for k, _ in self.entries], [f for _, f in self.entries]


class Watcher:
    """The consumer's state: frame skipping, the encoder, the ring buffer, answering."""

    def __init__(self, pipe, *, window: int = 50, skip_threshold: float | None = None,
                 gen: GenerationSpec = GenerationSpec(), encoder=None):
        """`encoder`: what encodes resized frames (`encode_resized`); the pipeline's by default."""
        if pipe.max_frames and window > pipe.max_frames:
            raise SfedgeError(f"--window {window} exceeds the engines' max_frames {pipe.max_frames}")
        self.pipe, self.gen = pipe, gen
        self.encoder = encoder or pipe.encoder
        self.window = FrameWindow(window)
        self.skipper = FrameSkipper(skip_threshold)
        self.stats = Stats()
        self.timings: dict[str, float] = {}  # preprocess, frame_diff and vision ms, summed over frames
        self._last: tuple[bytes, np.ndarray] | None = None  # the last encoded frame

    def add(self, frame: np.ndarray) -> bool:
        """Put one sampled frame (HxWx3 uint8 RGB) into the window; True if it was encoded."""
        t = time.perf_counter()
        resized = resize_frames([frame], self.pipe.spec.preprocess, workers=1)
        self.timings["preprocess"] = self.timings.get("preprocess", 0.0) + (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        skip = self._last is not None and self.skipper.skip(resized[0])
        if self.skipper.threshold is not None:
            self.timings["frame_diff"] = self.timings.get("frame_diff", 0.0) + (time.perf_counter() - t) * 1e3
        if skip:
            self.window.push(*self._last)  # same key, same features: equal features <=> equal keys
            self.stats.frames_skipped += 1
            return False
        features = np.asarray(self.encoder.encode_resized(resized, timings=self.timings))[0]
        self._last = (frame_key(resized[0]), features)
        self.window.push(*self._last)
        self.skipper.encoded(resized[0])
        self.stats.frames_encoded += 1
        return True

    def answer(self, q: Question, on_token: Callable[[str], None] | None = None):
        """Answer over the frames in the window now -> AskResult (ttft from `q.arrival`)."""
        keys, features = self.window.snapshot()
        if not keys:
            raise SfedgeError("no frames in the window yet")
        visual = self.pipe.window(keys, lambda: np.stack(features))
        stream = self.pipe.stream_visual(visual, q.question, q.options, self.gen, t0=q.arrival or None)
        while True:
            try:
                piece = next(stream)
            except StopIteration as done:
                self.stats.answers += 1
                return done.value
            if on_token is not None:
                on_token(piece)


class Handoff:
    """Reader(s) -> consumer: events in order, at most one frame waiting. With `drop`, a newer frame
    replaces the waiting one (counted); without, the reader waits until the consumer takes it."""

    def __init__(self, drop: bool, producers: int = 1):
        self.drop, self.producers = drop, producers
        self.cond = threading.Condition()
        self.events: deque = deque()
        self.frame_waiting = None  # the waiting frame event (identity)
        self.dropped = 0
        self.stopped = False
        self.source_t = 0.0  # the latest source time read
        self.error: BaseException | None = None

    def put_frame(self, t: float, frame: np.ndarray) -> None:
        with self.cond:
            if self.frame_waiting is not None:
                if self.drop:
                    for i, ev in enumerate(self.events):
                        if ev is self.frame_waiting:
                            del self.events[i]
                            break
                    self.dropped += 1
                else:
                    while self.frame_waiting is not None and not self.stopped:
                        self.cond.wait()
            ev = ("frame", t, frame)
            self.frame_waiting = ev
            self.events.append(ev)
            self.cond.notify_all()

    def put_question(self, q: Question) -> None:
        with self.cond:
            self.events.append(("question", q))
            self.cond.notify_all()

    def done(self, error: BaseException | None = None) -> None:
        """One producer finished (with the error that ended it, if any)."""
        with self.cond:
            self.producers -= 1
            self.error = self.error or error
            self.cond.notify_all()

    def get(self):
        """The next event; None when every producer is done and nothing is left."""
        with self.cond:
            while not self.events and self.producers > 0 and not self.stopped:
                self.cond.wait()
            if not self.events or self.stopped:
                return None
            ev = self.events.popleft()
            if ev is self.frame_waiting:
                self.frame_waiting = None
                self.cond.notify_all()
            return ev

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class Schedule:
    """Questions at source times, in time order: from a questions file, or one question every S s."""

    def __init__(self, questions: list[Question] = (), every: float | None = None, question: str | None = None):
        self.pending = deque(sorted(questions, key=lambda q: q.t))
        self.every, self.question, self.next_t = every, question, every

    def due(self, t: float) -> Iterator[Question]:
        """Questions timed before source time t."""
        while self.pending and self.pending[0].t < t:
            yield self.pending.popleft()
        while self.every is not None and self.next_t < t:
            yield Question(self.question, None, self.next_t)
            self.next_t += self.every

    def rest(self) -> Iterator[Question]:
        """At the end of the stream: the file's questions timed after it (not the periodic ones)."""
        while self.pending:
            yield self.pending.popleft()


def load_questions(path: str | Path) -> list[Question]:
    """A questions file: one JSON object a line, {"t": seconds, "question": ..., "options": [...]?}."""
    from .pipeline import parse_options

    path = Path(path)
    if not path.is_file():
        raise SfedgeError(f"questions file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            t, text, options = float(d["t"]), str(d["question"]), d.get("options")
        except (ValueError, KeyError, TypeError) as e:
            raise SfedgeError(f"{path}:{n}: expected {{\"t\": seconds, \"question\": text, \"options\": [...]}} "
                              f"({e.__class__.__name__}: {e})") from None
        if options is not None:
            if not isinstance(options, list):
                raise SfedgeError(f"{path}:{n}: options must be a list of strings")
            parse_options("|".join(str(o) for o in options))  # the same checks as --options
            options = [str(o) for o in options]
        out.append(Question(text, options, t))
    return out


def parse_stdin_line(line: str) -> Question | None:
    """A line of stdin: plain text, or {"question": ..., "options": [...]?}; None for a blank line."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            d = json.loads(line)
            return Question(str(d["question"]), [str(o) for o in d["options"]] if d.get("options") else None)
        except (ValueError, KeyError, TypeError):
            pass
    return Question(line)


def read_source(source: Source, handoff: Handoff, sampler: FpsSampler, schedule: Schedule, realtime: bool) -> None:
    """The reader thread's work: pace, sample, hand frames and due questions over."""
    error = None
    try:
        start = None
        for t, frame in source.frames():
            if handoff.stopped:
                break
            if realtime and not source.live:  # play a file at its real rate
                now = time.perf_counter()
                start = now - t if start is None else start
                if start + t > now:
                    time.sleep(start + t - now)
            handoff.source_t = t
            for q in schedule.due(t):
                q.arrival = time.perf_counter()
                handoff.put_question(q)
            if sampler.take(t):
                handoff.put_frame(t, frame)
        for q in schedule.rest():
            q.arrival = time.perf_counter()
            handoff.put_question(q)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which reports it
        error = e
    handoff.done(error)


def read_stdin(stream, handoff: Handoff) -> None:
    """The stdin thread: each line is a question, asked when it is read."""
    try:
        for line in stream:
            if handoff.stopped:
                break
            q = parse_stdin_line(line)
            if q is not None:
                q.t, q.arrival = handoff.source_t, time.perf_counter()
                handoff.put_question(q)
    finally:
        handoff.done()


@dataclass
class WatchResult:
    stats: Stats
    interrupted: bool = False
    error: BaseException | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {"summary": self.stats.to_dict()}


def watch(watcher: Watcher, source: Source, schedule: Schedule, *, fps: float = 2.0, realtime: bool = True,
          stdin=None, on_answer: Callable[[dict, object], None] | None = None,
          on_token_for: Callable[[Question], Callable[[str], None] | None] | None = None) -> WatchResult:
    """Run until the stream (and stdin, if given) ends or Ctrl-C. `on_answer(record, result)` gets
    each answer's JSON record (the `--json` line) and its AskResult (None when it failed: the record
    then has "error"). Live sources always run in realtime. The source is closed at the end."""
    realtime = realtime or source.live
    handoff = Handoff(drop=realtime, producers=2 if stdin is not None else 1)
    sampler, stats = FpsSampler(fps), watcher.stats
    threads = [threading.Thread(target=read_source, args=(source, handoff, sampler, schedule, realtime),
                                name="sfedge-watch-reader", daemon=True)]
    if stdin is not None:
        threads.append(threading.Thread(target=read_stdin, args=(stdin, handoff), name="sfedge-watch-stdin",
                                        daemon=True))
    for th in threads:
        th.start()
    interrupted = False
    early: list[Question] = []  # questions that came before the first frame: answered after it

    def answer(q: Question) -> None:
        record = {"t": round(q.t, 3) if q.t is not None else None, "question": q.question}
        try:
            result = watcher.answer(q, on_token_for(q) if on_token_for else None)
        except SfedgeError as e:
            record["error"] = str(e)
            result = None
        else:
            record.update(answer=result.answer, window_frames=len(watcher.window),
                          ttft_ms=round(result.timings_ms["ttft"], 3), total_ms=round(result.timings_ms["total"], 3))
            if q.options:
                record.update(options=q.options, choice=result.choice)
        record.update({k: v for k, v in stats.to_dict().items() if k != "answers"})
        if on_answer is not None:
            on_answer(record, result)

    try:
        while (ev := handoff.get()) is not None:
            stats.frames_dropped = handoff.dropped
            if ev[0] == "question":
                if len(watcher.window):
                    answer(ev[1])
                else:
                    early.append(ev[1])
                continue
            watcher.add(ev[2])
            while early:
                answer(early.pop(0))
        while early:  # the stream ended without a frame: each gets its error line
            answer(early.pop(0))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        handoff.stop()
        threads[0].join(timeout=OPEN_TIMEOUT_S + 1)
        if not threads[0].is_alive():  # never close a source under a read in progress
            source.close()
    stats.frames_dropped = handoff.dropped
    error = handoff.error if not isinstance(handoff.error, KeyboardInterrupt) else None
    return WatchResult(stats, interrupted, error)
