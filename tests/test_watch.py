"""`sfedge watch`: live video over a file source (and a fake camera), on tiny fp32 engines.

Each sampled frame is encoded at most once; an answer over a full window equals the explicit-frames
answer (`ask_frames`, a cold Pipeline) on the same frames, token for token; several questions at one
instant share the window's prefill (token-identical); backpressure drops frames a slow encoder
cannot take; memory stays flat over a run 20x longer than the window; the camera path runs on a
fake capture device (the real `CameraSource`, with OpenCV's VideoCapture replaced)."""

from __future__ import annotations

import json
import time

import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime.encoder import frame_key
from sfedge.runtime.pipeline import Pipeline
from sfedge.runtime.sources import AvSource, CameraSource, SourceLost, open_source
from sfedge.runtime.watch import FpsSampler, Question, Schedule, Watcher, load_questions, watch
from sfedge.spec import GenerationSpec
from sfedge.synthetic import make_clip, render_frame

GEN = GenerationSpec(max_new_tokens=8)
Q1, Q2 = "What is moving in the video?", "Which direction does the red circle go?"


class CountingEncoder:
    """The pipeline's encoder, recording the content key of every frame it encodes; `delay` makes it
    slow (backpressure)."""

    def __init__(self, encoder, delay: float = 0.0):
        self.encoder, self.delay, self.keys, self.batch_sizes = encoder, delay, [], []

    def encode_resized(self, resized, **kw):
        self.keys += [frame_key(f) for f in resized]
        self.batch_sizes.append(len(resized))
        if self.delay:
            time.sleep(self.delay)
        return self.encoder.encode_resized(resized, **kw)


@pytest.fixture(scope="module")
def live_clip(tmp_path_factory):
    """4 s at 24 fps, 320x240: 16 frames at --fps 4."""
    return make_clip(tmp_path_factory.mktemp("watch") / "live.mp4", num_frames=96, fps=24, seed=3)


@pytest.fixture(scope="module")
def pipe(engines_fp32):
    return Pipeline(engines_fp32, prefix_cache_mb=0)


def run_watch(pipe, clip, questions, *, fps=4.0, window=6, realtime=False, encoder=None, skip=None):
    watcher = Watcher(pipe, window=window, skip_threshold=skip, gen=GEN, encoder=encoder)
    answers = []
    result = watch(watcher, open_source(str(clip)), Schedule(questions), fps=fps, realtime=realtime,
                   on_answer=lambda record, res: answers.append((record, res)))
    return watcher, answers, result


def sampled_frames(clip, fps):
    sampler = FpsSampler(fps)
    return [f for t, f in AvSource(str(clip), live=False).frames() if sampler.take(t)]


def test_each_frame_encoded_once_and_window_equals_explicit_frames(pipe, engines_fp32, live_clip):
    spy = CountingEncoder(pipe.encoder)
    questions = [Question(Q1, t=1.0), Question(Q2, t=1.0), Question(Q1, t=99.0)]  # 99: after the end
    watcher, answers, result = run_watch(pipe, live_clip, questions, encoder=spy)
    frames = sampled_frames(live_clip, 4.0)
    assert result.error is None and not result.interrupted
    assert result.stats.frames_seen == len(frames) == 16 and result.stats.frames_dropped == 0
    # every sampled frame encoded exactly once, one at a time, answers encode nothing
    assert len(spy.keys) == len(set(spy.keys)) == result.stats.frames_encoded == 16
    assert set(spy.batch_sizes) == {1}
    (r1, a1), (r2, a2), (r3, a3) = answers
    assert r1["frames_seen"] == 5 and r1["window_frames"] == 5  # frames at 0, .25, .5, .75, 1.0 s
    assert r3["window_frames"] == 6 and r3["frames_seen"] == 16
    for record in (r1, r2, r3):
        assert {"t", "question", "answer", "window_frames", "ttft_ms", "total_ms", "frames_seen", "frames_encoded",
                "frames_skipped", "frames_dropped"} <= set(record)
        assert 0 < record["ttft_ms"] <= record["total_ms"]
    # the second question at one instant prefilled only its question, token-identical to a cold run
    assert a2.reused_prompt_tokens >= a2.num_visual_tokens and a2.timings_ms["slowfast"] == 0
    cold = Pipeline(engines_fp32, prefix_cache_mb=0, prefix_reuse=False)
    assert a2.token_ids == cold.ask_frames(frames[:5], Q2, gen=GEN).token_ids
    # a full window equals the explicit-frames answer over the same (last 6) frames
    assert a3.token_ids == cold.ask_frames(frames[-6:], Q1, gen=GEN).token_ids
    assert a1.token_ids == cold.ask_frames(frames[:5], Q1, gen=GEN).token_ids


