"""The targets `sfedge plan` answers for: memory, bandwidth, dense tensor rates, unified or not.

Every figure carries its source (docs/DEVICES.md shows the same table). Datasheet figures are
copied as printed; figures NVIDIA prints only "with sparsity" are halved (dense = sparse / 2, the
2:4 structured-sparsity factor the datasheets footnote), and Jetson GPU rates that the module
datasheets give only as whole-module sparse INT8 TOPS (GPU + DLA) are derived from the GPU's SM
count and maximum clock with Ampere's per-SM tensor rate, which reproduces the datasheets' GPU
TOPS (see `_ampere`). Units: memory in GiB (NVIDIA's "GB" of DRAM/HBM), bandwidth in GB/s
(10^9), rates in TFLOP/s / TOP/s (10^12), all peak.

`cpu` is this host, measured when asked for (`measure_host`): total RAM (sysconf), memcpy
bandwidth and fp32 GEMM rate (`sfedge.bench.roofline.measure_cpu`, the bench's own ceilings).
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import SfedgeError


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    kind: str  # "jetson" (unified LPDDR), "gpu" (discrete), "cpu" (this host)
    memory_gib: float
    bandwidth_gbps: float
    fp16_tflops: float  # dense tensor-core FP16 (FP32 accumulate where the two differ)
    int8_tops: float  # dense tensor-core INT8
    fp32_tflops: float  # non-tensor FP32 (what fp32 engines run at; TF32 is opt-in in ORT)
    unified: bool
    os_reserved_gib: float = 0.0  # unified memory the OS, carveouts and desktop keep (Jetsons)
    runtime_gib: float = 0.0  # the runtime's fixed cost: CUDA context + libraries, or the host process
    sources: dict = field(default_factory=dict)  # figure -> where it comes from / how derived

    def rate_tflops(self, compute_dtype: str) -> float:
        return {"float32": self.fp32_tflops, "float16": self.fp16_tflops, "int8": self.int8_tops}[compute_dtype]

    @property
    def usable_gib(self) -> float:
        return self.memory_gib - self.os_reserved_gib

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "label", "kind", "memory_gib", "bandwidth_gbps", "fp16_tflops",
                                              "int8_tops", "fp32_tflops", "unified", "os_reserved_gib", "runtime_gib",
                                              "sources")}


# --- Jetson (Ampere GA10B in Orin, Blackwell in Thor) --------------------------------------------
# The module datasheets print sparse INT8 TOPS (GPU, or GPU + DLA). Sparse INT8 = SMs x clock x
# 8192 op/clk (GA10B's 4 tensor cores per SM) reproduces every Orin GPU figure (Nano 8 SM @ 625 MHz = 41 TOPS, printed "40"; Nano Super @ 1020 MHz = 67; AGX 64 16 SM @
# 1.3 GHz = 170). Dense INT8 = half of that, dense FP16 = half of dense INT8, FP32 = 2 x CUDA cores x clock.
def _ampere(sms: int, mhz: float) -> dict:
    clk = mhz * 1e6
    return {"int8_tops": round(sms * clk * 4096 / 1e12, 1), "fp16_tflops": round(sms * clk * 2048 / 1e12, 1),
            "fp32_tflops": round(sms * 128 * 2 * clk / 1e12, 2)}


def _orin_sources(doc: str, sms: int, mhz: float, printed: str) -> dict:
    how = (f"derived: {sms} SMs x {mhz:g} MHz (GPU max clock, {doc}); dense INT8 = SMs x clk x 4096 "
           f"(= the datasheet's sparse GPU INT8 TOPS / 2; {printed}), dense FP16 = dense INT8 / 2, "
           f"FP32 = {sms * 128} CUDA cores x 2 x clk")
    return {"memory_gib": f"{doc}: DRAM size", "bandwidth_gbps": f"{doc}: LPDDR5 memory bandwidth",
            "fp16_tflops": how, "int8_tops": how, "fp32_tflops": how,
            "os_reserved_gib": OS_RESERVE_SOURCE, "runtime_gib": JETSON_RUNTIME_SOURCE}


CUDA_RUNTIME_GIB = 1.0
CUDA_RUNTIME_SOURCE = (
    "estimated, not measured (no GPU measurement exists yet: docs/BENCHMARKS.md, GPU plan): CUDA context "
    "(~0.3-0.5 GiB), cuBLAS / cuDNN handles and workspaces, ONNX Runtime's CUDA arena slack")
JETSON_RUNTIME_GIB = 1.3
JETSON_RUNTIME_SOURCE = CUDA_RUNTIME_SOURCE + "; + the Python process itself (~0.3 GiB), in the same unified memory"
OS_RESERVE_SOURCE = (
    "estimated: carveouts (RAM visible to Linux on an 8 GB Orin is 7772 MB of 8192: tegrastats, "
    "proventusnova.com/blog/jetson-orin-high-ram-usage-idle) + a headless JetPack 6 idle (~1 GB; the same "
    "page shows 2.8 GB in use at idle with the desktop); larger modules reserve more carveout. "
    "Override with --os-reserve-gib")
ORIN_NANO = "NVIDIA Jetson Orin Nano Series Module Data Sheet (DS-11105)"
ORIN_NANO_SUPER = "NVIDIA Jetson Orin Nano Super Developer Kit announcement / JetPack 6.2 MAXN SUPER mode"
ORIN_NX = "NVIDIA Jetson Orin NX Series Module Data Sheet (DS-10712)"
AGX_ORIN = "NVIDIA Jetson AGX Orin Series Module Data Sheet (DS-10662)"
THOR = "NVIDIA Jetson AGX Thor / Jetson T5000 Module Data Sheet"


def _orin(name, label, doc, mem, bw, sms, mhz, printed, reserve) -> Target:
    return Target(name, label, "jetson", mem, bw, unified=True, os_reserved_gib=reserve, runtime_gib=JETSON_RUNTIME_GIB,
                  sources=_orin_sources(doc, sms, mhz, printed), **_ampere(sms, mhz))


_THOR_HOW = ("derived: the datasheet prints 2070 TFLOPS FP4 with sparsity; dense FP4 = 1035, dense FP8 = "
             "FP4 / 2 = 517.5, dense FP16 = FP8 / 2 = 258.8 (Blackwell's 2:1 steps per precision halving); "
             "INT8 taken = dense FP8 (assumption: Blackwell runs INT8 at the FP8 rate)")


def _dc(sparse_fp16: float, sparse_int8: float, doc: str) -> dict:
    how16 = f"derived: {doc} prints {sparse_fp16:g} TFLOPS FP16 Tensor Core with sparsity; dense = / 2"
    how8 = f"derived: {doc} prints {sparse_int8:g} TOPS INT8 Tensor Core with sparsity; dense = / 2"
    return {"fp16_tflops": how16, "int8_tops": how8}


A100 = "NVIDIA A100 Tensor Core GPU datasheet (SXM)"
H100 = "NVIDIA H100 Tensor Core GPU datasheet"
H200 = "NVIDIA H200 Tensor Core GPU datasheet (SXM)"
L4 = "NVIDIA L4 Tensor Core GPU datasheet"
ADA = "NVIDIA Ada GPU Architecture whitepaper (v2.1), GeForce RTX 4090 column"
GPU_NOTE = "no OS share: the host's own RAM is separate (host-side items are listed, not counted)"


def _gpu(name, label, mem, bw, fp16, int8, fp32, doc, rates: dict | None = None, fp32_src=None) -> Target:
    src = {"memory_gib": f"{doc}: GPU memory", "bandwidth_gbps": f"{doc}: GPU memory bandwidth",
           "fp32_tflops": fp32_src or f"{doc}: FP32 (non-tensor)", "os_reserved_gib": GPU_NOTE,
           "runtime_gib": CUDA_RUNTIME_SOURCE}
    src.update(rates or {"fp16_tflops": f"{doc}", "int8_tops": f"{doc}"})
    return Target(name, label, "gpu", mem, bw, fp16, int8, fp32, unified=False, runtime_gib=CUDA_RUNTIME_GIB,
                  sources=src)


TARGETS: dict[str, Target] = {t.name: t for t in (
    _orin("orin-nano-8gb", "Jetson Orin Nano 8GB", ORIN_NANO, 8, 68, 8, 625, "printed 40 TOPS", 1.5),
    _orin("orin-nano-8gb-super", "Jetson Orin Nano 8GB (Super, MAXN SUPER)", ORIN_NANO_SUPER, 8, 102, 8, 1020,
          "printed 67 TOPS", 1.5),
    _orin("orin-nx-8gb", "Jetson Orin NX 8GB", ORIN_NX, 8, 102.4, 6, 765, "GPU share of the printed 70 TOPS", 1.5),
    _orin("orin-nx-16gb", "Jetson Orin NX 16GB", ORIN_NX, 16, 102.4, 8, 918, "GPU share of the printed 100 TOPS", 2.0),
    _orin("agx-orin-32gb", "Jetson AGX Orin 32GB", AGX_ORIN, 32, 204.8, 14, 930, "GPU share of the printed 200 TOPS",
          2.5),
    _orin("agx-orin-64gb", "Jetson AGX Orin 64GB", AGX_ORIN, 64, 204.8, 16, 1300, "GPU share of the printed 275 TOPS",
          3.0),
    Target("agx-thor", "Jetson AGX Thor (T5000)", "jetson", 128, 273, 258.8, 517.5, round(2560 * 2 * 1.575e9 / 1e12, 2),
           unified=True, os_reserved_gib=4.0, runtime_gib=JETSON_RUNTIME_GIB,
           sources={"memory_gib": f"{THOR}: 128 GB LPDDR5X", "bandwidth_gbps": f"{THOR}: 273 GB/s",
                    "fp16_tflops": _THOR_HOW, "int8_tops": _THOR_HOW,
                    "fp32_tflops": f"derived: 2560 CUDA cores x 2 x 1.575 GHz (GPU max clock, {THOR})",
                    "os_reserved_gib": OS_RESERVE_SOURCE, "runtime_gib": JETSON_RUNTIME_SOURCE}),
    _gpu("rtx-4090", "GeForce RTX 4090", 24, 1008, 165.2, 660.6, 82.6, ADA,
         {"fp16_tflops": f"{ADA}: Peak FP16 Tensor TFLOPS with FP32 Accumulate, dense (330.3 with FP16 accumulate)",
          "int8_tops": f"{ADA}: Peak INT8 Tensor TOPS, dense"}),
    _gpu("l4", "NVIDIA L4", 24, 300, 121, 242.5, 30.3, L4, _dc(242, 485, L4)),
    _gpu("a100-40gb", "NVIDIA A100 40GB SXM", 40, 1555, 312, 624, 19.5, A100,
         {"fp16_tflops": f"{A100}: FP16 Tensor Core 312 (624 with sparsity)",
          "int8_tops": f"{A100}: INT8 Tensor Core 624 (1248 with sparsity)"}),
    _gpu("a100-80gb", "NVIDIA A100 80GB SXM", 80, 2039, 312, 624, 19.5, A100,
         {"fp16_tflops": f"{A100}: FP16 Tensor Core 312 (624 with sparsity)",
          "int8_tops": f"{A100}: INT8 Tensor Core 624 (1248 with sparsity)"}),
    _gpu("h100-sxm", "NVIDIA H100 SXM 80GB", 80, 3350, 989.5, 1979, 67, H100, _dc(1979, 3958, H100)),
    _gpu("h100-pcie", "NVIDIA H100 PCIe 80GB", 80, 2000, 756.5, 1513, 51, H100, _dc(1513, 3026, H100)),
    _gpu("h200", "NVIDIA H200 SXM 141GB", 141, 4800, 989.5, 1979, 67, H200, _dc(1979, 3958, H200)),
)}

CPU_SOURCES = {
    "memory_gib": "measured: physical pages x page size (sysconf) on this host",
    "bandwidth_gbps": "measured: sfedge.bench.roofline.measure_cpu (numpy copy, read + write counted)",
    "fp32_tflops": "measured: sfedge.bench.roofline.measure_cpu (numpy fp32 GEMM)",
    "fp16_tflops": "= the measured fp32 GEMM rate: on cpu, fp16 engines are built fp32 (sfedge export)",
    "int8_tops": "= the measured fp32 GEMM rate (not measured separately; int4 CPU engines dequantize in MatMulNBits)",
    "os_reserved_gib": "none counted: the budget is this process's own RSS",
    "runtime_gib": "measured: RSS of a fresh Python that imported the runtime (onnxruntime, numpy, tokenizers, "
                   "sfedge.runtime.pipeline) and nothing else",
}

# current RSS (/proc/self/statm), not ru_maxrss: a child's ru_maxrss includes its parent's peak
_BASELINE = ("import os, onnxruntime, numpy, tokenizers, sfedge.runtime.pipeline; "
             "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))")


def runtime_baseline_bytes() -> int:
    """RSS of a fresh interpreter that imported the runtime and loaded nothing: the process's fixed cost."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def measure_host(ceilings: dict | None = None, runtime_bytes: int | None = None) -> Target:
    """The `cpu` target: this host's RAM, the bench's measured ceilings and the runtime's baseline RSS
    (measured now unless given)."""
    import os

    from ..bench.roofline import measure_cpu

    c = ceilings or measure_cpu()
    rate = c["matmul_TFLOPs"]
    base = runtime_bytes if runtime_bytes is not None else runtime_baseline_bytes()
    return Target("cpu", "this host (measured)", "cpu", round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2),
                  round(c["bandwidth_GBps"], 2), round(rate, 4), round(rate, 4), round(rate, 4), unified=True,
                  runtime_gib=base / 2**30, sources=dict(CPU_SOURCES, how=c.get("how", "")))


