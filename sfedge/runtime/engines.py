"""One engine interface over ONNX Runtime sessions, with provider selection.

`Engine.infer(named inputs) -> named outputs`: inputs are numpy arrays or OrtValues, outputs
stay on the engine's device as OrtValues when asked (so one engine can feed the next without
a trip through the host) or come back as numpy arrays. I/O names, dtypes and shapes are
discovered from the session; the IOBinding is made once and reused.

Providers: "cpu" (CPUExecutionProvider), "cuda" (CUDAExecutionProvider, onnxruntime-gpu) and
"tensorrt" (TensorrtExecutionProvider, with CUDA then CPU as fallbacks for the nodes TensorRT
cannot take, such as GroupQueryAttention). TensorRT options: fp16, an engine cache directory,
and optimisation-profile shapes from the manifest's dynamic-axis ranges.

CUDA sessions (`cuda_provider_options`, `session_options`): no TF32 (fp32 engines compute in
IEEE fp32, which their tolerances assume; fp16 and int4 graphs do not use it anyway), cuDNN's
heuristic convolution-algorithm choice instead of the default exhaustive search (which would
benchmark every algorithm on the request path each time a new frame count reaches the vision
graph's Conv), and one intra-op thread (the GPU does the work; more threads only spin). With
`cuda_graph=True` (the LLM engine only: its decode step binds fixed addresses and shapes, see
generate.py) the CUDA provider gets `enable_cuda_graph`, and every run that may not be captured
(`infer`, prefill) carries RunOptions gpu_graph_id = -1, as onnxruntime-genai runs its prompt.

Before the first CUDA or TensorRT session the CUDA and cuDNN libraries are loaded once per process
(`cuda_libraries.preload`), so that onnxruntime-gpu finds the ones that pip's nvidia-* packages (or
torch) bring without LD_LIBRARY_PATH. The CPU path loads nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import SfedgeError
from . import cuda_libraries

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


def device_of(provider: str) -> str:
    """The ORT device name where an engine's tensors live: "cpu" or "cuda"."""
    return "cpu" if provider == "cpu" else "cuda"


def check_provider(provider: str) -> None:
    """Raise SfedgeError unless `provider` is known and present in the installed onnxruntime.
    For cuda and tensorrt, first load the CUDA / cuDNN libraries (`cuda_libraries.preload`)."""
    if provider not in PROVIDERS:
        raise SfedgeError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if provider != "cpu":
        cuda_libraries.preload()
    available = ort.get_available_providers()
    if PROVIDERS[provider] not in available:
        hint = " (install onnxruntime-gpu, with CUDA and cuDNN" + (" and TensorRT" if provider == "tensorrt" else "") + ")"
        raise SfedgeError(
            f"provider {provider!r} ({PROVIDERS[provider]}) is not available in this onnxruntime "
            f"{ort.__version__}; available: {', '.join(available)}{hint}"
        )


def trt_profile_shapes(io: list[dict], opt: dict[str, int] | None = None) -> dict[str, str]:
    """TensorRT optimisation-profile options from manifest IO entries.

    Each IO entry has "shape" (ints or axis names) and "dynamic" {axis: [min, max]}; the profile's
    min/max come from those ranges, opt from `opt` (axis -> value) or else the max. Axes without a
    range get 1. Returns {"trt_profile_min_shapes": "name:1x3x336x336,...", ...opt..., ...max...}.
    """
    opt = opt or {}
    parts: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for entry in io:
        ranges = entry.get("dynamic", {})
        if not any(isinstance(d, str) for d in entry["shape"]):
            continue
        for kind in parts:
            dims = []
            for d in entry["shape"]:
                if isinstance(d, int):
                    dims.append(d)
                elif d in ranges:
                    lo, hi = ranges[d]
                    dims.append({"min": lo, "max": hi, "opt": min(max(opt.get(d, hi), lo), hi)}[kind])
                else:
                    dims.append(1)
            parts[kind].append(f"{entry['name']}:{'x'.join(map(str, dims))}")
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in parts.items() if v}


