//! Causal grouped-query attention over the f16 KV cache, threaded over (token, head).

use super::{check, CpuAct, CpuKv};
use crate::backend::AttnShape;
use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

pub fn attention(pool: &rayon::ThreadPool, qkv: &CpuAct, kv: &mut CpuKv, layer: usize, pos0: usize, s: AttnShape, out: &mut CpuAct) -> Result<()> {
    let d = s.head_dim;
    let q_dim = s.n_heads * d;
    let kv_dim = s.n_kv_heads * d;
    check(qkv.cols == q_dim + 2 * kv_dim && out.cols == q_dim && out.rows == qkv.rows && kv.kv_dim == kv_dim, "attention")?;
    let t_rows = qkv.rows;
    if pos0 + t_rows > kv.max_seq {
        return Err(Error::Other(format!(
            "sequence of {} tokens does not fit the context of {}",
            pos0 + t_rows,
            kv.max_seq
        )));
    }
    // Store this step's K and V rows.
    for t in 0..t_rows {
        let row = qkv.row(t);
        let at = (pos0 + t) * kv_dim;
        for i in 0..kv_dim {
            kv.k[layer][at + i] = f16::from_f32(row[q_dim + i]);
            kv.v[layer][at + i] = f16::from_f32(row[q_dim + kv_dim + i]);
        }
    }
    let (k_cache, v_cache) = (&kv.k[layer], &kv.v[layer]);
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let heads: Vec<Vec<f32>> = pool.install(|| {
        (0..t_rows * s.n_heads)
            .into_par_iter()
            .map(|job| {
                let (t, h) = (job / s.n_heads, job % s.n_heads);
                let q = &qkv.row(t)[h * d..(h + 1) * d];
                let kvh = h / group;
                let len = pos0 + t + 1;
                let mut scores: Vec<f32> = (0..len)
                    .map(|p| {
                        let k = &k_cache[p * kv_dim + kvh * d..p * kv_dim + (kvh + 1) * d];
                        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let mut acc = vec![0.0f32; d];
                for (p, sc) in scores.iter().enumerate() {
                    let w = sc / sum;
                    let v = &v_cache[p * kv_dim + kvh * d..p * kv_dim + (kvh + 1) * d];
                    for (a, b) in acc.iter_mut().zip(v) {
                        *a += w * b.to_f32();
                    }
                }
                acc
            })
            .collect()
    });
    for (job, acc) in heads.into_iter().enumerate() {
        let (t, h) = (job / s.n_heads, job % s.n_heads);
        out.data[t * q_dim + h * d..t * q_dim + (h + 1) * d].copy_from_slice(&acc);
    }
    Ok(())
}
