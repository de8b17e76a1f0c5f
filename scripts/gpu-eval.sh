#!/usr/bin/env bash
# Numerical parity against transformers, on the GPU machine (PyTorch + transformers there).
#
# Run from the repository root with the release binary at target/release/sleepy (or
# $SLEEPY_BIN) and the shared tools copied to gpu-tools/ (an ignored folder):
#     bash scripts/gpu-eval.sh
# For each model it
#   1. makes the random-weight HF model and its reference (make_models.py: bf16 weights,
#      float32 and bfloat16 logits of a 32-token prompt, float32 greedy continuation);
#   2. runs transformers' own bf16 model greedily, to see how stable the float32 greedy
#      continuation is under bf16 rounding (random weights give near-tied logits);
#   3. runs `sleepy eval --reference` on the HF directory, and on the GGUF file
#      `sleepy convert --type bf16` makes of it (same weights, GGUF layout);
#   4. prints a table. Target: our relative error at or under transformers' bf16 error, and
#      at least 30 of 32 greedy tokens reproduced.
# Environment: MODELS (names for make_models.py), MODELS_DIR (default /tmp/sleepy-eval-models),
# DEVICE (default cpu), THREADS (default all cores), SKIP_GGUF=1 to skip step 3's GGUF half,
# TORCH_DEVICE (default cuda) for step 2.
# The JSON results go to $OUT when set (the GPU runner brings that folder back), else gpu-run/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${SLEEPY_BIN:-target/release/sleepy}
TOOLS=${GPU_TOOLS:-gpu-tools}
MODELS=${MODELS:-"tiny-llama tiny-qwen3 qwen2.5-0.5b qwen3-0.6b"}
MODELS_DIR=${MODELS_DIR:-/tmp/sleepy-eval-models}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-$(nproc)}
RESULTS=${OUT:-gpu-run}
mkdir -p "$RESULTS"

[ -x "$BIN" ] || { echo "no sleepy binary at $BIN: build it (cargo build --release) or set SLEEPY_BIN" >&2; exit 2; }
[ -f "$TOOLS/gpu/make_models.py" ] || { echo "no $TOOLS/gpu/make_models.py: copy the shared tools to $TOOLS/" >&2; exit 2; }

missing=()
for m in $MODELS; do
    [ -f "$MODELS_DIR/$m/reference.safetensors" ] || missing+=("$m")
done
if [ ${#missing[@]} -gt 0 ]; then
    python3 "$TOOLS/gpu/make_models.py" --out "$MODELS_DIR" "${missing[@]}"
fi

# transformers' bf16 greedy decoding against the float32 greedy continuation, decoded the
# way make_models.py decodes (full recompute each step, argmax). Kept beside the reference:
# like it, it depends only on the model.
for m in $MODELS; do
    if [ ! -f "$MODELS_DIR/$m/tf-bf16.json" ]; then
        python3 - "$MODELS_DIR/$m" "${TORCH_DEVICE:-cuda}" > "$MODELS_DIR/$m/tf-bf16.json.part" <<'PY'
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
d, dev = sys.argv[1], sys.argv[2]
ref = load_file(f"{d}/reference.safetensors")
try:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).to(dev)
except TypeError:
    m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).to(dev)
ids, want = ref["input_ids"].view(1, -1).to(dev), ref["greedy_f32"].tolist()
with torch.no_grad():
    seq = ids
    for _ in range(len(want)):
        seq = torch.cat([seq, m(seq).logits[0, -1].argmax().view(1, 1)], 1)
    ours = seq[0, ids.shape[1]:].tolist()
    forced = torch.cat([ids, torch.tensor([want[:-1]], device=dev)], 1) if len(want) > 1 else ids
    tf = m(forced).logits[0, ids.shape[1] - 1:].argmax(-1).tolist()
lead = next((i for i, (a, b) in enumerate(zip(ours, want)) if a != b), len(want))
print(json.dumps({"greedy_matched": lead, "greedy_total": len(want),
                  "teacher_forced_matched": sum(a == b for a, b in zip(tf, want))}))
PY
        mv "$MODELS_DIR/$m/tf-bf16.json.part" "$MODELS_DIR/$m/tf-bf16.json"
    fi
    cp "$MODELS_DIR/$m/tf-bf16.json" "$RESULTS/$m.tf-bf16.json"
done

for m in $MODELS; do
    dir="$MODELS_DIR/$m"
    echo "== $m: sleepy eval (HF directory)" >&2
    "$BIN" eval -m "$dir" --reference "$dir/reference.safetensors" --json --device "$DEVICE" -t "$THREADS" > "$RESULTS/$m.hf.json"
    if [ "${SKIP_GGUF:-0}" != 1 ]; then
        echo "== $m: sleepy convert --type bf16, then eval" >&2
        "$BIN" convert "$dir" "$MODELS_DIR/$m.bf16.gguf" --type bf16 2> "$RESULTS/$m.convert.log"
        "$BIN" eval -m "$MODELS_DIR/$m.bf16.gguf" --reference "$dir/reference.safetensors" --json --device "$DEVICE" -t "$THREADS" > "$RESULTS/$m.gguf.json"
    fi
done

python3 - "$RESULTS" $MODELS <<'PY'
import json, os, sys
res, names = sys.argv[1], sys.argv[2:]
def load(path):
    return json.load(open(path)) if os.path.exists(path) else None
print(f"{'model':<14} {'file':<5} {'rel err':>9} {'tf bf16':>9} {'top-1':>7} {'tf top-1':>8} {'greedy':>7} {'forced':>7} {'tf greedy':>9}  verdict")
ok = True
for n in names:
    tf = load(f"{res}/{n}.tf-bf16.json") or {}
    for kind in ("hf", "gguf"):
        r = load(f"{res}/{n}.{kind}.json")
        if r is None:
            continue
        err_ok = r["rel_err"] <= (r["bf16_rel_err"] or 0)
        greedy_ok = r["greedy_matched"] >= min(30, r["greedy_total"])
        verdict = "ok" if err_ok and greedy_ok else "MISS: " + ", ".join(
            w for w, bad in (("error above bf16", not err_ok), ("greedy < 30", not greedy_ok)) if bad)
        ok &= err_ok and greedy_ok
        g = f"{r['greedy_matched']}/{r['greedy_total']}"
        print(f"{n:<14} {kind:<5} {r['rel_err']:9.2e} {r['bf16_rel_err'] or 0:9.2e} "
              f"{r['top1_agree']:>3}/{r['tokens']:<3} {r['bf16_top1_agree'] or 0:>4}/{r['tokens']:<3} {g:>7} "
              f"{r['teacher_forced_matched']:>3}/{r['greedy_total']:<3} "
              f"{str(tf.get('greedy_matched', '-')) + '/' + str(tf.get('greedy_total', '-')):>9}  {verdict}")
        for step, margin in r["teacher_forced_mismatches"]:
            print(f"{'':<20} teacher-forced step {step}: our top-1 leads the reference token by {margin:.3g} "
                  f"(our logit error: rms {r['rms_err']:.2g}, max {r['max_abs_err']:.2g}; median top-2 gap {r['ref_top2_gap_median']:.2g})")
print("columns: rel err = ||sleepy - f32|| / ||f32|| over the prompt's logits; tf bf16 = the same for transformers' bf16;")
print("top-1 = prompt positions agreeing with f32; greedy = leading continuation tokens equal to f32's greedy;")
print("forced = teacher-forced steps agreeing; tf greedy = transformers bf16's own leading greedy agreement.")
sys.exit(0 if ok else 1)
PY
