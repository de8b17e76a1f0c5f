#!/bin/bash
# Copy target/release/{sleepy,deps/cuda_ops-*,deps/cuda_model-*} (as sleepy, cuda_ops,
# cuda_model) and this script into gpu-run/, and ../shared/tools/gpu into gpu-tools/,
# then run it on the GPU machine: bash gpu-run/gpu-bench.sh [STEPS] (logs under $OUT).
# Optional: gpu-run/sleepy-base, a binary of the previous commit, benched in the same run
# ("before" figures). OPS_FILTER: names of cuda_ops tests to run (default all). STEPS
# (default: all) picks from:
#   tests base bench tune tuned variants ncu
# (tune: `sleepy tune` per model, saved to $SLEEPY_HOME/tune/gemv.json; tuned: bench again
# with those configurations.)
# Models and the bandwidth figure are made whenever a step needs them.
set -u
export PYTHONUNBUFFERED=1 SLEEPY_HOME=/tmp/sleepy_home
cd "$(dirname "$0")"
chmod +x sleepy* cuda_* 2>/dev/null
STEPS=${1:-"tests base bench tune tuned variants ncu"}
has() { [[ " $STEPS " == *" $1 "* ]]; }
T0=$(date +%s)
R=$OUT/run.log
B=$OUT/bench.jsonl
log() { echo "== $* ($(( $(date +%s) - T0 ))s)" | tee -a $R; }
bench() { # tag binary model args...
  local tag=$1 bin=$2 m=$3; shift 3
  timeout 90 ./$bin bench -m /tmp/models/$m --json "$@" 2>>$R | sed "s/^{/{\"tag\":\"$tag\",/" | tee -a $B
}
log env "$STEPS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a $R
if has tests; then
  log cuda_ops
  timeout 150 ./cuda_ops ${OPS_FILTER:-} --test-threads=1 --nocapture > $OUT/ops.log 2>&1; rc=$?; echo "cuda_ops rc=$rc" | tee -a $R
  grep -E "SKIP|panicked|test result|worst|out of GPU" $OUT/ops.log | tail -24 | tee -a $R
  log cuda_model
  timeout 60 ./cuda_model --test-threads=1 --nocapture > $OUT/model.log 2>&1; echo "cuda_model rc=$?" | tee -a $R
  grep -E "SKIP|panicked|test result|relative error|agree" $OUT/model.log | tail -12 | tee -a $R
fi
log bandwidth
timeout 60 python3 ../gpu-tools/bandwidth.py 2>&1 | tee -a $R
log make_models
timeout 200 python3 ../gpu-tools/make_models.py --out /tmp/models qwen3-0.6b qwen3-4b 2>&1 | grep -v Writing | tail -3 | tee -a $R
if has bench; then
  log bench default shapes
  bench default sleepy qwen3-0.6b -p 0 -n 128 -r 3
  bench default sleepy qwen3-4b -p 512 -n 128 -r 3
  bench default sleepy qwen3-4b -p 0 -n 128 -r 2 --depth 4096
fi
if has base && [ -x sleepy-base ]; then
  log base binary
  for m in qwen3-0.6b qwen3-4b; do bench base sleepy-base $m -p 0 -n 128 -r 3; done
fi
if has tune && [ $(( $(date +%s) - T0 )) -lt ${TUNE_BEFORE:-999} ]; then
  log gemv tune
  for m in ${TUNE_MODELS:-qwen3-0.6b qwen3-4b}; do
    timeout 150 ./sleepy tune -m /tmp/models/$m --json 2>>$R | tee -a $OUT/tune.jsonl
  done
  cp $SLEEPY_HOME/tune/gemv.json $OUT/gemv.json 2>/dev/null
fi
if has tuned && [ -f $SLEEPY_HOME/tune/gemv.json ]; then
  log bench tuned shapes
  for m in ${TUNE_MODELS:-qwen3-0.6b qwen3-4b}; do
    bench tuned sleepy $m -p 512 -n 128 -r 3
    bench tuned sleepy $m -p 0 -n 128 -r 2 --depth 4096
  done
fi
if has variants; then
  log variants
  SLEEPY_PDL=0 bench pdl_off sleepy qwen3-4b -p 0 -n 128 -r 3
  SLEEPY_PDL=0 bench pdl_off sleepy qwen3-0.6b -p 0 -n 128 -r 3
  SLEEPY_CUDA_GRAPHS=0 bench graphs_off sleepy qwen3-0.6b -p 0 -n 128 -r 3
fi
if has ncu; then
  # The second of two decode tokens (the first is the bench's warm-up), each kernel alone
  # (caches flushed): per-kernel upper bounds. Kernels per token: embed, 5 per layer,
  # logits, argmax.
  for mk in qwen3-0.6b:143 qwen3-4b:183; do
    m=${mk%:*} k=${mk#*:}
    [ $(( $(date +%s) - T0 )) -lt ${NCU_BEFORE:-260} ] || { log skip ncu $m: time; continue; }
    log ncu one $m decode token
    timeout 100 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum -s $k -c $k \
      ./sleepy bench -m /tmp/models/$m -p 0 -n 1 -r 1 > $OUT/ncu-$m.csv 2>>$R; echo "ncu rc=$?" | tee -a $R
  done
fi
log done
echo "==== SUMMARY"
grep -E "cuda_ops rc|cuda_model rc|test result|copy:|read:" $R
python3 - $B $OUT <<'PY'
import json, sys, glob, csv, collections
for line in open(sys.argv[1]) if __import__('os').path.exists(sys.argv[1]) else []:
    try: o = json.loads(line)
    except Exception: continue
    fr = o.get("fraction_of_bandwidth")
    print(f'{o["tag"]:<9} {o["model"]:<11} {o["test"]:<6} d={o["depth"]:<5} {o["tok_per_s"]:>9.1f} tok/s {o["ms_per_token"]:>7.3f} ms'
          + (f' host {o.get("host_ms_per_token", 0):.3f} {100*fr:5.1f}% bw floor {o["floor_ms_per_token"]:.3f}' if fr else ''))
# Per-kernel sums from ncu (microseconds per token, by kernel name).
for f in sorted(glob.glob(sys.argv[2] + "/ncu-*.csv")):
    t = collections.defaultdict(lambda: [0, 0.0, 0.0])
    try:
        rows = list(csv.reader(l for l in open(f) if l.startswith('"')))
        h = rows[0]; ki = h.index("Kernel Name"); mi = h.index("Metric Name"); vi = h.index("Metric Value"); ui = h.index("Metric Unit")
        for r in rows[1:]:
            name = r[ki].split("(")[0]
            v = float(r[vi].replace(",", ""))
            if r[mi] == "gpu__time_duration.sum":
                v = v / 1000 if r[ui] == "nsecond" else v * (1000 if r[ui] == "msecond" else 1)
                t[name][0] += 1; t[name][1] += v
            elif r[mi] == "dram__bytes_read.sum":
                scale = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(r[ui], 1)
                t[name][2] += v * scale
        print(f.split("/")[-1], "total us", round(sum(v[1] for v in t.values()), 1))
        for k, v in sorted(t.items(), key=lambda kv: -kv[1][1]):
            print(f"  {k:<22} n={v[0]:<4} {v[1]:9.1f} us  {v[1]/max(v[0],1):7.2f} us/call  {v[2]/max(v[1],1e-9)/1e3:6.0f} GB/s")
    except Exception as e:
        print(f, "unparsed", e)
PY
