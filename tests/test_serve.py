"""`sfedge serve` end to end: the real server in a subprocess on loopback, the official `openai`
client for the happy paths (token ids equal to `Pipeline.ask`, greedy, fp32 tiny engines), raw HTTP
for bad requests. The queue, timeouts, disconnects and SIGTERM are in test_serve_limits.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")  # the [serve] extra

from serve_util import ROOT, Server
from sfedge.spec import GenerationSpec

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow
MODEL = "tiny-test"


@pytest.fixture(scope="module")
def server(engines_fp32, clip_path, short_clips, tmp_path_factory):
    dirs = {Path(clip_path).parent, Path(short_clips["mp4-7"]).parent}
    srv = Server(engines_fp32, "--model-name", MODEL, *[a for d in dirs for a in ("--allowed-dir", str(d))],
                 "--max-upload-mb", "1", tmp=tmp_path_factory.mktemp("serve") / "tmp")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def video(short_clips):
    return Path(short_clips["mp4-7"])


def video_part(path: Path) -> dict:
    return {"type": "video_url", "video_url": {"url": path.resolve().as_uri()}}


def user(question: str, *videos: dict) -> dict:
    return {"role": "user", "content": [*videos, {"type": "text", "text": question}]}


def test_health_models_and_metrics(server, client):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert [m.id for m in client.models.list().data] == [MODEL]
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("sfedge_requests_total", "sfedge_queue_depth", "sfedge_request_latency_seconds_bucket",
                 "sfedge_time_to_first_token_seconds_bucket", "sfedge_generated_tokens_total",
                 "sfedge_frames_decoded_total", "sfedge_prefix_cache_hits_total"):
        assert name in text
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if maps.exists():  # the server's hot path is the torch-free runtime
        assert "torch" not in maps.read_text()


def test_plain_completion_matches_ask(client, pipeline_fp32, clip_path):
    ref = pipeline_fp32.ask(clip_path, "What is moving?", gen=GenerationSpec(max_new_tokens=12))
    r = client.chat.completions.create(
        model=MODEL, max_tokens=12, messages=[{"role": "system", "content": "You are helpful."},
                                              user("What is moving?", video_part(Path(clip_path)))])
    assert r.model_extra["sfedge"]["token_ids"] == ref.token_ids
    assert r.choices[0].message.content == ref.answer and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == ref.prompt_tokens > ref.num_visual_tokens  # visual tokens counted
    assert r.usage.completion_tokens == 12


def test_streaming_matches_ask(client, pipeline_fp32, video, server):
    ref = pipeline_fp32.ask(video, "Describe it.", gen=GenerationSpec(max_new_tokens=10))
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[user("Describe it.", video_part(video))]))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(content) > 1 and "".join(content) == ref.answer
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert finish[0].model_extra["sfedge"]["token_ids"] == ref.token_ids
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == ref.prompt_tokens
    # the raw wire format: server-sent events ending in [DONE]
    body = {"model": MODEL, "max_tokens": 3, "stream": True, "messages": [user("Describe it.", video_part(video))]}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert "usage" not in json.loads(lines[-2][6:])  # include_usage not asked for


@pytest.mark.parametrize("kind", ["data_url", "input_video"])
def test_base64_video_matches_ask(client, pipeline_fp32, video, server, kind):
    ref = pipeline_fp32.ask(video, "What shapes?", gen=GenerationSpec(max_new_tokens=8))
    b64 = base64.b64encode(video.read_bytes()).decode()
    part = ({"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64}"}} if kind == "data_url"
            else {"type": "input_video", "input_video": {"data": b64, "format": "mp4"}})
    r = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[user("What shapes?", part)])
    assert r.model_extra["sfedge"]["token_ids"] == ref.token_ids
    assert server.temp_files() == []


def test_multi_turn_answers_each_turn_fresh_and_reuses_the_prefill(client, pipeline_fp32, video):
    gen = GenerationSpec(max_new_tokens=6)
    first = pipeline_fp32.ask(video, "What is it?", gen=gen)
    second = pipeline_fp32.ask(video, "And what colour?", gen=gen)
    messages = [user("What is it?", video_part(video))]
    r1 = client.chat.completions.create(model=MODEL, max_tokens=6, messages=messages)
    assert r1.model_extra["sfedge"]["token_ids"] == first.token_ids
    messages += [{"role": "assistant", "content": r1.choices[0].message.content}, user("And what colour?")]
    r2 = client.chat.completions.create(model=MODEL, max_tokens=6, messages=messages)
    ext = r2.model_extra["sfedge"]
    assert ext["token_ids"] == second.token_ids  # earlier turns are not in the LLM's context
    assert ext["reused_prompt_tokens"] >= ext["num_visual_tokens"]  # only the question was prefilled
    assert r2.usage.prompt_tokens_details.cached_tokens == ext["reused_prompt_tokens"]
    messages += [{"role": "assistant", "content": r2.choices[0].message.content},
                 user("What is it?", video_part(video))]  # the video repeated
    r3 = client.chat.completions.create(model=MODEL, max_tokens=6, messages=messages)
    assert r3.model_extra["sfedge"]["token_ids"] == first.token_ids


def test_default_max_tokens_is_128(client, video):
    r = client.chat.completions.create(model=MODEL, messages=[user("Go on.", video_part(video))])
    assert r.usage.completion_tokens == 128 and r.choices[0].finish_reason == "length"  # tiny never stops early


def test_multiple_choice_matches_ask(client, pipeline_fp32, clip_path):
    options = ["a red circle", "a blue square", "nothing"]
    ref = pipeline_fp32.ask(clip_path, "What moves?", options, GenerationSpec(max_new_tokens=5))
    r = client.chat.completions.create(model=MODEL, max_tokens=5, extra_body={"options": options},
                                       messages=[user("What moves?", video_part(Path(clip_path)))])
    assert r.model_extra["sfedge"]["token_ids"] == ref.token_ids
    assert r.model_extra["sfedge"]["choice"] == ref.choice


def test_stop_string_spanning_chunks(client, pipeline_fp32, video):
    pieces: list[str] = []
    full = pipeline_fp32.ask(video, "Tell me.", gen=GenerationSpec(max_new_tokens=12), on_token=pieces.append)
    k = next(i for i in range(1, len(pieces) - 1) if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]  # spans two pieces
    expected = "".join(pieces)[:"".join(pieces).find(stop)].strip()
    assert expected and expected != full.answer
    kw = dict(model=MODEL, max_tokens=12, stop=[stop, "never-seen"], messages=[user("Tell me.", video_part(video))])
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected and chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_parameters_are_honoured(client, pipeline_fp32, video):
    gen = GenerationSpec(max_new_tokens=7, temperature=0.9, top_p=0.8, seed=123)
    ref = pipeline_fp32.ask(video, "Why?", gen=gen)
    kw = dict(model=MODEL, max_completion_tokens=7, temperature=0.9, top_p=0.8, seed=123,
              messages=[user("Why?", video_part(video))])
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.model_extra["sfedge"]["token_ids"] == b.model_extra["sfedge"]["token_ids"] == ref.token_ids


def _bad_requests(video: Path, outside: Path, link: Path) -> list[tuple[str, object, int, str | None]]:
    ok = [user("Q?", video_part(video))]
    b64 = base64.b64encode(video.read_bytes()).decode()
    big = base64.b64encode(b"\0" * (1 << 20 | 1)).decode()
    junk = base64.b64encode(b"this is not a video at all" * 40).decode()
    body = lambda **kw: {"model": MODEL, "max_tokens": 4, "messages": ok, **kw}  # noqa: E731
    url = lambda u: [user("Q?", {"type": "video_url", "video_url": {"url": u}})]  # noqa: E731
    return [
        ("malformed json", b'{"model": "x", "messages": [', 400, None),
        ("body too large", b"x" * (3 << 20), 413, None),
        ("not an object", b"[]", 400, None),
        ("missing messages", {"model": MODEL}, 400, "messages"),
        ("empty messages", body(messages=[]), 400, "messages"),
        ("wrong type", body(max_tokens="4"), 400, "max_tokens"),
        ("stream not bool", body(stream="yes"), 400, "stream"),
        ("unknown role", body(messages=[{"role": "robot", "content": "hi"}]), 400, None),
        ("unknown part", body(messages=[user("Q?", {"type": "image_url", "image_url": {"url": "x"}})]), 400,
         "messages.0.content.0"),
        ("content not text", body(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content"),
        ("text part without text", body(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400,
         "messages.0.content.0.text"),
        ("url not a string", body(messages=[user("Q?", {"type": "video_url", "video_url": {"url": 3}})]), 400,
         "messages.0.content.0.video_url.url"),
        ("unknown model", body(model="gpt-4o"), 404, "model"),
        ("two videos", body(messages=[user("Q?", video_part(video), video_part(video))]), 400, "messages.0.content"),
        ("no text", body(messages=[{"role": "user", "content": [video_part(video)]}]), 400, "messages.0.content"),
        ("no video", body(messages=[user("Q?")]), 400, "messages"),
        ("last is assistant", body(messages=[*ok, {"role": "assistant", "content": "x"}]), 400, None),
        ("bad base64", body(messages=url("data:video/mp4;base64,@@@notbase64")), 400, None),
        ("oversized", body(messages=url(f"data:video/mp4;base64,{big}")), 413, None),
        ("undecodable", body(messages=url(f"data:video/mp4;base64,{junk}")), 400, None),
        ("not a video mime", body(messages=url(f"data:text/plain;base64,{b64}")), 400, None),
        ("http url", body(messages=url("http://example.com/v.mp4")), 400, None),
        ("outside allowed", body(messages=url(outside.as_uri())), 403, None),
        ("dotdot", body(messages=url(f"file://{video.parent}/../../../../etc/passwd")), 403, None),
        ("symlink out", body(messages=url(link.as_uri())), 403, None),
        ("missing file", body(messages=url((video.parent / "nope.mp4").as_uri())), 400, None),
        ("negative max_tokens", body(max_tokens=0), 400, "max_tokens"),
        ("temperature", body(temperature=-1), 400, "temperature"),
        ("top_p", body(top_p=0), 400, "top_p"),
        ("n", body(n=2), 400, "n"),
        ("one option", body(options=["only"]), 400, "options"),
        ("empty option", body(options=["a", " "]), 400, "options"),
        ("beyond the context", body(messages=[user("why " * 1500, video_part(video))]), 400, None),
    ]


def test_bad_requests_get_openai_errors_and_leave_no_temp_files(server, video, tmp_path):
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(video.read_bytes())
    link = video.parent / "link-out.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    try:
        for name, body, status, param in _bad_requests(video, outside, link):
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                           headers={"content-type": "application/json"}, **kw)
            assert r.status_code == status, (name, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], name
            assert "\n" not in err["message"] and "Traceback" not in err["message"], name
            if param is not None:
                assert err["param"] == param, (name, err)
        stream = {"model": MODEL, "stream": True, "messages": [user("Q?", video_part(outside))]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=stream, timeout=60)
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"  # 4xx before any event
        assert httpx.get(f"{server.url}/v1/nope").json()["error"]["type"] == "not_found_error"
    finally:
        link.unlink()
    assert httpx.get(f"{server.url}/health").status_code == 200  # still up
    assert server.temp_files() == []
    assert server.metric("sfedge_requests_total", 'endpoint="/v1/chat/completions",status="400"') >= 20


def test_serve_sources_import_no_torch():
    import ast

    import sfedge.serve

    for path in Path(sfedge.serve.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(re.match(r"(torch|transformers)\b", n) for n in names), path.name


def test_load_script_short(server, video, clip_path):
    """The CI version of scripts/serve_load.py: 20 streamed requests, 8 at a time, none failed, no 5xx."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_load.py"), "--url", server.url,
                          "--pid", str(server.pid), str(video), str(clip_path), "--requests", "20",
                          "--concurrency", "8", "--warmup", "2", "--max-rss-growth", "-1", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] == 20 and report["failed"] == 0 and report["server_errors_5xx"] == 0
    assert report["ttft_s"]["p50"] <= report["latency_s"]["p50"] and report["rss_mb"]["end"] > 0
