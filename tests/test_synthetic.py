"""sfedge.synthetic and `sfedge make-clip`: distinct, readable synthetic clips in every container."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from sfedge.cli import main
from sfedge.errors import SfedgeError
from sfedge.synthetic import MARKER_BITS, encoder_for, has_encoder, make_clip, make_image_dir, read_marker, render_frame

ENCODERS = ("libx264", "libx265", "mpeg4", "ffv1", "libvpx-vp9", "libvpx", "mjpeg")


def test_report_encoders():
    print("\nencoders in this PyAV build:", {name: has_encoder(name) for name in ENCODERS})
    assert not has_encoder("no-such-encoder")


def test_render_frame_is_deterministic_and_moves():
    a = render_frame(5, seed=0)
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_frame(5, seed=0))
    below_marker = slice(32, None)
    assert np.abs(a[below_marker].astype(int) - render_frame(6, seed=0)[below_marker]).mean() > 1  # consecutive frames differ
    assert np.abs(a[below_marker].astype(int) - render_frame(5, seed=1)[below_marker]).mean() > 10  # seeds differ


def test_marker_round_trip():
    for i in (0, 1, 2, 255, 600, 2**MARKER_BITS - 1):
        assert read_marker(render_frame(i, 160, 96, seed=i)) == i
    with pytest.raises(SfedgeError):
        render_frame(2**MARKER_BITS)
    with pytest.raises(SfedgeError):
        render_frame(0, 32, 32)


@pytest.mark.parametrize(
    "name,codec,encoder",
    [("a.mp4", None, "libx264"), ("a.mov", None, "libx264"), ("a.mkv", None, "libx264"), ("a.webm", None, "libvpx-vp9"),
     ("a.avi", None, "mjpeg"), ("h.mp4", "hevc", "libx265"), ("h.mkv", "hevc", "libx265"), ("v.webm", "vp8", "libvpx"),
     ("m.mp4", "mpeg4", "mpeg4"), ("f.mkv", "ffv1", "ffv1")],
)
def test_make_clip(tmp_path, name, codec, encoder):
    if not has_encoder(encoder):
        pytest.skip(f"{encoder} not in this PyAV build")
    assert encoder_for(name, codec) == encoder
    path = make_clip(tmp_path / name, num_frames=12, width=160, height=96, fps=12, codec=codec, seed=2)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (160, 96)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert [read_marker(f) for f in frames] == list(range(12))
    assert np.abs(frames[4].astype(np.float32) - render_frame(4, 160, 96, seed=2)).mean() < 8


def test_encoder_fallback(monkeypatch):
    monkeypatch.setattr("sfedge.synthetic.has_encoder", lambda name: name in ("mpeg4", "ffv1", "libvpx"))
    assert (encoder_for("a.mp4"), encoder_for("a.mkv"), encoder_for("a.webm")) == ("mpeg4", "ffv1", "libvpx")


def test_encoder_choice_errors():
    with pytest.raises(SfedgeError, match="extension"):
        encoder_for("clip.xyz")
    with pytest.raises(SfedgeError, match="no encoder"):
        encoder_for("clip.mp4", "no-such-codec")
    with pytest.raises(SfedgeError, match="even"):
        make_clip("/nonexistent/odd.mp4", width=161)


def test_make_image_dir(tmp_path):
    d = make_image_dir(tmp_path / "frames", num_frames=12, width=64, height=48, seed=1)
    names = sorted(p.name for p in d.iterdir())
    assert names[0] == "frame_00000.png" and names[-1] == "frame_00011.png" and len(names) == 12


def test_cli_make_clip(tmp_path, capsys):
    out = tmp_path / "c.mkv"
    assert main(["make-clip", str(out), "--frames", "6", "--size", "96x64", "--seed", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["path"] == str(out) and info["frames"] == 6 and (info["width"], info["height"]) == (96, 64)
    assert main(["make-clip", str(out)]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert main(["make-clip", str(tmp_path / "frames"), "--frames", "3", "--size", "64x48"]) == 0
    assert len(list((tmp_path / "frames").glob("*.png"))) == 3
    assert main(["make-clip", str(tmp_path / "x.mp4"), "--size", "big"]) == 2
