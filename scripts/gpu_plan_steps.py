"""The steps of scripts/gpu_plan.py (each runs in its own process, writes RESULTS/NAME.json atomically at
its end) and the summary. The preparation here (carried tiny engines, wheel parts) is gpu_plan_stage.py.

Each step imports what it needs, so a missing package fails that step alone, with its message in plan.log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sfedge.bench.plan import write_json

ROOT = Path(__file__).resolve().parents[1]


def _cfg(work: Path) -> dict:
    return json.loads((work / "config.json").read_text())


def _ckpt(work: Path, tag: str) -> Path:
    return work / f"ckpt-{tag}"


def _engines(work: Path, prec: str, tag: str) -> Path:
    return work / f"engines-{prec}-{tag}"


def _du_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


# ----------------------------------------------------------------------------- prep steps
def env(work: Path, cfg: dict) -> dict:
    import importlib.metadata as md
    import platform

    import onnxruntime as ort

    out = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
           "onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
           "providers": ort.get_available_providers(), "nproc": os.cpu_count(),
           "disk_free_gb": shutil.disk_usage(work).free / 1e9, "config": cfg}
    for pkg in ("onnxruntime-gpu", "onnxruntime-genai", "torch", "transformers", "onnx", "onnx-ir", "numpy", "av"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem",
                            "--format=csv,noheader"], capture_output=True, text=True)
        out["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return out


def ceilings(work: Path, cfg: dict) -> dict:
    from sfedge.bench import roofline

    return roofline.measure_cuda() if cfg["provider"] != "cpu" else roofline.measure_cpu()


def clip(work: Path, cfg: dict) -> dict:
    from sfedge.synthetic import make_image_dir

    d = work / f"clip-{cfg['frames']}"
    if not d.is_dir():
        tmp = work / f"clip-{cfg['frames']}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_image_dir(tmp, cfg["frames"], seed=0)
        tmp.rename(d)
    return {"path": str(d), "frames": cfg["frames"], "how": "PNG image directory (sfedge.synthetic.make_image_dir)"}


def make(work: Path, cfg: dict, tag: str) -> dict:
    from sfedge.models.presets import make_preset

    dst = _ckpt(work, tag)
    overrides = {} if tag == "full" else {"num_hidden_layers": int(tag[1:])}
    if not (dst / "model.safetensors.index.json").is_file():
        if tag == "full":  # the truncated artefacts go first if the disk is short (~45 GB for the full steps)
            _free_disk(work, need_gb=50)
        tmp = work / f"ckpt-{tag}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_preset(cfg["preset"], tmp, device="cpu" if cfg["provider"] == "cpu" else "cuda", text_overrides=overrides)
        tmp.rename(dst)
    return {"checkpoint": str(dst), "preset": cfg["preset"], "text_overrides": overrides, "size_gb": _du_gb(dst),
            "how": "sfedge.models.presets.make_preset(text_overrides=...): reference and engines share the depth"}


def _free_disk(work: Path, need_gb: float) -> None:
    for d in sorted(work.glob("engines-*-L*")) + sorted(work.glob("ckpt-L*")):
        if shutil.disk_usage(work).free / 1e9 >= need_gb:
            return
        shutil.rmtree(d, ignore_errors=True)
        print(f"disk: removed {d}")


def export(work: Path, cfg: dict, prec: str, tag: str) -> dict:
    from sfedge.export import export_model

    t0 = time.perf_counter()
    dst = _engines(work, prec, tag)
    export_model(_ckpt(work, tag), dst, precision=prec, device=cfg["export_device"], max_frames=64, validate=False,
                 force=True, progress=False)
    return {"engines": str(dst), "seconds": time.perf_counter() - t0, "size_gb": _du_gb(dst),
            "device": cfg["export_device"], "validated": False}


def _bench_cfg(work: Path, cfg: dict, engines: Path, ceil: dict | None):
    from sfedge.bench.runner import BenchConfig

    return BenchConfig(engines=engines, video=work / f"clip-{cfg['frames']}", new_tokens=cfg["new_tokens"],
                       runs=cfg["runs"], warmup=cfg["warmup"], provider=cfg["provider"], reference=False,
                       ceilings=ceil)


def ref(work: Path, cfg: dict, tag: str) -> dict:
    """The PyTorch reference (fp16 on CUDA, fp32 on the CPU), timed stage by stage: raw runs, no floors."""
    from dataclasses import asdict

    from sfedge.bench.runner import bench_reference, reference_dtype
    from sfedge.manifest import load_manifest
    from sfedge.spec import GenerationSpec, PipelineSpec

    engines = _engines(work, cfg["precisions"][0], tag)
    spec = PipelineSpec.from_dict(load_manifest(engines, verify_files=False).get("pipeline", {}))
    on_cuda = cfg["provider"] != "cpu"
    side = bench_reference(_bench_cfg(work, cfg, engines, None), GenerationSpec(max_new_tokens=cfg["new_tokens"],
                           ignore_eos=True), spec, str(_ckpt(work, tag)), reference_dtype("fp16", on_cuda), on_cuda)
    return asdict(side)


def bench(work: Path, cfg: dict, prec: str, tag: str) -> dict:
    """The engines (no reference in this process), then the reference of ref-TAG attached with its floors."""
    from sfedge.bench import roofline
    from sfedge.bench.runner import STAGES, SideResult, _checkpoint_config, _side_report, run_bench
    from sfedge.bench.stats import ratio

    res = work / "results"
    ceil = json.loads((res / "ceilings.json").read_text())
    bcfg = _bench_cfg(work, cfg, _engines(work, prec, tag), ceil)
    bcfg.model = str(_ckpt(work, tag))
    report = run_bench(bcfg, log=print)
    report["depth"] = tag
    ref_file = res / f"ref-{tag}.json"
    if ref_file.is_file():
        side = SideResult(**json.loads(ref_file.read_text()))
        geom = roofline.Geometry.from_config(_checkpoint_config(bcfg.model))
        act = 2 if side.info.get("dtype") == "float16" else 4
        floors = roofline.floors_ms(geom, ceil, frames=side.info["frames"], prefill_tokens=report["prefill_tokens"],
                                    new_tokens=cfg["new_tokens"], weight_bytes=side.info["weight_bytes"], act_bytes=act)
        report["reference"] = _side_report(side, floors)
        e, r = report["engine"]["stages_ms"], report["reference"]["stages_ms"]
        report["speedup"] = {k: ratio(r[k]["median"], e[k]["median"]) for k in STAGES if k in e and k in r}
    return report


# ----------------------------------------------------------------------------- (a) correctness
def cuda_tokens(work: Path, cfg: dict) -> dict:
    """The carried tiny fp32 engines on the plan's provider give the tokens the CPU gave here (and gives
    there); the CUDA session options are what sfedge sets."""
    import onnxruntime as ort

    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec

    carry = Path(cfg["carry"])
    expected = json.loads((carry / "expected.json").read_text())
    gen = GenerationSpec(max_new_tokens=expected["new_tokens"], ignore_eos=True)
    video, engines = carry / "clip", carry / "tiny-fp32"
    got = {}
    for prov in dict.fromkeys(("cpu", cfg["provider"])):
        pipe = Pipeline(engines, provider=prov)
        res = pipe.ask(video, expected["question"], gen=gen)
        got[prov] = {"tokens": res.token_ids, "timings_ms": res.timings_ms}
        if prov != "cpu":
            got[prov]["sessions"] = _session_options_seen(pipe)
        del pipe
    out = {"expected_here": expected, "got": got, "onnxruntime": ort.__version__}
    out["match"] = {p: g["tokens"] == expected["tokens"] for p, g in got.items()}
    if not all(out["match"].values()):
        write_json(work / "results" / "cuda-tokens.failed.json", out)
        raise SystemExit(f"token mismatch: {json.dumps(out['match'])} (see cuda-tokens.failed.json)")
    return out


def _session_options_seen(pipe) -> dict:
    """What the CUDA sessions report: provider options (use_tf32, cudnn_conv_algo_search), intra-op threads."""
    import onnxruntime as ort

    sessions: dict = {}

    def collect(obj, prefix: str, depth: int) -> None:  # pipeline -> encoder / answerer -> engines, decoder
        for name, v in vars(obj).items():
            key = f"{prefix}{name}"
            if isinstance(v, ort.InferenceSession):
                sessions[key] = v
            elif isinstance(getattr(v, "session", None), ort.InferenceSession):
                sessions[key] = v.session
            elif depth and hasattr(v, "__dict__") and type(v).__module__.startswith("sfedge"):
                collect(v, key + ".", depth - 1)

    collect(pipe, "", 3)
    seen = {}
    for name, sess in sessions.items():
        opts = sess.get_provider_options().get("CUDAExecutionProvider", {})
        seen[name] = {"providers": sess.get_providers(), "use_tf32": opts.get("use_tf32"),
                      "cudnn_conv_algo_search": opts.get("cudnn_conv_algo_search"),
                      "intra_op_num_threads": sess.get_session_options().intra_op_num_threads}
    return seen


def greedy_cost(work: Path, cfg: dict) -> dict:
    """The greedy loop's second session (greedy_step.onnx) per token vs the LLM step alone, on the
    plan's provider (sfedge/bench/greedy_step.py): the carried tiny engines (V 1024: the run's fixed
    cost) and, if exported by now, the first depth's engines (the real vocabulary and width). On CUDA
    also with the decode and greedy steps captured in CUDA graphs, each captured measurement in a child
    process (a failure there is recorded, not fatal)."""
    from sfedge.bench.greedy_step import measure_engines

    engines = [Path(cfg["carry"]) / "tiny-fp32"]
    prec, tag = cfg["precisions"][0], f"L{cfg['depths'][0]}"
    if (work / "results" / f"export-{prec}-{tag}.json").is_file():
        engines.append(_engines(work, prec, tag))
    out: dict = {"runs": [], "captured_errors": []}
    for eng in engines:
        out["runs"].append(measure_engines(eng, cfg["provider"], tokens=32, rounds=5))
        print(json.dumps(out["runs"][-1]), flush=True)
        if cfg["provider"] != "cuda":
            continue
        try:
            p = subprocess.run([sys.executable, str(ROOT / "scripts" / "greedy_step_cost.py"), str(eng), "--provider",
                                "cuda", "--cuda-graph", "on"], capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired:
            out["captured_errors"].append({"engines": str(eng), "rc": None, "stderr": "timed out after 90 s"})
            continue
        print(p.stdout[-3000:], p.stderr[-3000:])
        if p.returncode == 0:
            out["runs"] += json.loads(p.stdout.strip().splitlines()[-1])["results"]
        else:
            out["captured_errors"].append({"engines": str(eng), "rc": p.returncode, "stderr": p.stderr[-2000:]})
    return out


def gpu_tests(work: Path, cfg: dict) -> dict:
    xml = work / "gpu-tests.xml"
    env = dict(os.environ, SFEDGE_GPU_CARRY=cfg["carry"])
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    print(p.stdout[-6000:], p.stderr[-3000:])
    import xml.etree.ElementTree as ET

    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    out = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["skip_reasons"] = sorted({s.get("message", "") for s in suite.iter("skipped")})
    out["rc"] = p.returncode
    if out["failures"] or out["errors"] or p.returncode not in (0, 5):
        raise SystemExit(f"gpu tests failed: {out}")
    return out


def validate_tiny(work: Path, cfg: dict) -> dict:
    from sfedge.export import export_model
    from sfedge.models.tiny import make_tiny

    # The builder's subprocess imports onnxruntime_genai, which loads onnxruntime's C library from the
    # onnxruntime it finds first: the machine's own (the staged onnxruntime-gpu travels without it).
    # This process keeps the CUDA onnxruntime it imported for the validation sessions.
    site_ort = (ROOT / ".stage" / "site-ort").resolve()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != site_ort)
    import onnxruntime  # noqa: F401  (imported before the export: the CUDA build, from sys.path)

    ck = make_tiny(work / "tiny-ckpt", seed=0)
    m = export_model(ck, work / "tiny-fp32-validated", precision="fp32", device=cfg["export_device"], validate=True,
                     force=True, progress=False)
    return {"validation": m.get("validation"), "device": cfg["export_device"]}


def run_step(name: str, work: Path) -> None:
    cfg = _cfg(work)
    kind, _, rest = name.partition("-")
    if name in ("env", "ceilings", "clip"):
        result = globals()[name](work, cfg)
    elif name == "cuda-tokens":
        result = cuda_tokens(work, cfg)
    elif name == "gpu-tests":
        result = gpu_tests(work, cfg)
    elif name == "greedy-cost":
        result = greedy_cost(work, cfg)
    elif name == "validate-tiny-cuda":
        result = validate_tiny(work, cfg)
    elif kind in ("make", "ref"):
        result = (make if kind == "make" else ref)(work, cfg, rest)
    elif kind in ("export", "bench"):
        prec, _, tag = rest.partition("-")
        result = (export if kind == "export" else bench)(work, cfg, prec, tag)
    else:
        raise SystemExit(f"unknown step {name}")
    write_json(work / "results" / f"{name}.json", result)


# ----------------------------------------------------------------------------- summary
def summarize(results: Path) -> dict:
    from sfedge.bench.depth import per_layer

    def load(n: str):
        p = results / f"{n}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    benches = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("bench-*.json"))}
    full_layers = None
    for p in sorted(results.glob("make-*.json")):
        m = json.loads(p.read_text())
        cfgp = Path(m["checkpoint"]) / "config.json"
        if p.stem == "make-full" and cfgp.is_file():
            full_layers = json.loads(cfgp.read_text())["text_config"]["num_hidden_layers"]
    if full_layers is None:
        from sfedge.models.presets import PRESETS

        plan = load("plan") or {}
        preset = ((plan.get("info") or {}).get("config") or {}).get("preset", "sf-llava-7b")
        full_layers = PRESETS[preset][1]["num_hidden_layers"]
    by_prec: dict[str, dict[int, dict]] = {}
    for name, b in benches.items():
        tag = b.get("depth", "")
        if tag.startswith("L"):
            by_prec.setdefault(b["precision"], {})[int(tag[1:])] = b
    floors = None
    deepest = max((b for b in benches.values() if b.get("depth", "").startswith("L")), default=None,
                  key=lambda b: int(b["depth"][1:]))
    if deepest and load("ceilings"):
        from sfedge.bench import roofline
        from sfedge.bench.runner import _checkpoint_config

        conf = _checkpoint_config(str(Path(deepest["engines"]).parent / f"ckpt-{deepest['depth']}"))
        if conf:
            conf["text_config"]["num_hidden_layers"] = full_layers
            g = roofline.Geometry.from_config(conf)
            floors = {"label": f"floors for {full_layers} layers, fp16 weights (computed, not measured)",
                      **roofline.floors_ms(g, load("ceilings"), frames=deepest["frames"],
                                           prefill_tokens=deepest["prefill_tokens"], new_tokens=deepest["new_tokens"],
                                           weight_bytes=g.llm_weight_bytes(2), act_bytes=2)}
    return {"ceilings": load("ceilings"), "env": load("env"), "floors_full_fp16_ms": floors,
            "cuda_tokens": (load("cuda-tokens") or {}).get("match"),
            "gpu_tests": load("gpu-tests"), "benches": benches,
            "greedy_cost_ms": [{k: r[k] for k in ("engines", "cuda_graph", "vocab", "hidden")} | r["medians_ms"]
                               for r in (load("greedy-cost") or {}).get("runs", [])],
            "per_layer": {**{f"{prec} engines": per_layer(r, "engine", full_layers) for prec, r in by_prec.items()},
                          **{"reference (PyTorch, the same for every precision)": per_layer(r, "reference", full_layers)
                             for r in list(by_prec.values())[:1]}}}
