"""`build_plans`: TensorRT plans for the vision and SlowFast graphs, built ON THE TARGET.

A plan is specific to the GPU and the TensorRT version that built it, so this runs on the device
that will serve (a Jetson with JetPack 6 / TensorRT 10.x), not on the export host. Needs only
`tensorrt` (and, to record the GPU's name, cuda-python): no torch.

Per component: TensorRT's ONNX parser reads the graph with `parse_from_file` (so external data
beside the .onnx is found), each network input's type is checked against the manifest's dtype (the
vision graph's `frames` are uint8 [T,336,336,3] NHWC, manifest schema 2: TensorRT takes a UINT8
network input whose only consumer is a Cast, which is how the graph starts), one optimization
profile covers every dynamic input with min / opt / max from the manifest's ranges (T from 1 to
max_frames, opt = the sampling's num_frames), and `build_serialized_network` writes
`trt/<component>.plan`. `trt/plans.json`
records the TensorRT version, the GPU (name, compute capability), the flags, the profiles and
each plan's sha256; manifest.json gains a `"tensorrt"` block and is re-hashed, so `load_manifest`
still verifies every file.

Precision. fp16 ONNX graphs (export --precision fp16) are built as strongly typed networks: the
graph's own types decide. fp32 graphs with `fp16=True` use `BuilderFlag.FP16` (weak typing), which
TensorRT 10 has and TensorRT 11 removed: there, export fp16 graphs or build with `fp16=False`.

The LLM is NOT built here: the onnxruntime-genai decoder uses ONNX Runtime contrib ops
(GroupQueryAttention, MatMulNBits) that TensorRT's ONNX parser does not support, so the LLM stays
on ONNX Runtime's CUDA execution provider.

Each plan is checked before it is kept (`check_plan`): the plan and its ONNX graph (ONNX Runtime,
CPU) run on the same random inputs at 1, 7, 50 frames and max_frames; past the component's CUDA
fp16 bound (TF32 or fp16 arithmetic either way) the build fails with exit code 1 and no plan is
written. Random inputs follow each input's dtype: uint8 frames take every byte value, float inputs
are standard normal.

Written to TensorRT 10 / 11's documented Python API and never run against the real library on the
development host (no TensorRT, no GPU there): tests/test_tensorrt.py checks the calls it makes
against a fake `tensorrt` module.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

from ..errors import SfedgeError
from ..manifest import load_manifest, sha256_file, write_manifest
from ..runtime.trt_engine import import_tensorrt, load_cudart

BUILDABLE = ("vision", "slowfast")
DEFAULT_WORKSPACE_GB = 2.0  # Jetson memory is shared with the CPU: keep the builder's scratch modest
PLANS_DIR = "trt"
PLANS_JSON = f"{PLANS_DIR}/plans.json"
LLM_NOT_BUILDABLE = ("the LLM is not built with TensorRT: its ONNX Runtime contrib ops (GroupQueryAttention, "
                     "MatMulNBits) are not supported by TensorRT's ONNX parser; it runs on the CUDA execution provider")


def parse_components(text: str) -> tuple[str, ...]:
    """"vision,slowfast" -> ("vision", "slowfast"); SfedgeError for anything else."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise SfedgeError("--components is empty; choose from " + ",".join(BUILDABLE))
    for n in names:
        if n == "llm":
            raise SfedgeError(LLM_NOT_BUILDABLE)
        if n not in BUILDABLE:
            raise SfedgeError(f"unknown component {n!r}; TensorRT builds {', '.join(BUILDABLE)}")
    return names


