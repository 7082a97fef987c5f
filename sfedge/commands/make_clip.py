"""`sfedge make-clip OUT`: write a synthetic clip (moving shapes, frame number marker)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SfedgeError
from ._common import add_json_flag, print_json

HELP = "write a synthetic test clip (a video file, or PNG frames when OUT has no extension)"


def add_arguments(p) -> None:
    p.add_argument("out", metavar="OUT", help="clip.mp4 / .mkv / .webm / .mov / .avi, or a directory name for PNG frames")
    p.add_argument("--frames", type=int, default=60, help="number of frames (default 60)")
    p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT (default 320x240)")
    p.add_argument("--fps", type=int, default=24, help="frames per second of a video file (default 24)")
    p.add_argument("--seed", type=int, default=0, help="picks the shapes' colours and paths (default 0)")
    p.add_argument("--codec", default=None, help="h264, hevc, vp9, vp8 or an encoder name (default: from the extension)")
    p.add_argument("--scene", default="shapes", choices=("shapes", "static", "moving-object"),
                   help="shapes (default); static: a still camera; moving-object: the still scene with one moving disc")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="sensor-like Gaussian noise per pixel and frame, sigma in 0-255 units (default 0)")
    p.add_argument("--crf", type=int, default=None, help="H.264 quality, 0 (lossless) .. 51 (libx264's default 23)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_json_flag(p)


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SfedgeError(f"--size must look like 320x240, got {text!r}") from None
    if width < 1 or height < 1:
        raise SfedgeError(f"--size must be positive, got {text!r}")
    return width, height


def run(args) -> int:
    from ..synthetic import encoder_for, make_clip, make_image_dir

    out = Path(args.out)
    width, height = parse_size(args.size)
    if out.exists() and not args.force:
        raise SfedgeError(f"{out} exists (use --force to overwrite)")
    if out.suffix:
        codec = encoder_for(out, args.codec)
        path = make_clip(out, args.frames, width, height, fps=args.fps, codec=args.codec, seed=args.seed,
                         scene=args.scene, noise=args.noise, crf=args.crf)
    else:
        if args.scene != "shapes" or args.noise or args.crf is not None:
            raise SfedgeError("--scene, --noise and --crf apply to video files (give OUT an extension)")
        codec = "png"
        path = make_image_dir(out, args.frames, width, height, seed=args.seed)
    if args.json:
        print_json({"path": path, "frames": args.frames, "width": width, "height": height, "fps": args.fps,
                    "codec": codec, "seed": args.seed, "scene": args.scene, "noise": args.noise, "crf": args.crf})
    else:
        print(path)
    return 0
