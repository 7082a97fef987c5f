#!/usr/bin/env bash
# The GPU measurement of docs/BENCHMARKS.md on the lent machine (H100 / H200): the sf-llava-7b
# preset (random fp16 weights made on the GPU, no download) -> fp16 and int4 engines for CUDA ->
# `sfedge bench` with 50 frames and 128 new tokens (EOS ignored) against the PyTorch reference
# (fp16, sdpa) on the same GPU, with the bandwidth and fp16-GEMM ceilings measured in the same run.
# Results (JSON, text tables, plots) are kept in $WORK/results and copied into $OUT at the end of
# every call (at most 8 files); a short table is printed last.
# The steps' Python (setup's check, make, the exports, the bench report, the table) is in
# scripts/gpu_bench_steps.py, one subcommand per step, run with $PYTHON.
#
# Usage: bash scripts/gpu_bench.sh STEP...   (no STEP = every measuring step in order, foreground)
#   stage         HERE, on the CPU host: download the wheels the GPU machine lacks and split them into
#                 ~52 MB parts (../shared/device/stage-wheels.sh); prints the device calls to make
#   setup         on the device: install the staged wheels (.stage/unstage.sh) if not done yet, check
#                 every import, run a tiny Conv+MatMul+Add model through sfedge's OrtEngine on $PROVIDER
#                 (a missing cuDNN / cuBLAS fails here, not after 10 minutes), note GPU, versions, disk
#   make          the $PRESET checkpoint (~14.1 GB for sf-llava-7b)
#   export-fp16   fp16 engines for $EXPORT_DEVICE (~14.1 GB; transient: a ~13.5 GB text checkpoint)
#   export-int4   int4 engines (~4.6 GB; same transient)
#   bench-fp16    sfedge bench, engines vs reference; bench-int4 likewise (with REF_ONCE=1, the
#   bench-int4    default, int4 is compared with the fp16 run's reference: the reference is fp16 in both)
#   table         the summary table (+ $WORK/results/summary.txt)
#   start [STEP...]  run STEPs (default: make export-fp16 bench-fp16 export-int4 bench-int4 table) in
#                 the background (setsid: it outlives the call) after any earlier background run has
#                 ended, then follow its log until this call has run $WAIT_S s (default 540; 0 =
#                 return at once). A failed step does not stop the later ones.
#   wait          follow the background run likewise; exit 0 when it ended well, the first failed
#                 step's status when one failed, 75 while it still runs (then call `wait` again at once)
#   status        what is done, the background run's state, disk; clean: delete every work file
# Finished steps are skipped (their outputs exist); each step first removes what an earlier killed
# run left behind ($WORK/engines-*.partial-*, $WORK/.sfedge-text-*, $CKPT.tmp), so any step can be
# run again. `rm $WORK/results/bench-fp16.json` measures fp16 again.
#
# Device calls (the machine is given back after 30 s idle, and every file on it with it: make the
# calls back to back; `stage` prints this list with the real part names). Here first:
#   bash scripts/gpu_bench.sh stage    (mkdir -p .git/info, then ../shared/device/stage-wheels.sh:
#                                       measured 2026-11-21: 6 parts, 5 x 52 MiB + 41.5 MiB)
# then, with `run` (no kind needed; each call carries the working tree, ~0.5 MB, plus one part):
#   run(command="WAIT_S=0 bash scripts/gpu_bench.sh start make", carry=[".stage/unstage.sh", ".stage/parts/p.aa"])
#   run(command="true", carry=[".stage/parts/p.ab"])    and likewise p.ac, p.ad, p.ae
#   run(command="bash scripts/gpu_bench.sh setup start", carry=[".stage/parts/p.af"])   (the last part)
#   run(command="bash scripts/gpu_bench.sh wait")       again at once while it answers 75
# The first call makes the preset in the background while the parts travel (with the machine's own
# transformers; if that fails, the queued run makes it again). The last part's call installs the
# wheels, checks CUDA with the tiny model, queues export-fp16 bench-fp16 export-int4 bench-int4
# table behind the preset, and follows them; `wait` follows on. Each background step starts a fresh
# process, so code changed here (it travels with every call) reaches the steps that start after that
# call. If only the CUDA check of setup fails, `start make export-fp16 export-int4` still runs the
# exports while you look.
# Device time, ESTIMATES (nothing of this has run on a GPU yet): machine start 1-2 min; each part
# call 0.2-0.5 min; setup 1 min; make ~1 min, hidden behind the part calls; export-fp16 4-8 min;
# bench-fp16 2-3 min; export-int4 4-8 min; bench-int4 1-1.5 min; table seconds. In all ~16-27 min
# of the 30-minute session budget, 2-3 `wait` calls after the `setup start` one; fp16 comes first
# so that its numbers exist if the int4 half does not fit. Give the machine back once DONE shows.
# If the machine is lost, everything starts over from the first call (parts included).
#
# Disk (64 GiB on the machine, the image included): preset 14.1 GB + fp16 engines 14.1 GB + the
# 13.5 GB text scratch during an export = ~42 GB peak; int4 adds 4.6 GB later. Every step prints
# `df -h`; before an export, if $WORK lacks room, engines whose bench is done are deleted, then
# /dev/shm (RAM, 128 GiB) is used for the engines when it has room; else the step stops with a clear
# message before writing anything.
#
# CPU dry run of every step but the CUDA-specific ones (here, in minutes, with the toy preset):
#   PROVIDER=cpu PRESET=sf-llava-test FRAMES=4 NEW_TOKENS=8 RUNS=1 PYTHON=.venv/bin/python \
#     SFEDGE_GPU_WORK=/tmp/gwork OUT=/tmp/gout bash scripts/gpu_bench.sh
# Settings (environment): PRESET FRAMES NEW_TOKENS RUNS WARMUP MAX_FRAMES PROVIDER (cuda | tensorrt |
# cpu) EXPORT_DEVICE (cuda unless PROVIDER=cpu) REF_ONCE WAIT_S PYTHON SFEDGE_GPU_WORK (default
# .gpu-work, git-ignored) OUT WHEELS (for stage).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/scripts/gpu_bench.sh
OUT=${OUT:-}
WORK=${SFEDGE_GPU_WORK:-$ROOT/.gpu-work}
RES=$WORK/results
SHM=${SFEDGE_GPU_SHM:-/dev/shm/sfedge-gpu}
PRESET=${PRESET:-sf-llava-7b}
FRAMES=${FRAMES:-50}
NEW_TOKENS=${NEW_TOKENS:-128}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
MAX_FRAMES=${MAX_FRAMES:-64}
PROVIDER=${PROVIDER:-cuda}
EXPORT_DEVICE=${EXPORT_DEVICE:-$([ "$PROVIDER" = cpu ] && echo cpu || echo cuda)}
REF_ONCE=${REF_ONCE:-1}
WAIT_S=${WAIT_S:-540}
WHEELS=${WHEELS:-onnxruntime-gpu==1.31.1 onnxruntime-genai==0.18.0 av==18.1.0 transformers==5.23.0 onnx-ir==1.1.0}
PY=${PYTHON:-python3}
CKPT=$WORK/$PRESET
BG=${SFEDGE_GPU_BG:-0}  # 1 inside the background run
export PYTHONPATH=$ROOT:$ROOT/.stage/site${PYTHONPATH:+:$PYTHONPATH}
export SFEDGE_CACHE=$WORK/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
       PROVIDER EXPORT_DEVICE ROOT

