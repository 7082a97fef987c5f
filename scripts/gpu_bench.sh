#!/usr/bin/env bash
# The whole GPU measurement of docs/BENCHMARKS.md on the lent machine (H100 / H200):
# sf-llava-7b preset (random weights, made here, no download) -> engines fp16 and int4 for CUDA
# -> `sfedge bench` with 50 frames, 128 new tokens (EOS ignored) vs the PyTorch reference (fp16,
# sdpa) on the same GPU, with measured bandwidth / fp16 GEMM ceilings. Full JSON + plots go to
# $OUT; a short table is printed last.
#
# Steps can be named so that each device call stays under its 10-minute limit:
#   scripts/gpu_bench.sh [setup] [make] [export-fp16] [export-int4] [bench-fp16] [bench-int4] [table]
# No argument = all steps in order. Finished steps are skipped (their outputs exist) while the
# machine stays warm. Work files: $SFEDGE_GPU_WORK (default .stage/gpu-work, git-ignored).
#
# Bringing onnxruntime-gpu over (../shared/device/README.md), here in the project root:
#   ../shared/device/stage-wheels.sh onnxruntime-gpu==1.31.1 onnxruntime-genai==0.18.0 av==18.1.0 psutil==7.2.2
# then back-to-back device calls, one part each (the first also carrying .stage/unstage.sh), e.g.
#   run(command="true", carry=[".stage/unstage.sh", ".stage/parts/p.aa"])
#   run(command="true", carry=[".stage/parts/p.ab"])   ... one per part ...
#   run(command="scripts/gpu_bench.sh setup make export-fp16", carry=[".stage/parts/p.af"])
#   run(command="scripts/gpu_bench.sh export-int4")
#   run(command="scripts/gpu_bench.sh bench-fp16 bench-int4 table")
# (`setup` runs .stage/unstage.sh when the wheels are not installed yet.)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/.stage/gpu-out}
WORK=${SFEDGE_GPU_WORK:-$ROOT/.stage/gpu-work}
PRESET=${PRESET:-sf-llava-7b}
FRAMES=${FRAMES:-50}
NEW_TOKENS=${NEW_TOKENS:-128}
RUNS=${RUNS:-3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$ROOT:$ROOT/.stage/site${PYTHONPATH:+:$PYTHONPATH}
export SFEDGE_CACHE=$WORK/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
CKPT=$WORK/$PRESET
log() { echo "[gpu_bench $(date -u +%H:%M:%S)] $*"; }

step_setup() {
    if ! $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
        [ -f .stage/unstage.sh ] || { echo "no .stage/unstage.sh: stage the wheels first (see the header)"; exit 2; }
        bash .stage/unstage.sh
    fi
    $PY - <<'EOF'
import importlib, sys
missing = [m for m in ("onnxruntime", "onnxruntime_genai", "torch", "transformers", "onnx", "av", "tokenizers",
                       "PIL", "psutil", "safetensors") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing on this machine: {missing} (stage them with stage-wheels.sh)")
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit("onnxruntime has no CUDAExecutionProvider")
EOF
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
}

step_make() {
    [ -f "$CKPT/model.safetensors.index.json" ] && { log "preset exists: $CKPT"; return; }
    log "making preset $PRESET (random fp16 weights, shard by shard) -> $CKPT"
    $PY -c "from sfedge.models.presets import make_preset; make_preset('$PRESET', '$CKPT.tmp')"
    mv "$CKPT.tmp" "$CKPT"
}

step_export() {  # $1 = fp16 | int4
    local dst=$WORK/engines-$1
    [ -f "$dst/manifest.json" ] && { log "engines exist: $dst"; return; }
    log "exporting $PRESET $1 for cuda -> $dst"
    $PY - "$CKPT" "$dst" "$1" <<'EOF'
import sys, time
from sfedge.export import export_model
t = time.perf_counter()
export_model(sys.argv[1], sys.argv[2], precision=sys.argv[3], device="cuda", max_frames=64,
             validate=False, force=True, progress=True)
print(f"export {sys.argv[3]}: {time.perf_counter() - t:.0f} s")
EOF
}

step_bench() {  # $1 = fp16 | int4
    local plot=()
    $PY -c "import matplotlib" 2>/dev/null && plot=(--plot "$OUT/bench-$1.png")
    log "bench $1: $FRAMES frames, $NEW_TOKENS new tokens, $RUNS runs, engines (cuda) vs reference"
    $PY -m sfedge bench "$WORK/engines-$1" --frames "$FRAMES" --new-tokens "$NEW_TOKENS" --runs "$RUNS" \
        --warmup 1 --provider cuda --model "$CKPT" --json "${plot[@]}" | tee "$OUT/bench-$1.txt"
    tail -n 1 "$OUT/bench-$1.txt" > "$OUT/bench-$1.json"
}

step_table() {
    $PY - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
f = lambda x, s=".1f": "-" if x is None else format(x, s)
print(f"{'':8}{'TTFT ms eng/ref':>20}{'decode tok/s eng/ref':>22}{'e2e ms eng/ref':>20}{'speedup e2e':>12}"
      f"{'floor vision/prefill/decode (eng)':>36}")
for prec in ("fp16", "int4"):
    p = out / f"bench-{prec}.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text()); e, ref = r["engine"], r["reference"] or {}
    med = lambda side, k: (side.get("stages_ms", {}).get(k) or {}).get("median")
    fr = e["floor_fraction"]
    print(f"{prec:8}{f(med(e, 'prefill')) + ' / ' + f(med(ref, 'prefill')):>20}"
          f"{f(e['tokens_per_s']) + ' / ' + f(ref.get('tokens_per_s')):>22}"
          f"{f(med(e, 'e2e'), '.0f') + ' / ' + f(med(ref, 'e2e'), '.0f'):>20}"
          f"{f((r['speedup'] or {}).get('e2e'), '.2f') + 'x':>12}"
          f"{' / '.join(f(fr.get(k), '.0%') for k in ('vision', 'prefill', 'decode_ms_per_token')):>36}")
EOF
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(setup make export-fp16 export-int4 bench-fp16 bench-int4 table)
for s in "${steps[@]}"; do
    case $s in
        setup) step_setup ;;
        make) step_make ;;
        export-fp16|export-int4) step_export "${s#export-}" ;;
        bench-fp16|bench-int4) step_bench "${s#bench-}" ;;
        table) step_table ;;
        *) echo "unknown step: $s (setup make export-fp16 export-int4 bench-fp16 bench-int4 table)"; exit 2 ;;
    esac
done
