//! f16 vector operations for an f16 KV cache and its attention: conversion, the score dot,
//! and the in-place multiply-adds of an f16 accumulator. Each rounds to f16 (nearest even)
//! after every operation, as llama.cpp's CPU flash attention does; AVX2/F16C where the CPU
//! has them, with scalar twins computing the same values.

use super::float;
use half::f16;

#[cfg(target_arch = "x86_64")]
use super::simd;

/// Whether the AVX2 + FMA + F16C kernels run on this CPU.
pub fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return simd::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Dot of two f16 vectors with the lane arithmetic of the F16 weight dot (GGML's AVX2
/// `ggml_vec_dot_f16`): attention scores over an f16 KV cache.
pub fn dot_f16_halves(a: &[f16], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { simd::dot_f16_halves(a, b) };
    }
    float::dot_f16_halves_scalar(a, b)
}

/// dst = f16(src), rounding to nearest even.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { simd::f32_to_f16(src, dst) };
    }
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f32(s));
}

/// acc = f16(v * s + acc), one rounding of the fused multiply-add, then to f16.
pub fn f16_axpy(acc: &mut [f16], v: &[f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { simd::f16_axpy(acc, v, s) };
    }
    acc.iter_mut().zip(v).for_each(|(a, &x)| *a = f16::from_f32(x.to_f32().mul_add(s, a.to_f32())));
}

/// acc = f16(acc * s).
pub fn f16_scale(acc: &mut [f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { simd::f16_scale(acc, s) };
    }
    acc.iter_mut().for_each(|a| *a = f16::from_f32(a.to_f32() * s));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn simd_and_scalar_f16_ops_agree() {
        let mut r = rand::rng();
        for n in [1usize, 7, 8, 64, 67] {
            let x: Vec<f32> = (0..n).map(|_| r.random::<f32>() * 8.0 - 4.0).collect();
            let mut h = vec![f16::ZERO; n];
            f32_to_f16(&x, &mut h);
            assert!(h.iter().zip(&x).all(|(a, &b)| *a == f16::from_f32(b)));
            let v: Vec<f16> = (0..n).map(|_| f16::from_f32(r.random::<f32>() - 0.5)).collect();
            let s = r.random::<f32>() * 2.0;
            let (mut a1, mut a2) = (h.clone(), h.clone());
            f16_axpy(&mut a1, &v, s);
            a2.iter_mut().zip(&v).for_each(|(a, &x)| *a = f16::from_f32(x.to_f32().mul_add(s, a.to_f32())));
            assert_eq!(a1, a2);
            f16_scale(&mut a1, s);
            a2.iter_mut().for_each(|a| *a = f16::from_f32(a.to_f32() * s));
            assert_eq!(a1, a2);
            let d = dot_f16_halves(&h, &v);
            assert_eq!(d.to_bits(), float::dot_f16_halves_scalar(&h, &v).to_bits());
        }
    }
}
