#!/usr/bin/env python3
"""Summarise one decode step's timeline (timeline.patch; SLEEPY_TIMELINE=FILE): per launch, when
its first block entered, when its dependency wait first and last let a block through, and when
its last block ended (%globaltimer, 32 ns steps on an H100), then the median of each role over
the layers:

    python3 scripts/probes/timeline.py FILE [--all] [--blocks [--inline-records]]

Roles follow the decode step's order: a layer is QKV, attention (the launch whose body tag is
3), output projection, gate+up, down. "handoff" is a launch's first release from its wait less
the previous launch's last block end; "after wait" is its last block end less its first release;
"beside" is, over the SMs both launches used, the median of the previous launch's last block end
on that SM less this launch's first block entry there: positive where this launch's blocks ran
beside the previous one's, negative where they waited for that SM to empty. For the quantized
GEMVs, the medians over their blocks of thread 0's prologue (kind 32: release to activations
ready) and, for the streamed one (kind 33), its waits for its tiles' copies and its work on
them. --blocks adds, per role, the spread over all its blocks (times from the launch's first
release), and the medians of its fastest and slowest tenth of blocks by end; with the
prologue's inner records (kinds 34-36, quantize_acts, thread 0) also its parts: xload (x's and
g's loads landed), normsum (the norm's block-wide sum), quant (the rest: scaling, quantization,
the closing barrier), and rec (the gap from kind 36's end to kind 32's). Where the probe wrote
34-36 inline, as in session 30's run, rec is one record's atomic round trip, which fell three
times inside the prologue and twice inside quant: --inline-records shows both less them. The
probe now keeps its records in shared memory (rec about 0.1 us), and without the flag they are
shown as recorded (sessions 31-32 subtracted rec regardless, so their prologues read about
0.3 us low).
"""
import csv, statistics, sys
from collections import defaultdict

TAGS = {1: "gemvq", 2: "gemvq_stream", 3: "attention", 4: "gemv", 5: "gemv_stream"}


def load(records):
    grids = defaultdict(lambda: {"blocks": set(), "tag": None, "enter": [], "release": [], "start": [], "end": [],
                                 "sm_first": {}, "sm_end": {}, "prologue": [], "tiles_wait": [], "tiles_work": []})
    for r in records:
        g = grids[int(r["grid"])]
        kind, t0, t1, sm = int(r["kind"]), int(r["t0"]), int(r["t1"]), int(r["sm"])
        g["blocks"].add(int(r["block"]))
        if kind == 32:
            g["prologue"].append(t1 - t0)
            continue
        if kind == 33:
            g["tiles_wait"].append(t0)
            g["tiles_work"].append(t1)
            continue
        if kind >= 34:  # the prologue's parts (--blocks)
            continue
        g["sm_first"][sm] = min(g["sm_first"].get(sm, t0), t0)
        g["sm_end"][sm] = max(g["sm_end"].get(sm, t1), t1)
        if kind == 1:
            g["enter"].append(t0)
            g["release"].append(t1)
        elif kind >= 16:
            g["tag"] = TAGS.get(kind - 16, str(kind - 16))
            g["start"].append(t0)
            g["end"].append(t1)
    out = []
    for gid, g in grids.items():
        first = min(g["start"] + g["enter"])
        out.append({
            "grid": gid, "tag": g["tag"] or "wait only", "blocks": len(g["blocks"]), "first": first,
            "release0": min(g["release"]) if g["release"] else None,
            "release1": max(g["release"]) if g["release"] else None,
            "end": max(g["end"]) if g["end"] else (max(g["release"]) if g["release"] else first),
            "sm_first": g["sm_first"], "sm_end": g["sm_end"],
            "phases": [statistics.median(g[k]) / 1000 if g[k] else float("nan") for k in ("prologue", "tiles_wait", "tiles_work")],
        })
    out.sort(key=lambda x: x["first"])
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    records = list(csv.DictReader(open(sys.argv[1])))
    ls = load(records)
    t0 = ls[0]["first"]
    us = lambda t: (t - t0) / 1000 if t is not None else float("nan")
    roles = [""] * len(ls)
    for i, l in enumerate(ls):
        if l["tag"] == "attention":
            for d, name in ((-1, "qkv"), (0, "attention"), (1, "o_proj"), (2, "gate_up"), (3, "down")):
                if 0 <= i + d < len(ls):
                    roles[i + d] = name
    per_role = defaultdict(lambda: defaultdict(list))
    rows = []
    for i, l in enumerate(ls):
        prev = ls[i - 1] if i else None
        handoff = (l["release0"] - prev["end"]) / 1000 if prev and l["release0"] is not None else float("nan")
        after = (l["end"] - l["release0"]) / 1000 if l["release0"] is not None else float("nan")
        spread = (l["release1"] - l["release0"]) / 1000 if l["release0"] is not None else float("nan")
        early = (l["release0"] - l["first"]) / 1000 if l["release0"] is not None else float("nan")
        both = [sm for sm in l["sm_first"] if prev and sm in prev["sm_end"]]
        beside = statistics.median((prev["sm_end"][sm] - l["sm_first"][sm]) / 1000 for sm in both) if both else float("nan")
        role = roles[i] or ("head" if l["blocks"] > 100 and i > len(ls) - 4 and l["tag"] != "wait only" else l["tag"])
        rows.append((i, role, l["tag"], l["blocks"], us(l["first"]), us(l["release0"]), us(l["end"]), early, handoff, spread, after, beside))
        phases = dict(zip(("prologue", "tiles wait", "tiles work"), l["phases"]))
        for k, v in (("started before release", early), ("handoff", handoff), ("release spread", spread), ("after wait", after), ("beside", beside), *phases.items()):
            per_role[role][k].append(v)
        per_role[role]["count"].append(1)
    if "--all" in sys.argv:
        print(f"{'#':>4} {'role':<10} {'kernel':<13} {'blocks':>6} {'first':>9} {'release':>9} {'end':>9} {'early':>7} {'handoff':>8} {'spread':>7} {'after':>7} {'beside':>7}  (us)")
        for r in rows:
            print(f"{r[0]:>4} {r[1]:<10} {r[2]:<13} {r[3]:>6} {r[4]:9.2f} {r[5]:9.2f} {r[6]:9.2f} {r[7]:7.2f} {r[8]:8.2f} {r[9]:7.2f} {r[10]:7.2f} {r[11]:7.2f}")
    if "--blocks" in sys.argv:
        blocks(records, {l["grid"]: roles[i] for i, l in enumerate(ls) if roles[i]})
    step = (ls[-1]["end"] - t0) / 1000
    print(f"{len(ls)} launches, {step:.1f} us from the first block's entry to the last block's end")
    print(f"{'role':<12} {'n':>4} {'early':>8} {'handoff':>8} {'spread':>8} {'after':>8} {'beside':>8} {'prologue':>8} {'t.wait':>8} {'t.work':>8}   medians, us")
    for role, d in per_role.items():
        med = lambda k: statistics.median([v for v in d[k] if v == v]) if any(v == v for v in d[k]) else float("nan")
        print(f"{role:<12} {len(d['count']):>4} {med('started before release'):8.2f} {med('handoff'):8.2f} {med('release spread'):8.2f} {med('after wait'):8.2f} {med('beside'):8.2f} {med('prologue'):8.2f} {med('tiles wait'):8.2f} {med('tiles work'):8.2f}")


