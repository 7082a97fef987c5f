"""`sfedge ask`, `sfedge verify` and `sfedge demo` on tiny engines: output contracts and bad input."""

from __future__ import annotations

import json
import shutil

import onnxruntime as ort
import pytest

from sfedge.cli import main

ASK_KEYS = {"answer", "token_ids", "frame_indices", "num_frames_total", "num_visual_tokens", "prompt_tokens",
            "reused_prompt_tokens", "timings_ms", "tokens_per_s", "stop_reason"}


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_ask_json(engines_fp32, short_clips, capsys):
    rc = main(["ask", str(engines_fp32), str(short_clips["mp4-7"]), "What is moving?", "--max-new-tokens", "8", "--json"])
    out = last_json(capsys.readouterr().out)
    assert rc == 0 and set(out) == ASK_KEYS
    assert len(out["token_ids"]) <= 8 and out["num_frames_total"] == 7
    assert set(out["timings_ms"]) == {"decode_video", "preprocess", "vision", "slowfast", "prefill", "decode", "ttft",
                                      "total"}


def test_ask_multiple_choice_json_has_choice(engines_fp32, short_clips, capsys):
    rc = main(["ask", str(engines_fp32), str(short_clips["dir-5"]), "What colour?", "--options", "red|green|blue",
               "--max-new-tokens", "4", "--json"])
    out = last_json(capsys.readouterr().out)
    assert rc == 0 and set(out) == ASK_KEYS | {"choice"} and out["choice"] in (None, "A", "B", "C")


def test_ask_plain_streams_the_answer(engines_fp32, short_clips, capsys):
    argv = ["ask", str(engines_fp32), str(short_clips["mp4-3"]), "What is moving?", "--max-new-tokens", "8"]
    assert main(argv + ["--json"]) == 0
    answer = last_json(capsys.readouterr().out)["answer"]
    assert main(argv) == 0
    assert capsys.readouterr().out == answer + "\n"


def test_ask_sampling_flags(engines_fp32, short_clips, capsys):
    argv = ["ask", str(engines_fp32), str(short_clips["mp4-3"]), "What?", "--max-new-tokens", "6", "--json",
            "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "5"]
    runs = []
    for _ in range(2):
        assert main(argv) == 0
        runs.append(last_json(capsys.readouterr().out)["token_ids"])
    assert runs[0] == runs[1]


def _corrupt(engines, tmp_path):
    bad = tmp_path / "bad-engines"
    shutil.copytree(engines, bad)
    (bad / "embeddings.npy").write_bytes(b"not the table")
    return bad


@pytest.mark.parametrize("case", ["no engines", "no video", "one option", "empty option", "corrupt", "provider"])
def test_ask_bad_input_is_one_line_and_exit_2(case, engines_fp32, short_clips, tmp_path, capsys):
    engines, video, extra = str(engines_fp32), str(short_clips["mp4-3"]), []
    if case == "no engines":
        engines = str(tmp_path / "nowhere")
    elif case == "no video":
        video = str(tmp_path / "missing.mp4")
    elif case == "one option":
        extra = ["--options", "only"]
    elif case == "empty option":
        extra = ["--options", "a||b"]
    elif case == "corrupt":
        engines = str(_corrupt(engines_fp32, tmp_path))
    elif "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    else:
        extra = ["--provider", "cuda"]
    rc = main(["ask", engines, video, "What?", "--max-new-tokens", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("sfedge ask: error:"), err


def test_verify_json(engines_fp32, tiny_dir, capsys):
    rc = main(["verify", str(engines_fp32), "--model", str(tiny_dir), "--max-new-tokens", "8", "--json"])
    out = last_json(capsys.readouterr().out)
    assert rc == 0 and out["passed"] and out["verdict"] in ("match", "near-tie")
    assert out["first_logits_rel_err"] < 1e-4 and out["vision_rel_err"] < 1e-4 and out["prompt_ids_match"]


def test_verify_human_output(engines_fp32, tiny_dir, short_clips, capsys):
    rc = main(["verify", str(engines_fp32), "--model", str(tiny_dir), "--video", str(short_clips["dir-5"]),
               "--options", "yes|no", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "first-step logits rel err" in out and "verdict: PASS" in out


@pytest.mark.slow
def test_demo_makes_engines_once_then_reuses_them(capsys, monkeypatch):
    """The README's main job, in the session's isolated cache (conftest): tiny model, engines,
    clip, streamed answer, timings, parity verdict. A second run reuses the cached engines."""
    assert main(["demo", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "timings (ms):" in out and "verdict: PASS" in out
    monkeypatch.setattr("sfedge.export.export_model", lambda *a, **k: pytest.fail("engines were exported again"))
    assert main(["demo", "--max-new-tokens", "4", "--options", "red|green", "--json"]) == 0
    out = last_json(capsys.readouterr().out)
    assert out["passed"] and "choice" in out["result"] and out["parity"]["verdict"] in ("match", "near-tie")


def test_cuda_graph_needs_the_cuda_provider(engines_fp32, short_clips, capsys):
    rc = main(["ask", str(engines_fp32), str(short_clips["mp4-3"]), "What?", "--cuda-graph"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--cuda-graph needs --provider cuda" in err
