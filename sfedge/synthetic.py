"""Synthetic test clips: moving coloured shapes with the frame number drawn as a bit marker.

`render_frame(i)` draws frame i; `make_clip` encodes frames with PyAV; `make_image_dir` writes
them as PNG files; `read_marker` recovers a frame's number from its pixels (robust to lossy
codecs), so tests can tell exactly which frame a decoder returned.

For frame skipping (SPEC 8) `make_clip` also makes camera-like scenes (`render_scene`): "static"
(a still scene, as from a fixed camera), "moving-object" (the same scene with one small disc
crossing it), each with optional sensor-like noise (`noise`: Gaussian, sigma in 0-255 units,
independent per pixel, channel and frame) and H.264 at a chosen quality (`crf`).
"""

from __future__ import annotations

from pathlib import Path

try:
    import av
except ImportError:  # make_image_dir needs no PyAV; clips do
    av = None
import numpy as np
from PIL import Image

from .errors import SfedgeError

MARKER_BITS = 12  # frame numbers 0..4095, drawn as black/white blocks along the top edge

# Encoders to try, best first, per container extension; `codec=` names map the same way.
_ENCODERS_BY_EXT = {
    ".mp4": ("libx264", "mpeg4"),
    ".mov": ("libx264", "mpeg4"),
    ".mkv": ("libx264", "ffv1"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".avi": ("mjpeg",),
}
_ENCODERS_BY_CODEC = {"h264": ("libx264",), "hevc": ("libx265",), "vp9": ("libvpx-vp9",), "vp8": ("libvpx",)}


def has_encoder(name: str) -> bool:
    """True if this PyAV build can encode with `name` (e.g. "libx264")."""
    if av is None:
        return False
    try:
        av.codec.Codec(name, "w")
    except Exception:  # av raises UnknownCodecError, a subclass of ValueError, for unknown names
        return False
    return True


def encoder_for(path: str | Path, codec: str | None = None) -> str:
    """The encoder make_clip uses for `path`: chosen from the extension, or from `codec`."""
    ext = Path(path).suffix.lower()
    if ext not in _ENCODERS_BY_EXT:
        raise SfedgeError(f"unsupported clip extension {ext or '(none)'!r}; use one of {sorted(_ENCODERS_BY_EXT)}")
    candidates = _ENCODERS_BY_EXT[ext] if codec is None else _ENCODERS_BY_CODEC.get(codec, (codec,))
    for name in candidates:
        if has_encoder(name):
            return name
    raise SfedgeError(f"no encoder available for {codec or ext} (tried {', '.join(candidates)})")


def _marker_block(width: int) -> int:
    return min(16, width // MARKER_BITS)


def render_frame(i: int, width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """Frame i (HxWx3 uint8 RGB): tinted background, seed-dependent moving circles and
    rectangles, and i in binary as MARKER_BITS black/white blocks along the top edge."""
    block = _marker_block(width)
    if block < 4 or height < 2 * block:
        raise SfedgeError(f"frame {width}x{height} is too small for the frame-number marker")
    if not 0 <= i < 2**MARKER_BITS:
        raise SfedgeError(f"frame number {i} does not fit the {MARKER_BITS}-bit marker")
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 120, size=3)
    tint = base + 40 * np.sin(0.05 * i + np.array([0.0, 2.1, 4.2]))
    img = np.empty((height, width, 3), np.float32)
    img[:] = tint
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(3):  # circles on Lissajous paths
        colour, phase, speed = rng.uniform(60, 255, 3), rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.03, 0.12, 2)
        radius = rng.uniform(0.08, 0.18) * min(width, height)
        cx = width / 2 + 0.35 * width * np.sin(speed[0] * i + phase[0])
        cy = height / 2 + 0.35 * height * np.sin(speed[1] * i + phase[1])
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = colour
    for _ in range(2):  # rectangles bouncing horizontally at seed-dependent heights
        colour = rng.uniform(60, 255, 3)
        w, h = int(rng.uniform(0.1, 0.25) * width), int(rng.uniform(0.1, 0.25) * height)
        y0 = int(rng.uniform(2 * block, height - h))
        x0 = int((width - w) * (0.5 + 0.5 * np.sin(rng.uniform(0.04, 0.1) * i + rng.uniform(0, 6.3))))
        img[y0 : y0 + h, x0 : x0 + w] = colour
    for bit in range(MARKER_BITS):
        img[:block, bit * block : (bit + 1) * block] = 255.0 if (i >> bit) & 1 else 0.0
    return img.astype(np.uint8)


def read_marker(frame: np.ndarray) -> int:
    """The frame number drawn by render_frame, read back from an RGB frame (block interiors)."""
    block = _marker_block(frame.shape[1])
    m = block // 4
    luma = frame[m : block - m].mean(axis=(0, 2))
    bits = [luma[b * block + m : (b + 1) * block - m].mean() > 128 for b in range(MARKER_BITS)]
    return sum(1 << b for b, on in enumerate(bits) if on)


SCENES = ("shapes", "static", "moving-object")


def render_scene(i: int, width: int = 320, height: int = 240, seed: int = 0, scene: str = "shapes",
                 noise: float = 0.0) -> np.ndarray:
    """Frame i of `scene`: "shapes" (render_frame), "static" (render_frame(0) held still: a fixed
    camera), "moving-object" (the static scene with a dark disc of radius 6% of the shorter side
    moving 2 px a frame along a horizontal line, bouncing at the edges). `noise`: sigma of
    Gaussian noise added to every pixel and channel, fresh each frame (seeded by seed and i)."""
    if scene not in SCENES:
        raise SfedgeError(f"unknown scene {scene!r}; scenes: {', '.join(SCENES)}")
    if scene == "shapes":
        img = render_frame(i, width, height, seed)
    else:
        img = render_frame(0, width, height, seed)
        if scene == "moving-object":
            r = max(2, int(0.06 * min(width, height)))
            span = width - 2 * r
            x = r + (2 * i) % (2 * span)
            x = x if x <= r + span else 2 * (r + span) - x
            yy, xx = np.mgrid[0:height, 0:width]
            img[(xx - x) ** 2 + (yy - height * 0.6) ** 2 < r * r] = (20, 20, 30)
    if noise > 0:
        rng = np.random.default_rng([seed, i, 7])
        img = np.clip(np.rint(img + rng.normal(0.0, noise, img.shape)), 0, 255).astype(np.uint8)
    return img


def _encoder_options(encoder: str, gop: int, crf: int | None = None) -> dict[str, str]:
    if encoder == "libx264":  # B-frames and a fixed GOP, so decoders really reorder and seek
        opts = {"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2"}
        if crf is not None:
            opts["crf"] = str(crf)
        return opts
    if encoder == "libx265":
        return {"preset": "ultrafast", "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2:log-level=error"}
    if encoder.startswith("libvpx"):
        return {"deadline": "realtime", "cpu-used": "8"}
    return {}


def make_clip(
    path: str | Path,
    num_frames: int = 60,
    width: int = 320,
    height: int = 240,
    fps: int = 24,
    codec: str | None = None,
    seed: int = 0,
    gop: int = 12,
    scene: str = "shapes",
    noise: float = 0.0,
    crf: int | None = None,
) -> Path:
    """Encode render_scene(0..num_frames-1) to `path`; the encoder follows the extension
    (see encoder_for) unless `codec` ("h264", "hevc", "vp9", "vp8" or an encoder name) is given.
    `crf`: H.264 quality (0 lossless .. 51; x264's default is 23), libx264 only."""
    path = Path(path)
    if scene not in SCENES:
        raise SfedgeError(f"unknown scene {scene!r}; scenes: {', '.join(SCENES)}")
    if noise < 0:
        raise SfedgeError(f"noise sigma must be >= 0, got {noise}")
    if num_frames < 1:
        raise SfedgeError(f"a clip needs at least one frame, got {num_frames}")
    if width % 2 or height % 2:
        raise SfedgeError(f"clip width and height must be even, got {width}x{height}")
    encoder = encoder_for(path, codec)
    if crf is not None and (encoder != "libx264" or not 0 <= crf <= 51):
        raise SfedgeError(f"crf (0-51) needs the libx264 encoder, got crf {crf} with {encoder}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=fps, options=_encoder_options(encoder, gop, crf))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if encoder == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        if encoder == "mpeg4":
            stream.codec_context.max_b_frames = 2
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(render_scene(i, width, height, seed, scene, noise), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_image_dir(dirpath: str | Path, num_frames: int = 60, width: int = 320, height: int = 240, seed: int = 0) -> Path:
    """Write render_frame(0..num_frames-1) as zero-padded PNG files (frame_00000.png, ...)."""
    dirpath = Path(dirpath)
    if num_frames < 1:
        raise SfedgeError(f"an image directory needs at least one frame, got {num_frames}")
    dirpath.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(num_frames - 1)))
    for i in range(num_frames):
        Image.fromarray(render_frame(i, width, height, seed)).save(dirpath / f"frame_{i:0{digits}d}.png")
    return dirpath
