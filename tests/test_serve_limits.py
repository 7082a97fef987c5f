"""`sfedge serve` under pressure: the bounded queue (429 + Retry-After), the bearer key, client
disconnects (generation stops), timeouts (504 before the first byte, an error event mid-stream) and
SIGTERM (exit 0). The server runs with SFEDGE_SERVE_PIECE_DELAY_S so that a generation lasts long
enough to be caught mid-way; the tiny model is otherwise too fast."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")  # the [serve] extra

from serve_util import ROOT, Server
from sfedge.serve.launch import free_port

pytestmark = pytest.mark.slow
KEY = "s3cret"
DELAY = 0.05  # seconds per piece
TIMEOUT = 6.0
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(engines_fp32, short_clips, tmp_path_factory):
    video = Path(short_clips["mp4-7"])
    srv = Server(engines_fp32, "--model-name", "m", "--allowed-dir", str(video.parent), "--max-queue", "1",
                 "--request-timeout", str(TIMEOUT), "--api-key", KEY, tmp=tmp_path_factory.mktemp("serve") / "tmp",
                 env={"SFEDGE_SERVE_PIECE_DELAY_S": str(DELAY)})
    srv.video = video
    chat(srv, 2)  # the first request encodes the video; later ones reuse its prefix (fast first tokens)
    yield srv
    srv.stop()


def body(srv, max_tokens: int, stream: bool = False) -> dict:
    return {"model": "m", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": srv.video.as_uri()}},
                {"type": "text", "text": "What happens?"}]}]}


def chat(srv, max_tokens: int, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/chat/completions", json=body(srv, max_tokens), headers=AUTH, timeout=timeout)


def stream_lines(srv, max_tokens: int, out: list, started: threading.Event | None = None) -> None:
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body(srv, max_tokens, True), headers=AUTH,
                      timeout=60) as r:
        out.append(r.status_code)
        for line in r.iter_lines():
            if line:
                out.append(line)
                if started is not None and '"content"' in line and '"role"' not in line:
                    started.set()


def test_health_is_503_until_warmed_up(server):
    assert 503 in server.seen and server.seen[-1] == 200  # uvicorn listened before the engines were ready


def test_engines_that_fail_to_load_exit_2(engines_fp32, tmp_path):
    broken = tmp_path / "engines"
    shutil.copytree(engines_fp32, broken)
    with (broken / "embeddings.npy").open("ab") as f:
        f.write(b"\0")  # the manifest's sha256 no longer matches
    out = subprocess.run([sys.executable, "-m", "sfedge", "serve", str(broken), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("sfedge serve: error:") and "Traceback" not in out.stderr


def test_bearer_key(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body(server, 2), timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["id"] == "m"
    assert httpx.get(f"{server.url}/health").status_code == 200  # probes need no key


def test_queue_limit_gives_429_with_retry_after(server):
    out_a, out_b, started = [], [], threading.Event()
    a = threading.Thread(target=stream_lines, args=(server, 30, out_a, started))
    a.start()
    assert started.wait(30)  # A runs
    b = threading.Thread(target=stream_lines, args=(server, 2, out_b))
    b.start()
    deadline = time.monotonic() + 10
    while server.metric("sfedge_queue_depth") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = chat(server, 2)  # B waits in the queue (max 1): C is refused
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    a.join(30), b.join(30)
    assert out_a[0] == out_b[0] == 200 and out_a[-1] == out_b[-1] == "data: [DONE]"  # FIFO: both served


def test_disconnect_stops_generation(server):
    tokens0 = server.metric("sfedge_generated_tokens_total")
    cancelled0 = server.metric("sfedge_cancelled_generations_total", 'reason="disconnect"')
    received = 0
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body(server, 300, True), headers=AUTH,
                      timeout=60) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"role"' not in line:
                received += 1
                if received == 3:
                    break  # leave mid-stream: the connection closes
    deadline = time.monotonic() + 10
    while server.metric("sfedge_cancelled_generations_total", 'reason="disconnect"') == cancelled0:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)
    made = server.metric("sfedge_generated_tokens_total") - tokens0
    assert made < 300 and made <= received + 1 + 0.5 / DELAY  # stopped within the disconnect's detection time
    t = time.monotonic()
    assert chat(server, 2).status_code == 200 and time.monotonic() - t < 5  # the engines are free again


def test_disconnect_before_any_byte_stops_generation(server):
    """A plain (non-streamed) request whose client gives up is cancelled too."""
    cancelled0 = server.metric("sfedge_cancelled_generations_total", 'reason="disconnect"')
    with pytest.raises(httpx.ReadTimeout):
        chat(server, 300, timeout=1.0)  # 300 x 50 ms: the client leaves after 1 s
    deadline = time.monotonic() + 10
    while server.metric("sfedge_cancelled_generations_total", 'reason="disconnect"') == cancelled0:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)
    assert server.metric("sfedge_requests_total", 'endpoint="/v1/chat/completions",status="499"') >= 1


def test_timeouts(server):
    """A long stream is cut mid-way by an error event then [DONE]; a long request queued behind it gets 504
    (not a byte was sent: it waited, then ran out of time while generating)."""
    out_a, started = [], threading.Event()
    a = threading.Thread(target=stream_lines, args=(server, 300, out_a, started))  # 300 x 50 ms > TIMEOUT
    a.start()
    assert started.wait(30)
    t = time.monotonic()
    r = chat(server, 300)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert TIMEOUT - 1 < time.monotonic() - t < TIMEOUT + 5
    a.join(30)
    assert out_a[0] == 200 and out_a[-1] == "data: [DONE]"
    error = json.loads(out_a[-2].removeprefix("data: "))
    assert error["error"]["code"] == "timeout" and error["error"]["type"] == "timeout"
    assert chat(server, 2).status_code == 200  # and the server is fine
    assert server.temp_files() == []


def test_sigterm_finishes_running_work_and_exits_0(server):
    out, started = [], threading.Event()
    a = threading.Thread(target=stream_lines, args=(server, 20, out, started))
    a.start()
    assert started.wait(30)
    assert server.terminate(timeout=60) == 0
    a.join(30)
    assert out[0] == 200 and out[-1] == "data: [DONE]"  # the running answer was finished, not cut
    assert '"finish_reason": "length"' in out[-2]
    assert list(server.tmp.glob("sfedge-serve-*")) == []  # the temporary directory is gone
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)