def test_skipped_frames_reuse_the_encoded_frame(pipe, tmp_path):
    """A static clip: with a threshold every frame after the first reuses its features (same key);
    the answer equals the explicit-frames answer over copies of the encoded frame."""
    import av

    path = tmp_path / "static.mkv"
    still = render_frame(5)
    with av.open(str(path), "w") as out:  # lossless, so every decoded frame is the same
        stream = out.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "bgr0"
        for _ in range(16):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(still, format="rgb24")))
        out.mux(stream.encode(None))
    spy = CountingEncoder(pipe.encoder)
    watcher, answers, result = run_watch(pipe, path, [Question(Q1, t=99.0)], fps=8, window=4, encoder=spy, skip=1.0)
    assert result.stats.frames_encoded == 1 and result.stats.frames_skipped == 15 and len(spy.keys) == 1
    assert len(set(watcher.window.snapshot()[0])) == 1
    first = sampled_frames(path, 8)[0]
    cold = Pipeline(pipe.root, prefix_cache_mb=0, prefix_reuse=False)
    assert answers[0][1].token_ids == cold.ask_frames([first] * 4, Q1, gen=GEN).token_ids


def test_backpressure_drops_frames_a_slow_encoder_cannot_take(pipe, live_clip):
    slow = CountingEncoder(pipe.encoder, delay=0.5)  # 2 frames/s against 8 sampled per second
    _, _, rt = run_watch(pipe, live_clip, [], fps=8.0, realtime=True, encoder=slow)
    s = rt.stats
    assert s.frames_dropped > 0 and s.frames_encoded + s.frames_dropped == s.frames_seen
    assert s.frames_encoded == len(slow.keys) < s.frames_seen <= 32
    _, _, nrt = run_watch(pipe, live_clip, [], fps=2.0, realtime=False, encoder=CountingEncoder(pipe.encoder, 0.2))
    assert nrt.stats.frames_dropped == 0 and nrt.stats.frames_encoded == nrt.stats.frames_seen == 8


def test_memory_is_flat_over_a_run_20x_the_window(pipe, tmp_path):
    psutil = pytest.importorskip("psutil")
    clip = make_clip(tmp_path / "long.mp4", num_frames=160, width=640, height=480, fps=16, seed=4)
    proc = psutil.Process()
    window, marks = 4, {}
    watcher = Watcher(pipe, window=window, gen=GenerationSpec(max_new_tokens=2))

    def on_answer(record, result):
        marks[record["t"]] = proc.memory_info().rss

    questions = [Question(Q1, t=t) for t in (1.0, 2.0, 4.0, 6.0, 8.0, 9.9)]
    result = watch(watcher, open_source(str(clip)), Schedule(questions), fps=8.0, realtime=False, on_answer=on_answer)
    assert result.stats.frames_seen == 80 == 20 * window and len(watcher.window) == window
    warm, end = marks[2.0], marks[9.9]  # after the window filled and the first answers ran
    assert end < warm * 1.05, f"RSS grew from {warm / 2**20:.1f} to {end / 2**20:.1f} MiB"