def profile_shapes(io: list[dict], opt: dict[str, int] | None = None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """name -> (min, opt, max) shapes for every IO entry with a named (dynamic) axis.

    Each named axis takes [lo, hi] from the entry's "dynamic" ranges; opt is `opt[axis]` clamped to
    the range, or hi. A named axis without a range is an error (the profile would be a guess)."""
    opt = opt or {}
    shapes = {}
    for entry in io:
        if not any(isinstance(d, str) for d in entry["shape"]):
            continue
        dims = []
        for d in entry["shape"]:
            if isinstance(d, int):
                dims.append((d, d, d))
                continue
            if d not in entry.get("dynamic", {}):
                raise SfedgeError(f"input {entry['name']}: axis {d!r} has no range in the manifest")
            lo, hi = entry["dynamic"][d]
            dims.append((lo, min(max(opt.get(d, hi), lo), hi), hi))
        shapes[entry["name"]] = tuple(tuple(dim[k] for dim in dims) for k in range(3))
    return shapes


def gpu_info() -> dict | None:
    """{"name", "compute_capability"} of GPU 0 via cuda-python, or None without it."""
    try:
        cudart = load_cudart()
        err, prop = cudart.cudaGetDeviceProperties(0)
    except Exception:  # noqa: BLE001 - informational only (SfedgeError without cuda-python)
        return None
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


def build_plans(engines_dir: str | Path, components=BUILDABLE, fp16: bool = True,
                workspace_gb: float = DEFAULT_WORKSPACE_GB, opt_frames: int | None = None,
                progress: bool = True) -> dict:
    """Build `components` into ENGINES/trt/<component>.plan, write trt/plans.json, add the
    manifest's "tensorrt" block and re-hash. Returns plans.json's content."""
    root = Path(engines_dir)
    manifest = load_manifest(root, trust_stamps=False)  # only build from files the manifest vouches for, re-hashed
    components = parse_components(",".join(components))
    if workspace_gb <= 0:
        raise SfedgeError(f"--workspace-gb must be positive, got {workspace_gb}")
    trt = import_tensorrt()
    frames = opt_frames or manifest["pipeline"]["sampling"]["num_frames"]
    out = root / PLANS_DIR
    out.mkdir(exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    plans = {}
    try:
        for name in components:
            comp = manifest["components"][name]
            if progress:
                print(f"building {name} ({comp['path']}) with TensorRT {trt.__version__} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            plan, record = _build_one(trt, logger, root / comp["path"], comp, fp16=fp16,
                                      workspace_bytes=int(workspace_gb * (1 << 30)), opt={"T": frames})
            partial = out / f"{name}.plan.partial"  # renamed only once every plan is built, so a failed
            partial.write_bytes(plan)                # build never leaves a plan the manifest does not vouch for
            plans[name] = dict(path=f"{PLANS_DIR}/{name}.plan", onnx=comp["path"], **record,
                               workspace_gb=workspace_gb, bytes=partial.stat().st_size, sha256=sha256_file(partial),
                               build_seconds=round(time.perf_counter() - start, 1))
        for name, plan_record in plans.items():  # every plan built: now each against its graph
            comp = manifest["components"][name]
            plan_record["check"] = check_plan(out / f"{name}.plan.partial", root / comp["path"], name, comp,
                                              plan_record, progress=progress)
    except BaseException:
        for partial in out.glob("*.plan.partial"):
            partial.unlink()
        raise
    for name in plans:
        (out / f"{name}.plan.partial").replace(out / f"{name}.plan")
    for stale in out.glob("*.plan"):  # trt/ holds exactly what the manifest lists
        if stale.stem not in plans:
            stale.unlink()
    info = {"tensorrt_version": trt.__version__, "gpu": gpu_info(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "note": "plans load only on this GPU model with this TensorRT version; rebuild with `sfedge build`",
            "plans": plans}
    (root / PLANS_JSON).write_text(json.dumps(info, indent=2) + "\n")
    manifest["tensorrt"] = {"version": info["tensorrt_version"], "gpu": info["gpu"], "plans_json": PLANS_JSON,
                            "plans": {n: p["path"] for n, p in plans.items()}}
    manifest["versions"] = dict(manifest.get("versions") or {}, tensorrt=trt.__version__)
    write_manifest(root, manifest)
    return info


PLAN_CHECK_FRAMES = (1, 7, 50)


def plan_check_frames(comp: dict) -> list[int]:
    """1, 7, 50 and max_frames, within the plan's T range."""
    lo, hi = next(e["dynamic"]["T"] for e in comp["inputs"] if "T" in e.get("dynamic", {}))
    return sorted({min(max(t, lo), hi) for t in (*PLAN_CHECK_FRAMES, hi)})


def plan_tolerance(name: str, record: dict) -> float:
    """A plan against its own ONNX graph: the CUDA provider's fp16 bound for the component, for
    every plan: fp16 arithmetic (FP16 flag or a strongly typed fp16 graph), and fp32 plans compute
    in TF32 (TensorRT's default, 10-bit mantissa like fp16)."""
    from .registry import rel_tol

    return rel_tol(name, "fp16", "cuda")


def check_plan(plan_path: Path, onnx_path: Path, name: str, comp: dict, record: dict, *, seed: int = 0,
               progress: bool = False) -> dict:
    """Run the freshly built plan and its ONNX graph (ONNX Runtime, CPU) on the same random inputs
    at `plan_check_frames` frame counts; ValidationError (the build fails, exit 1) past
    `plan_tolerance`. Returns {frames: rel error} and the bound, recorded in plans.json."""
    import numpy as np
    import onnxruntime as ort

    from ..errors import ValidationError
    from ..parity import errors
    from ..runtime.trt_engine import TrtEngine

    tol = plan_tolerance(name, record)
    engine = TrtEngine(plan_path, comp)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    report, worst = {}, 0.0
    try:
        for t in plan_check_frames(comp):
            feeds = {}
            for entry in comp["inputs"]:
                shape = [t if d == "T" else d for d in entry["shape"]]
                feeds[entry["name"]] = random_input(rng, shape, entry["dtype"])
            expected = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            got = engine.infer(feeds)
            rel = max(errors(np.asarray(got[k]), v)["rel"] for k, v in expected.items())
            report[str(t)] = rel
            worst = max(worst, rel)
    finally:
        engine.close()
    result = {"frames": report, "rel": worst, "rel_tol": tol, "passed": bool(worst < tol)}
    if progress:
        print(f"  {name} plan vs {onnx_path.name}: rel {worst:.3g} (bound {tol:g}) at T = {', '.join(report)}",
              file=sys.stderr, flush=True)
    if not result["passed"]:
        flag = "the FP16 builder flag" if record.get("fp16_flag") else "strongly typed fp16" if record.get("strongly_typed") else "TF32"
        raise ValidationError(f"the {name} TensorRT plan disagrees with {onnx_path.name}: rel {worst:.3g} >= {tol:g} "
                              f"({flag}; per frame count {', '.join(f'T={k}: {v:.3g}' for k, v in report.items())})")
    return result


def random_input(rng, shape, dtype: str):
    """Random values for an input of manifest dtype `dtype`: uint8 frames over every byte value
    (what a camera gives), float inputs standard normal."""
    import numpy as np

    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.dtype(dtype))


# manifest dtype -> TensorRT DataType member
TRT_DTYPES = {"uint8": "UINT8", "float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32"}


def check_input_types(trt, network, comp: dict, onnx_name: str) -> dict[str, str]:
    """Every network input the manifest lists has the manifest's dtype (a graph exported by another
    sfedge, e.g. float32 pixels where schema 2 says uint8 frames, is refused). Returns {name: dtype}."""
    want = {e["name"]: e["dtype"] for e in comp.get("inputs", [])}
    found = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dtype = want.get(tensor.name)
        if dtype is None:
            continue
        expected = getattr(trt.DataType, TRT_DTYPES.get(dtype, ""), None)
        if expected is None or tensor.dtype != expected:
            raise SfedgeError(f"{onnx_name}: TensorRT reads input {tensor.name} as {tensor.dtype}, the manifest says "
                              f"{dtype}: a graph from another sfedge? re-export with this sfedge (`sfedge export`)")
        found[tensor.name] = dtype
    return found


def _build_one(trt, logger, onnx_path: Path, comp: dict, *, fp16: bool, workspace_bytes: int,
               opt: dict[str, int]) -> tuple[bytes, dict]:
    """One ONNX graph -> (serialized plan, what plans.json records about the build)."""
    strongly_typed = comp.get("precision") == "fp16"  # the graph already carries its fp16 types
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # opt-in on 10.x, default on 11
    builder = trt.Builder(logger)
    network = builder.create_network(flags)  # explicit batch is the default from TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise SfedgeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors or 'no error reported'}")
    input_dtypes = check_input_types(trt, network, comp, onnx_path.name)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    fp16_flag = fp16 and not strongly_typed
    if fp16_flag:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise SfedgeError(f"TensorRT {trt.__version__} has no FP16 builder flag (strong typing only): export "
                              f"with --precision fp16, or build fp32 plans with --no-fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = profile_shapes(comp.get("inputs", []), opt)
    profile = builder.create_optimization_profile()
    profiles = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in shapes:
            lo, mid, hi = shapes[tensor.name]
            profile.set_shape(tensor.name, lo, mid, hi)
            profiles[tensor.name] = {"min": list(lo), "opt": list(mid), "max": list(hi)}
        elif any(d < 0 for d in tensor.shape):
            raise SfedgeError(f"{onnx_path.name}: dynamic input {tensor.name} is not in the manifest")
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SfedgeError(f"TensorRT failed to build {onnx_path.name} (see the TensorRT log above)")
    return bytes(plan), {"fp16_flag": fp16_flag, "strongly_typed": strongly_typed, "profiles": [profiles],
                         "input_dtypes": input_dtypes}
