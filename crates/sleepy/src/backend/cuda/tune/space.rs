//! The candidate launch configurations of a GEMV problem: every shape the kernel can launch,
//! pruned to the ones that can differ in speed.
//!
//! Pruning (dense family, kernels/gemv.cu):
//! - 16-byte loads (vec 8) whenever rows allow them (k % 8 == 0); the scalar path exists only
//!   for odd row lengths, where it is the only choice.
//! - threads per row: powers of two from 4 to 512, plus the multiples of 32 (up to 512) that
//!   split a row of 16-byte chunks evenly, at most one thread per chunk (idle lanes only add
//!   reduction work). Each thread keeps its `chunks_per_thread` chunks (derived from the row
//!   length and the threads, gemv.rs) in registers: at most 5 (the kernels compile 1-6 and
//!   8; more spends registers the default rule avoids), unless only 512 threads cover the row.
//! - 32 to 512 threads a block in whole warps (`gemv::MAX_THREADS`, the kernels'
//!   `__launch_bounds__`), and only shapes `gemv::sanitize` leaves as they are.
//! - blocks per SM: 1 to 16, but two settings that give the same grid (after the occupancy
//!   cap and the balancing of rounds in `gemv_shaped`) are one launch, measured once; a
//!   shape of which no block fits on an SM (occupancy 0) is not a candidate.
//!
//! Quantized family (kernels/gemv_quant.cu), the same rules over its 16-byte units of quants
//! (K/32 a row; K/16 for Q8_0): threads per row 4 to 128, at most 256 threads a block (its
//! largest variants use ~160 registers), 2, 4 or 8 units in flight (not 8 for SwiGLU, which
//! holds two rows' units); and the streamed kernel at each rows/threads/blocks setting, with
//! up to 512 consumer threads a block, where the device runs it (units in flight do not
//! apply to it).

use super::{GemvProblem, LaunchConfig};
pub use crate::backend::cuda::gemv::MAX_THREADS;
use crate::backend::cuda::gemv::{sanitize, GemvShape};
use crate::backend::cuda::quant::{self, QFmt, QuantShape};
use std::collections::HashSet;

/// Blocks the kernel launches for `units` rows in groups of `rows_per_block`, with at most
/// `cap` blocks resident: as many rounds as the cap needs, the groups spread evenly over
/// the blocks (mirrors `CudaBackend::gemv_shaped`).
pub fn grid_blocks(units: usize, rows_per_block: u32, cap: usize) -> usize {
    let groups = units.div_ceil(rows_per_block.max(1) as usize).max(1);
    let rounds = groups.div_ceil(cap.max(1));
    groups.div_ceil(rounds)
}

/// Whether `c` can run `p`: the shape is one the launch code leaves as it is, its block
/// fits the thread budget, and no thread of a row is idle.
pub fn launchable(p: &GemvProblem, c: &LaunchConfig) -> bool {
    match c {
        LaunchConfig::Dense(s) => {
            let threads = s.threads_per_row * s.rows_per_block;
            let chunks = (p.k / s.vec.max(1) as usize).max(1);
            super::is_dense(p.format)
                && sanitize(*s, p.k) == *s
                && s.chunks_per_thread(p.k).is_some()
                && threads <= MAX_THREADS
                && threads % 32 == 0
                && s.threads_per_row as usize <= chunks.next_power_of_two().max(4)
                && s.blocks_per_sm >= 1
        }
        LaunchConfig::Quant(s) => {
            let Some(f) = QFmt::of(p.format) else { return false };
            let units = f.units_per_row(p.k).max(1);
            quant::sanitize(*s, p.mode) == *s && p.format.row_bytes(p.k).is_some() && s.threads_per_row as usize <= units.next_power_of_two().max(8)
        }
    }
}

