//! Quantization of weights into the K-quant formats. Our own search, not GGML's: for each
//! sub-block, try a handful of scales around the plain range-based one, refit scale (and
//! min) by least squares on the chosen integer codes, keep the lowest squared error; then
//! quantize the sub-block scales to the format's 6 or 8 bits against the super-block scale
//! and recompute the codes with the scales as they will be read back.

use super::kquants::{pack_scale_min_k4, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES, QK_K};
use super::legacy::signed_absmax;
use super::write_f16;

/// Candidate scale steps tried around the range-based scale, in tenths of a level.
const SEARCH_STEPS: i32 = 8;
/// The candidates: steps -SEARCH_STEPS ..= SEARCH_STEPS.
const CANDIDATES: usize = 2 * SEARCH_STEPS as usize + 1;

/// Step of candidate c, in tenths of a level.
fn step_tenths(c: usize) -> f32 {
    0.1 * (c as i32 - SEARCH_STEPS) as f32
}

// Both fits take every candidate in one pass over x: each candidate's sums still add the
// values in order, so the result is bit for bit the candidate-at-a-time search's (tested
// against it below), and the candidates' independent chains overlap instead of each waiting
// on its own sums; with AVX2 the candidates go in vector registers. Quantizing 5.1 M random
// weights to Q4_K on one thread of an AMD EPYC (shared, noisy): 6-8 M weights a second
// before, 12-13 in one pass, 40-55 with AVX2.

/// `fn NAME(args) -> R` running BODY(args) compiled for AVX2 where the CPU has it: the
/// candidates then go in vector registers (the same IEEE operations, so the same bits; no
/// fused multiply-adds are formed).
macro_rules! with_avx2 {
    ($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $body:ident) => {
        $(#[$doc])*
        fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            if super::cpu_has_avx2() {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) -> $r {
                    $body($($a),*)
                }
                // SAFETY: the CPU has AVX2.
                return unsafe { avx2($($a),*) };
            }
            $body($($a),*)
        }
    };
}

with_avx2! {
    /// Affine fit of x ~ scale * q - offset with q in 0..=nmax and offset >= 0 (the formats
    /// store a non-negative min that is subtracted). Returns (scale, offset).
    fn fit_affine(x: &[f32], nmax: i32) -> (f32, f32) = fit_affine_body
}

with_avx2! {
    /// Symmetric fit of x ~ scale * q with q in -nmid..nmid-1. Returns the scale (signed, so
    /// that the value of largest magnitude lands on -nmid where that fits best).
    fn fit_symmetric(x: &[f32], nmid: i32) -> f32 = fit_symmetric_body
}

#[inline(always)]
fn fit_affine_body(x: &[f32], nmax: i32) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return (0.0, -lo);
    }
    let nm = nmax as f32;
    let code = |v: f32, offset: f32, inv: f32| ((v + offset) * inv).round().clamp(0.0, nm);
    let error = |scale: f32, offset: f32| -> f32 {
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        x.iter()
            .map(|&v| {
                let e = scale * code(v, offset, inv) - offset - v;
                e * e
            })
            .sum()
    };
    let n = x.len() as f32;
    let iscale: [f32; CANDIDATES] = std::array::from_fn(|c| (nm + step_tenths(c)) / (hi - lo));
    let (mut sq, mut sqq, mut sqx, mut sx) = ([0f32; CANDIDATES], [0f32; CANDIDATES], [0f32; CANDIDATES], 0f32);
    for &v in x {
        sx += v;
        for c in 0..CANDIDATES {
            let q = ((v - lo) * iscale[c]).round().clamp(0.0, nm);
            sq[c] += q;
            sqq[c] += q * q;
            sqx[c] += q * v;
        }
    }
    // Each candidate's least-squares refit (None: it has none).
    let fits: [Option<(f32, f32)>; CANDIDATES] = std::array::from_fn(|c| {
        let det = n * sqq[c] - sq[c] * sq[c];
        if det <= 0.0 {
            return None;
        }
        let mut scale = (n * sqx[c] - sq[c] * sx) / det;
        let mut offset = (scale * sq[c] - sx) / n;
        if offset < 0.0 {
            // A positive minimum cannot be stored: fit the scale alone with no offset.
            offset = 0.0;
            scale = if sqq[c] > 0.0 { sqx[c] / sqq[c] } else { 0.0 };
        }
        (scale > 0.0).then_some((scale, offset))
    });
    // Their squared errors, in one pass too (a candidate without a fit is measured at a
    // harmless stand-in and not looked at).
    let fit = |c: usize| fits[c].unwrap_or((1.0, 0.0));
    let inv: [f32; CANDIDATES] = std::array::from_fn(|c| 1.0 / fit(c).0);
    let mut err = [0f32; CANDIDATES];
    for &v in x {
        for c in 0..CANDIDATES {
            let (scale, offset) = fit(c);
            let e = scale * code(v, offset, inv[c]) - offset - v;
            err[c] += e * e;
        }
    }
    let mut best = ((hi - lo) / nm, -lo);
    let mut best_err = error(best.0, best.1);
    for c in 0..CANDIDATES {
        if let Some(f) = fits[c] {
            if err[c] < best_err {
                best = f;
                best_err = err[c];
            }
        }
    }
    best
}

