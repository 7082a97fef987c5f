"""sfedge.runtime.video: frame counts without decoding, SPEC 2 sampling, seek == sequential."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime import video
from sfedge.runtime.video import count_frames, load_video
from sfedge.spec import sample_frame_indices
from sfedge.synthetic import encoder_for, make_clip, make_image_dir, read_marker, render_frame

W, H = 160, 96  # small clips keep the file fast; the marker still has 13-pixel blocks


def _clip(tmp_path_factory, name: str, num_frames: int, codec: str | None = None, gop: int = 12):
    path = tmp_path_factory.mktemp("clips") / name
    try:
        encoder_for(path, codec)
    except SfedgeError as e:
        pytest.skip(str(e))
    return make_clip(path, num_frames, W, H, codec=codec, gop=gop)


def _header_count(path) -> int:
    with av.open(str(path)) as c:
        return c.streams.video[0].frames


def _decoded_count(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture(scope="module")
def mp4_120(tmp_path_factory):
    return _clip(tmp_path_factory, "gop12.mp4", 120)


@pytest.mark.parametrize("name", ["a.webm", "a.mkv"])
def test_count_without_header_count(tmp_path_factory, name):
    path = _clip(tmp_path_factory, name, 37)
    assert _header_count(path) == 0  # so counting really comes from demuxed packets
    assert count_frames(path) == _decoded_count(path) == 37


@pytest.mark.parametrize("name,codec", [("a.mp4", None), ("a.mov", None), ("a.avi", None), ("h.mp4", "hevc"), ("h.mkv", "hevc"),
                                        ("m.mp4", "mpeg4"), ("f.mkv", "ffv1")])
def test_count(tmp_path_factory, name, codec):
    path = _clip(tmp_path_factory, name, 29, codec)
    assert count_frames(path) == _decoded_count(path) == 29


def test_count_variable_frame_rate(tmp_path):
    """Irregular timestamps (VFR) in mkv: counted by packets, sampled by pts, frames match."""
    path, durations = tmp_path / "vfr.mkv", [1, 3, 2, 7, 1, 1, 5, 2] * 5
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"x264-params": "keyint=6:scenecut=0:bframes=2"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 100)
        pts = np.concatenate([[0], np.cumsum(durations)[:-1]])
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(render_frame(i, W, H), format="rgb24")
            frame.pts, frame.time_base = int(p), stream.codec_context.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert _header_count(path) == 0
    assert count_frames(path) == len(durations)
    seek, seq = load_video(path, 6, seek=True), load_video(path, 6, seek=False)
    assert [read_marker(f) for f in seek.frames] == seek.indices == seq.indices
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, seq.frames))


def test_short_video_keeps_spec_quirk(tmp_path_factory):
    v = load_video(_clip(tmp_path_factory, "seven.mp4", 7))
    assert v.total == 7 and v.indices == [0, 1, 2, 3, 3, 4, 5]
    assert [read_marker(f) for f in v.frames] == v.indices
    assert v.frames[0].shape == (H, W, 3) and v.frames[0].dtype == np.uint8


def test_long_video_sampling_and_frames_match_rendered(tmp_path_factory):
    v = load_video(_clip(tmp_path_factory, "long.mp4", 300))
    assert v.total == 300 and v.indices[:3] == [3, 9, 15] and v.indices[-1] == 296 and len(v.frames) == 50
    assert [read_marker(f) for f in v.frames] == v.indices
    for n, frame in zip(v.indices[::10], v.frames[::10]):  # lossy H.264: close to what was written
        diff = np.abs(frame.astype(np.float32) - render_frame(n, W, H)).mean()
        assert diff < 6.0, (n, diff)


def test_clip_has_b_frames_and_several_gops(mp4_120):
    with av.open(str(mp4_120)) as c:
        packets = [(p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]
    pts = [p for p, _ in packets]
    assert pts != sorted(pts), "no B-frames: decode order equals presentation order"
    assert sum(k for _, k in packets) == 10


@pytest.mark.parametrize("num_frames", [5, 13, 50])
def test_seek_equals_sequential(mp4_120, monkeypatch, num_frames):
    seeks = []
    real_seek = video._seek
    monkeypatch.setattr(video, "_seek", lambda *a: (seeks.append(a[2]), real_seek(*a)))
    seek = load_video(mp4_120, num_frames, seek=True)
    assert len(seeks) > 1  # really seeked, more than once
    seq = load_video(mp4_120, num_frames, seek=False)
    assert seek.indices == seq.indices == sample_frame_indices(120, num_frames)
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, seq.frames))
    assert [read_marker(f) for f in seek.frames] == seek.indices


def test_seek_that_overshoots_falls_back_to_sequential(mp4_120, monkeypatch):
    real_seek = video._seek
    monkeypatch.setattr(video, "_seek", lambda c, s, pts: real_seek(c, s, pts + 10**6))  # lands past every target
    v = load_video(mp4_120, 5, seek=True)
    assert [read_marker(f) for f in v.frames] == v.indices == sample_frame_indices(120, 5)


@pytest.mark.parametrize("name", ["s.webm", "s.mkv", "s.avi"])
def test_seek_equals_sequential_other_containers(tmp_path_factory, name):
    path = _clip(tmp_path_factory, name, 90)
    seek, seq = load_video(path, 7, seek=True), load_video(path, 7, seek=False)
    assert [read_marker(f) for f in seek.frames] == seek.indices == seq.indices
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, seq.frames))


def test_only_sampled_frames_are_converted(tmp_path_factory, monkeypatch):
    path = _clip(tmp_path_factory, "600.mp4", 600, gop=24)
    converted = []
    real = video._to_rgb
    monkeypatch.setattr(video, "_to_rgb", lambda f: (converted.append(f.pts), real(f))[1])
    v = load_video(path)  # auto mode: 50 wanted < 25 keyframes is false -> sequential
    assert v.total == 600 and len(converted) == len(set(v.indices)) == 50
    assert [read_marker(f) for f in v.frames] == v.indices
    converted.clear()
    v = load_video(path, 8)  # 8 < 25 keyframes -> seeking
    assert len(converted) == 8 and [read_marker(f) for f in v.frames] == v.indices


def test_image_dir(tmp_path, monkeypatch):
    d = make_image_dir(tmp_path / "frames", num_frames=60, width=W, height=H, seed=3)
    (d / "notes.txt").write_text("not a frame")
    opened = []
    real_open = video.Image.open
    monkeypatch.setattr(video.Image, "open", lambda p, *a, **k: (opened.append(p), real_open(p, *a, **k))[1])
    v = load_video(d, 8)
    assert count_frames(d) == v.total == 60 and v.indices == sample_frame_indices(60, 8)
    assert len(opened) == 8
    assert all(np.array_equal(f, render_frame(n, W, H, seed=3)) for n, f in zip(v.indices, v.frames))


def test_errors(tmp_path):
    with pytest.raises(SfedgeError, match="not found"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SfedgeError, match="no image files"):
        count_frames(tmp_path / "empty")
    text = tmp_path / "notes.mp4"
    text.write_text("hello, I am not a video\n" * 100)
    with pytest.raises(SfedgeError, match="not a readable video"):
        load_video(text)
    audio = tmp_path / "tone.mka"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(SfedgeError, match="no video stream"):
        count_frames(audio)
    clip = make_clip(tmp_path / "whole.mp4", 24, W, H)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # moov atom lost
    with pytest.raises(SfedgeError) as err:
        load_video(cut)
    assert "\n" not in str(err.value)
