//! Measuring quantized GEMV launch shapes on the device, as `cuda::tune` does for bf16: each
//! candidate runs as a replayed graph of back-to-back launches over weight copies larger than
//! L2, so the time is DRAM time. The best shapes go to `$SLEEPY_HOME/tune/gemv_quant.json`,
//! which later processes load (`QuantTable::load`).

use super::layout::{repack, QFmt};
use super::{sanitize, QuantShape, QuantTable, MAX_THREADS};
use crate::backend::cuda::driver::{self, DevBuf};
use crate::backend::cuda::tune::GemvProblem;
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::quant;

/// Bytes of the problem's weights in `fmt`.
pub fn weight_bytes(fmt: QFmt, p: &GemvProblem) -> usize {
    p.units * if p.mode == 2 { 2 } else { 1 } * fmt.dtype().row_bytes(p.k).unwrap_or(0)
}

/// Candidate shapes: threads per row x rows per block x units in flight x blocks per SM,
/// whole warps, at most MAX_THREADS a block, no thread without a unit.
pub fn candidates(fmt: QFmt, k: usize, mode: u32) -> Vec<QuantShape> {
    let units = fmt.units_per_row(k);
    let mut out = Vec::new();
    for tpr in [4u32, 8, 16, 32, 64, 128] {
        for rpb in [1u32, 2, 4, 8, 16, 32] {
            for unroll in [2u32, 4, 8] {
                for blocks_per_sm in [2u32, 4, 8] {
                    let threads = tpr * rpb;
                    if threads % 32 != 0 || threads > MAX_THREADS || units < tpr as usize || (mode == 2 && unroll == 8) {
                        continue;
                    }
                    out.push(QuantShape { rows_per_block: rpb, threads_per_row: tpr, unroll, blocks_per_sm });
                }
            }
        }
    }
    out
}

impl CudaBackend {
    /// Microseconds per GEMV of `p` in `fmt` for each shape (weights quantized from random
    /// values: a few rows, repeated).
    pub fn time_gemv_quant(&self, fmt: QFmt, p: GemvProblem, shapes: &[QuantShape]) -> Result<Vec<f64>> {
        self.synchronize()?;
        let dtype = fmt.dtype();
        let rows = p.units * if p.mode == 2 { 2 } else { 1 };
        let rb = dtype.row_bytes(p.k).unwrap_or(0);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut sample = vec![0u8; 64 * rb];
        for row in sample.chunks_exact_mut(rb.max(1)) {
            let vals: Vec<f32> = (0..p.k)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                })
                .collect();
            quant::quantize_row(dtype, &vals, row);
        }
        let blocks: Vec<u8> = (0..rows).flat_map(|r| sample[(r % 64) * rb..(r % 64 + 1) * rb].iter().copied()).collect();
        let (image, off) = repack("sweep", fmt, p.k, rows, &blocks)?;
        let copies = (256usize << 20).div_ceil(image.len()).clamp(2, 64);
        let bufs = (0..copies).map(|_| DevBuf::alloc(image.len())).collect::<Result<Vec<_>>>()?;
        for b in &bufs {
            driver::upload(b.ptr, &image, self.stream.0)?;
        }
        let regions: Vec<[u64; 4]> = bufs.iter().map(|b| off.map(|o| b.ptr + o as u64)).collect();
        let x = DevBuf::alloc(p.k * 4)?;
        driver::upload(x.ptr, &(0..p.k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect::<Vec<_>>(), self.stream.0)?;
        let g = DevBuf::alloc(p.k * 4)?;
        driver::upload(g.ptr, &vec![1.0f32; p.k], self.stream.0)?;
        let y = DevBuf::zeroed(p.units * 4, self.stream.0)?;
        let per_graph = copies.max(16);
        let norm = p.norm.then_some((g.ptr, 1e-6f32));
        let mut out = Vec::new();
        for s in shapes {
            let mut times = Vec::new();
            // The first round captures the graph and warms up; five timed replays follow.
            for round in 0..6 {
                driver::sync(self.stream.0)?;
                let t = std::time::Instant::now();
                self.begin(1)?;
                for i in 0..per_graph {
                    self.gemvq_shaped(fmt, &regions[i % copies], p.units, p.k, s, x.ptr, 1, norm, 0, p.mode, y.ptr, p.units)?;
                }
                self.end()?;
                driver::sync(self.stream.0)?;
                if round > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1e6 / per_graph as f64);
                }
            }
            times.sort_by(f64::total_cmp);
            out.push(times[times.len() / 2]);
            self.state()?.graphs.clear();
        }
        Ok(out)
    }

    /// Sweep the candidate shapes of each problem in `fmt`; returns (problem, current shape
    /// and its time, best shape and its time) and saves the best shapes.
    pub fn sweep_gemv_quant(&self, fmt: QFmt, problems: &[GemvProblem], save: bool) -> Result<Vec<(GemvProblem, QuantShape, f64, QuantShape, f64)>> {
        let mut rows = Vec::new();
        let mut table = QuantTable::load();
        let name = fmt.dtype().name();
        for &p in problems {
            let current = super::ops::table().shape(fmt, p.units, p.k, p.mode);
            let mut shapes = vec![current];
            shapes.extend(candidates(fmt, p.k, p.mode).into_iter().map(|s| sanitize(s, p.mode)).filter(|s| *s != current));
            let times = self.time_gemv_quant(fmt, p, &shapes)?;
            let (bi, bt) = times.iter().enumerate().fold((0, f64::MAX), |a, (i, &t)| if t < a.1 { (i, t) } else { a });
            rows.push((p, current, times[0], shapes[bi], bt));
            table.entries.retain(|(f, n, k, _)| !(f == name && *n == p.units && *k == p.k));
            table.entries.push((name.to_string(), p.units, p.k, shapes[bi]));
        }
        if save {
            let dir = crate::fetch::cache_dir().join("tune");
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(s) = serde_json::to_string_pretty(&table) {
                let _ = std::fs::write(dir.join("gemv_quant.json"), s);
            }
        }
        Ok(rows)
    }
}
