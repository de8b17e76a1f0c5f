//! Causal grouped-query attention over the f16 KV cache, threaded over (token, head).
//!
//! The arithmetic is llama.cpp's CPU flash attention (ggml_flash_attn_ext, one query row at
//! a time), which is what it runs by default: Q rounded to f16, each score an f16 dot scaled
//! in f32, an online softmax over positions in order, and the weighted sum of V kept in f16
//! (rescaled in place when a new maximum appears), divided by the running sum at the end.
//! With exact numerics the cache, Q and the weighted sum stay f32.

use super::{check, par_map, CpuAct, CpuKv, KvRows};
use crate::backend::AttnShape;
use crate::error::{Error, Result};
use crate::quant;
use half::f16;

/// Multiply-adds (heads x positions x head size) below which attention is not threaded.
const PARALLEL_MIN_WORK: usize = 1 << 20;

pub fn attention(pool: &rayon::ThreadPool, threads: usize, qkv: &CpuAct, kv: &mut CpuKv, layer: usize, pos0: usize, s: AttnShape, out: &mut CpuAct) -> Result<()> {
    let d = s.head_dim;
    let q_dim = s.n_heads * d;
    let kv_dim = s.n_kv_heads * d;
    check(qkv.cols == q_dim + 2 * kv_dim && out.cols == q_dim && out.rows == qkv.rows && kv.kv_dim == kv_dim, "attention")?;
    let layers = match &kv.rows {
        KvRows::F16 { k, .. } => k.len(),
        KvRows::F32 { k, .. } => k.len(),
    };
    check(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && layer < layers, "attention heads")?;
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
        let (k_new, v_new) = (&row[q_dim..q_dim + kv_dim], &row[q_dim + kv_dim..]);
        match &mut kv.rows {
            KvRows::F16 { k, v } => {
                quant::f32_to_f16(k_new, &mut k[layer][at..at + kv_dim]);
                quant::f32_to_f16(v_new, &mut v[layer][at..at + kv_dim]);
            }
            KvRows::F32 { k, v } => {
                k[layer][at..at + kv_dim].copy_from_slice(k_new);
                v[layer][at..at + kv_dim].copy_from_slice(v_new);
            }
        }
    }
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    // Short attentions run on the caller's thread: waking the pool costs more than they do.
    let work = t_rows * s.n_heads * (pos0 + t_rows) * d;
    let threads = if work < PARALLEL_MIN_WORK { 1 } else { threads };
    let rows = &kv.rows;
    let heads: Vec<Vec<f32>> = par_map(pool, threads, t_rows * s.n_heads, |job| {
        let (t, h) = (job / s.n_heads, job % s.n_heads);
        let q32 = &qkv.row(t)[h * d..(h + 1) * d];
        let head = (h / group) * d..(h / group + 1) * d;
        let span = 0..=pos0 + t;
        match rows {
            KvRows::F16 { k, v } => {
                let (k_cache, v_cache) = (&k[layer], &v[layer]);
                let mut q = vec![f16::ZERO; d];
                quant::f32_to_f16(q32, &mut q);
                let rows = span.map(|p| (&k_cache[p * kv_dim..][head.clone()], &v_cache[p * kv_dim..][head.clone()]));
                online_softmax_f16(&q, rows, scale)
            }
            KvRows::F32 { k, v } => {
                let (k_cache, v_cache) = (&k[layer], &v[layer]);
                let rows = span.map(|p| (&k_cache[p * kv_dim..][head.clone()], &v_cache[p * kv_dim..][head.clone()]));
                softmax_f32(q32, rows, scale)
            }
        }
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

/// Exact numerics: scores and the weighted sum of V in f32, the softmax sum in f64.
fn softmax_f32<'a>(q: &[f32], rows: impl Iterator<Item = (&'a [f32], &'a [f32])> + Clone, scale: f32) -> Vec<f32> {
    let score = |k: &[f32]| k.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() * scale;
    let max = rows.clone().map(|(k, _)| score(k)).fold(f32::NEG_INFINITY, f32::max);
    let mut acc = vec![0f32; q.len()];
    let mut sum = 0f64;
    for (k, v) in rows {
        let w = (score(k) - max).exp();
        sum += w as f64;
        acc.iter_mut().zip(v).for_each(|(a, &x)| *a += w * x);
    }
    let inv = if sum == 0.0 { 0.0 } else { (1.0 / sum) as f32 };
    acc.iter().map(|a| a * inv).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// The f16 flash-attention recipe stays within f16 rounding of a plain f64 softmax.
    #[test]
    fn online_softmax_matches_plain_softmax() {
        let mut r = rand::rng();
        for len in [1usize, 2, 7, 40, 300] {
            let d = 64;
            let h = |r: &mut rand::rngs::ThreadRng| -> Vec<f16> { (0..d).map(|_| f16::from_f32(r.random::<f32>() * 4.0 - 2.0)).collect() };
            let q = h(&mut r);
            let ks: Vec<Vec<f16>> = (0..len).map(|_| h(&mut r)).collect();
            let vs: Vec<Vec<f16>> = (0..len).map(|_| h(&mut r)).collect();
            let scale = 0.125;
            let got = online_softmax_f16(&q, ks.iter().zip(&vs).map(|(k, v)| (&k[..], &v[..])), scale);
            let scores: Vec<f64> = ks.iter().map(|k| k.iter().zip(&q).map(|(a, b)| a.to_f64() * b.to_f64()).sum::<f64>() * scale as f64).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for i in 0..d {
                let want: f64 = w.iter().zip(&vs).map(|(wi, v)| wi * v[i].to_f64()).sum::<f64>() / total;
                assert!((got[i] as f64 - want).abs() <= 4e-3 * (1.0 + want.abs()), "len {len} dim {i}: {} vs {want}", got[i]);
            }
        }
    }

    /// Exact numerics stay within f32 rounding of a plain f64 softmax.
    #[test]
    fn exact_softmax_matches_plain_softmax() {
        let mut r = rand::rng();
        for len in [1usize, 3, 64, 500] {
            let d = 128;
            let h = |r: &mut rand::rngs::ThreadRng| -> Vec<f32> { (0..d).map(|_| r.random::<f32>() * 4.0 - 2.0).collect() };
            let q = h(&mut r);
            let ks: Vec<Vec<f32>> = (0..len).map(|_| h(&mut r)).collect();
            let vs: Vec<Vec<f32>> = (0..len).map(|_| h(&mut r)).collect();
            let scale = 0.088;
            let got = softmax_f32(&q, ks.iter().zip(&vs).map(|(k, v)| (&k[..], &v[..])), scale);
            let scores: Vec<f64> = ks.iter().map(|k| k.iter().zip(&q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for i in 0..d {
                let want: f64 = w.iter().zip(&vs).map(|(wi, v)| wi * v[i] as f64).sum::<f64>() / total;
                assert!((got[i] as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()), "len {len} dim {i}: {} vs {want}", got[i]);
            }
        }
    }
}
