"""VideoLLaMA3 engines vs transformers on the 10 parity clips (sfedge.parity_videollama3.parity_clips),
at every precision given: per clip the frames, visual tokens kept / pruned, the vision and first-step
logits errors, and the greedy-token verdict (sfedge verify's rules: int4 against the reference running
its dequantized weights).

    python scripts/videollama3_parity.py CKPT ENGINES [ENGINES ...] [--max-new-tokens 16] [--no-prune] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "What happens in the video?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("engines", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()

    from sfedge.parity_videollama3 import check_engines, parity_clips
    from sfedge.reference.videollama3 import VideoLlama3Reference
    from sfedge.runtime.videollama3_pipeline import VideoLlama3Pipeline

    reference = VideoLlama3Reference(args.ckpt)
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        clips = parity_clips(Path(tmp))
        for engines in args.engines:
            pipe = VideoLlama3Pipeline(engines)
            print(f"== {engines} ({pipe.manifest['precision']})")
            print(f"{'clip':14} {'frames':>6} {'kept':>5} {'pruned':>6} {'vision err':>10} {'logits err':>10}  tokens")
            for name, path in clips.items():
                r = check_engines(pipe, reference, path, QUESTION, args.max_new_tokens, prune=not args.no_prune)
                failed += not r["passed"]
                rows.append({"engines": engines, "precision": r["precision"], "clip": name,
                             **{k: r[k] for k in ("num_frames", "visual_tokens_kept", "visual_tokens_pruned",
                                                  "vision_rel_err", "first_logits_rel_err", "verdict", "passed",
                                                  "failures", "first_diff_step")}})
                print(f"{name:14} {r['num_frames']:6d} {r['visual_tokens_kept']:5d} {r['visual_tokens_pruned']:6d} "
                      f"{r['vision_rel_err']:10.2e} {r['first_logits_rel_err']:10.2e}  {r['verdict']}"
                      + ("" if r["passed"] else f"  FAIL: {'; '.join(r['failures'])}"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows) - failed} of {len(rows)} pass")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