/// Candidate configurations of `p` on a device of `sms` multiprocessors. `fit` says how
/// many blocks of a configuration fit on one SM (occupancy); candidates that launch the
/// same grid are kept once (the one asking for the fewest blocks per SM); `fit` 0 (no block
/// fits: registers or shared memory) drops the configuration.
pub fn candidates(p: &GemvProblem, sms: u32, fit: &mut dyn FnMut(&LaunchConfig) -> u32) -> Vec<LaunchConfig> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |c: LaunchConfig, tpr: u32, rpb: u32, unroll: u32, blocks_per_sm: u32, stages: u32, out: &mut Vec<LaunchConfig>| {
        if !launchable(p, &c) {
            return;
        }
        let fits = fit(&c);
        if fits == 0 {
            return;
        }
        let cap = (sms * blocks_per_sm.min(fits)) as usize;
        if seen.insert((tpr, rpb, unroll, stages, grid_blocks(p.units, rpb, cap))) {
            out.push(c);
        }
    };
    if super::is_dense(p.format) {
        let vec = if p.k % 8 == 0 { 8u32 } else { 1 };
        let chunks = (p.k / vec as usize).max(1);
        let mut widths: Vec<u32> = vec![4, 8, 16, 32, 64, 128, 256, 512];
        if vec == 8 {
            // Row widths that split the row evenly into 1-6 chunks a thread.
            widths.extend((1..=6).filter(|c| chunks % (32 * c) == 0).map(|c| (chunks / c) as u32).filter(|&t| t <= MAX_THREADS && !t.is_power_of_two()));
        }
        widths.sort_unstable();
        widths.dedup();
        for tpr in widths {
            if tpr as usize > chunks.max(4) {
                continue;
            }
            let probe = GemvShape { rows_per_block: 1, threads_per_row: tpr, vec, blocks_per_sm: 1, streamed: false };
            match probe.chunks_per_thread(p.k) {
                Some(c) if vec == 1 || c <= 5 || tpr == MAX_THREADS => {}
                _ => continue,
            }
            for rpb in block_rows(tpr, MAX_THREADS) {
                for blocks_per_sm in [1u32, 2, 4, 8, 16] {
                    // Both kernels (the streamed one where the device runs it: `fit` is 0
                    // elsewhere); `unroll` 1 marks the streamed one for the duplicate check.
                    for streamed in [false, true] {
                        let c = LaunchConfig::Dense(GemvShape { rows_per_block: rpb, threads_per_row: tpr, vec, blocks_per_sm, streamed });
                        push(c, tpr, rpb, streamed as u32, blocks_per_sm, 0, &mut out);
                    }
                }
            }
        }
    } else if let Some(f) = QFmt::of(p.format) {
        let units = f.units_per_row(p.k).max(1);
        let allowed: &[u32] = if p.mode == 2 { &[2, 4] } else { &[2, 4, 8] };
        for tpr in [4u32, 8, 16, 32, 64, 128] {
            if tpr as usize > units.max(4) {
                continue;
            }
            for rpb in block_rows(tpr, quant::MAX_STREAM_THREADS) {
                for blocks_per_sm in [1u32, 2, 4, 8, 16] {
                    for unroll in in_flight(units, tpr, allowed).into_iter().filter(|_| tpr * rpb <= quant::MAX_THREADS) {
                        let c = LaunchConfig::Quant(QuantShape { rows_per_block: rpb, threads_per_row: tpr, unroll, blocks_per_sm, streamed: false, stages: 0 });
                        push(c, tpr, rpb, unroll, blocks_per_sm, 0, &mut out);
                    }
                    // The streamed kernel where the device runs it (`fit` is 0 elsewhere);
                    // `unroll` 0 marks it for the duplicate check. With as many stages as its
                    // budget holds, and at one or two blocks an SM also capped at 2 and 3
                    // where that is fewer (less of the SM, for a block beside it; more blocks
                    // an SM split the budget already).
                    let s = QuantShape { rows_per_block: rpb, threads_per_row: tpr, unroll: 4, blocks_per_sm, streamed: true, stages: 0 };
                    let most = if blocks_per_sm <= 2 { quant::stream_stages(f, p.units, p.k, &s, p.mode, sms).unwrap_or(0) } else { 0 };
                    for stages in [0, 2, 3].into_iter().filter(|&c| c == 0 || c < most) {
                        push(LaunchConfig::Quant(QuantShape { stages, ..s }), tpr, rpb, 0, blocks_per_sm, stages, &mut out);
                    }
                }
            }
        }
    }
    out
}

/// Rows per block giving whole-warp blocks of 32 to `max_threads` threads.
fn block_rows(tpr: u32, max_threads: u32) -> Vec<u32> {
    [1u32, 2, 4, 8, 16, 32].into_iter().filter(|r| (32..=max_threads).contains(&(tpr * r))).collect()
}

