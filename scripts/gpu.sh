#!/usr/bin/env bash
# One GPU call: models, correctness tests, benchmarks, tuning and profiles, by steps. Run on
# the GPU machine from the repository root:
#
#     STEPS="models tests bench tune ncu" bash scripts/gpu.sh
#
# Needs in gpu-run/ (an ignored folder, carried): sleepy (target/release/sleepy) and, for
# "tests", the GPU test binaries cuda_ops, cuda_model, cuda_quant, cuda_tune (copied from
# target/release/deps after `cargo test --release --no-run`); and ../shared/tools/gpu copied to
# gpu-tools/. Models go to $MODELS (default gpu-work/models, ignored, so a warm machine keeps
# them between calls); tuning choices to $SLEEPY_HOME (default gpu-work/home). $BIN runs
# another binary in place of gpu-run/sleepy (e.g. tuning a second build in the same call).
# Steps:
#   models  bandwidth.py; make_models.py $MAKE (qwen3-0.6b qwen3-4b); qwen3-4b as GGUF in each
#           format of $CONVERT (q4_k q8_0)
#   tests   the four GPU test binaries (PARALLEL_TESTS=1: beside the models step)
#   bench   `sleepy bench -p 512 -n 128` of every configuration in $CONFIGS (tag $TAG), of
#           $NOSTREAM_CONFIGS with SLEEPY_GEMV_STREAM=0, and of $BASE_CONFIGS (and qwen3-4b at
#           depth $BASE_DEPTH) with gpu-run/sleepy-base (a previous build) where it is there
#   sweep   tg128 with environment knobs set ($SWEEP, below)
#   tune    `sleepy tune` of each configuration in $TUNE, then bench of it with the choices
#   eval    `sleepy eval --reference` on the GPU: bf16, q8_0, q4_k of both models
#   ncu     Nsight Compute sections of chosen kernels ($NCU_SECTIONS, below); each kernel runs
#           alone with caches flushed, so times are upper bounds
# Each step stops starting work past $BUDGET seconds (default 560). Logs and bench.jsonl go
# to $OUT; a table of every bench line is printed last. Several builds against each other:
# scripts/gpu-ab.sh (which uses this script's models step).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export SLEEPY_HOME=${SLEEPY_HOME:-$PWD/gpu-work/home}
BIN=${BIN:-$PWD/gpu-run/sleepy}
M=${MODELS:-$PWD/gpu-work/models}
OUT=${OUT:-gpu-work/out}
STEPS=" ${STEPS:-models bench} "
BUDGET=${BUDGET:-560}
TAG=${TAG:-main}
mkdir -p "$OUT" "$M" "$SLEEPY_HOME"
chmod +x gpu-run/* 2>/dev/null
R=$OUT/run.log
B=$OUT/bench.jsonl
T0=$(date +%s)
want() { [[ "$STEPS" == *" $1 "* ]]; }
left() { [ $(( $(date +%s) - T0 )) -lt "$BUDGET" ]; }
log() { echo "== $* ($(( $(date +%s) - T0 ))s)" | tee -a "$R"; }
# model spec -> sleepy arguments: NAME (bf16 HF dir), NAME:q8_0 (in-situ), NAME.q4_k (GGUF).
margs() {
    case $1 in
    *.q*) echo "-m $M/$1.gguf" ;;
    *:*) echo "-m $M/${1%%:*} --quant ${1##*:}" ;;
    *) echo "-m $M/$1" ;;
    esac
}
bench() { # tag spec args... (BIN: the binary, gpu-run/sleepy unless set)
    local tag=$1 spec=$2
    shift 2
    left || { log "skip bench $tag $spec (time)"; return; }
    timeout 120 "${BENCH_BIN:-$BIN}" bench $(margs "$spec") --device cuda --json "$@" 2>> "$R" |
        sed "s/^{/{\"tag\":\"$tag\",\"spec\":\"$spec\",/" | tee -a "$B"
}
# Compiled kernels from an earlier call (valid while the kernel sources are unchanged).
[ -f gpu-run/kernels.tgz ] && tar xzf gpu-run/kernels.tgz -C "$SLEEPY_HOME" --skip-old-files
log "steps:$STEPS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee -a "$R"

run_tests() {
    for t in cuda_ops cuda_model cuda_quant cuda_tune; do
        [ -f gpu-run/$t ] || continue
        left || { log "skip $t (time)"; continue; }
        log "$t"
        timeout 300 gpu-run/$t --test-threads=1 --nocapture > "$OUT/$t.log" 2>&1
        echo "$t rc=$?" | tee -a "$R"
        grep -E "SKIP|panicked|test result" "$OUT/$t.log" | tail -8 | tee -a "$R"
    done
}
# Tests beside the model making (CPU work): they only check numbers, so sharing the GPU is fine.
want tests && [ -n "${PARALLEL_TESTS:-}" ] && { run_tests & TESTS_PID=$!; }

if want models; then
    log bandwidth
    timeout 60 python3 gpu-tools/bandwidth.py 2>&1 | tail -3 | tee -a "$R"
    for m in ${MAKE-qwen3-0.6b qwen3-4b}; do
        [ -f "$M/$m/config.json" ] || { log "make_models $m"; timeout 300 python3 gpu-tools/make_models.py --out "$M" $m 2>&1 | grep -vi writing | tail -2 | tee -a "$R"; }
    done
    for q in ${CONVERT-q4_k q8_0}; do
        [ -f "$M/qwen3-4b.$q.gguf" ] || { log "convert qwen3-4b $q"; timeout 200 "$BIN" convert --type $q "$M/qwen3-4b" "$M/qwen3-4b.$q.gguf" 2>&1 | tail -1 | tee -a "$R"; }
    done
fi

if want tests; then
    if [ -n "${TESTS_PID:-}" ]; then wait "$TESTS_PID"; else run_tests; fi
fi

CONFIGS=${CONFIGS:-"qwen3-0.6b qwen3-4b qwen3-0.6b:q8_0 qwen3-4b.q8_0 qwen3-4b.q4_k"}
if want bench; then
    for c in $CONFIGS; do bench "$TAG" "$c" -p 512 -n 128 -r 3; done
    [ -n "${DEPTH-4096}" ] && bench "$TAG" qwen3-4b -p 0 -n 128 -r 3 --depth "${DEPTH:-4096}"
    # Without the streamed kernels (SLEEPY_GEMV_STREAM=0), for an A/B in the same run.
    for c in ${NOSTREAM_CONFIGS:-}; do SLEEPY_GEMV_STREAM=0 bench nostream "$c" -p 0 -n 128 -r 3; done
    # The previous binary in the same run, where one was carried (gpu-run/sleepy-base).
    if [ -f gpu-run/sleepy-base ]; then
        for c in ${BASE_CONFIGS:-}; do BENCH_BIN=gpu-run/sleepy-base bench base "$c" -p 0 -n 128 -r 3; done
        [ -n "${BASE_DEPTH:-}" ] && BENCH_BIN=gpu-run/sleepy-base bench base qwen3-4b -p 0 -n 128 -r 3 --depth "$BASE_DEPTH"
    fi
fi

# SWEEP="tag@spec@VAR=v,VAR=v[@depth] ...": tg128 of spec with those variables set (A/B of
# run-time knobs in one call; '@' because specs hold ':'). SLEEPY_ABLATE=attn+down (roles:
# qkv, o, gate_up, down, logits, attn) drops those launches from the decode graph: what each
# costs in the graph, by difference (the tokens are then wrong).
if want sweep; then
    for e in ${SWEEP:-}; do
        IFS=@ read -r tg c vars d <<< "$e"
        (set -f; [ -n "$vars" ] && export ${vars//,/ }; bench "$tg" "$c" -p 0 -n 128 -r 3 ${d:+--depth $d})
    done
fi

if want tune; then
    for c in ${TUNE:-qwen3-0.6b qwen3-4b qwen3-4b.q4_k}; do
        left || { log "skip tune $c (time)"; continue; }
        log "tune $c"
        s=$(date +%s)
        timeout 150 "$BIN" tune $(margs "$c") --device cuda 2>&1 | tee -a "$OUT/tune.log" | tail -14
        echo "tune $c took $(( $(date +%s) - s )) s (with model load)" | tee -a "$R"
        bench "$TAG-tuned" "$c" -p 0 -n 128 -r 3
        SLEEPY_GEMV_TUNED=0 bench "$TAG-default" "$c" -p 0 -n 128 -r 3
    done
    cp "$SLEEPY_HOME"/tune/*.json "$OUT/" 2>/dev/null
fi

if want eval; then
    for c in ${EVAL:-qwen3-0.6b qwen3-0.6b:q8_0 qwen3-0.6b:q4_k qwen3-4b qwen3-4b.q8_0 qwen3-4b.q4_k}; do
        left || { log "skip eval $c (time)"; continue; }
        m=${c%%:*}
        m=${m%.q*}
        log "eval $c"
        timeout 120 "$BIN" eval $(margs "$c") --device cuda --reference "$M/$m/reference.safetensors" --json 2>> "$R" |
            sed "s/^{/{\"spec\":\"$c\",/" | tee -a "$OUT/eval.jsonl"
    done
fi

# NCU_SECTIONS="spec,kernel-regex,skip,count[,depth] ...": Nsight sections of `count` kernels
# matching the regex after `skip` of them, in `bench -p 0 -n 3 [--depth D]`. NCU_METRICS adds
# `--metrics` to them, e.g. 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
# for what a warp waits on between instructions. NCU_SOURCE=1 also samples warp stalls per
# SASS instruction (SourceCounters) and keeps each kernel's source page as CSV, all in one
# archive, ncu-src.tgz (a call returns at most 8 files).
if want ncu; then
    for e in ${NCU_SECTIONS:-}; do
        IFS=, read -r c k sk n d <<< "$e"
        left || { log "skip ncu sections $e (time)"; continue; }
        log "ncu sections $e"
        tag="${c//[:.]/_}-${k//[^a-z0-9_]/}${d:+-d$d}"
        timeout 150 ncu --clock-control none -k "regex:$k" -s "$sk" -c "$n" --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis ${NCU_METRICS:+--metrics "$NCU_METRICS"} \
            ${NCU_SOURCE:+--section SourceCounters -f -o "$OUT/src-$tag"} \
            "$BIN" bench $(margs "$c") --device cuda -p 0 -n 3 -r 1 ${d:+--depth $d} > "$OUT/sections-$tag.txt" 2>> "$R"
        if [ -n "${NCU_SOURCE:-}" ] && [ -f "$OUT/src-$tag.ncu-rep" ]; then
            timeout 60 ncu -i "$OUT/src-$tag.ncu-rep" --page source --csv --print-source sass > "$OUT/src-$tag.csv" 2>> "$R"
            ncu -i "$OUT/src-$tag.ncu-rep" >> "$OUT/sections-$tag.txt" 2>> "$R"
            rm -f "$OUT/src-$tag.ncu-rep"
        fi
    done
    (cd "$OUT" && ls src-*.csv > /dev/null 2>&1 && tar czf ncu-src.tgz src-*.csv && rm src-*.csv)
fi

log done
# The compiled kernels, for the next call to carry as gpu-run/kernels.tgz.
tar czf "$OUT/kernels.tgz" -C "$SLEEPY_HOME" kernels 2>/dev/null
# At most 8 files come back from a GPU call: the test logs travel as one archive.
(cd "$OUT" && ls cuda_*.log > /dev/null 2>&1 && tar czf tests.tgz cuda_*.log && rm cuda_*.log)
echo "==== SUMMARY"
grep -E " rc=|test result|copy|read|took" "$R"
python3 - "$B" "$OUT" <<'PY'
import json, sys, os
if os.path.exists(sys.argv[1]):
    for line in open(sys.argv[1]):
        try: o = json.loads(line)
        except Exception: continue
        fr = o.get("fraction_of_bandwidth")
        extra = f' {100*fr:5.1f}% bw, floor {o["floor_ms_per_token"]:.3f} ms, {o.get("gemv_configs", "")}' if fr else ''
        print(f'{o["tag"]:<13} {o["spec"]:<17} {o["test"]:<6} d={o["depth"]:<5} {o["tok_per_s"]:>9.1f} tok/s {o["ms_per_token"]:>7.3f} ms{extra}')
if os.path.exists(sys.argv[2] + "/eval.jsonl"):
    for line in open(sys.argv[2] + "/eval.jsonl"):
        print("eval", line.strip()[:300])
PY