#[inline(always)]
fn fit_symmetric_body(x: &[f32], nmid: i32) -> f32 {
    let max = signed_absmax(x);
    if max == 0.0 {
        return 0.0;
    }
    let (qlo, qhi) = (-nmid as f32, (nmid - 1) as f32);
    let error = |scale: f32| -> f32 {
        x.iter()
            .map(|&v| {
                let e = scale * (v / scale).round().clamp(qlo, qhi) - v;
                e * e
            })
            .sum()
    };
    let iscale: [f32; CANDIDATES] = std::array::from_fn(|c| -(nmid as f32 + step_tenths(c)) / max);
    let (mut sqq, mut sqx) = ([0f32; CANDIDATES], [0f32; CANDIDATES]);
    for &v in x {
        for c in 0..CANDIDATES {
            let q = (v * iscale[c]).round().clamp(qlo, qhi);
            sqq[c] += q * q;
            sqx[c] += q * v;
        }
    }
    let fits: [Option<f32>; CANDIDATES] = std::array::from_fn(|c| {
        if sqq[c] == 0.0 {
            return None;
        }
        let scale = sqx[c] / sqq[c];
        (scale != 0.0).then_some(scale)
    });
    let scales: [f32; CANDIDATES] = std::array::from_fn(|c| fits[c].unwrap_or(1.0));
    let mut err = [0f32; CANDIDATES];
    for &v in x {
        for c in 0..CANDIDATES {
            let e = scales[c] * (v / scales[c]).round().clamp(qlo, qhi) - v;
            err[c] += e * e;
        }
    }
    let mut best = max / -(nmid as f32);
    let mut best_err = error(best);
    for c in 0..CANDIDATES {
        if let Some(scale) = fits[c] {
            if err[c] < best_err {
                best = scale;
                best_err = err[c];
            }
        }
    }
    best
}

/// Codes of x against (scale, offset) read back from the block, clamped to 0..=nmax.
fn codes(x: &[f32], scale: f32, offset: f32, nmax: i32, out: &mut [u8]) {
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v + offset) * inv).round().clamp(0.0, nmax as f32) as u8;
    }
}

/// One Q4_K / Q5_K super-block: f16 d, dmin and 6-bit scales/mins; codes in value order.
fn quantize_q45k_block(x: &[f32], nmax: i32, q: &mut [u8; QK_K]) -> (f32, f32, [u8; 12]) {
    let mut scales = [0f32; 8];
    let mut offsets = [0f32; 8];
    for j in 0..8 {
        (scales[j], offsets[j]) = fit_affine(&x[32 * j..32 * (j + 1)], nmax);
    }
    let max_scale = scales.iter().fold(0f32, |m, &v| m.max(v));
    let max_offset = offsets.iter().fold(0f32, |m, &v| m.max(v));
    // The super-block scales as stored (f16), so the 6-bit codes are chosen against them.
    let d = half::f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = half::f16::from_f32(max_offset / 63.0).to_f32();
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        sc[j] = if d > 0.0 { (scales[j] / d).round().clamp(0.0, 63.0) as u8 } else { 0 };
        m[j] = if dmin > 0.0 { (offsets[j] / dmin).round().clamp(0.0, 63.0) as u8 } else { 0 };
        let xs = &x[32 * j..32 * (j + 1)];
        codes(xs, d * sc[j] as f32, dmin * m[j] as f32, nmax, &mut q[32 * j..32 * (j + 1)]);
    }
    (d, dmin, pack_scale_min_k4(&sc, &m))
}