class FakeCapture:
    """Stands in for cv2.VideoCapture: BGR frames at ~30 fps; `dies_after` frames, then read()
    fails; `reopenable`: how many later opens succeed."""

    opened = 0

    def __init__(self, index, frames=24, dies_after=None, reopenable=0):
        FakeCapture.opened += 1
        self.ok = index == 0 and (FakeCapture.opened == 1 or FakeCapture.opened - 1 <= reopenable)
        self.n, self.frames, self.dies_after, self.released = 0, frames, dies_after, False

    def isOpened(self):
        return self.ok

    def read(self):
        if self.n >= self.frames or (self.dies_after is not None and self.n >= self.dies_after):
            return False, None
        time.sleep(1 / 30)
        self.n += 1
        return True, render_frame(self.n)[..., ::-1].copy()

    def release(self):
        self.released = True


def test_camera_through_a_fake_capture_device_with_reconnect(pipe):
    FakeCapture.opened = 0
    made = []

    def capture(index):
        made.append(FakeCapture(index, frames=12, dies_after=12, reopenable=1))
        return made[-1]

    with pytest.raises(SfedgeError, match="cannot open camera 3"):
        CameraSource(3, capture=capture)
    FakeCapture.opened = 0
    made.clear()
    source = open_source("0", capture=capture, waits=(0.0, 0.0))
    assert isinstance(source, CameraSource) and source.live
    watcher = Watcher(pipe, window=4, gen=GEN)
    answers = []
    result = watch(watcher, source, Schedule(every=0.5, question=Q1), fps=10, realtime=False,
                   on_answer=lambda r, res: answers.append(r))
    # 12 frames, the device dies, one reopen succeeds (12 more), the next fails twice: SourceLost
    assert isinstance(result.error, SourceLost) and source.reconnects == 3
    assert all(c.released for c in made)
    assert result.stats.frames_seen >= 4 and answers and all("answer" in r for r in answers)
    ts = [r["t"] for r in answers]
    assert ts == sorted(ts)


def test_cli_json_lines_and_errors(engines_fp32, live_clip, tmp_path, capsys):
    from sfedge.cli import main

    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"t": 0.5, "question": Q1}) + "\n" +
                     json.dumps({"t": 2.0, "question": "Which?", "options": ["red", "blue"]}) + "\n")
    assert load_questions(qfile)[1].options == ["red", "blue"]
    rc = main(["watch", str(engines_fp32), "--source", str(live_clip), "--fps", "2", "--window", "3",
               "--questions-file", str(qfile), "--no-realtime", "--max-new-tokens", "4", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(lines) == 3
    assert lines[1]["options"] == ["red", "blue"] and "choice" in lines[1]
    assert lines[-1] == {"summary": {"frames_seen": 8, "frames_encoded": 8, "frames_skipped": 0,
                                     "frames_dropped": 0, "answers": 2}}
    assert main(["watch", str(engines_fp32), "--source", str(tmp_path / "nope.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source not found" in err[0]
    qfile.write_text('{"t": "x"}\n')
    assert main(["watch", str(engines_fp32), "--source", str(live_clip), "--questions-file", str(qfile)]) == 2


def test_stdin_questions_and_ctrl_c_end_cleanly(pipe, live_clip):
    """A stdin question read before the first frame waits for it; Ctrl-C (here raised while the
    first answer is handled) ends the run with its counts and the source closed."""
    import io

    watcher = Watcher(pipe, window=4, gen=GEN)
    source = open_source(str(live_clip))
    seen = []

    def on_answer(record, result):
        seen.append(record)
        raise KeyboardInterrupt

    result = watch(watcher, source, Schedule(), fps=4.0, realtime=False, stdin=io.StringIO(Q1 + "\n\n"),
                   on_answer=on_answer)
    assert result.interrupted and result.error is None and source.container is None
    assert len(seen) == 1 and seen[0]["window_frames"] >= 1 and seen[0]["answer"] is not None
    assert result.summary()["summary"]["answers"] == 1
