#!/usr/bin/env bash
# CPU numbers of docs/BENCHMARKS.md: export a model (default: the tiny one) for the CPU at each
# precision and run `sfedge bench` against the PyTorch reference (fp32, sdpa) on a synthetic clip.
#
#   scripts/cpu_bench.sh [MODEL] [PRECISIONS...]      MODEL: tiny (default) or a preset name
#   FRAMES=8 NEW_TOKENS=32 RUNS=5 scripts/cpu_bench.sh tiny fp32 int4
# Outputs (JSON, text, plots) go to $OUT (default .cache/cpu-out); a short table is printed per run.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-tiny}
shift || true
PRECISIONS=("$@")
[ ${#PRECISIONS[@]} -gt 0 ] || PRECISIONS=(fp32 int4)
OUT=${OUT:-$PWD/.cache/cpu-out}
WORK=${SFEDGE_CPU_WORK:-$PWD/.cache/cpu-bench}
FRAMES=${FRAMES:-8}
NEW_TOKENS=${NEW_TOKENS:-32}
RUNS=${RUNS:-5}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT" "$WORK"

CKPT=$($PY - "$MODEL" "$WORK" <<'PY'
import sys
from pathlib import Path
from sfedge.models.presets import PRESETS, make_preset
from sfedge.models.tiny import resolve_model
name, work = sys.argv[1], Path(sys.argv[2])
if name in PRESETS:
    path = work / name
    if not (path / "model.safetensors.index.json").exists():
        make_preset(name, path, progress=False)
    print(path)
else:
    print(resolve_model(name))
PY
)
for prec in "${PRECISIONS[@]}"; do
    dst=$WORK/engines-$MODEL-$prec
    if [ ! -f "$dst/manifest.json" ]; then
        echo "exporting $MODEL $prec for cpu -> $dst"  # parity is `sfedge verify`'s job; this measures speed
        $PY -c "import sys; from sfedge.export import export_model; export_model(sys.argv[1], sys.argv[2], precision=sys.argv[3], device='cpu', validate=False, force=True, progress=False)" "$CKPT" "$dst" "$prec"
    fi
    echo "== $MODEL $prec: $FRAMES frames, $NEW_TOKENS new tokens, $RUNS runs"
    $PY -m sfedge bench "$dst" --frames "$FRAMES" --new-tokens "$NEW_TOKENS" --runs "$RUNS" --warmup 1 \
        --model "$CKPT" --json --plot "$OUT/bench-$MODEL-$prec.png" | tee "$OUT/bench-$MODEL-$prec.txt"
    tail -n 1 "$OUT/bench-$MODEL-$prec.txt" > "$OUT/bench-$MODEL-$prec.json"
done
