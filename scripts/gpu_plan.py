"""The GPU plan: what one lent GPU session (15 minutes of device time, start-up included) runs, by value,
against a deadline, resumable. docs/BENCHMARKS.md "GPU plan: call sequence" lists the device calls.

Here (CPU host), once:   python scripts/gpu_plan.py prepare          (tiny engines + wheels -> .gpu-carry, .stage)
There, call 1:           python3 scripts/gpu_plan.py start --budget-s 660   (installs onnxruntime-genai, starts
                         the plan detached: it makes and exports while the CUDA onnxruntime travels)
There, calls 2..n-1:     python3 scripts/gpu_plan.py status       (each carrying one part)
There, call n:           python3 scripts/gpu_plan.py install && python3 scripts/gpu_plan.py wait --follow-s 540
Dry run here:            python scripts/gpu_plan.py run --provider cpu --preset sf-llava-test --depths 1,2 ...

Steps, by value (each writes .gpu-work/results/NAME.json the moment it ends; plan.json holds them all):
  prep (no CUDA onnxruntime needed, so they run while it travels): env, ceilings (bandwidth, GEMM), clip
     (an image directory: PyAV does not travel), make-LD (the preset at depth D), export-fp16-LD, ref-LD
     (the PyTorch reference, fp16 on the GPU), export-int4-LD
  (a) cuda-tokens: the carried tiny fp32 engines give the CPU's tokens on the CUDA provider, with the
      session options checked; gpu-tests: pytest -m gpu
  (b) bench-fp16-LD, bench-int4-LD: 50 frames, 128 new tokens, vs the reference; then the second depth
      (per-layer figures from the two depths; the 32-layer figures derived from them are labelled so)
  (a') validate-tiny-cuda: the tiny fp32 export validated on CUDA (the only export validation there)
  (c) make-full, export-fp16-full, ref-full, bench-fp16-full: the whole model measured directly, if the
      deadline allows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sfedge.bench.plan import Plan, Step, _Process, steps_table, write_json  # noqa: E402

STAGE = ROOT / ".stage"
CARRY = ROOT / ".gpu-carry"
SITE_GENAI, SITE_ORT = STAGE / "site-genai", STAGE / "site-ort"
ORT_READY = SITE_ORT / ".done"
QUESTION = "What is happening in the video?"
CALL_MIB = 62.0  # what one call may carry: 64 MiB, less the working tree (~0.6 MiB) and a margin
WHEELS = ("onnxruntime-gpu==1.31.1", "onnxruntime-genai==0.18.0")


def work_dir(args) -> Path:
    return Path(args.work or os.environ.get("SFEDGE_GPU_WORK") or ROOT / ".gpu-work").resolve()


# ----------------------------------------------------------------------------- the steps' list
def build_steps(cfg: dict, work: Path) -> list[Step]:
    me = [sys.executable, str(Path(__file__).resolve()), "step", "--work", str(work)]
    cuda = cfg["provider"] != "cpu"
    gpu = (str(ORT_READY),) if cuda else ()
    d1, *more = cfg["depths"]
    # estimate_s: expected seconds on the H200 machine (ESTIMATES, docs/BENCHMARKS.md "GPU plan" gives
    # their basis); a step starts only if its estimate fits in the time left, and is stopped at the deadline
    steps = [Step("env", me + ["env"], 10, part="prep", filler=True),
             Step("ceilings", me + ["ceilings"], 20, part="prep", filler=True),
             Step("clip", me + ["clip"], 10, part="prep", filler=True)]

    def prep(tag: str, precisions) -> list[Step]:
        out = [Step(f"make-{tag}", me + [f"make-{tag}"], 30, part="prep", filler=True, parallel=True)]
        for p in precisions:
            out.append(Step(f"export-{p}-{tag}", me + [f"export-{p}-{tag}"], 90 if p == "fp16" else 120,
                            needs=(f"make-{tag}",), part="prep", filler=True, parallel=True))
            if p == precisions[0]:
                out.append(Step(f"ref-{tag}", me + [f"ref-{tag}"], 60, needs=(f"export-{p}-{tag}", "clip"),
                                part="prep", filler=True))
        return out

    def bench(tag: str, p: str, part: str) -> Step:
        return Step(f"bench-{p}-{tag}", me + [f"bench-{p}-{tag}"], 60,
                    needs=(f"export-{p}-{tag}", "ceilings", "clip"), resources=gpu, part=part)

    steps += prep(f"L{d1}", cfg["precisions"])
    steps += [Step("cuda-tokens", me + ["cuda-tokens"], 30, resources=gpu, part="a"),
              Step("greedy-cost", me + ["greedy-cost"], 20, needs=("cuda-tokens",), resources=gpu, part="a"),
              Step("gpu-tests", me + ["gpu-tests"], 60, resources=gpu, part="a")]
    steps += [bench(f"L{d1}", p, "b") for p in cfg["precisions"]]
    for d in more:
        steps += prep(f"L{d}", cfg["precisions"])
        steps += [bench(f"L{d}", p, "b") for p in cfg["precisions"]]
    steps.append(Step("validate-tiny-cuda", me + ["validate-tiny-cuda"], 60, resources=gpu, part="a"))
    if cfg.get("full", True):
        steps += [Step("make-full", me + ["make-full"], 90, part="c", parallel=True),
                  Step("export-fp16-full", me + ["export-fp16-full"], 360, needs=("make-full",), part="c",
                       parallel=True),
                  Step("ref-full", me + ["ref-full"], 90, needs=("export-fp16-full", "clip"), part="c"),
                  Step("bench-fp16-full", me + ["bench-fp16-full"], 90, needs=("export-fp16-full", "ceilings", "clip"),
                       resources=gpu, part="c")]
    return steps


def step_env(step: Step) -> dict:
    """PYTHONPATH for a step: the repo, onnxruntime-genai, and for the steps that wait for it the CUDA
    onnxruntime (the exports keep the machine's own onnxruntime, with which the builder was checked)."""
    sites = [SITE_ORT] if str(ORT_READY) in step.resources else []
    paths = [str(ROOT)] + [str(p) for p in sites + [SITE_GENAI] if (p / ".done").is_file()]
    return {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def launch(step: Step, log) -> _Process:
    step.env = step_env(step)
    return _Process(step, log)


# ----------------------------------------------------------------------------- on the device
def cmd_run(args) -> int:
    """Run the plan in the foreground until it ends or the deadline."""
    work = work_dir(args)
    (work / "results").mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.json"
    if args.resume and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
    else:
        cfg = {"preset": args.preset, "depths": [int(d) for d in args.depths.split(",")],
               "precisions": args.precisions.split(","), "frames": args.frames, "new_tokens": args.new_tokens,
               "runs": args.runs, "warmup": args.warmup, "provider": args.provider,
               "export_device": "cpu" if args.provider == "cpu" else "cuda", "full": not args.no_full,
               "carry": str(Path(args.carry).resolve()), "budget_s": args.budget_s,
               "skip": [n for n in args.skip.split(",") if n], "max_parallel": args.max_parallel}
        if cfg_path.is_file() and (work / "results" / "plan.json").is_file():
            old = json.loads(cfg_path.read_text())
            if {k: v for k, v in old.items() if k != "budget_s"} != {k: v for k, v in cfg.items() if k != "budget_s"}:
                raise SystemExit(f"{work} holds the results of another configuration: pass --resume to go on "
                                 "with it, or another --work")
        write_json(cfg_path, cfg)
    deadline = time.monotonic() + args.budget_s
    steps = [s for s in build_steps(cfg, work) if s.name not in cfg.get("skip", [])]
    plan = Plan(steps, work / "results", deadline, launch=launch, info={"config": cfg},
                max_parallel=cfg.get("max_parallel", 4))
    state = plan.run()
    finish(work)
    print(steps_table(state))
    return 0


def finish(work: Path) -> None:
    """summary.json / summary.txt from the results so far, and everything into $OUT if set."""
    from sfedge.bench.depth import format_summary
    from gpu_plan_steps import summarize

    res = work / "results"
    try:
        summary = summarize(res)
        write_json(res / "summary.json", summary)
        (res / "summary.txt").write_text(format_summary(summary) + "\n")
    except Exception as e:  # noqa: BLE001 - partial results must still come back
        (res / "summary.txt").write_text(f"no summary: {e!r}\n")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for name in ("plan.json", "summary.json", "summary.txt", "plan.log"):
            if (res / name).is_file():
                data = (res / name).read_bytes()
                (Path(out) / name).write_bytes(data[-8 * 2**20:])  # a log past 8 MiB: its end


def cmd_start(args) -> int:
    """Install the carried onnxruntime-genai, then start `run` detached (it outlives this call)."""
    work = work_dir(args)
    work.mkdir(parents=True, exist_ok=True)
    pid_file = work / "runner.pid"
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text()), 0)
            raise SystemExit(f"a plan is running already (pid {pid_file.read_text()}): `wait` for it")
        except (ProcessLookupError, ValueError):
            pass
    _unzip_install(sorted((STAGE / "genai").glob("*.whl")), SITE_GENAI)
    argv = [sys.executable, str(Path(__file__).resolve()), "run", "--work", str(work)] + args.run_args
    with open(work / "runner.out", "a") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True,
                             env={**{k: v for k, v in os.environ.items() if k != "OUT"}, "PYTHONUNBUFFERED": "1"})
    (work / "runner.pid").write_text(str(p.pid))
    print(f"plan started (pid {p.pid}): {' '.join(argv)}")
    return cmd_wait(args) if args.follow_s else 0


