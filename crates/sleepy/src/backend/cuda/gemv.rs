//! GEMV launch shapes. Rows per block, threads per row, vector width and blocks per SM are
//! run-time values chosen per weight shape: the built-in table of measured shapes or the
//! default rule below, unless `sleepy tune` measured a better one on this GPU (tune/store.rs
//! keeps those, keyed by GPU, driver and kernel source). The shape is data, so tuning never
//! touches kernel code. Each thread of a row owns `chunks_per_thread` chunks of `vec` weights
//! (derived, never stored), so threads per row times chunks per thread must cover the row.

use super::quant::QuantShape;
use serde::{Deserialize, Serialize};

/// Chunks per thread the kernels are compiled for (`kernels/gemv.cu`), for 8-wide chunks;
/// 1-wide chunks (rows whose length is not a multiple of 8) always use 8.
pub const CHUNKS_PER_THREAD: [u32; 7] = [1, 2, 3, 4, 5, 6, 8];
const MAX_CHUNKS: u32 = 8;
/// Threads per block: the kernels are compiled for at most 512 (`__launch_bounds__`).
pub const MAX_THREADS: u32 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemvShape {
    /// Row units (output rows; gate+up pairs for SwiGLU) per block.
    pub rows_per_block: u32,
    /// Threads that share one row: a power of two up to 32, else a multiple of 32 (<= 512).
    pub threads_per_row: u32,
    /// Weights per load: 8 (16 bytes) or 1.
    pub vec: u32,
    /// Grid size as blocks per multiprocessor (blocks loop over the remaining rows).
    pub blocks_per_sm: u32,
    /// Run the streamed kernel (weights brought into shared memory by bulk copies; Hopper
    /// and later, one token row, 16-byte chunks) rather than the register kernel.
    #[serde(default)]
    pub streamed: bool,
}

impl GemvShape {
    /// Chunks each thread owns for rows of length `k`: the smallest compiled count that
    /// covers the row (None: the row is too long for this many threads).
    pub fn chunks_per_thread(&self, k: usize) -> Option<u32> {
        let chunks = (k / self.vec as usize).max(1);
        let need = chunks.div_ceil(self.threads_per_row as usize);
        if self.vec == 1 {
            return (need <= MAX_CHUNKS as usize).then_some(MAX_CHUNKS);
        }
        CHUNKS_PER_THREAD.iter().copied().find(|&c| c as usize >= need)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GemvTable {
    /// (rows, k) -> shape, for weight shapes that were measured.
    pub entries: Vec<(usize, usize, GemvShape)>,
    /// (format name, rows, k, epilogue mode) -> shape of the quantized GEMV, measured
    /// likewise (the mode decides which streamed shapes fit; see quant/ops.rs).
    #[serde(default)]
    pub quant: Vec<(String, usize, usize, u32, QuantShape)>,
    /// Shapes measured on one kind of GPU, ahead of the entries above on that kind.
    #[serde(default)]
    pub devices: Vec<DeviceTable>,
    /// The device can run the streamed kernel (Hopper and later).
    #[serde(skip)]
    pub streamed: bool,
}

/// The shapes `sleepy tune` chose on one kind of GPU (named as the driver names it) where they
/// differ from the table's general entries: the best launch shape of a weight shape differs
/// between GPUs (an H100's and an H200's for Qwen3-0.6B, BENCHMARKS.md session 17).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceTable {
    pub gpu: String,
    #[serde(default)]
    pub entries: Vec<(usize, usize, GemvShape)>,
    #[serde(default)]
    pub quant: Vec<(String, usize, usize, u32, QuantShape)>,
}

impl GemvTable {
    /// The built-in measured shapes for the GPU named `gpu` (the default configurations a
    /// tuner compares against): its own section's entries, then the general ones.
    pub fn load(gpu: &str) -> GemvTable {
        let mut t: GemvTable = serde_json::from_str(include_str!("gemv_table.json")).unwrap_or_default();
        for d in std::mem::take(&mut t.devices).into_iter().filter(|d| d.gpu == gpu) {
            t.entries.splice(0..0, d.entries);
            t.quant.splice(0..0, d.quant);
        }
        t
    }

