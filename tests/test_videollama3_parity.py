"""VideoLLaMA3 token parity: `VideoLlama3Pipeline.ask` (the torch-free runtime on fp32 engines)
against transformers' `generate` (sfedge/reference/videollama3.py), greedy, on 10 clips: moving
clips where pruning removes nothing, static clips where it removes nearly everything, sizes that are
not multiples of 28, a clip longer than 180 s (sampling caps at 180 frames), image directories; and
`--no-prune` against the processor with use_token_compression=False."""

from __future__ import annotations

import pytest

from sfedge.parity_videollama3 import parity_clips
from sfedge.spec import GenerationSpec

pytest.importorskip("torchvision", reason="the VideoLLaMA3 reference's video processor needs torchvision")

QUESTION = "What happens in the video?"
GEN = GenerationSpec(max_new_tokens=12)


@pytest.fixture(scope="module")
def vl3(tiny_vl3_dir, vl3_engines_fp32):
    """(tiny checkpoint, fp32 engines, reference, runtime pipeline)."""
    from sfedge.reference.videollama3 import VideoLlama3Reference
    from sfedge.runtime.videollama3_pipeline import VideoLlama3Pipeline

    return tiny_vl3_dir, vl3_engines_fp32, VideoLlama3Reference(tiny_vl3_dir), VideoLlama3Pipeline(vl3_engines_fp32)


def _reference(ref, path):
    from sfedge.parity_videollama3 import decoded

    frames, fps = decoded(path)
    return lambda **kw: ref.answer_frames(frames, fps, QUESTION, GEN.max_new_tokens, **kw)


def test_token_parity_on_ten_clips(vl3, tmp_path):
    _, _, ref, pipe = vl3
    rows = []
    for name, path in parity_clips(tmp_path).items():
        want = _reference(ref, path)()
        got = pipe.ask(path, QUESTION, gen=GEN)
        rows.append((name, got.visual_tokens_kept, got.visual_tokens_pruned, len(got.frame_indices)))
        assert got.frame_indices == want.frame_indices, name
        assert got.visual_tokens_kept == want.visual_tokens_kept, name
        assert got.visual_tokens_kept + got.visual_tokens_pruned == want.visual_tokens_total, name
        assert got.token_ids == want.token_ids, (name, got.token_ids, want.token_ids)
    kept = {name: (k, p, n) for name, k, p, n in rows}
    print(kept)
    assert kept["long-200s"][2] == 180  # sampling caps at max_frames
    for name in ("moving", "moving-odd", "fps30"):
        assert kept[name][1] == 0, name  # every frame changes everywhere: nothing pruned
    for name in ("static", "dir-static"):
        k, p, n = kept[name]
        assert p > 2 * k, name  # a still camera: most tokens pruned


def test_no_prune_matches_the_processor_without_compression(vl3, tmp_path):
    from sfedge.synthetic import make_clip

    _, _, ref, pipe = vl3
    path = make_clip(tmp_path / "static.mp4", num_frames=96, width=160, height=120, fps=24, scene="static", crf=0)
    want = _reference(ref, path)(use_token_compression=False)
    got = pipe.ask(path, QUESTION, gen=GEN, prune=False)
    assert got.visual_tokens_pruned == 0 and got.visual_tokens_kept == want.visual_tokens_total
    assert got.token_ids == want.token_ids
    pruned = pipe.ask(path, QUESTION, gen=GEN)
    assert pruned.visual_tokens_kept < got.visual_tokens_kept


def test_ask_runs_without_torch_or_transformers(vl3, tmp_path):
    """`sfedge ask --json` on VideoLLaMA3 engines in a fresh interpreter: no torch, no transformers,
    and the JSON reports the visual tokens kept and pruned."""
    import json
    import subprocess
    import sys

    from sfedge.synthetic import make_clip

    _, engines, _, _ = vl3
    clip = make_clip(tmp_path / "static.mp4", num_frames=48, width=96, height=72, fps=12, scene="static", crf=0)
    code = f"""
import sys
from sfedge.cli import main
rc = main(["ask", {str(engines)!r}, {str(clip)!r}, "What?", "--max-new-tokens", "3", "--json"])
print([m for m in ("torch", "transformers") if m in sys.modules], rc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "[] 0"
    report = json.loads(lines[-2])
    assert report["visual_tokens_pruned"] > 0 and report["visual_tokens_kept"] == sum(report["kept_per_frame"])


def test_plan_and_bench_read_videollama3_engines(vl3, tmp_path, capsys):
    """`plan --engines` counts the video budget and the timestamp text with the engines' tokenizer;
    `bench --no-reference` times the stages and reports what pruning removed."""
    import json

    from sfedge.cli import main
    from sfedge.synthetic import make_clip

    _, engines, _, _ = vl3
    assert main(["plan", "--engines", str(engines), "--target", "orin-nano-8gb", "--frames", "10", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["settings"]["slowfast"] == "video budget" and plan["settings"]["visual_tokens"] == 60
    assert plan["settings"]["text_tokens"] > 10 * 5  # "Time t.ts:" before each of the 10 frames
    clip = make_clip(tmp_path / "static.mp4", num_frames=48, width=96, height=72, fps=12, scene="static", crf=0)
    assert main(["bench", str(engines), "--video", str(clip), "--no-reference", "--no-roofline", "--runs", "1",
                 "--warmup", "0", "--new-tokens", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["engine"]["visual_tokens_pruned"] > 0 and report["visual_tokens"] < 4 * 12


def test_second_question_reuses_the_video_prefix(vl3, tmp_path):
    """The prefix cache keys each frame block by the video's content: a second question about the same
    video prefills only its own text, and still gives the reference's tokens."""
    from sfedge.synthetic import make_clip

    _, _, ref, pipe = vl3
    path = make_clip(tmp_path / "obj.mp4", num_frames=60, width=120, height=90, fps=12, scene="moving-object")
    first = pipe.ask(path, QUESTION, gen=GEN)
    second = pipe.ask(path, "Where does the disc go?", gen=GEN)
    assert first.reused_prompt_tokens == 0 or first.reused_prompt_tokens < first.prompt_tokens
    assert second.reused_prompt_tokens >= second.prompt_tokens - 30  # everything up to the question's text
    frames_fps = __import__("sfedge.parity_videollama3", fromlist=["decoded"]).decoded(path)
    want = ref.answer_frames(*frames_fps, "Where does the disc go?", GEN.max_new_tokens)
    assert second.token_ids == want.token_ids