def cuda_provider_options(*, tf32: bool = False, device_id: int = 0, cuda_graph: bool = False) -> dict[str, str]:
    """The CUDA execution provider's options (ONNX Runtime's names and string values): TF32 off
    unless asked (`use_tf32`, on by default in ONNX Runtime), cuDNN's heuristic convolution
    algorithm choice (`cudnn_conv_algo_search`; ONNX Runtime's default, EXHAUSTIVE, times every
    algorithm at the first run of each new input shape). `cuda_graph`: `enable_cuda_graph`, as
    onnxruntime-genai sets it: runs capture / replay a CUDA graph unless their RunOptions say
    gpu_graph_id = -1 (`UNCAPTURED`); only for sessions whose every run of graph 0 binds the same
    addresses and shapes (the LLM's decode step, the greedy step)."""
    opts = {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0", "cudnn_conv_algo_search": "HEURISTIC"}
    if cuda_graph:
        opts["enable_cuda_graph"] = "1"
    return opts


def uncaptured_run_options() -> ort.RunOptions:
    """RunOptions for a run that must not be captured or replayed as a CUDA graph (gpu_graph_id -1:
    a prefill, whose shapes change; ONNX Runtime ignores the entry where no graph is enabled)."""
    opts = ort.RunOptions()
    opts.add_run_config_entry("gpu_graph_id", "-1")
    return opts


def session_options(provider: str, *, threads: int = 0) -> ort.SessionOptions:
    """SessionOptions with the intra-op thread count: `threads` if given, else one for the CUDA and
    TensorRT providers (the device does the work; ORT's default, one per core, only spins), else
    ORT's default."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads or provider != "cpu":
        opts.intra_op_num_threads = threads or 1
    return opts


def session_providers(provider: str, *, io: list[dict] | None = None, fp16: bool = False,
                      trt_cache_dir: str | Path | None = None, trt_opt: dict[str, int] | None = None,
                      tf32: bool = False, cuda_graph: bool = False) -> list:
    """The providers list for ort.InferenceSession: the chosen EP first, then its fallbacks.
    `cuda_graph`: the CUDA EP captures graphs (`cuda_provider_options`; the cuda provider only, ignored
    by the others). TensorRT: fp16 kernels if `fp16`, engines and timing cache kept in `trt_cache_dir`, one
    optimisation profile from the IO entries' dynamic ranges (opt point from `trt_opt`)."""
    check_provider(provider)
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", cuda_provider_options(tf32=tf32, cuda_graph=cuda_graph and provider == "cuda"))
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt = {"device_id": 0, "trt_fp16_enable": fp16}
    if trt_cache_dir is not None:
        Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
        trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                   trt_timing_cache_enable=True, trt_timing_cache_path=str(trt_cache_dir))
    trt.update(trt_profile_shapes(io or [], trt_opt))
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as the session reports it."""

    name: str
    dtype: type
    shape: tuple  # ints for fixed axes, strings or None for dynamic ones


class Engine:
    """The interface every engine implements."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    device: str
    binding_owner: object = None

    def infer(self, feeds: dict, *, on_device: bool = False) -> dict:
        """Run once. `feeds`: name -> numpy array or OrtValue. Returns name -> numpy array, or
        name -> OrtValue on the engine's device when `on_device`."""
        raise NotImplementedError