/// Loads in flight per thread worth trying when each of `tpr` threads has its share of
/// `items` 16-byte loads of a row: not more than the share, at least two where it allows.
fn in_flight(items: usize, tpr: u32, allowed: &[u32]) -> Vec<u32> {
    let share = items.div_ceil(tpr as usize).next_power_of_two() as u32;
    let v: Vec<u32> = allowed.iter().copied().filter(|&u| u <= share.max(1) && u >= share.min(2)).collect();
    if v.is_empty() {
        allowed.iter().copied().take(1).collect()
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::DType;

    /// Occupancy as the hardware limits it for threads alone (2048 a multiprocessor).
    fn fit(c: &LaunchConfig) -> u32 {
        let (tpr, rpb) = match c {
            LaunchConfig::Dense(s) => (s.threads_per_row, s.rows_per_block),
            LaunchConfig::Quant(s) => (s.threads_per_row, s.rows_per_block),
        };
        (2048 / (tpr * rpb)).min(32)
    }

    fn problems() -> Vec<GemvProblem> {
        let mut v = Vec::new();
        let mut push = |format: DType, units: usize, k: usize| {
            for (norm, mode) in [(true, 0), (false, 0), (false, 1), (true, 2)] {
                v.push(GemvProblem { format, units, k, norm, mode });
            }
        };
        for format in [DType::BF16, DType::F16] {
            for (units, k) in [(1, 8), (5, 7), (64, 100), (960, 576), (6144, 2560), (2560, 9728), (9728, 2560), (151936, 1024), (3, 4096)] {
                push(format, units, k);
            }
        }
        for f in quant::layout::ALL_FORMATS {
            for (units, k) in [(1, 256), (7, 512), (960, 768), (6144, 2560), (2560, 9728), (151936, 1024)] {
                push(f.dtype(), units, k);
            }
        }
        v
    }

    #[test]
    fn candidates_are_launchable_and_distinct() {
        for p in problems() {
            let c = candidates(&p, 132, &mut fit);
            assert!(!c.is_empty(), "{}: no candidates", p.label());
            for cfg in &c {
                assert!(launchable(&p, cfg), "{}: {cfg:?}", p.label());
                match cfg {
                    LaunchConfig::Dense(s) => {
                        assert!(s.threads_per_row.is_power_of_two() || s.threads_per_row % 32 == 0);
                        assert!(s.chunks_per_thread(p.k).is_some());
                        let threads = s.threads_per_row * s.rows_per_block;
                        assert!(threads <= MAX_THREADS && threads % 32 == 0);
                        assert!(s.vec == 8 || (s.vec == 1 && p.k % 8 != 0));
                        assert_eq!(sanitize(*s, p.k), *s, "the launch code would change {s:?}");
                    }
                    LaunchConfig::Quant(s) => {
                        assert!(s.threads_per_row.is_power_of_two());
                        let threads = s.threads_per_row * s.rows_per_block;
                        assert!(threads <= quant::max_threads(s) && threads % 32 == 0);
                        assert!(p.mode != 2 || s.unroll <= 4);
                        assert_eq!(quant::sanitize(*s, p.mode), *s, "the launch code would change {s:?}");
                    }
                }
            }
            let distinct: HashSet<_> = c.iter().map(|c| format!("{c:?}")).collect();
            assert_eq!(distinct.len(), c.len());
        }
    }

    #[test]
    fn candidate_space_is_pruned() {
        // The tall and long shapes of a 4B model: a few hundred at most (Q8_0's logits 436
        // with the stage caps, 360 without), so a model's handful of problems tunes in seconds.
        for format in [DType::BF16, DType::Q4K, DType::Q8_0] {
            for (units, k) in [(6144, 2560), (2560, 9728), (151936, 2560)] {
                let p = GemvProblem { format, units, k, norm: false, mode: 0 };
                let n = candidates(&p, 132, &mut fit).len();
                // bf16 rows of 9728 (1216 chunks) run only with 256 or 512 threads a row: the
                // kernel keeps at most 8 chunks a thread in registers, the space at most 5.
                let least = if format == DType::BF16 && k == 9728 { 5 } else { 20 };
                assert!((least..=450).contains(&n), "{} {units}x{k}: {n} candidates", format.name());
            }
        }
    }

    #[test]
    fn unlaunchable_shapes_are_refused() {
        let p = GemvProblem { format: DType::BF16, units: 1024, k: 1024, norm: false, mode: 0 };
        let good = GemvShape { rows_per_block: 4, threads_per_row: 32, vec: 8, blocks_per_sm: 4, streamed: false };
        assert!(launchable(&p, &LaunchConfig::Dense(good)));
        for bad in [
            GemvShape { threads_per_row: 24, ..good },
            GemvShape { rows_per_block: 32, threads_per_row: 32, ..good },
            GemvShape { threads_per_row: 48, ..good },
            GemvShape { threads_per_row: 8, rows_per_block: 4, ..good },
            GemvShape { rows_per_block: 1, threads_per_row: 16, ..good },
            GemvShape { threads_per_row: 512, rows_per_block: 1, ..good },
            GemvShape { blocks_per_sm: 0, ..good },
        ] {
            assert!(!launchable(&p, &LaunchConfig::Dense(bad)), "{bad:?}");
        }
        let odd = GemvProblem { k: 1001, ..p };
        assert!(!launchable(&odd, &LaunchConfig::Dense(good)), "16-byte loads need k % 8 == 0");
        let q = GemvProblem { format: DType::Q4K, ..p };
        assert!(!launchable(&q, &LaunchConfig::Dense(good)), "a dense shape does not run Q4_K");
        let qs = QuantShape { rows_per_block: 4, threads_per_row: 32, unroll: 4, blocks_per_sm: 4, streamed: false, stages: 0 };
        assert!(launchable(&q, &LaunchConfig::Quant(qs)));
        assert!(!launchable(&p, &LaunchConfig::Quant(qs)), "a quantized shape does not run bf16");
        for bad in [QuantShape { rows_per_block: 16, ..qs }, QuantShape { unroll: 3, ..qs }, QuantShape { threads_per_row: 48, ..qs }] {
            assert!(!launchable(&q, &LaunchConfig::Quant(bad)), "{bad:?}");
        }
        let swiglu = GemvProblem { mode: 2, ..q };
        assert!(!launchable(&swiglu, &LaunchConfig::Quant(QuantShape { unroll: 8, ..qs })), "SwiGLU holds at most 4 units in flight");
        let f32p = GemvProblem { format: DType::F32, ..p };
        assert!(candidates(&f32p, 132, &mut fit).is_empty());
    }
}
