//! The float recipes of llama.cpp's CPU ops (ggml, AVX2 build), followed step by step so
//! greedy decoding picks the same tokens: a near-tie between two logits flips on the last
//! bit, so "close" is not enough. Each function names the ggml op whose arithmetic it keeps.

use crate::backend::Rope;
use crate::config::RopeStyle;

/// ggml_rms_norm (+ the fused mul): sum of squares in f64 (each square rounded to f32
/// first), mean and scale in f32, then (x * scale) * w.
pub fn rmsnorm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// cos and sin of every rotating pair at position `pos` (ggml_rope_cache_init): the angle
/// starts at pos and is multiplied by theta_scale once per pair, in f32.
pub fn rope_cache(rope: &Rope, pos: usize, cache: &mut Vec<(f32, f32)>) {
    cache.clear();
    let mut theta = pos as f32;
    for &ff in &rope.freq_factors {
        let angle = theta / ff;
        cache.push((angle.cos(), angle.sin()));
        theta *= rope.theta_scale;
    }
}

/// Run `$body` compiled for AVX2 + FMA where the CPU has them (so `mul_add` is one
/// instruction rather than a libm call), else as plain Rust: same values either way.
macro_rules! with_fma {
    ($name:ident, fn($($arg:ident: $ty:ty),*) $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name($($arg: $ty),*) $body
        #[cfg(target_arch = "x86_64")]
        if crate::quant::cpu_has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { $name($($arg),*) };
        }
        $body
    }};
}

/// Rotate one head with a cache from `rope_cache` (ggml rotate_pairs).
pub fn rotate(head: &mut [f32], cache: &[(f32, f32)], style: RopeStyle, dims: usize) {
    with_fma!(rotate_fma, fn(head: &mut [f32], cache: &[(f32, f32)], style: RopeStyle, dims: usize) { rotate_impl(head, cache, style, dims) })
}

#[inline(always)]
fn rotate_impl(head: &mut [f32], cache: &[(f32, f32)], style: RopeStyle, dims: usize) {
    let half = dims / 2;
    for (i, &(cos, sin)) in cache.iter().enumerate() {
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0.mul_add(cos, -(x1 * sin));
        head[b] = x0.mul_add(sin, x1 * cos);
    }
}

/// ggml's vectorised expf for AVX2 (ggml_v_expf, after ARM's optimized routine): a degree-5
/// polynomial around a power of two, within about 1.5 ulp; scalar twin of one lane.
#[inline(always)]
pub fn expf_avx2(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000); // 0x1.8p23: rounds to an integer when added
    let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), r); // x * log2(e) + r
    let n = z - r;
    let b = (-n).mul_add(f32::from_bits(0x35BF_BE8E), (-n).mul_add(f32::from_bits(0x3F31_7200), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let p1 = f32::from_bits(0x3C07_2010).mul_add(b, f32::from_bits(0x3D2B_9F17));
    let p2 = f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB));
    let j = p1.mul_add(u, p2).mul_add(u, f32::from_bits(0x3F7F_FFF6) * b);
    if n.abs() <= 126.0 {
        return k.mul_add(j, k);
    }
    // Outside the range of one scaling: split the power of two in two factors.
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7F00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// Lanes of ggml's AVX2 vector loops; a tail shorter than this uses scalar libm.
const LANES: usize = 8;

/// ggml_vec_swiglu_f32: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)) with the vector
/// expf on whole groups of 8 and libm's expf on the tail.
pub fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    with_fma!(swiglu_fma, fn(gate: &[f32], up: &[f32], out: &mut [f32]) { swiglu_impl(gate, up, out) })
}

#[inline(always)]
fn swiglu_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let whole = gate.len() / LANES * LANES;
    for (i, ((o, &g), &u)) in out.iter_mut().zip(gate).zip(up).enumerate() {
        let e = if i < whole { expf_avx2(0.0 - g) } else { (-g).exp() };
        *o = g / (1.0 + e) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_expf_is_close_to_libm() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let (want, got) = (x.exp(), expf_avx2(x));
            assert!((got - want).abs() <= want * 4e-7 + f32::MIN_POSITIVE, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(expf_avx2(-200.0), 0.0);
        assert_eq!(expf_avx2(0.0), 1.0);
        assert!(expf_avx2(100.0).is_infinite());
    }

    #[test]
    fn rmsnorm_matches_definition() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = vec![0f32; 64];
        rmsnorm_row(&x, &w, 1e-5, &mut out);
        let rms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / 64.0 + 1e-5).sqrt();
        for i in 0..64 {
            assert!((out[i] as f64 - x[i] as f64 / rms * w[i] as f64).abs() < 1e-5);
        }
    }
}
