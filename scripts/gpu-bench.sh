#!/bin/bash
# Copy target/release/{sleepy,deps/cuda_ops-*,deps/cuda_model-*} (as sleepy, cuda_ops,
# cuda_model) and this script into gpu-run/, and ../shared/tools/gpu into gpu-tools/,
# then run it on the GPU machine: bash gpu-run/gpu-bench.sh (logs under $OUT).
# Final GPU run: tests, models, bandwidth, bench of qwen3-0.6b and qwen3-4b (default shapes,
# then sleepy tune and tuned shapes), variants (PDL/graphs off), ncu profile.
set -u
export PYTHONUNBUFFERED=1 SLEEPY_HOME=/tmp/sleepy_home
cd "$(dirname "$0")"
chmod +x sleepy cuda_ops cuda_model
T0=$(date +%s)
R=$OUT/run.log
B=$OUT/bench.jsonl
log() { echo "== $* ($(( $(date +%s) - T0 ))s)" | tee -a $R; }
el() { echo $(( $(date +%s) - T0 )); }
bench() { # tag model args...
  local tag=$1 m=$2; shift 2
  timeout 90 ./sleepy bench -m /tmp/models/$m --json "$@" 2>>$R | sed "s/^{/{\"tag\":\"$tag\",/" | tee -a $B
}
log env
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a $R
log cuda_ops
timeout 150 ./cuda_ops --test-threads=1 --nocapture > $OUT/ops.log 2>&1; rc=$?; echo "cuda_ops rc=$rc" | tee -a $R
grep -E "SKIP|panicked|test result|worst|out of GPU" $OUT/ops.log | tail -16 | tee -a $R
log cuda_model
timeout 60 ./cuda_model --test-threads=1 --nocapture > $OUT/model.log 2>&1; echo "cuda_model rc=$?" | tee -a $R
grep -E "SKIP|panicked|test result|relative error|agree" $OUT/model.log | tail -12 | tee -a $R
log bandwidth
timeout 60 python3 ../gpu-tools/bandwidth.py 2>&1 | tee -a $R
log make_models
timeout 200 python3 ../gpu-tools/make_models.py --out /tmp/models qwen3-0.6b qwen3-4b 2>&1 | grep -v Writing | tail -3 | tee -a $R
log bench default shapes
for m in qwen3-0.6b qwen3-4b; do
  bench default $m -p 512 -n 128 -r 5
  bench default $m -p 512 -n 128 -r 3 --depth 4096
done
log gemv tune
for m in qwen3-0.6b qwen3-4b; do
  timeout 120 ./sleepy tune -m /tmp/models/$m --json 2>>$R | tee -a $OUT/tune.jsonl
done
cp $SLEEPY_HOME/tune/gemv.json $OUT/gemv.json 2>/dev/null
log bench tuned shapes
for m in qwen3-0.6b qwen3-4b; do
  bench tuned $m -p 512 -n 128 -r 5
  bench tuned $m -p 512 -n 128 -r 3 --depth 4096
done
log variants
SLEEPY_PDL=0 bench tuned_pdl_off qwen3-4b -p 0 -n 128 -r 3
SLEEPY_CUDA_GRAPHS=0 bench tuned_graphs_off qwen3-4b -p 0 -n 128 -r 3
SLEEPY_PDL=0 bench tuned_pdl_off qwen3-0.6b -p 0 -n 128 -r 3
log parity
for m in qwen3-0.6b qwen3-4b; do
  timeout 60 ./sleepy eval -m /tmp/models/$m --reference /tmp/models/$m/reference.safetensors --device cuda 2>&1 | tail -6 | tee -a $R
done
if [ $(el) -lt 360 ]; then
  log ncu one 4b decode token
  timeout 100 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum -c 230 \
    ./sleepy bench -m /tmp/models/qwen3-4b -p 0 -n 1 -r 1 > $OUT/ncu.csv 2>>$R; echo "ncu rc=$?" | tee -a $R
fi
log done
echo "==== SUMMARY"
grep -E "cuda_ops rc|cuda_model rc|test result|copy:|read:" $R
python3 - $B <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try: o = json.loads(line)
    except Exception: continue
    fr = o.get("fraction_of_bandwidth")
    print(f'{o["tag"]:<17} {o["model"]:<11} {o["test"]:<6} d={o["depth"]:<5} {o["tok_per_s"]:>10.1f} tok/s {o["ms_per_token"]:>8.3f} ms/tok'
          + (f' {o["gb_per_s"]:>6.0f} GB/s {100*fr:5.1f}% bw floor {o["floor_ms_per_token"]:.3f} ms' if fr else ''))
PY