KEYS = ("end", "entry", "prologue", "xload", "normsum", "quant", "rec", "wait", "work")


def blocks(records, roles_by_grid):
    """Per-block spreads by role (--blocks)."""
    inline = "--inline-records" in sys.argv
    g = defaultdict(lambda: defaultdict(dict))
    for r in records:
        g[int(r["grid"])][int(r["block"])][int(r["kind"])] = (int(r["t0"]), int(r["t1"]))
    q = lambda xs: " ".join(f"{k} {v:6.2f}" for k, v in zip(("min", "p10", "med", "p90", "max"), (min(xs), *(sorted(xs)[int(f * len(xs))] for f in (0.1, 0.5, 0.9)), max(xs))))
    per = defaultdict(list)
    for gid, role in roles_by_grid.items():
        bl = g[gid]
        rels = [b[1][1] for b in bl.values() if 1 in b]
        if not rels:
            continue
        rel0 = min(rels)
        for b in bl.values():
            body = [v for k, v in b.items() if 16 <= k < 32]
            if not body or 1 not in b:
                continue
            rec = {"end": (body[0][1] - rel0) / 1000, "entry": (b[1][0] - rel0) / 1000}
            if 32 in b:
                rec["prologue"] = (b[32][1] - b[32][0]) / 1000
            if 33 in b:
                rec.update(wait=b[33][0] / 1000, work=b[33][1] / 1000)
            if 32 in b and 34 in b and 35 in b and 36 in b:
                # Inside the prologue (thread 0): x's (and g's) loads, the norm's block sum, the
                # rest. rec is kind 32's end less 36's; with --inline-records (34-36 written
                # inline, session 30's run) it is one record's atomic round trip, taken off the
                # rest twice and off the prologue three times.
                a = b[32][1] - b[36][1]
                c = a if inline else 0
                rec.update(xload=(b[34][1] - b[34][0]) / 1000, normsum=(b[35][1] - b[35][0]) / 1000,
                           quant=(b[36][1] - b[35][1] - 2 * c) / 1000, rec=a / 1000,
                           prologue=(b[32][1] - b[32][0] - 3 * c) / 1000)
            per[role].append(rec)
    for role, recs in per.items():
        print(f"{role} ({len(recs)} blocks), us from the launch's first release")
        for k in KEYS:
            xs = [r[k] for r in recs if k in r]
            if xs:
                print(f"  {k:<9} {q(xs)}")
        recs.sort(key=lambda r: r["end"])
        n = max(len(recs) // 10, 1)
        for lab, part in (("fastest", recs[:n]), ("slowest", recs[-n:])):
            keys = [k for k in KEYS if k in part[0]]
            print(f"  {lab} tenth: " + ", ".join(f"{k} {statistics.median(r[k] for r in part):.2f}" for k in keys))


if __name__ == "__main__":
    main()
