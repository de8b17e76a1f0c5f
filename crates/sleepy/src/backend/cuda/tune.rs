//! Measuring GEMV launch shapes on the device: each candidate runs as a replayed graph of
//! back-to-back launches over weight copies larger than L2, so the time is DRAM time.

use super::driver::{self, DevBuf};
use super::gemv::{GemvShape, GemvTable};
use super::CudaBackend;
use crate::error::Result;

/// One GEMV problem: `units` row units of length `k` (SwiGLU reads two rows per unit).
#[derive(Clone, Copy, Debug)]
pub struct GemvProblem {
    pub units: usize,
    pub k: usize,
    pub norm: bool,
    pub mode: u32,
}

impl GemvProblem {
    pub fn weight_bytes(&self) -> usize {
        self.units * if self.mode == 2 { 2 } else { 1 } * self.k * 2
    }
}

/// Candidate shapes for a row length: threads per row x rows per block x loads in flight
/// x blocks per SM, whole warps and at most 512 threads a block.
pub fn candidates(k: usize) -> Vec<GemvShape> {
    let mut out = Vec::new();
    for tpr in [8u32, 16, 32, 64, 128] {
        for rpb in [1u32, 2, 4, 8, 16] {
            for unroll in [2u32, 4, 8] {
                for blocks_per_sm in [2u32, 4, 8] {
                    let threads = tpr * rpb;
                    if threads % 32 != 0 || threads > 512 || (k / 8) < tpr as usize {
                        continue;
                    }
                    out.push(GemvShape { rows_per_block: rpb, threads_per_row: tpr, vec: if k % 8 == 0 { 8 } else { 1 }, unroll, blocks_per_sm });
                }
            }
        }
    }
    out
}

impl CudaBackend {
    /// Microseconds per GEMV of `p` for each shape (bf16 weights of random values).
    pub fn time_gemv(&self, p: GemvProblem, shapes: &[GemvShape]) -> Result<Vec<f64>> {
        self.synchronize()?;
        let one = p.weight_bytes();
        let copies = (256usize << 20).div_ceil(one).clamp(2, 64);
        let w = DevBuf::alloc(one * copies)?;
        // Small non-zero bf16 values (zeros would not measure real traffic).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let host: Vec<u16> = (0..one / 2)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let v = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                (v.to_bits() >> 16) as u16
            })
            .collect();
        for c in 0..copies {
            driver::upload(w.ptr + (c * one) as u64, &host, self.stream.0)?;
        }
        let x = self.upload_vec_raw(&(0..p.k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect::<Vec<_>>())?;
        let g = self.upload_vec_raw(&vec![1.0f32; p.k])?;
        let y = DevBuf::zeroed(p.units * 4, self.stream.0)?;
        let per_graph = copies.max(16);
        let mut out = Vec::new();
        for s in shapes {
            self.begin(1)?;
            for i in 0..per_graph {
                let wp = w.ptr + ((i % copies) * one) as u64;
                let norm = p.norm.then_some((g.ptr, 1e-6f32));
                self.gemv_shaped(wp, 0, p.units, p.k, s, x.ptr, 1, norm, 0, p.mode, y.ptr, p.units)?;
            }
            self.end()?; // capture + first replay (warm-up)
            let mut times = Vec::new();
            for _ in 0..5 {
                driver::sync(self.stream.0)?;
                let t = std::time::Instant::now();
                self.begin(1)?;
                for i in 0..per_graph {
                    let wp = w.ptr + ((i % copies) * one) as u64;
                    let norm = p.norm.then_some((g.ptr, 1e-6f32));
                    self.gemv_shaped(wp, 0, p.units, p.k, s, x.ptr, 1, norm, 0, p.mode, y.ptr, p.units)?;
                }
                self.end()?;
                driver::sync(self.stream.0)?;
                times.push(t.elapsed().as_secs_f64() * 1e6 / per_graph as f64);
            }
            times.sort_by(f64::total_cmp);
            out.push(times[times.len() / 2]);
            self.state()?.graphs.clear();
        }
        Ok(out)
    }

    fn upload_vec_raw(&self, v: &[f32]) -> Result<DevBuf> {
        let b = DevBuf::alloc(v.len() * 4)?;
        driver::upload(b.ptr, v, self.stream.0)?;
        Ok(b)
    }

    /// Sweep the candidate shapes for each problem; returns (problem, current shape and its
    /// time, best shape and its time) and saves the best shapes as the table the backend
    /// loads (`$SLEEPY_HOME/tune/gemv.json`).
    pub fn sweep_gemv(&self, problems: &[GemvProblem], save: bool) -> Result<Vec<(GemvProblem, GemvShape, f64, GemvShape, f64)>> {
        let mut rows = Vec::new();
        let mut table = GemvTable::load();
        for &p in problems {
            let def = self.table.shape(p.units, p.k);
            let mut shapes = vec![def];
            shapes.extend(candidates(p.k).into_iter().filter(|s| *s != def));
            let times = self.time_gemv(p, &shapes)?;
            let (bi, bt) = times.iter().enumerate().fold((0, f64::MAX), |a, (i, &t)| if t < a.1 { (i, t) } else { a });
            rows.push((p, def, times[0], shapes[bi], bt));
            table.entries.retain(|(n, k, _)| !(*n == p.units && *k == p.k));
            table.entries.push((p.units, p.k, shapes[bi]));
        }
        if save {
            let dir = crate::fetch::cache_dir().join("tune");
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(s) = serde_json::to_string_pretty(&table) {
                let _ = std::fs::write(dir.join("gemv.json"), s);
            }
        }
        Ok(rows)
    }
}
