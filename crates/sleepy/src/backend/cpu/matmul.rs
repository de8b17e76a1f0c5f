//! Matrix product of f32 activations with a stored weight matrix, threaded over runs of
//! weight rows: each run of rows is read once for all tokens, through the quant module's
//! row kernel (activations converted once per token into the weight format's companion).

use super::{check, par_map, CpuAct, CpuWeight, Numerics};
use crate::error::Result;
use crate::quant::{self, DType, PreparedActs};

/// Weight bytes (times rows) below which a product is not split over threads.
const PARALLEL_MIN_BYTES: usize = 1 << 19;

/// out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]).
#[allow(clippy::too_many_arguments)]
pub fn matmul(pool: &rayon::ThreadPool, threads: usize, numerics: Numerics, q4k_gemm_groups: bool, x: &CpuAct, w: &CpuWeight, bias: Option<&CpuAct>, out: &mut CpuAct) -> Result<()> {
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
            // Exact numerics dot float weights with the f32 activations themselves.
            let companion = if numerics == Numerics::Exact && !p.dtype.is_quantized() { DType::F32 } else { p.dtype };
            let acts = (0..t_rows).map(|t| quant::prepare_acts(companion, x.row(t)).with_q4k_gemm_order(t < gemm_rows)).collect();
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
    // Small products run on the caller's thread: waking the pool costs more than they do.
    let weight_bytes: usize = w.parts.iter().map(|p| p.bytes.len()).sum::<usize>() * t_rows;
    let threads = if weight_bytes < PARALLEL_MIN_BYTES { 1 } else { threads };
    let results: Vec<Vec<f32>> = par_map(pool, threads, runs.len(), |i| {
        let (_, len, dtype, bytes) = runs[i];
        let acts = prepared.iter().find(|(d, _)| *d == dtype).map_or(&[][..], |(_, a)| &a[..]);
        let mut res = vec![0f32; len * t_rows];
        for (a, chunk) in acts.iter().zip(res.chunks_exact_mut(len)) {
            quant::dot_prepared_rows(dtype, bytes, a, chunk);
        }
        res
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::WeightPart;
    use crate::loader::Bytes;
    use rand::Rng;

    fn weight(r: &mut impl Rng, k: usize, parts: &[(DType, usize)]) -> CpuWeight {
        let parts = parts
            .iter()
            .map(|&(dtype, rows)| {
                let rb = dtype.row_bytes(k).unwrap();
                let mut bytes = vec![0u8; rb * rows];
                for row in bytes.chunks_exact_mut(rb) {
                    let v: Vec<f32> = (0..k).map(|_| r.random::<f32>() - 0.5).collect();
                    quant::quantize_row(dtype, &v, row);
                }
                WeightPart { dtype, rows, bytes: Bytes::from_vec(bytes) }
            })
            .collect();
        CpuWeight { k, parts }
    }

    /// A mixed-format matrix with bias: every output within quantized-activation error of the
    /// plain reference dot, and the same bits on 1 and 2 threads.
    #[test]
    fn matmul_matches_reference_and_is_thread_independent() {
        let mut r = rand::rng();
        let k = 512;
        let w = weight(&mut r, k, &[(DType::Q5_0, 40), (DType::Q8_0, 300), (DType::Q4K, 24), (DType::Q6K, 9), (DType::F16, 5)]);
        let n = w.rows();
        let t_rows = 6;
        let x = CpuAct { rows: t_rows, cols: k, data: (0..t_rows * k).map(|_| r.random::<f32>() * 2.0 - 1.0).collect() };
        let bias = CpuAct { rows: 1, cols: n, data: (0..n).map(|_| r.random::<f32>()).collect() };
        let mut outs = Vec::new();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = CpuAct { rows: t_rows, cols: n, data: vec![0.0; t_rows * n] };
            matmul(&pool, threads, Numerics::LlamaCpp, false, &x, &w, Some(&bias), &mut out).unwrap();
            outs.push(out.data);
        }
        assert!(outs[0].iter().zip(&outs[1]).all(|(a, b)| a.to_bits() == b.to_bits()));
        for t in 0..t_rows {
            for row in 0..n {
                let (dtype, bytes) = w.row(row);
                let want = quant::dot_f32(dtype, bytes, x.row(t)) + bias.data[row];
                let got = outs[0][t * n + row];
                // Bound: the error of quantizing the activations, relative to |w| |x|.
                let mut wv = vec![0f32; k];
                quant::dequantize_row(dtype, bytes, &mut wv);
                let norms = wv.iter().map(|v| v * v).sum::<f32>().sqrt() * x.row(t).iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((got - want).abs() <= 5e-3 * norms, "token {t} row {row}: {got} vs {want} (|w||x| {norms})");
            }
        }
    }
}
