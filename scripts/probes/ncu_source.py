#!/usr/bin/env python3
"""Summarise Nsight Compute's per-instruction warp-stall samples of one kernel (the source page
as CSV: `ncu -i REP --page source --csv --print-source sass > FILE`, or gpu.sh's NCU_SOURCE=1):

    python3 scripts/probes/ncu_source.py FILE                 # every sampled instruction
    python3 scripts/probes/ncu_source.py FILE regions CUTS NAMES

prints the samples by stall reason, then each instruction that was sampled (or is a branch, a
barrier or an mbarrier operation) with its samples, warp-level executions and three largest
reasons; `regions` instead sums samples and executions over instruction-index ranges
(CUTS: comma-separated first indices, NAMES: one name a range), e.g. the streamed GEMV's
prologue, tile wait, tile work and reduction as read off the full listing.
"""
import csv, sys

if len(sys.argv) < 2:
    sys.exit(__doc__)
rows = list(csv.reader(open(sys.argv[1])))
hdr = rows[1]; data = rows[2:]
ix = {h: i for i, h in enumerate(hdr)}
stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
tot = sum(int(r[ix["Warp Stall Sampling (All Samples)"]] or 0) for r in data)
print("total samples", tot, "instructions", len(data))
agg = {s: 0 for s in stalls}
out = []
for n, r in enumerate(data):
    smp = int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
    ex = int(r[ix["Instructions Executed"]] or 0)
    st = {s: int(r[ix[s]] or 0) for s in stalls}
    for s in stalls: agg[s] += st[s]
    top = sorted(st.items(), key=lambda kv: -kv[1])[:3]
    out.append((n, smp, ex, r[ix["Source"]].strip(), " ".join(f"{k[6:]}={v}" for k, v in top if v)))
print("by reason:", ", ".join(f"{k[6:]} {100*v/tot:.1f}%" for k, v in sorted(agg.items(), key=lambda kv: -kv[1]) if v))
mode = sys.argv[2] if len(sys.argv) > 2 else "all"
if mode == "all":
    for n, smp, ex, src, top in out:
        if smp or "BRA" in src or "BAR" in src or "SYNCS" in src:
            print(f"{n:5d} {smp:6d} {ex:8d}  {src[:70]:<70} {top}")
if mode == "regions":
    cuts = [int(c) for c in sys.argv[3].split(",")]
    names = sys.argv[4].split(",")
    for a, b, nm in zip(cuts, cuts[1:] + [len(out)], names):
        seg = out[a:b]
        smp = sum(o[1] for o in seg)
        ex = sum(o[2] for o in seg)
        print(f"{nm:<14} [{a:5d},{b:5d}) samples {smp:5d} ({100*smp/tot:5.1f}%)  warp-instr executed {ex}")
