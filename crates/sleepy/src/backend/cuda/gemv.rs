//! GEMV launch shapes. Rows per block, threads per row, vector width, loads in flight and
//! blocks per SM are run-time values chosen per weight shape: the built-in table of measured
//! shapes or the default rule below, unless `sleepy tune` measured a better one on this GPU
//! (tune/store.rs keeps those, keyed by GPU, driver and kernel source). The shape is data, so
//! tuning never touches kernel code.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemvShape {
    /// Row units (output rows; gate+up pairs for SwiGLU) per block.
    pub rows_per_block: u32,
    /// Threads that share one row (a power of two, 1..=1024).
    pub threads_per_row: u32,
    /// Weights per load: 8 (16 bytes) or 1.
    pub vec: u32,
    /// Loads in flight per thread: 1, 2, 4 or 8.
    pub unroll: u32,
    /// Grid size as blocks per multiprocessor (blocks loop over the remaining rows).
    pub blocks_per_sm: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GemvTable {
    /// (rows, k) -> shape, for weight shapes that were measured.
    pub entries: Vec<(usize, usize, GemvShape)>,
}

impl GemvTable {
    /// The built-in measured shapes (the default configurations a tuner compares against).
    pub fn load() -> GemvTable {
        serde_json::from_str(include_str!("gemv_table.json")).unwrap_or_default()
    }

    /// The shape for a weight of `rows` row units of length `k`.
    pub fn shape(&self, rows: usize, k: usize) -> GemvShape {
        let found = self.entries.iter().find(|(n, kk, _)| *n == rows && *kk == k).map(|e| e.2);
        let s = found.unwrap_or_else(|| default_shape(rows, k));
        sanitize(s, k)
    }
}

/// The default rule, from a sweep on an H100 (BENCHMARKS.md): short matrices (few rows)
/// split each row over four warps so enough loads are in flight; tall ones give a warp to a
/// row (fewer lanes for short rows), eight rows a block, and up to eight blocks per SM.
pub fn default_shape(rows: usize, k: usize) -> GemvShape {
    let vec = if k % 8 == 0 { 8 } else { 1 };
    let chunks = (k / vec as usize).max(1);
    if chunks >= 256 && rows <= 2048 {
        return GemvShape { rows_per_block: 4, threads_per_row: 128, vec, unroll: 4, blocks_per_sm: 4 };
    }
    let threads_per_row = if chunks >= 128 { 32 } else { (chunks.next_power_of_two() / 4).clamp(4, 32) as u32 };
    let per_thread = chunks.div_ceil(threads_per_row as usize);
    let unroll = match per_thread {
        0..=1 => 1,
        2 => 2,
        3..=4 => 4,
        _ => 8,
    };
    let rows_per_block = 8 * (32 / threads_per_row).max(1);
    GemvShape { rows_per_block: rows_per_block.min(32), threads_per_row, vec, unroll, blocks_per_sm: 8 }
}

/// Keep a shape launchable whatever a table file says.
pub(crate) fn sanitize(mut s: GemvShape, k: usize) -> GemvShape {
    if k % 8 != 0 || s.vec != 8 {
        s.vec = 1;
        s.unroll = 4;
    }
    if s.vec == 8 && ![1, 2, 4, 8].contains(&s.unroll) {
        s.unroll = 4;
    }
    s.threads_per_row = s.threads_per_row.clamp(1, 1024).next_power_of_two();
    s.rows_per_block = s.rows_per_block.max(1);
    while s.threads_per_row * s.rows_per_block > 1024 {
        s.rows_per_block = (s.rows_per_block / 2).max(1);
        if s.rows_per_block == 1 {
            break;
        }
    }
    // Block sizes stay whole warps (the reductions assume it).
    while (s.threads_per_row * s.rows_per_block) % 32 != 0 {
        s.rows_per_block *= 2;
    }
    s.blocks_per_sm = s.blocks_per_sm.clamp(1, 32);
    s
}

/// Kernel name for a shape: dtype (0 bf16, 1 f16), whether the input is RMS-normed, and
/// the epilogue (0 plain, 1 residual add, 2 SwiGLU).
pub fn kernel_name(dt: u32, s: &GemvShape, norm: bool, mode: u32) -> String {
    format!("gemv_{dt}_{}_{}_{}_{mode}", s.vec, s.unroll, norm as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses() {
        assert!(!GemvTable::load().entries.is_empty());
    }

    #[test]
    fn shapes_are_launchable() {
        for k in [1, 7, 8, 64, 100, 1024, 2560, 9728] {
            for n in [1, 5, 1024, 6144, 151936] {
                let s = GemvTable::default().shape(n, k);
                assert!(s.threads_per_row.is_power_of_two());
                assert!(s.threads_per_row * s.rows_per_block <= 1024);
                assert_eq!((s.threads_per_row * s.rows_per_block) % 32, 0);
                assert!(s.vec == 8 || s.vec == 1);
            }
        }
    }
}
