//! Causal grouped-query attention over the f16 KV cache, threaded over (token, head).
//!
//! The arithmetic is llama.cpp's CPU flash attention (ggml_flash_attn_ext, one query row at
//! a time), which is what it runs by default: Q rounded to f16, each score an f16 dot scaled
//! in f32, an online softmax over positions in order, and the weighted sum of V kept in f16
//! (rescaled in place when a new maximum appears), divided by the running sum at the end.

use super::{check, CpuAct, CpuKv};
use crate::backend::AttnShape;
use crate::error::{Error, Result};
use crate::quant;
use half::f16;
use rayon::prelude::*;

pub fn attention(pool: &rayon::ThreadPool, qkv: &CpuAct, kv: &mut CpuKv, layer: usize, pos0: usize, s: AttnShape, out: &mut CpuAct) -> Result<()> {
    let d = s.head_dim;
    let q_dim = s.n_heads * d;
    let kv_dim = s.n_kv_heads * d;
    check(qkv.cols == q_dim + 2 * kv_dim && out.cols == q_dim && out.rows == qkv.rows && kv.kv_dim == kv_dim, "attention")?;
    check(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && layer < kv.k.len(), "attention heads")?;
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
        quant::f32_to_f16(&row[q_dim..q_dim + kv_dim], &mut kv.k[layer][at..at + kv_dim]);
        quant::f32_to_f16(&row[q_dim + kv_dim..], &mut kv.v[layer][at..at + kv_dim]);
    }
    let (k_cache, v_cache) = (&kv.k[layer], &kv.v[layer]);
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let heads: Vec<Vec<f32>> = pool.install(|| {
        (0..t_rows * s.n_heads)
            .into_par_iter()
            .map(|job| {
                let (t, h) = (job / s.n_heads, job % s.n_heads);
                let mut q = vec![f16::ZERO; d];
                quant::f32_to_f16(&qkv.row(t)[h * d..(h + 1) * d], &mut q);
                let head = (h / group) * d..(h / group + 1) * d;
                let rows = (0..=pos0 + t).map(|p| (&k_cache[p * kv_dim..][head.clone()], &v_cache[p * kv_dim..][head.clone()]));
                online_softmax_f16(&q, rows, scale)
            })
            .collect()
    });
    for (job, acc) in heads.into_iter().enumerate() {
        let (t, h) = (job / s.n_heads, job % s.n_heads);
        out.data[t * q_dim + h * d..t * q_dim + (h + 1) * d].copy_from_slice(&acc);
    }
    Ok(())
}

/// One query head over (K row, V row) pairs in position order; returns softmax(q.K * scale) V.
fn online_softmax_f16<'a>(q: &[f16], rows: impl Iterator<Item = (&'a [f16], &'a [f16])>, scale: f32) -> Vec<f32> {
    let mut acc = vec![f16::ZERO; q.len()];
    let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
    for (k, v) in rows {
        let score = quant::dot_f16_halves(k, q) * scale;
        let (mut ms, mut vs) = (1f32, 1f32);
        if score > max {
            // A new maximum: earlier terms shrink by exp(old - new); this one weighs 1.
            ms = (max - score).exp();
            max = score;
            quant::f16_scale(&mut acc, ms);
        } else {
            vs = (score - max).exp();
        }
        quant::f16_axpy(&mut acc, v, vs);
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    acc.iter().map(|a| a.to_f32() * inv).collect()
}