def _unzip_install(wheels: list[Path], site: Path) -> None:
    """Install wheels by extracting them into `site` (what pip --target does for these: no scripts, no
    .data; file modes kept), then mark it done."""
    import zipfile

    if (site / ".done").is_file():
        return
    if not wheels:
        raise SystemExit(f"no wheels to install into {site}")
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for info in z.infolist():
                path = Path(z.extract(info, site))
                mode = info.external_attr >> 16
                if mode and path.is_file():
                    path.chmod(mode & 0o777)
    (site / ".done").touch()
    print(f"installed {' '.join(w.name for w in wheels)} into {site}")


def cmd_install(args) -> int:
    """Join the onnxruntime-gpu parts, install them, check that the CUDA provider is listed."""
    parts = sorted((STAGE / "parts").glob("ort.*"))
    expected = json.loads((STAGE / "ort-wheel.json").read_text())
    if len(parts) != expected["parts"]:
        raise SystemExit(f"{len(parts)} of {expected['parts']} parts are here: the machine was given back in between?")
    whl = STAGE / expected["wheel"]
    with open(whl, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    if whl.stat().st_size != expected["bytes"]:
        raise SystemExit(f"joined {whl.stat().st_size} bytes, expected {expected['bytes']}")
    tmp = SITE_ORT.with_name("site-ort.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _unzip_install([whl], tmp)
    check = subprocess.run([sys.executable, "-c", "import onnxruntime as o; print(o.__version__, o.get_available_providers())"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tmp)))
    print("onnxruntime-gpu:", check.stdout.strip(), check.stderr.strip()[-500:])
    if "CUDAExecutionProvider" not in check.stdout:
        raise SystemExit("the staged onnxruntime-gpu does not list CUDAExecutionProvider")
    if SITE_ORT.exists():
        shutil.rmtree(SITE_ORT)
    tmp.rename(SITE_ORT)  # .done inside: the plan's CUDA steps may start
    return 0


def cmd_status(args) -> int:
    res = work_dir(args) / "results" / "plan.json"
    print(steps_table(json.loads(res.read_text())) if res.is_file() else "no plan.json yet")
    return 0


def cmd_wait(args) -> int:
    """Follow plan.log until the plan ends or --follow-s; results into $OUT either way."""
    work = work_dir(args)
    log, plan_json = work / "results" / "plan.log", work / "results" / "plan.json"
    t_end, off = time.monotonic() + args.follow_s, 0
    while True:
        if log.is_file():
            data = log.read_bytes()
            sys.stdout.write(data[off:].decode(errors="replace")[-20000:])
            off = len(data)
        done = plan_json.is_file() and json.loads(plan_json.read_text()).get("finished")
        if done or time.monotonic() >= t_end:
            break
        time.sleep(5)
    finish(work)
    if plan_json.is_file():
        print(steps_table(json.loads(plan_json.read_text())))
    summary = work / "results" / "summary.txt"
    if summary.is_file():
        print(summary.read_text())
    print("PLAN FINISHED" if done else "PLAN STILL RUNNING: call `wait` again now")
    return 0 if done else 75


def cmd_step(args) -> int:
    from gpu_plan_steps import run_step

    run_step(args.name, work_dir(args))
    return 0


def cmd_summary(args) -> int:
    finish(work_dir(args))
    print((work_dir(args) / "results" / "summary.txt").read_text())
    return 0


# ----------------------------------------------------------------------------- here, before the calls
def cmd_prepare(args) -> int:
    from gpu_plan_stage import prepare_carry, stage_wheels

    prepare_carry(CARRY)
    if not args.skip_wheels:
        calls = stage_wheels(STAGE, CARRY, WHEELS, CALL_MIB, args.budget_s)
        for c in calls:
            print(f"run(command={c['command']!r}, carry={c['carry']})   # {c['mib']:.1f} MiB carried")
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ap = argparse.ArgumentParser(prog="gpu_plan.py", description=__doc__.split("\n")[0])
    ap.add_argument("--work", help="work directory (default .gpu-work; env SFEDGE_GPU_WORK)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the plan in the foreground")
    r.add_argument("--work", default=argparse.SUPPRESS)
    r.add_argument("--budget-s", type=float, default=660, help="seconds from now to the deadline (default 660)")
    r.add_argument("--preset", default="sf-llava-7b")
    r.add_argument("--depths", default="4,8", help="truncated LLM depths (default 4,8: per-layer = the difference)")
    r.add_argument("--precisions", default="fp16,int4")
    r.add_argument("--frames", type=int, default=50)
    r.add_argument("--new-tokens", type=int, default=128)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--provider", default="cuda", choices=("cuda", "cpu"))
    r.add_argument("--carry", default=str(CARRY), help="the carried tiny engines (prepare)")
    r.add_argument("--no-full", action="store_true", help="leave out part (c), the full-depth model")
    r.add_argument("--max-parallel", type=int, default=4,
                   help="makes / exports at once (default 4: both depths' at once; nothing timed overlaps them)")
    r.add_argument("--skip", default="", help="steps to leave out, comma-separated")
    r.add_argument("--resume", action="store_true", help="the config of the earlier run (steps done stay done)")
    s = sub.add_parser("start", help="(device) install onnxruntime-genai, start `run` detached; other options go to run")
    s.add_argument("--work", default=argparse.SUPPRESS)
    s.add_argument("--follow-s", type=float, default=0)
    for name, helptext in (("install", "(device) join + install the onnxruntime-gpu parts"),
                           ("status", "the steps' state"), ("summary", "summary.txt from the results")):
        sub.add_parser(name, help=helptext).add_argument("--work", default=argparse.SUPPRESS)
    w = sub.add_parser("wait", help="(device) follow the plan; results into $OUT")
    w.add_argument("--work", default=argparse.SUPPRESS)
    w.add_argument("--follow-s", type=float, default=540)
    st = sub.add_parser("step", help="one step (what the plan runs)")
    st.add_argument("--work", default=argparse.SUPPRESS)
    st.add_argument("name")
    p = sub.add_parser("prepare", help="(here) tiny engines into .gpu-carry, wheels into .stage parts")
    p.add_argument("--skip-wheels", action="store_true")
    p.add_argument("--budget-s", type=float, default=660)
    args, unknown = ap.parse_known_args(argv)
    if unknown and args.cmd != "start":
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.run_args = unknown  # start: options for `run`
    if not hasattr(args, "work"):
        args.work = None
    return {"run": cmd_run, "start": cmd_start, "install": cmd_install, "status": cmd_status, "wait": cmd_wait,
            "step": cmd_step, "summary": cmd_summary, "prepare": cmd_prepare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