fn whole_blocks(src: &[f32], dst: &[u8], block_bytes: usize) -> usize {
    (src.len() / QK_K).min(dst.len() / block_bytes)
}

pub fn quantize_q4k(src: &[f32], dst: &mut [u8]) {
    let mut q = [0u8; QK_K];
    for i in 0..whole_blocks(src, dst, Q4K_BYTES) {
        let (d, dmin, scales) = quantize_q45k_block(&src[i * QK_K..(i + 1) * QK_K], 15, &mut q);
        let b = &mut dst[i * Q4K_BYTES..(i + 1) * Q4K_BYTES];
        write_f16(b, 0, d);
        write_f16(b, 2, dmin);
        b[4..16].copy_from_slice(&scales);
        for c in 0..4 {
            for l in 0..32 {
                b[16 + 32 * c + l] = q[64 * c + l] | (q[64 * c + 32 + l] << 4);
            }
        }
    }
}

pub fn quantize_q5k(src: &[f32], dst: &mut [u8]) {
    let mut q = [0u8; QK_K];
    for i in 0..whole_blocks(src, dst, Q5K_BYTES) {
        let (d, dmin, scales) = quantize_q45k_block(&src[i * QK_K..(i + 1) * QK_K], 31, &mut q);
        let b = &mut dst[i * Q5K_BYTES..(i + 1) * Q5K_BYTES];
        write_f16(b, 0, d);
        write_f16(b, 2, dmin);
        b[4..16].copy_from_slice(&scales);
        b[16..48].fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (lo, hi) = (q[64 * c + l], q[64 * c + 32 + l]);
                b[48 + 32 * c + l] = (lo & 0x0F) | ((hi & 0x0F) << 4);
                b[16 + l] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            }
        }
    }
}