    /// The measured shape of a quantized weight of `format` in epilogue `mode`, where the table
    /// has one (and, for a streamed shape, the device streams).
    pub fn quant_shape(&self, format: &str, rows: usize, k: usize, mode: u32) -> Option<QuantShape> {
        let hit = |(f, n, kk, m, s): &&(String, usize, usize, u32, QuantShape)| f == format && *n == rows && *kk == k && *m == mode && (self.streamed || !s.streamed);
        self.quant.iter().find(hit).map(|e| e.4)
    }

    /// The shape for a weight of `rows` row units of length `k`.
    pub fn shape(&self, rows: usize, k: usize) -> GemvShape {
        // A measured streamed shape says nothing about the register kernel: devices that do
        // not stream use the rule.
        let found = self.entries.iter().find(|(n, kk, s)| *n == rows && *kk == k && (self.streamed || !s.streamed)).map(|e| e.2);
        let s = found.unwrap_or_else(|| default_shape(rows, k, self.streamed));
        sanitize(s, k)
    }
}

/// The default rule: the fewest threads per row (a power of two) that leave each thread at
/// most 4 chunks of the row (5 rather than more than 256 threads), whose x' it keeps in
/// registers; blocks of about 256 threads; up to 4 blocks per SM (the launch caps this by
/// what fits). Rows of 4096 weights and more go to the streamed kernel, two blocks per SM,
/// where the device runs it: a thread of the register kernel keeps two rows' chunks in
/// flight, too few bytes for long rows (on an H200 it took 16.3 us for Qwen3-4B's down
/// projection against 13.6 us streamed, and 8.2 against 7.8 us for its output projection;
/// shorter rows measured faster in registers; BENCHMARKS.md).
pub fn default_shape(_rows: usize, k: usize, can_stream: bool) -> GemvShape {
    let vec = if k % 8 == 0 { 8 } else { 1 };
    let chunks = (k / vec as usize).max(1);
    let threads_per_row = if vec == 1 {
        chunks.div_ceil(MAX_CHUNKS as usize).next_power_of_two()
    } else {
        let four = chunks.div_ceil(4).next_power_of_two();
        if four > 256 && chunks.div_ceil(256) <= 5 { 256 } else { four }
    };
    let threads_per_row = threads_per_row.min(MAX_THREADS as usize) as u32;
    let rows_per_block = (256 / threads_per_row).max(1);
    let streamed = can_stream && vec == 8 && k >= 4096;
    let blocks_per_sm = if streamed { 2 } else { 4 };
    sanitize(GemvShape { rows_per_block, threads_per_row, vec, blocks_per_sm, streamed }, k)
}

/// Keep a shape launchable whatever a table file says: a legal row width that covers the row
/// with a compiled chunk count (where any can), whole-warp blocks of at most 512 threads.
pub(crate) fn sanitize(mut s: GemvShape, k: usize) -> GemvShape {
    if k % 8 != 0 || s.vec != 8 {
        s.vec = 1;
        s.streamed = false;
    }
    let mut tpr = s.threads_per_row.clamp(1, MAX_THREADS);
    tpr = if tpr <= 32 { tpr.next_power_of_two() } else { tpr.next_multiple_of(32).min(MAX_THREADS) };
    s.threads_per_row = tpr;
    while s.chunks_per_thread(k).is_none() && s.threads_per_row < MAX_THREADS {
        s.threads_per_row = (s.threads_per_row * 2).min(MAX_THREADS);
    }
    s.rows_per_block = s.rows_per_block.clamp(1, MAX_THREADS / s.threads_per_row);
    // Block sizes stay whole warps (the reductions assume it); 512 / tpr is a multiple.
    if s.threads_per_row < 32 {
        s.rows_per_block = s.rows_per_block.next_multiple_of(32 / s.threads_per_row);
    }
    s.blocks_per_sm = s.blocks_per_sm.clamp(1, 32);
    s
}

/// Kernel name for a shape: dtype (0 bf16, 1 f16), whether the input is RMS-normed, and
/// the epilogue (0 plain, 1 residual add, 2 SwiGLU).
pub fn kernel_name(dt: u32, s: &GemvShape, chunks_per_thread: u32, norm: bool, mode: u32) -> String {
    format!("gemv_{dt}_{}_{chunks_per_thread}_{}_{mode}", s.vec, norm as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses() {
        let t: Result<GemvTable, _> = serde_json::from_str(include_str!("gemv_table.json"));
        assert!(t.is_ok(), "{t:?}");
    }

    #[test]
    fn shapes_are_launchable() {
        for k in [1, 7, 8, 64, 100, 1024, 2560, 4000, 9728, 32768] {
            for n in [1, 5, 1024, 6144, 151936] {
                let s = GemvTable::default().shape(n, k);
                assert!(s.threads_per_row.is_power_of_two() || s.threads_per_row % 32 == 0);
                assert!(s.threads_per_row * s.rows_per_block <= MAX_THREADS);
                assert_eq!((s.threads_per_row * s.rows_per_block) % 32, 0);
                assert!(s.vec == 8 || s.vec == 1);
                let c = s.chunks_per_thread(k).expect("row covered");
                assert!(c as usize * s.threads_per_row as usize * s.vec as usize >= k);
            }
        }
        // A table entry whose rows are too wide for its threads gets more threads.
        let odd = GemvShape { rows_per_block: 8, threads_per_row: 32, vec: 8, blocks_per_sm: 4, streamed: false };
        let table = GemvTable { entries: vec![(2560, 9728, odd)], ..Default::default() };
        let s = table.shape(2560, 9728);
        assert!(s.chunks_per_thread(9728).is_some() && s.threads_per_row * s.rows_per_block <= MAX_THREADS);
        // Long rows go to the streamed kernel where the device runs it, never elsewhere.
        let hopper = GemvTable { streamed: true, ..Default::default() };
        assert!(hopper.shape(2560, 9728).streamed && hopper.shape(2560, 9728).blocks_per_sm == 2);
        assert!(hopper.shape(2560, 4096).streamed && !hopper.shape(6144, 2560).streamed);
        assert!(!hopper.shape(10, 4100).streamed, "rows of whole 16-byte chunks only");
        assert!(!GemvTable::default().shape(2560, 9728).streamed);
        // The built-in table's streamed entries only where the device streams.
        let mut builtin = GemvTable::load("");
        for (f, n, k, m, q) in builtin.quant.clone() {
            assert_eq!(builtin.quant_shape(&f, n, k, m).is_some(), !q.streamed, "{f} {n}x{k}");
            builtin.streamed = true;
            assert_eq!(builtin.quant_shape(&f, n, k, m), Some(q), "{f} {n}x{k}");
            assert_eq!(builtin.quant_shape(&f, n, k, (m + 1) % 3), None, "{f} {n}x{k}: another epilogue");
            assert!(crate::quant::DType::from_name(&f).is_some(), "{f}");
            builtin.streamed = false;
        }
        assert!(builtin.entries.iter().any(|e| e.2.streamed), "the test needs a streamed entry");
        for (n, k, s) in builtin.entries.clone() {
            assert!(!builtin.shape(n, k).streamed, "{n}x{k} without streaming");
            builtin.streamed = true;
            assert_eq!(builtin.shape(n, k), sanitize(s, k), "{n}x{k}");
            builtin.streamed = false;
        }
        // A device's own section comes first on that device only; its shapes are launchable.
        let h100 = "NVIDIA H100 80GB HBM3";
        let general = GemvTable { streamed: true, ..GemvTable::load("") };
        let own = GemvTable { streamed: true, ..GemvTable::load(h100) };
        let sections: Vec<DeviceTable> = serde_json::from_str::<GemvTable>(include_str!("gemv_table.json")).unwrap().devices;
        let d = sections.iter().find(|d| d.gpu == h100).expect("an H100 section");
        assert!(!d.entries.is_empty() && !d.quant.is_empty());
        for (n, k, s) in &d.entries {
            assert_eq!(own.shape(*n, *k), sanitize(*s, *k), "{n}x{k}");
            assert_eq!(general.shape(*n, *k), GemvTable { streamed: true, ..GemvTable::load("NVIDIA H200") }.shape(*n, *k));
        }
        for (f, n, k, m, q) in &d.quant {
            assert_eq!(own.quant_shape(f, *n, *k, *m), Some(*q), "{f} {n}x{k}");
        }
        assert_eq!(own.entries.len(), general.entries.len() + d.entries.len());
        // Past what the kernels cover: no chunk count, so the launch reports an error.
        let s = GemvTable::default().shape(4, 4097);
        assert_eq!(s.vec, 1);
        assert!(s.chunks_per_thread(4097).is_none());
    }
}
