"""The GPU plan without a GPU: the deadline with a fake clock, resuming, waiting for a resource, the order
of its steps, the per-layer / derived figures, and a dry run of scripts/gpu_plan.py on the CPU with the
toy preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfedge.bench.depth import per_layer
from sfedge.bench.plan import DONE, FAILED, LEFT_OUT, STOPPED, Plan, Step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.01)


class FakeProc:
    """A step that takes `durations[name]` fake seconds, then writes its result (or exits 1)."""

    def __init__(self, clock: FakeClock, results: Path, step: Step, seconds: float, rc: int = 0) -> None:
        self.clock, self.results, self.step, self.rc = clock, results, step, rc
        self.end = clock.t + seconds
        self.stopped = False

    def poll(self):
        if self.clock.t < self.end:
            return None
        if self.rc == 0:
            (self.results / f"{self.step.name}.json").write_text(json.dumps({"ran": self.step.name}))
        return self.rc

    def stop(self) -> None:
        self.stopped = True


def _plan(tmp_path, steps, durations, deadline, clock, rcs=None, launched=None):
    def launch(step, _log):
        launched is not None and launched.append((step.name, clock.t))
        return FakeProc(clock, tmp_path, step, durations[step.name], (rcs or {}).get(step.name, 0))

    return Plan(steps, tmp_path, deadline, clock=clock, sleep=clock.sleep, launch=launch, log=lambda _m: None)


def test_deadline_stops_the_running_step_and_leaves_valid_partial_json(tmp_path):
    clock = FakeClock()
    steps = [Step("a", [], 10), Step("b", [], 20, needs=("a",)), Step("c", [], 5), Step("d", [], 5, needs=("b",))]
    state = _plan(tmp_path, steps, {"a": 10, "b": 100, "c": 5, "d": 5}, 60, clock).run()
    st = {k: v["status"] for k, v in state["steps"].items()}
    assert st == {"a": DONE, "b": STOPPED, "c": LEFT_OUT, "d": LEFT_OUT}
    assert 60 <= clock.t < 62  # stopped at the deadline, not after b's 100 s
    on_disk = json.loads((tmp_path / "plan.json").read_text())  # valid JSON, the same state
    assert on_disk["finished"] and on_disk["steps"]["a"]["result"] == {"ran": "a"}
    assert on_disk["steps"]["b"]["status"] == STOPPED


def test_a_step_that_does_not_fit_is_left_out_and_a_shorter_one_runs(tmp_path):
    clock = FakeClock()
    steps = [Step("a", [], 10), Step("long", [], 100), Step("short", [], 10)]
    state = _plan(tmp_path, steps, {"a": 10, "long": 100, "short": 10}, 50, clock).run()
    assert state["steps"]["long"]["status"] == LEFT_OUT and "estimate" in state["steps"]["long"]["reason"]
    assert state["steps"]["short"]["status"] == DONE


def test_resume_keeps_done_steps_and_retries_the_rest(tmp_path):
    clock = FakeClock()
    steps = [Step("a", [], 10), Step("b", [], 20, needs=("a",)), Step("f", [], 5)]
    _plan(tmp_path, steps, {"a": 10, "b": 100, "f": 5}, 30, clock, rcs={"f": 1}).run()
    launched: list = []
    clock2 = FakeClock()
    state = _plan(tmp_path, steps, {"a": 10, "b": 20, "f": 5}, 100, clock2, launched=launched).run()
    assert [n for n, _ in launched] == ["b", "f"]  # a was done; b stopped, f not run: tried again
    assert all(v["status"] == DONE for v in state["steps"].values()) and state["runs"] == 2


def test_failed_prerequisite_leaves_dependents_out(tmp_path):
    clock = FakeClock()
    steps = [Step("x", [], 5), Step("y", [], 5, needs=("x",)), Step("z", [], 5)]
    state = _plan(tmp_path, steps, {"x": 5, "y": 5, "z": 5}, 100, clock, rcs={"x": 2}).run()
    assert state["steps"]["x"]["status"] == FAILED and state["steps"]["x"]["rc"] == 2
    assert state["steps"]["y"]["status"] == LEFT_OUT and "x" in state["steps"]["y"]["reason"]
    assert state["steps"]["z"]["status"] == DONE


def test_fillers_run_while_a_step_waits_for_its_resource(tmp_path):
    clock = FakeClock()
    flag = tmp_path / "ort-ready"
    steps = [Step("gpu", [], 5, resources=(str(flag),)), Step("filler", [], 5, filler=True),
             Step("later", [], 5)]
    launched: list = []
    durations = {"gpu": 5, "filler": 5, "later": 5}
    plan = _plan(tmp_path, steps, durations, 100, clock, launched=launched)
    orig = clock.sleep

    def sleep(dt):  # the resource arrives at t = 20
        orig(dt)
        if clock.t >= 20:
            flag.touch()

    plan.sleep = sleep
    state = plan.run()
    assert [n for n, _ in launched] == ["filler", "gpu", "later"]  # "later" is no filler: it waited
    assert dict(launched)["gpu"] >= 20 and all(v["status"] == DONE for v in state["steps"].values())


def test_resource_never_arrives_plan_ends_at_the_deadline(tmp_path):
    clock = FakeClock()
    steps = [Step("gpu", [], 5, resources=(str(tmp_path / "never"),))]
    state = _plan(tmp_path, steps, {"gpu": 5}, 30, clock).run()
    assert state["steps"]["gpu"]["status"] == LEFT_OUT and "waits for" in state["steps"]["gpu"]["reason"]
    assert 30 <= clock.t < 32


def test_exports_run_side_by_side_and_timed_steps_alone(tmp_path):
    clock = FakeClock()
    steps = [Step("make", [], 5, parallel=True), Step("exp-a", [], 30, needs=("make",), parallel=True),
             Step("timed", [], 10, needs=("exp-a",)), Step("exp-b", [], 30, needs=("make",), parallel=True),
             Step("exp-c", [], 30, needs=("make",), parallel=True), Step("bench", [], 10)]
    launched: list = []
    durations = {"make": 5, "exp-a": 30, "timed": 10, "exp-b": 40, "exp-c": 30, "bench": 10}
    state = _plan(tmp_path, steps, durations, 500, clock, launched=launched).run()
    at = dict(launched)
    assert at["exp-b"] == at["exp-a"]  # side by side (max_parallel 2) ...
    assert at["timed"] >= at["exp-b"] + 40  # ... and the timed step waited for both
    assert at["exp-c"] >= at["timed"] + 10 and at["bench"] >= at["exp-c"] + 30  # no jumping ahead of it
    assert all(v["status"] == DONE for v in state["steps"].values())


def test_plan_order_is_by_value():
    from gpu_plan import build_steps

    cfg = {"provider": "cuda", "depths": [4, 8], "precisions": ["fp16", "int4"], "full": True}
    names = [s.name for s in build_steps(cfg, Path("/w"))]
    pos = names.index
    assert pos("cuda-tokens") < pos("greedy-cost") < pos("bench-fp16-L4") < pos("bench-int4-L4")
    assert pos("bench-int4-L4") < pos("bench-fp16-L8")
    assert pos("bench-fp16-L8") < pos("make-full") < pos("bench-fp16-full")
    steps = {s.name: s for s in build_steps(cfg, Path("/w"))}
    assert steps["bench-fp16-L4"].resources and not steps["export-fp16-L4"].resources  # exports need no CUDA ORT
    assert steps["export-fp16-L4"].filler and not steps["make-full"].filler and not steps["export-fp16-full"].filler


def test_per_layer_and_derived_figures():
    def rep(prefill, per_token):
        st = {"prefill": prefill, "ttft": prefill + 100, "decode_ms_per_token": per_token, "e2e": prefill + 1000,
              "vision": 50.0}
        return {"engine": {"stages_ms": {k: {"median": v} for k, v in st.items()}}, "new_tokens": 128}

    d = per_layer({4: rep(40.0, 2.0), 8: rep(72.0, 3.0)}, "engine", 32)
    assert d["per_layer_ms"]["prefill"] == pytest.approx(8.0)  # (72 - 40) / 4
    assert d["derived_full_ms"]["prefill"] == pytest.approx(40 + 28 * 8.0)
    assert d["derived_full_ms"]["decode_ms_per_token"] == pytest.approx(2.0 + 28 * 0.25)
    assert d["derived_full_ms"]["tokens_per_s"] == pytest.approx(1e3 / 9.0)
    assert d["derived_full_ms"]["ttft"] == pytest.approx(172 + 24 * 8.0)  # TTFT(8) + 24 layers of prefill
    assert d["derived_full_ms"]["e2e"] == pytest.approx(1072 + 24 * (8.0 + 127 * 0.25))  # 128 new tokens
    assert "derived" in d["label"] and "per_layer" in d["formula"]
    one = per_layer({8: rep(72.0, 3.0)}, "engine", 32)
    assert one["per_layer_ms"] == {} and "two depths" in one["note"]


@pytest.mark.slow
def test_dry_run_on_cpu_with_the_toy_preset(tmp_path, engines_fp32, pipeline_fp32):
    """The whole plan end to end (CPU provider, toy preset, one depth, fp16, 8 frames, 4 new tokens)."""
    from sfedge.synthetic import make_image_dir

    carry = tmp_path / "carry"
    carry.mkdir()
    os.symlink(engines_fp32, carry / "tiny-fp32")
    make_image_dir(carry / "clip", 6, width=160, height=120, seed=3)
    res = pipeline_fp32.ask(carry / "clip", "Q?", gen=__import__("sfedge.spec").spec.GenerationSpec(
        max_new_tokens=4, ignore_eos=True))
    (carry / "expected.json").write_text(json.dumps({"question": "Q?", "new_tokens": 4, "tokens": res.token_ids}))
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_plan.py"), "--work", str(work), "run", "--provider", "cpu",
           "--preset", "sf-llava-test", "--depths", "1", "--precisions", "fp16", "--frames", "8", "--new-tokens", "4",
           "--runs", "1", "--warmup", "0", "--no-full", "--skip", "validate-tiny-cuda", "--carry", str(carry),
           "--budget-s", "300"]
    env = dict(os.environ, OUT=str(out), PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    state = json.loads((out / "plan.json").read_text())
    bad = {k: v for k, v in state["steps"].items() if v["status"] != DONE}
    assert not bad and "validate-tiny-cuda" not in state["steps"], (bad, (work / "results" / "plan.log").read_text()[-4000:])
    assert state["steps"]["cuda-tokens"]["result"]["match"] == {"cpu": True}
    greedy = state["steps"]["greedy-cost"]["result"]  # the tiny carried engines, then the L1 fp16 engines
    assert [r["vocab"] for r in greedy["runs"]] == [1024, 2048] and not greedy["captured_errors"]
    assert all(r["tokens_checked"] == 33 and r["medians_ms"]["loop_greedy_ms"] > 0 for r in greedy["runs"])
    assert state["steps"]["gpu-tests"]["result"]["skipped"] == state["steps"]["gpu-tests"]["result"]["tests"] > 0
    bench = state["steps"]["bench-fp16-L1"]["result"]
    assert bench["reference"] is not None and bench["speedup"]["ttft"] > 0
    assert bench["engine"]["stages_ms"]["ttft"]["median"] >= bench["engine"]["stages_ms"]["prefill"]["median"]
    summary = json.loads((out / "summary.json").read_text())
    assert "bench-fp16-L1" in summary["benches"] and (out / "summary.txt").read_text().startswith("device cpu")


def test_the_real_plan_by_its_estimates(tmp_path, monkeypatch):
    """build_steps' GPU plan on the fake clock, every step taking its estimate, the CUDA onnxruntime
    arriving 100 s in: (a) first once it is there, then (b) at both depths within 660 s; (c) left out."""
    import gpu_plan

    ready = tmp_path / "ort-ready"
    monkeypatch.setattr(gpu_plan, "ORT_READY", ready)
    cfg = {"provider": "cuda", "depths": [4, 8], "precisions": ["fp16", "int4"], "full": True}
    steps = gpu_plan.build_steps(cfg, tmp_path)
    clock = FakeClock()
    launched: list = []
    plan = _plan(tmp_path, steps, {s.name: s.estimate_s for s in steps}, 660, clock, launched=launched)
    plan.max_parallel = 4
    orig = clock.sleep

    def sleep(dt):
        orig(dt)
        if clock.t >= 100:
            ready.touch()

    plan.sleep = sleep
    state = plan.run()
    st = {k: v["status"] for k, v in state["steps"].items()}
    at = dict(launched)
    assert all(st[n] == DONE for n in ("cuda-tokens", "gpu-tests", "bench-fp16-L4", "bench-int4-L4", "bench-fp16-L8",
                                       "bench-int4-L8")), st
    assert at["cuda-tokens"] < at["greedy-cost"] < min(at[n] for n in at if n.startswith("bench"))
    assert st["greedy-cost"] == DONE
    assert at["export-fp16-L8"] < at["cuda-tokens"]  # the second depth's exports ran as fillers, early
    assert at["bench-int4-L8"] + 60 <= 660  # the docs' timeline: the last bench ends at 640 s
    assert st["make-full"] == LEFT_OUT and "estimate" in state["steps"]["make-full"]["reason"]
    assert st["bench-fp16-full"] == LEFT_OUT
