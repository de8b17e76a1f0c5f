#!/usr/bin/env bash
# Quantized weights on the GPU (issue 5): the quant GPU tests, then `sleepy bench` of the three
# target configurations (random-weight models from make_models.py, quantized in-situ), with a
# short table. Run on the GPU machine from the repository root:
#
#     bash scripts/gpu-quant.sh
#
# Needs, in gpu-run/ (an ignored folder, carried to the GPU machine):
#     sleepy       <- target/release/sleepy
#     cuda_quant   <- target/release/deps/cuda_quant-<hash>   (cargo test --release --no-run)
# and make_models.py: $MAKE_MODELS, or gpu-tools/[gpu/]make_models.py, or the shared tools.
# Models go to $MODELS_DIR (default /tmp/models; made only when missing).
# Steps (STEPS, comma-separated, default "tests,models,bench"; also "sweep": `sleepy tune`
# of each configuration (its choices go to $SLEEPY_HOME/tune/gemv.json), and "tuned": bench
# again with them). Each step has a time limit (STEP_TIMEOUT seconds
# per bench or sweep, default 300). A GPU call of at most 10 minutes fits "tests" (~2-4 min
# with the kernel compile), "models" (make_models.py, ~3 min), "bench" (~4-6 min: in-situ
# Q4_K of qwen3-4b takes ~1 min on 16 cores), "sweep" and "tuned" one or two at a time:
# STEPS=tests,models, then STEPS=bench, then STEPS=sweep, then STEPS=tuned.
# Results (logs, quant-bench.jsonl) go to $OUT when set (the GPU runner brings it back), else
# gpu-run/quant-results; the bench table covers the bench lines of this call.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export SLEEPY_HOME=${SLEEPY_HOME:-/tmp/sleepy_home}
RUN=gpu-run
RES=${OUT:-$RUN/quant-results}
MODELS_DIR=${MODELS_DIR:-/tmp/models}
STEP=${STEP_TIMEOUT:-300}
STEPS=",${STEPS:-tests,models,bench},"
want() { [[ "$STEPS" == *",$1,"* ]]; }
mkdir -p "$RES" "$SLEEPY_HOME"
LOG=$RES/quant-run.log
JSONL=$RES/quant-bench.jsonl
: > "$JSONL"
T0=$(date +%s)
log() { echo "== $* ($(( $(date +%s) - T0 ))s)" | tee -a "$LOG"; }

[ -x "$RUN/sleepy" ] || chmod +x "$RUN/sleepy" 2>/dev/null
[ -x "$RUN/sleepy" ] || { echo "no $RUN/sleepy: copy target/release/sleepy there" | tee -a "$LOG"; exit 2; }
MM=${MAKE_MODELS:-}
for c in gpu-tools/make_models.py gpu-tools/gpu/make_models.py shared/tools/gpu/make_models.py ../shared/tools/gpu/make_models.py; do
    [ -z "$MM" ] && [ -f "$c" ] && MM=$c
done
BW=""
for c in gpu-tools/bandwidth.py gpu-tools/gpu/bandwidth.py shared/tools/gpu/bandwidth.py ../shared/tools/gpu/bandwidth.py; do
    [ -z "$BW" ] && [ -f "$c" ] && BW=$c
done

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee -a "$LOG"

if want tests; then
    if [ -f "$RUN/cuda_quant" ]; then
        chmod +x "$RUN/cuda_quant"
        log "cuda_quant tests (the first GPU use compiles the kernels with NVRTC)"
        timeout 400 "$RUN/cuda_quant" --test-threads=1 --nocapture > "$RES/cuda_quant.log" 2>&1
        echo "cuda_quant rc=$?" | tee -a "$LOG"
        grep -E "^test |SKIP|panicked|test result|greedy tokens|GPU .*CPU" "$RES/cuda_quant.log" | tail -30 | tee -a "$LOG"
        # The worst error of each kind of check.
        python3 - "$RES/cuda_quant.log" <<'PY' | tee -a "$LOG"
import re, sys
worst = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(\S+) (.*): relative error ([0-9.e+-]+) \(limit ([0-9.e+-]+)\)", line.strip())
    if m:
        key = (m.group(1), m.group(4))
        e = float(m.group(3))
        if e >= worst.get(key, (-1.0, ""))[0]:
            worst[key] = (e, m.group(2))
for (op, lim), (e, where) in sorted(worst.items()):
    print(f"worst {op:<16} {e:.2e} (limit {lim})  {where}")