log() { echo "[gpu_bench $(date -u +%H:%M:%S)] $*"; }
die() { log "ERROR: $*" >&2; exit 1; }
disk() { df -h "$WORK" $([ -d "$SHM" ] && echo "$SHM") 2>/dev/null | sed 's/^/  /' || true; }
free_gb() { local v; v=$(df -Pk "$1" 2>/dev/null | awk 'NR==2 {printf "%d", $4 / 1e6}'); echo "${v:-0}"; }
bg_alive() { [ -f "$WORK/bg.pid" ] && kill -0 "$(cat "$WORK/bg.pid")" 2>/dev/null; }

clean_leftovers() {  # what a run killed mid-step leaves behind; never while a background run works
    rm -rf "$CKPT.tmp" "$WORK"/engines-*.partial-* "$WORK"/.sfedge-text-* \
           "$SHM"/engines-*.partial-* "$SHM"/.sfedge-text-* "$RES"/*.tmp
}

engines_dir() {  # $1 = fp16 | int4: where its finished engines are (nothing printed: none)
    local d
    for d in "$WORK/engines-$1" "$SHM/engines-$1"; do
        [ -f "$d/manifest.json" ] && { echo "$d"; return; }
    done
    return 0
}

step_stage() {  # HERE, on the CPU host, in the project root
    local stage=$ROOT/../shared/device/stage-wheels.sh
    [ -f "$stage" ] || die "no $stage (the shared device scripts sit beside the checkout)"
    mkdir -p .git/info  # stage-wheels.sh appends /.stage/ to .git/info/exclude (also in .gitignore)
    # shellcheck disable=SC2086
    bash "$stage" $WHEELS
    local parts=() p
    for p in .stage/parts/p.*; do parts+=("$p"); done
    local n=${#parts[@]} i
    echo
    echo "device calls, back to back (the machine is given back after 30 s idle):"
    for ((i = 0; i < n; i++)); do
        if ((i == 0 && n > 1)); then
            echo "  run(command=\"WAIT_S=0 bash scripts/gpu_bench.sh start make\", carry=[\".stage/unstage.sh\", \"${parts[0]}\"])"
        elif ((i == 0)); then
            echo "  run(command=\"bash scripts/gpu_bench.sh setup start\", carry=[\".stage/unstage.sh\", \"${parts[0]}\"])"
        elif ((i < n - 1)); then
            echo "  run(command=\"true\", carry=[\"${parts[i]}\"])"
        else
            echo "  run(command=\"bash scripts/gpu_bench.sh setup start\", carry=[\"${parts[i]}\"])"
        fi
    done
    echo "  run(command=\"bash scripts/gpu_bench.sh wait\")   # again at once while it answers 75"
}

step_setup() {
    local site=$ROOT/.stage/site
    if [ "$PROVIDER" != cpu ] && [ ! -f "$site/.done" ]; then
        [ -f .stage/unstage.sh ] || die "no .stage/unstage.sh: stage the wheels first (bash scripts/gpu_bench.sh stage, here)"
        log "installing the staged wheels into .stage/site"
        bash .stage/unstage.sh
    fi
    # A staged package that does not import with this machine's other packages (e.g. transformers
    # 5.23 wanting a newer huggingface_hub) is set aside: the machine's own version is used instead.
    local mod
    for mod in transformers onnx_ir; do
        if [ -d "$site/$mod" ] && ! $PY -c "import $mod" >/dev/null 2>&1; then
            log "WARNING: the staged $mod does not import here; using the machine's own"
            mkdir -p "$ROOT/.stage/site-disabled"
            mv "$site/$mod" "$site"/"$mod"-*.dist-info "$ROOT/.stage/site-disabled/" 2>/dev/null || true
        fi
    done
    mkdir -p "$WORK" "$RES"
    $PY "$ROOT/scripts/gpu_bench_steps.py" setup-check "$WORK/setup-check"
    # the LLM builder (a subprocess of the export) imports torch, transformers, onnx_ir and
    # onnxruntime.quantization: without arguments it stops at argparse (exit 2) once they imported
    local err
    err=$($PY -m onnxruntime_genai.models.builder 2>&1 >/dev/null) && true
    grep -q "arguments are required" <<<"$err" || die "onnxruntime_genai's builder does not import: $(tail -n 3 <<<"$err")"
    {
        echo "date_utc $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
            --format=csv 2>/dev/null || echo "no nvidia-smi"
        $PY -c "import onnxruntime as o, onnxruntime_genai as g, transformers as t, torch; \
print('onnxruntime', o.__version__, o.get_available_providers()); print('onnxruntime-genai', g.__version__); \
print('transformers', t.__version__); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
        echo "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo || true); $(grep MemTotal /proc/meminfo)"
        df -h "$WORK" /dev/shm 2>/dev/null || true
    } > "$RES/setup.txt.tmp" && mv "$RES/setup.txt.tmp" "$RES/setup.txt"
    sed 's/^/  /' "$RES/setup.txt"
    log "setup ok"
}

step_make() {
    [ -f "$CKPT/model.safetensors.index.json" ] && { log "preset exists: $CKPT"; return; }
    log "making preset $PRESET (random fp16 weights, shard by shard) -> $CKPT"
    $PY "$ROOT/scripts/gpu_bench_steps.py" make-preset "$PRESET" "$CKPT.tmp"
    mv "$CKPT.tmp" "$CKPT"
    DID="$(du -sh "$CKPT" | cut -f1) in $CKPT"
}

place_engines() {  # $1 = precision: print the directory to export into, making room if needed
    local p=$1 other total need
    total=$($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]))['metadata']['total_size'] / 1e9 + 0.5))" \
        "$CKPT/model.safetensors.index.json")
    # text scratch ~= the checkpoint; engines: fp16 on cuda ~1x, int4 ~0.35x, fp32 (and fp16 on cpu) ~2x
    case "$p:$EXPORT_DEVICE" in
        fp16:cuda) need=$((2 * total + 2)) ;;
        int4:cpu) need=$((3 * total + total * 35 / 100 + 2)) ;;  # + the fp32 decoder quantize.py reads
        int4:*) need=$((total + total * 35 / 100 + 2)) ;;
        *) need=$((3 * total + 2)) ;;
    esac
    if (($(free_gb "$WORK") < need)); then
        for other in fp16 int4; do
            local d
            d=$(engines_dir "$other")
            if [ "$other" != "$p" ] && [ -n "$d" ] && [ -f "$RES/bench-$other.json" ]; then
                log "disk: deleting $d (its bench is done) to make room for $need GB" >&2
                rm -rf "$d"
            fi
        done
    fi
    if (($(free_gb "$WORK") >= need)); then
        echo "$WORK"
    elif mkdir -p "$SHM" 2>/dev/null && (($(free_gb "$SHM") >= need)); then
        log "disk: $WORK has $(free_gb "$WORK") GB free < $need GB: engines go to $SHM (RAM)" >&2
        echo "$SHM"
    else
        disk >&2
        die "disk: export-$p needs ~$need GB free ($WORK: $(free_gb "$WORK") GB, $SHM: $(free_gb "$SHM" || echo 0) GB)"
    fi
}

step_export() {  # $1 = fp16 | int4
    local p=$1 dir dst
    [ -n "$(engines_dir "$p")" ] && { log "engines exist: $(engines_dir "$p")"; return; }
    [ -f "$CKPT/model.safetensors.index.json" ] || die "no preset at $CKPT: run the make step first"
    dir=$(place_engines "$p")
    dst=$dir/engines-$p
    log "exporting $PRESET $p for $EXPORT_DEVICE -> $dst (validation off)"
    $PY "$ROOT/scripts/gpu_bench_steps.py" export "$CKPT" "$dst" "$p" "$EXPORT_DEVICE" "$MAX_FRAMES"
    DID="$(du -sh "$dst" | cut -f1) in $dst ($EXPORT_DEVICE)"
}

step_bench() {  # $1 = fp16 | int4
    local p=$1 eng args=()
    [ -f "$RES/bench-$p.json" ] && { log "bench-$p done: $RES/bench-$p.json"; return; }
    eng=$(engines_dir "$p")
    [ -n "$eng" ] || die "no $p engines: run export-$p first"
    args=(--frames "$FRAMES" --new-tokens "$NEW_TOKENS" --runs "$RUNS" --warmup "$WARMUP" --provider "$PROVIDER"
          --model "$CKPT" --json)
    $PY -c "import matplotlib" 2>/dev/null && args+=(--plot "$RES/bench-$p.png")
    if [ "$REF_ONCE" = 1 ] && [ "$p" = int4 ] && [ -f "$RES/bench-fp16.json" ] &&
        $PY -c "import json,sys; sys.exit(json.load(open(sys.argv[1]))['reference'] is None)" "$RES/bench-fp16.json"; then
        args+=(--no-reference)
        log "bench int4 without the reference: the fp16 run's is used (the bench gives both the same dtype)"
    fi
    log "bench $p: $FRAMES frames, $NEW_TOKENS new tokens, $WARMUP + $RUNS runs, engines ($PROVIDER) from $eng"
    $PY -m sfedge bench "$eng" "${args[@]}" > "$RES/bench-$p.out.tmp"
    # stdout: the table, then the JSON report as its last line
    $PY "$ROOT/scripts/gpu_bench_steps.py" bench-json "$RES/bench-$p.out.tmp" "$RES/bench-$p"
    mv "$RES/bench-$p.json.tmp" "$RES/bench-$p.json"
    rm -f "$RES/bench-$p.out.tmp"
    cat "$RES/bench-$p.txt"
    DID="provider $PROVIDER"
}

step_table() {
    mkdir -p "$RES"
    $PY "$ROOT/scripts/gpu_bench_steps.py" table "$RES" | tee "$RES/table.txt.tmp"
    mv "$RES/table.txt.tmp" "$RES/table.txt"
    { cat "$RES/setup.txt" "$RES/steps.txt" 2>/dev/null || true; echo; cat "$RES/table.txt"; } > "$RES/summary.txt"
}

collect() {  # copy the results into $OUT (at most 8 files come back from a device call)
    [ -n "$OUT" ] && [ "$BG" != 1 ] || return 0
    mkdir -p "$OUT"
    local n=0 f
    for f in summary.txt run.log bench-fp16.json bench-int4.json bench-fp16.txt bench-int4.txt bench-fp16.png bench-int4.png; do
        local src=$RES/$f
        [ "$f" = summary.txt ] && [ ! -f "$src" ] && src=$RES/setup.txt
        [ "$f" = run.log ] && src=$WORK/run.log
        if [ -f "$src" ] && ((n < 8)); then
            cp "$src" "$OUT/$(basename "$src")" && n=$((n + 1))
        fi
    done
    ((n == 0)) || log "results copied to $OUT: $(ls "$OUT" | tr '\n' ' ')"
}

follow() {  # print the background run's log as it grows, for up to $WAIT_S s
    local log_file=$WORK/run.log deadline=$WAIT_S off  # SECONDS counts from this call's start
    [ -f "$log_file" ] || { log "no background run was started (bash scripts/gpu_bench.sh start)"; return 2; }
    off=$(stat -c %s "$log_file")
    echo "----- background log (last lines) -----"
    tail -n 15 "$log_file"
    while bg_alive && ((SECONDS < deadline)); do
        sleep 5
        local size
        size=$(stat -c %s "$log_file")
        if ((size > off)); then tail -c +$((off + 1)) "$log_file" | head -c $((size - off)); off=$size; fi
    done
    local size
    size=$(stat -c %s "$log_file")
    ((size > off)) && tail -c +$((off + 1)) "$log_file"
    echo "----- end of log so far; disk: -----"
    disk
    if bg_alive; then
        log "STILL RUNNING (pid $(cat "$WORK/bg.pid")): call 'bash scripts/gpu_bench.sh wait' again now"
        ((WAIT_S == 0)) && return 0
        return 75
    fi
    local rc
    rc=$(cat "$WORK/bg.rc" 2>/dev/null || echo "none")
    if [ "$rc" = 0 ]; then
        log "DONE: the background run ended well"
        [ -f "$RES/table.txt" ] && cat "$RES/table.txt"
        return 0
    fi
    log "FAILED: the background run ended with status $rc (none = killed); see the log above"
    [ "$rc" = none ] && return 1
    return "$rc"
}

step_start() {  # the remaining arguments are the steps to run in the background
    local steps=("$@") prev=""
    ((${#steps[@]})) || steps=(make export-fp16 bench-fp16 export-int4 bench-int4 table)
    mkdir -p "$WORK" "$RES"
    bg_alive && prev=$(cat "$WORK/bg.pid")
    log "background run: ${steps[*]}${prev:+ (after the running pid $prev)}"
    echo "[gpu_bench $(date -u +%H:%M:%S)] === queued: ${steps[*]} ===" >> "$WORK/run.log"
    rm -f "$WORK/bg.rc"
    # a new session (setsid), so that the run outlives this call; without util-linux, Python's
    local detach=(setsid)
    command -v setsid >/dev/null || detach=($PY -c "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])")
    SFEDGE_GPU_BG=1 SFEDGE_GPU_AFTER=$prev "${detach[@]}" bash "$SELF" "${steps[@]}" >> "$WORK/run.log" 2>&1 < /dev/null &
    echo $! > "$WORK/bg.pid"
    follow
}

step_status() {
    mkdir -p "$WORK"
    log "preset: $([ -f "$CKPT/model.safetensors.index.json" ] && echo "$CKPT" || echo none);" \
        "engines: fp16 $(engines_dir fp16) int4 $(engines_dir int4); results: $(ls "$RES" 2>/dev/null | tr '\n' ' ')"
    if bg_alive; then log "background run going on (pid $(cat "$WORK/bg.pid"))"
    elif [ -f "$WORK/bg.rc" ]; then log "background run ended with status $(cat "$WORK/bg.rc")"; fi
    [ -f "$WORK/run.log" ] && tail -n 5 "$WORK/run.log"
    disk
}

run_step() {
    case $1 in
        setup | make | export-fp16 | export-int4 | bench-fp16 | bench-int4 | table) ;;
        *) echo "unknown step: $1 (stage setup make export-fp16 export-int4 bench-fp16 bench-int4 table start wait status clean)" >&2
           exit 2 ;;
    esac
    mkdir -p "$WORK" "$RES"
    if [ "$BG" = 1 ] || ! bg_alive; then clean_leftovers; fi  # never under a running background step
    log "== $1 (preset $PRESET, provider $PROVIDER, work $WORK)"
    disk
    local t0=$SECONDS
    DID=""  # what the step made, when it did work (not skipped): recorded in results/steps.txt
    case $1 in
        setup) step_setup ;;
        make) step_make ;;
        export-*) step_export "${1#export-}" ;;
        bench-*) step_bench "${1#bench-}" ;;
        table) step_table ;;
    esac
    log "== $1 done in $((SECONDS - t0)) s"
    [ -z "$DID" ] || echo "$(date -u +%H:%M:%S) $1: $((SECONDS - t0)) s, $DID" >> "$RES/steps.txt"
}

steps=("$@")
((${#steps[@]})) || steps=(setup make export-fp16 bench-fp16 export-int4 bench-int4 table)
if [ "$BG" = 1 ]; then
    if [ "${SFEDGE_GPU_ONE:-0}" = 1 ]; then run_step "$1"; exit; fi
    trap 'echo $? > "$WORK/bg.rc"' EXIT
    if [ -n "${SFEDGE_GPU_AFTER:-}" ]; then
        while kill -0 "$SFEDGE_GPU_AFTER" 2>/dev/null; do sleep 2; done
    fi
    # Each step in its own process (errexit holds inside it); a failed step does not stop the later
    # ones (e.g. a failed bench-fp16 leaves export-int4 to run); a step whose input is missing fails
    # at once. The run's status is the first failure's.
    rc=0
    for s in "${steps[@]}"; do
        SFEDGE_GPU_ONE=1 bash "$SELF" "$s" || { r=$?; log "step $s FAILED (status $r)"; ((rc)) || rc=$r; }
    done
    exit "$rc"
fi
case ${steps[0]} in
    stage) step_stage; exit ;;
    help | -h | --help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit ;;
esac
mkdir -p "$WORK"
trap collect EXIT
while ((${#steps[@]})); do
    s=${steps[0]}
    steps=("${steps[@]:1}")
    case $s in
        start) step_start "${steps[@]}"; exit ;;
        wait) follow; exit ;;
        status) step_status; continue ;;
        clean)
            bg_alive && die "a background run is going on (pid $(cat "$WORK/bg.pid"))"
            rm -rf "$WORK" "$SHM"; log "deleted $WORK and $SHM"; exit ;;
    esac
    if bg_alive && [ "$s" != setup ] && [ "$s" != table ]; then
        die "a background run is going on (pid $(cat "$WORK/bg.pid")): 'wait' for it, or queue steps with 'start STEP...'"
    fi
    run_step "$s"
done
