#!/usr/bin/env bash
# Several builds against each other in one GPU call: the models (gpu.sh's models step) with
# each build's GPU tests beside them, then rounds of `sleepy bench` that interleave the builds,
# so that the machine's drift falls on all of them alike. Run on the GPU machine from the
# repository root:
#
#     VARIANTS="main new new@SLEEPY_ATTN_SHORT=0" CONFIGS="qwen3-4b.q4_k" bash scripts/gpu-ab.sh
#
# gpu-run/ (carried) holds sleepy-NAME for each build (sleepy for NAME main) and its test
# binaries TEST-NAME (cuda_quant-new, from target/release/deps); gpu-tools/ as for gpu.sh.
#   VARIANTS  NAME[@VAR=v,VAR=v ...]: a build, and the environment it runs with
#   CONFIGS   model specs as in gpu.sh (NAME bf16, NAME:q8_0 in-situ, NAME.q4_k GGUF)
#   DEPTHS    bench depths (default 0); ROUNDS (default 2); ARGS the bench's other arguments
#             (default "-p 0 -n 128 -r 3"; "-p 512 -n 0 -r 3" for prompt processing alone)
#   TESTS     test binaries to run for each build where gpu-run/TEST-NAME is there (default
#             cuda_ops cuda_model cuda_quant cuda_tune), all at once, beside the models;
#             TEST_BUILDS: the builds whose tests run (default: those of VARIANTS)
#   TUNE      model specs to run `sleepy tune --json` on (main's build) before the benches; its
#             choices are saved in $SLEEPY_HOME and used by every build whose kernels are
#             main's, unless its environment has SLEEPY_GEMV_TUNED=0 (VARIANTS="main@SLEEPY_GEMV_TUNED=0
#             main" compares the defaults with the tuned choices)
#   MAKE, CONVERT as for gpu.sh; BUDGET (default 540): no bench starts after that many seconds
#             from the first bench: the models, the tests, the tuning and a warm-up before it (one
#             untimed bench a build, all at once, which compiles the kernels on a fresh machine) do not count
# Output under $OUT: ab.jsonl (one bench line a run, with tag, round and spec), tests.tgz (the
# test logs), models.log, tune-SPEC.json and .err, and kernels.tgz: every build's compiled
# kernels after the warm-up (a later call carries it as gpu-run/kernels.tgz, through
# gpu-cache/ and gpu-build.sh, and skips the compile of each build whose kernel sources are
# unchanged: about 80 s a build on a fresh H100); the medians of the rounds last.
set -u
cd "$(dirname "$0")/.."
export SLEEPY_HOME=${SLEEPY_HOME:-$PWD/gpu-work/home}
M=${MODELS:-$PWD/gpu-work/models}
OUT=${OUT:-gpu-work/out}
T0=$(date +%s)
mkdir -p "$OUT/tests" "$SLEEPY_HOME"
chmod +x gpu-run/* 2>/dev/null
names() { for v in ${VARIANTS:-main}; do echo "${v%%@*}"; done | sort -u; }
bin() { if [ "$1" = main ]; then echo gpu-run/sleepy; else echo "gpu-run/sleepy-$1"; fi; } # a build's binary

# Compiled kernels from an earlier call, before the tests start compiling.
[ -f gpu-run/kernels.tgz ] && tar xzf gpu-run/kernels.tgz -C "$SLEEPY_HOME" --skip-old-files
for n in ${TEST_BUILDS:-$(names)}; do
    for t in ${TESTS:-cuda_ops cuda_model cuda_quant cuda_tune}; do
        [ -f "gpu-run/$t-$n" ] || continue
        (timeout 400 "gpu-run/$t-$n" --test-threads=1 > "$OUT/tests/$t-$n.log" 2>&1
         echo "$t-$n rc=$? $(grep 'test result' "$OUT/tests/$t-$n.log")") &
    done
done > "$OUT/tests/summary.txt"
# (A call brings back at most 8 files: the models step's own files stay out of $OUT.)
STEPS=models OUT=gpu-work/models-out bash scripts/gpu.sh > "$OUT/models.log" 2>&1
wait
echo "== models and tests done ($(( $(date +%s) - T0 ))s)"
cat "$OUT/tests/summary.txt"
grep -E "copy|read:|wrote" "$OUT/models.log"

margs() {
    case $1 in
    *.q*) echo "-m $M/$1.gguf" ;;
    *:*) echo "-m $M/${1%%:*} --quant ${1##*:}" ;;
    *) echo "-m $M/$1" ;;
    esac
}
# Each build once, untimed, before any budgeted step: a fresh machine compiles the kernels
# (NVRTC, about a minute) in a build's first process, which would otherwise eat BUDGET.
first=${CONFIGS:-qwen3-4b.q4_k}
first=${first%% *}
# All builds at once: NVRTC compiles on one CPU core a process.
for n in $(names); do
    (timeout 300 "$(bin "$n")" bench $(margs "$first") --device cuda -p 8 -n 2 -r 1 > /dev/null 2> "$OUT/warmup-$n.err"
     echo "== warm-up $n rc=$? ($(( $(date +%s) - T0 ))s)") &
done
wait
tar czf "$OUT/kernels.tgz" -C "$SLEEPY_HOME" kernels 2>/dev/null
(cd "$OUT" && cat warmup-*.err > warmup.err 2>/dev/null; rm -f warmup-*.err)
for c in ${TUNE:-}; do
    f=$OUT/tune-${c//[:.]/_}
    timeout 300 gpu-run/sleepy tune $(margs "$c") --device cuda --json > "$f.json" 2> "$f.err"
    echo "== tune $c rc=$? ($(( $(date +%s) - T0 ))s)"
    python3 - "$f.json" <<'PY'
import json, sys
try: r = json.load(open(sys.argv[1]))
except Exception as e: sys.exit(f"no report: {e}")
for s in r["shapes"]:
    print(f'  {s["shape"]:<30} {s["default_us"]:7.2f} us -> {s["tuned_us"]:7.2f} {"(in step)" if s["overruled_in_step"] else ""}')
for t in r["step_trials"]:
    c = t["config"]
    cfg = f'rpb{c["rows_per_block"]} tpr{c["threads_per_row"]} b{c["blocks_per_sm"]}{" tma" if c.get("streamed") else ""}'
    cfg += " (default)" if t.get("is_default") else ""
    print(f'  step: {t["shape"]:<30} {cfg:<30} {t["vs"]["ratio"] - 1:+.2%} (noise {t["vs"]["noise"]:.1%}){" kept" if t["kept"] else ""}')
for k in ("decode_before", "decode_after"):
    d = r[k]
    if d: print(f'  {k}: {d["default_ms_per_token"]:.3f} -> {d["tuned_ms_per_token"]:.3f} ms')
PY
done
TB=$(date +%s)
for r in $(seq 1 "${ROUNDS:-2}"); do
    for v in ${VARIANTS:-main}; do
        n=${v%%@*} e=
        [[ $v == *@* ]] && e=${v#*@}
        b=$(bin "$n")
        for c in ${CONFIGS:-qwen3-4b.q4_k}; do
            for d in ${DEPTHS:-0}; do
                [ $(( $(date +%s) - TB )) -lt "${BUDGET:-540}" ] || continue
                timeout 150 env ${e//,/ } "$b" bench $(margs "$c") --device cuda --json ${ARGS:--p 0 -n 128 -r 3} --depth "$d" 2>> "$OUT/bench.err" |
                    sed "s/^{/{\"tag\":\"$v\",\"round\":$r,\"spec\":\"$c\",/" >> "$OUT/ab.jsonl"
            done
        done
    done
done
echo "== bench done ($(( $(date +%s) - T0 ))s)"
python3 - "$OUT/ab.jsonl" <<'PY'
import json, sys, statistics
runs = {}
for line in open(sys.argv[1]):
    try: o = json.loads(line)
    except Exception: continue
    runs.setdefault((o["spec"], o["depth"], o.get("test", ""), o["tag"]), []).append(o)
for (spec, depth, test, tag), os in runs.items():
    if test.startswith("pp"):
        tps = [o["tok_per_s"] for o in os]
        print(f'{spec:<17} {test:<6} {tag:<30} median {statistics.median(tps):9.0f} tok/s ({", ".join(f"{t:.0f}" for t in tps)})')
        continue
    ms = [o["ms_per_token"] for o in os]
    fr = statistics.median(o["fraction_of_bandwidth"] for o in os)
    print(f'{spec:<17} {test:<6} d={depth:<5} {tag:<30} median {statistics.median(ms):7.3f} ms ({", ".join(f"{m:.3f}" for m in ms)}) {100 * fr:5.1f}% of floor')
PY
(cd "$OUT" && tar czf tests.tgz tests && rm -rf tests)