def target_names() -> list[str]:
    return [*TARGETS, "cpu"]


def get_target(name: str, *, os_reserve_gib: float | None = None, ceilings: dict | None = None,
               runtime_bytes: int | None = None) -> Target:
    """The named target (`cpu`: measured now); SfedgeError naming the choices if unknown."""
    if name == "cpu":
        t = measure_host(ceilings, runtime_bytes)
    elif name in TARGETS:
        t = TARGETS[name]
    else:
        raise SfedgeError(f"unknown --target {name!r}; targets: {', '.join(target_names())} (or 'list')")
    if os_reserve_gib is not None:
        if not 0 <= os_reserve_gib < t.memory_gib:
            raise SfedgeError(f"--os-reserve-gib must be in [0, {t.memory_gib:g}), got {os_reserve_gib:g}")
        t = replace(t, os_reserved_gib=os_reserve_gib)
    return t


def table_text(targets: list[Target]) -> str:
    rows = [f"{'target':22} {'memory':>8} {'usable':>8} {'GB/s':>7} {'fp16 TF':>8} {'int8 TO':>8} {'fp32 TF':>8}  unified"]
    for t in targets:
        rows.append(f"{t.name:22} {t.memory_gib:7g}G {t.usable_gib:7g}G {t.bandwidth_gbps:7g} {t.fp16_tflops:8g} "
                    f"{t.int8_tops:8g} {t.fp32_tflops:8g}  {'yes' if t.unified else 'no'}")
    rows.append("dense tensor rates; sources and derivations: docs/DEVICES.md (or --target list --json)")
    return "\n".join(rows)


def markdown_tables() -> str:
    """The figures and the per-figure sources as docs/DEVICES.md shows them (tests keep the two equal)."""
    rows = ["| target | memory (GiB) | OS share (GiB) | bandwidth (GB/s) | dense FP16 (TFLOP/s) | dense INT8 (TOP/s) "
            "| FP32 (TFLOP/s) | unified |", "|---|---|---|---|---|---|---|---|"]
    for t in TARGETS.values():
        rows.append(f"| `{t.name}` ({t.label}) | {t.memory_gib:g} | {t.os_reserved_gib:g} | {t.bandwidth_gbps:g} | "
                    f"{t.fp16_tflops:g} | {t.int8_tops:g} | {t.fp32_tflops:g} | {'yes' if t.unified else 'no'} |")
    rows += ["", "Sources, figure by figure:", "", "| target | figure | source / derivation |", "|---|---|---|"]
    for t in TARGETS.values():
        rows += [f"| `{t.name}` | {k} | {t.sources[k]} |"
                 for k in ("memory_gib", "bandwidth_gbps", "fp16_tflops", "int8_tops", "fp32_tflops")]
    return "\n".join(rows)
