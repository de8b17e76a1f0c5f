//! Matrix product of f32 activations with a stored weight matrix, threaded over runs of
//! weight rows: each run of rows is read once for all tokens, through the quant module's
//! row kernel (activations converted once per token into the weight format's companion).

use super::{check, CpuAct, CpuWeight};
use crate::error::Result;
use crate::quant::{self, DType, PreparedActs};
use rayon::prelude::*;

/// out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]).
pub fn matmul(pool: &rayon::ThreadPool, threads: usize, q4k_gemm_groups: bool, x: &CpuAct, w: &CpuWeight, bias: Option<&CpuAct>, out: &mut CpuAct) -> Result<()> {
    check(x.cols == w.k && out.rows == x.rows && out.cols == w.rows(), "matmul")?;
    if let Some(b) = bias {
        check(b.cols == out.cols, "matmul bias")?;
    }
    let t_rows = x.rows;
    let n = out.cols;
    // Activations in each part's companion format, prepared once per token row. llama.cpp
    // runs Q4_K matrices (repacked) through a 4-row GEMM for the rows of a batch that fill
    // groups of 4 and a GEMV for the rest, which sum floats in different orders.
    let gemm_rows = if q4k_gemm_groups && t_rows > 3 { t_rows - t_rows % 4 } else { 0 };
    let mut prepared: Vec<(DType, Vec<PreparedActs>)> = Vec::new();
    for p in &w.parts {
        if !prepared.iter().any(|(d, _)| *d == p.dtype) {
            let acts = (0..t_rows).map(|t| quant::prepare_acts(p.dtype, x.row(t)).with_q4k_gemm_order(t < gemm_rows)).collect();
            prepared.push((p.dtype, acts));
        }
    }
    // Runs of rows within each part: (first global row, rows, format, bytes of the run).
    let run = (n / (threads.max(1) * 4)).clamp(16, 256);
    let mut runs = Vec::new();
    let mut first = 0;
    for p in &w.parts {
        let rb = p.dtype.row_bytes(w.k).unwrap_or(0);
        let bytes = p.bytes.as_slice();
        for start in (0..p.rows).step_by(run) {
            let len = run.min(p.rows - start);
            runs.push((first + start, len, p.dtype, &bytes[start * rb..(start + len) * rb]));
        }
        first += p.rows;
    }
    // Each run's results, token-major: res[t * len + i] for row first + i.
    let results: Vec<Vec<f32>> = pool.install(|| {
        runs.par_iter()
            .map(|&(_, len, dtype, bytes)| {
                let acts = prepared.iter().find(|(d, _)| *d == dtype).map_or(&[][..], |(_, a)| &a[..]);
                let mut res = vec![0f32; len * t_rows];
                for (a, chunk) in acts.iter().zip(res.chunks_exact_mut(len)) {
                    quant::dot_prepared_rows(dtype, bytes, a, chunk);
                }
                res
            })
            .collect()
    });
    for (&(first, len, _, _), res) in runs.iter().zip(&results) {
        for t in 0..t_rows {
            let dst = &mut out.data[t * n + first..t * n + first + len];
            dst.copy_from_slice(&res[t * len..(t + 1) * len]);
            if let Some(b) = bias {
                dst.iter_mut().zip(&b.data[first..first + len]).for_each(|(o, &bv)| *o += bv);
            }
        }
    }
    Ok(())
}