pub fn quantize_q6k(src: &[f32], dst: &mut [u8]) {
    for i in 0..whole_blocks(src, dst, Q6K_BYTES) {
        let x = &src[i * QK_K..(i + 1) * QK_K];
        let mut scales = [0f32; 16];
        for (g, s) in scales.iter_mut().enumerate() {
            *s = fit_symmetric(&x[16 * g..16 * (g + 1)], 32);
        }
        let amax = scales.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let mut q = [0u8; QK_K];
        let b = &mut dst[i * Q6K_BYTES..(i + 1) * Q6K_BYTES];
        for g in 0..16 {
            let sc = if d > 0.0 { (scales[g] / d).round().clamp(-128.0, 127.0) as i8 } else { 0 };
            b[192 + g] = sc as u8;
            let step = d * sc as f32;
            let inv = if step != 0.0 { 1.0 / step } else { 0.0 };
            for l in 16 * g..16 * (g + 1) {
                q[l] = ((x[l] * inv).round().clamp(-32.0, 31.0) as i32 + 32) as u8;
            }
        }
        write_f16(b, 208, d);
        for h in 0..2 {
            for l in 0..32 {
                let v = |k: usize| q[128 * h + 32 * k + l];
                b[64 * h + l] = (v(0) & 0x0F) | ((v(2) & 0x0F) << 4);
                b[64 * h + 32 + l] = (v(1) & 0x0F) | ((v(3) & 0x0F) << 4);
                b[128 + 32 * h + l] = (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The plain search the fits replace: one candidate at a time, each with its own passes.
    fn fit_affine_ref(x: &[f32], nmax: i32) -> (f32, f32) {
        let lo = x.iter().fold(0f32, |m, &v| m.min(v));
        let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
        if hi <= lo {
            return (0.0, -lo);
        }
        let error = |scale: f32, offset: f32| -> f32 {
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            x.iter()
                .map(|&v| {
                    let q = ((v + offset) * inv).round().clamp(0.0, nmax as f32);
                    let e = scale * q - offset - v;
                    e * e
                })
                .sum()
        };
        let mut best = ((hi - lo) / nmax as f32, -lo);
        let mut best_err = error(best.0, best.1);
        let n = x.len() as f32;
        for step in -SEARCH_STEPS..=SEARCH_STEPS {
            let iscale = (nmax as f32 + 0.1 * step as f32) / (hi - lo);
            let (mut sq, mut sqq, mut sx, mut sqx) = (0f32, 0f32, 0f32, 0f32);
            for &v in x {
                let q = ((v - lo) * iscale).round().clamp(0.0, nmax as f32);
                sq += q;
                sqq += q * q;
                sx += v;
                sqx += q * v;
            }
            let det = n * sqq - sq * sq;
            if det <= 0.0 {
                continue;
            }
            let mut scale = (n * sqx - sq * sx) / det;
            let mut offset = (scale * sq - sx) / n;
            if offset < 0.0 {
                offset = 0.0;
                scale = if sqq > 0.0 { sqx / sqq } else { 0.0 };
            }
            if scale <= 0.0 {
                continue;
            }
            let err = error(scale, offset);
            if err < best_err {
                best = (scale, offset);
                best_err = err;
            }
        }
        best
    }

    fn fit_symmetric_ref(x: &[f32], nmid: i32) -> f32 {
        let max = signed_absmax(x);
        if max == 0.0 {
            return 0.0;
        }
        let error = |scale: f32| -> f32 {
            x.iter()
                .map(|&v| {
                    let q = (v / scale).round().clamp(-nmid as f32, (nmid - 1) as f32);
                    let e = scale * q - v;
                    e * e
                })
                .sum()
        };
        let mut best = max / -(nmid as f32);
        let mut best_err = error(best);
        for step in -SEARCH_STEPS..=SEARCH_STEPS {
            let iscale = -(nmid as f32 + 0.1 * step as f32) / max;
            let (mut sqq, mut sqx) = (0f32, 0f32);
            for &v in x {
                let q = (v * iscale).round().clamp(-nmid as f32, (nmid - 1) as f32);
                sqq += q * q;
                sqx += q * v;
            }
            if sqq == 0.0 {
                continue;
            }
            let scale = sqx / sqq;
            if scale == 0.0 {
                continue;
            }
            let err = error(scale);
            if err < best_err {
                best = scale;
                best_err = err;
            }
        }
        best
    }

    #[test]
    fn fits_match_the_one_candidate_search_bit_for_bit() {
        let seed: u64 = rand::rng().random();
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        // Sub-blocks of several kinds: centred, one-signed, mostly zero, with an outlier,
        // constant, of few distinct values.
        for i in 0..6000 {
            let n = if i % 2 == 0 { 32 } else { 16 };
            let x: Vec<f32> = (0..n)
                .map(|j| {
                    let u = r.random::<f32>() - 0.5;
                    match i % 6 {
                        0 => u,
                        1 => u + 0.6,
                        2 => -(u + 0.5) * 1e-3,
                        3 => if r.random::<f32>() < 0.8 { 0.0 } else { u },
                        4 => if j == 5 { 40.0 * u } else { u * 0.1 },
                        _ => [0.25f32, -0.5, 0.0][j % 3] * (i % 5) as f32,
                    }
                })
                .collect();
            for nmax in [15, 31] {
                let (a, b) = (fit_affine(&x, nmax), fit_affine_ref(&x, nmax));
                assert!(a.0.to_bits() == b.0.to_bits() && a.1.to_bits() == b.1.to_bits(), "seed {seed} block {i} nmax {nmax}: {a:?} vs {b:?}");
            }
            let (a, b) = (fit_symmetric(&x, 32), fit_symmetric_ref(&x, 32));
            assert_eq!(a.to_bits(), b.to_bits(), "seed {seed} block {i}: {a} vs {b}");
        }
    }
}