class OrtEngine(Engine):
    """An ONNX Runtime session with one reusable IOBinding."""

    def __init__(self, path: str | Path, provider: str = "cpu", *, io: list[dict] | None = None,
                 fp16: bool = False, trt_cache_dir: str | Path | None = None,
                 trt_opt: dict[str, int] | None = None, threads: int = 0, mem_reuse: bool = True,
                 spinning: bool | None = None, tf32: bool = False, cuda_graph: bool = False):
        """`spinning`: let ORT's idle intra-op threads busy-wait between runs (ORT's default).
        None: the SFEDGE_ORT_SPINNING environment variable ("0" = off; default on).
        `threads`: intra-op threads (0: ORT's default on CPU, one on CUDA / TensorRT).
        `tf32`: allow TF32 in the CUDA provider's fp32 matmuls and convolutions (default off).
        `cuda_graph`: the cuda provider only (ignored by the others); runs replay a captured CUDA graph (see
        `cuda_provider_options`) except `infer` and `run_binding(captured=False)`."""
        if spinning is None:
            spinning = os.environ.get("SFEDGE_ORT_SPINNING", "1") != "0"
        opts = session_options(provider, threads=threads)
        # The builder's plain-attention (concat KV) graphs annotate some tensors with symbolic
        # dims that differ between prefill and decode; ORT's buffer reuse then fails on decode.
        opts.enable_mem_reuse = mem_reuse
        if not spinning:
            # Idle intra-op workers then sleep instead of busy-waiting, which frees the cores for
            # host work after a run but costs a wake-up per op: on the 2-core CPU, int4 decode
            # went from 7.1 to 7.9 ms/token with spinning off, while video decode and
            # preprocessing gained nothing measurable (docs/BENCHMARKS.md, "thread spinning").
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = session_providers(provider, io=io, fp16=fp16, trt_cache_dir=trt_cache_dir, trt_opt=trt_opt,
                                      tf32=tf32, cuda_graph=cuda_graph)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise SfedgeError(f"cannot open engine {path} with provider {provider!r}: {e}") from None
        if PROVIDERS[provider] not in self.session.get_providers():  # ORT falls back to CPU silently
            notes = "; ".join(cuda_libraries.preload())  # done already: its notes
            raise SfedgeError(f"{PROVIDERS[provider]} failed to start for {path} (CUDA / cuDNN / TensorRT "
                              f"libraries missing or mismatched?); the session got {self.session.get_providers()}"
                              + (f"; loading CUDA libraries: {notes}" if notes else ""))
        self.provider = provider
        self.device = device_of(provider)
        self.cuda_graph = cuda_graph and provider == "cuda"
        self._uncaptured = uncaptured_run_options()  # (ignored where no CUDA graph is enabled)
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}
        self.binding = self.session.io_binding()
        self.binding_owner = None  # who set up what is bound now (the LLM Decoder keeps its KV bound)
        self._bound: dict[str, ort.OrtValue] = {}  # what the binding reads from

    def bind_input(self, name: str, value) -> None:
        """Bind a numpy array (copied to the device; on CPU wrapped, and kept alive until the next
        infer) or an OrtValue (bound as is)."""
        if not isinstance(value, ort.OrtValue):
            arr = np.ascontiguousarray(value, dtype=self.inputs[name].dtype)
            value = ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0)
        self._bound[name] = value
        self.binding.bind_ortvalue_input(name, value)

    def run_binding(self, binding: ort.IOBinding | None = None, *, captured: bool = False) -> None:
        """Run with whatever is bound now in `binding` (default: the engine's own; the LLM loop
        binds its own buffers). `captured`: a CUDA-graph session may capture / replay this run
        (only for a binding whose addresses and shapes never change); otherwise it runs uncaptured."""
        self.session.run_with_iobinding(binding or self.binding, None if captured else self._uncaptured)

    def infer(self, feeds: dict, *, on_device: bool = False) -> dict:
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self.binding_owner = None
        self._bound.clear()
        for name, value in feeds.items():
            self.bind_input(name, value)
        for name in self.outputs:
            self.binding.bind_output(name, self.device, 0)
        self.run_binding()
        values = self.binding.get_outputs()
        return {name: (v if on_device else v.numpy()) for name, v in zip(self.outputs, values)}


def _info(arg) -> TensorInfo:
    if arg.type not in _ORT_DTYPES:
        raise SfedgeError(f"engine tensor {arg.name} has unsupported type {arg.type}")
    return TensorInfo(arg.name, _ORT_DTYPES[arg.type], tuple(arg.shape))