PY
    else
        echo "no $RUN/cuda_quant: tests skipped (copy target/release/deps/cuda_quant-<hash> there)" | tee -a "$LOG"
    fi
fi

if [ -n "$BW" ] && want models; then
    log "bandwidth ($BW)"
    timeout 120 python3 "$BW" 2>&1 | tail -4 | tee -a "$LOG"
fi

missing=""
for m in qwen3-0.6b qwen3-4b; do
    [ -f "$MODELS_DIR/$m/config.json" ] && ls "$MODELS_DIR/$m"/*.safetensors > /dev/null 2>&1 || missing="$missing $m"
done
if [ -n "$missing" ] && want models; then
    if [ -z "$MM" ]; then
        echo "models$missing missing and no make_models.py found (set MAKE_MODELS)" | tee -a "$LOG"
    else
        log "make_models$missing"
        timeout 400 python3 "$MM" --out "$MODELS_DIR" $missing 2>&1 | grep -v -i writing | tail -4 | tee -a "$LOG"
    fi
fi

# bench TAG MODEL QUANT ARGS...: one JSON line per test, tagged, into $JSONL.
bench() {
    local tag=$1 m=$2 q=$3
    shift 3
    log "bench $tag: $m --quant $q $*"
    timeout "$STEP" "$RUN/sleepy" bench -m "$MODELS_DIR/$m" --quant "$q" --device cuda --json "$@" 2>> "$LOG" \
        | sed "s/^{/{\"tag\":\"$tag\",\"quant\":\"$q\",/" | tee -a "$JSONL"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || echo "bench $tag $m $q: rc=$rc (124 = over ${STEP}s)" | tee -a "$LOG"
}

CONFIGS=${CONFIGS:-"qwen3-4b:q8_0 qwen3-4b:q4_k qwen3-0.6b:q8_0"}
if want bench; then
    for c in $CONFIGS; do
        bench default "${c%%:*}" "${c##*:}" -p 512 -n 128 -r 5
    done
fi

if want sweep; then
    for c in $CONFIGS; do
        log "tune ${c%%:*} --quant ${c##*:}"
        timeout "$STEP" "$RUN/sleepy" tune -m "$MODELS_DIR/${c%%:*}" --quant "${c##*:}" --device cuda --json 2>> "$LOG" \
            | tee -a "$RES/quant-tune.jsonl"
    done
    cp "$SLEEPY_HOME/tune/gemv.json" "$RES/" 2>/dev/null
fi

if want tuned; then
    for c in $CONFIGS; do
        bench tuned "${c%%:*}" "${c##*:}" -p 512 -n 128 -r 5
    done
fi

log "done"
echo "==== SUMMARY (targets: H100, llama.cpp figures from DESIGN.md)"
grep -E "cuda_quant rc|test result|^worst" "$LOG"
python3 - "$JSONL" <<'PY'
import json, sys
targets = {("qwen3-4b", "q8_0"): (1.8, 3.51), ("qwen3-4b", "q4_k"): (1.2, 3.24), ("qwen3-0.6b", "q8_0"): (0.5, 1.39)}
rows = []
for line in open(sys.argv[1]):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    rows.append(o)
print(f'{"tag":<8} {"model":<11} {"quant":<5} {"test":<6} {"ms/tok":>8} {"tok/s":>9} {"MB/tok":>8} {"GB/s":>6} {"%bw":>6} {"floor":>7} {"target":>7} {"llama.cpp":>9}')
for o in rows:
    model, q = o.get("model", "?"), o.get("quant", "?")
    if o["test"].startswith("pp"):
        print(f'{o["tag"]:<8} {model:<11} {q:<5} {o["test"]:<6} {o["ms_per_token"]:>8.3f} {o["tok_per_s"]:>9.1f}')
        continue
    tgt, ref = targets.get((model, q), (None, None))
    fr = o.get("fraction_of_bandwidth")
    verdict = "" if tgt is None else ("  met" if o["ms_per_token"] <= tgt else "  MISSED")
    print(f'{o["tag"]:<8} {model:<11} {q:<5} {o["test"]:<6} {o["ms_per_token"]:>8.3f} {o["tok_per_s"]:>9.1f} '
          f'{o["bytes_per_token"] / 1e6:>8.1f} {o["gb_per_s"]:>6.0f} {100 * fr if fr else 0:>5.1f}% '
          f'{o.get("floor_ms_per_token") or 0:>7.3f} {tgt or 0:>7.2f} {ref or 0:>9.2f}{verdict}')
PY
