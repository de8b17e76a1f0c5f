//! Format tests: hand-built blocks with known values, quantize -> dequantize error bounds,
//! the fast dot against the plain reference, and the AVX2 kernels against their scalar twins.

use super::kquants::pack_scale_min_k4;
use super::prepared::dot_prepared_scalar;
use super::*;
use rand::{Rng, SeedableRng};

const ALL_TYPES: [DType; 11] = ALL;

fn f16b(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// A seeded generator; the seed is fresh per run and shown in failure messages.
fn rng() -> (rand::rngs::StdRng, u64) {
    let seed: u64 = rand::rng().random();
    (rand::rngs::StdRng::seed_from_u64(seed), seed)
}

/// Roughly normal values (sum of uniforms), with a few outliers as real weights have.
fn random_vec(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let g: f32 = (0..4).map(|_| r.random::<f32>() - 0.5).sum::<f32>() * 1.7;
            if i % 97 == 13 { g * 4.0 * scale } else { g * scale }
        })
        .collect()
}

fn deq(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(dtype, bytes, &mut out);
    out
}

#[test]
fn ggml_ids_names_and_sizes() {
    for d in ALL_TYPES {
        assert_eq!(DType::from_ggml(d.ggml_id()), Some(d));
        assert_eq!(DType::from_name(d.name()), Some(d));
        assert_eq!(d.row_bytes(256), Some(256 / d.block_len() * d.block_bytes()));
    }
    assert_eq!(DType::from_ggml(4), None);
    assert_eq!(DType::Q4_0.row_bytes(48), None);
    let sizes: Vec<usize> = ALL_TYPES.iter().map(|d| d.block_bytes()).collect();
    assert_eq!(sizes, [4, 2, 2, 34, 18, 20, 22, 24, 144, 176, 210]);
}

#[test]
fn q4_0_block_known_values() {
    let mut b = f16b(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = deq(DType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(v[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(v[j + 16], (7.0 - j as f32) * 0.5);
    }
}

#[test]
fn q4_1_block_known_values() {
    let mut b = [f16b(0.25), f16b(-1.0)].concat();
    b.extend((0..16u8).map(|j| j | (3 << 4)));
    let v = deq(DType::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(v[j], j as f32 * 0.25 - 1.0);
        assert_eq!(v[j + 16], 3.0 * 0.25 - 1.0);
    }
}

#[test]
fn q5_blocks_known_values() {
    // 5th bits set on even values: q = nibble + 16 there.
    let qh: u32 = 0x5555_5555;
    let nibbles: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
    let q = |i: usize| -> i32 {
        let nib = if i < 16 { i as i32 } else { 15 - (i as i32 - 16) };
        nib + if i % 2 == 0 { 16 } else { 0 }
    };
    let mut b0 = f16b(2.0).to_vec();
    b0.extend(qh.to_le_bytes());
    b0.extend(&nibbles);
    let mut b1 = [f16b(0.5), f16b(3.0)].concat();
    b1.extend(qh.to_le_bytes());
    b1.extend(&nibbles);
    let (v0, v1) = (deq(DType::Q5_0, &b0, 32), deq(DType::Q5_1, &b1, 32));
    for i in 0..32 {
        assert_eq!(v0[i], (q(i) - 16) as f32 * 2.0, "q5_0 value {i}");
        assert_eq!(v1[i], q(i) as f32 * 0.5 + 3.0, "q5_1 value {i}");
    }
}

#[test]
fn q8_0_block_known_values() {
    let mut b = f16b(0.125).to_vec();
    b.extend((0..32i32).map(|j| (j * 8 - 127) as i8 as u8));
    let v = deq(DType::Q8_0, &b, 32);
    for j in 0..32 {
        assert_eq!(v[j], (j as f32 * 8.0 - 127.0) * 0.125);
    }
}

#[test]
fn q4k_and_q5k_blocks_known_values() {
    let sc = [1u8, 2, 3, 4, 40, 50, 60, 63];
    let m = [0u8, 1, 2, 3, 33, 44, 55, 63];
    let scales = pack_scale_min_k4(&sc, &m);
    for j in 0..8 {
        assert_eq!(kquants::scale_min_k4(j, &scales), (sc[j], m[j]));
    }
    let q4 = |v: usize| (v * 7 % 16) as u8;
    let hi = |v: usize| (v % 3 == 0) as u8;
    let mut b4 = [f16b(0.5), f16b(0.25)].concat();
    b4.extend(scales);
    let mut b5 = b4.clone();
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for l in 0..32 {
            b4.push(q4(64 * c + l) | (q4(64 * c + 32 + l) << 4));
            qh[l] |= (hi(64 * c + l) << (2 * c)) | (hi(64 * c + 32 + l) << (2 * c + 1));
        }
    }
    b5.extend(qh);
    b5.extend(&b4[16..]);
    let (v4, v5) = (deq(DType::Q4K, &b4, 256), deq(DType::Q5K, &b5, 256));
    for v in 0..256 {
        let (s, mm) = (sc[v / 32] as f32, m[v / 32] as f32);
        assert_eq!(v4[v], 0.5 * s * q4(v) as f32 - 0.25 * mm, "q4_k value {v}");
        let q5 = q4(v) as f32 + 16.0 * hi(v) as f32;
        assert_eq!(v5[v], 0.5 * s * q5 - 0.25 * mm, "q5_k value {v}");
    }
}

#[test]
fn q6k_block_known_values() {
    let q = |v: usize| ((v * 5 + 3) % 64) as u8;
    let sc = |g: usize| (g as i32 * 9 - 70) as i8;
    let mut b = vec![0u8; 210];
    for h in 0..2 {
        for l in 0..32 {
            let v = |k: usize| q(128 * h + 32 * k + l);
            b[64 * h + l] = (v(0) & 15) | ((v(2) & 15) << 4);
            b[64 * h + 32 + l] = (v(1) & 15) | ((v(3) & 15) << 4);
            b[128 + 32 * h + l] = (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
        }
    }
    for g in 0..16 {
        b[192 + g] = sc(g) as u8;
    }
    b[208..210].copy_from_slice(&f16b(0.5));
    let out = deq(DType::Q6K, &b, 256);
    for v in 0..256 {
        assert_eq!(out[v], 0.5 * sc(v / 16) as f32 * (q(v) as i32 - 32) as f32, "value {v}");
    }
}

#[test]
fn float_formats_known_values() {
    let x = [1.0f32, -2.5, 0.333_333_34, 65504.0];
    for d in [DType::F32, DType::F16, DType::BF16] {
        let mut b = vec![0u8; d.row_bytes(4).unwrap()];
        quantize_row(d, &x, &mut b);
        let back = deq(d, &b, 4);
        assert_eq!(&back[..2], &x[..2], "{}", d.name());
    }
    assert_eq!(deq(DType::F16, &f16b(0.333_333_34), 1)[0], half::f16::from_f32(0.333_333_34).to_f32());
    // bf16 keeps the top 16 bits of the f32: 1/3 rounds to 0.333984375.
    let mut b = [0u8; 2];
    quantize_row(DType::BF16, &[1.0 / 3.0], &mut b);
    assert_eq!(deq(DType::BF16, &b, 1)[0], 0.333_984_38);
}

/// ggml's quantizer output for a known block: d = -max/8, codes trunc(x/d + 8.5).
#[test]
fn q4_0_quantize_matches_ggml_rounding() {
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 8.0).collect(); // max magnitude 23 (positive)
    let mut b = [0u8; 18];
    quantize_row(DType::Q4_0, &x, &mut b);
    let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    assert_eq!(d, half::f16::from_f32(23.0 / -8.0).to_f32());
    let id = 1.0 / (23.0f32 / -8.0);
    for j in 0..16 {
        let want = |v: f32| ((v * id + 8.5) as i32).min(15) as u8;
        assert_eq!(b[2 + j] & 15, want(x[j]));
        assert_eq!(b[2 + j] >> 4, want(x[j + 16]));
    }
}

/// Relative RMS error of quantize -> dequantize on random rows, under each format's bound.
#[test]
fn round_trip_error_bounds() {
    let (mut r, seed) = rng();
    let bounds = [
        (DType::F32, 0.0),
        (DType::F16, 1e-3),
        (DType::BF16, 6e-3),
        (DType::Q8_0, 0.012),
        (DType::Q4_0, 0.15),
        (DType::Q4_1, 0.12),
        (DType::Q5_0, 0.075),
        (DType::Q5_1, 0.06),
        (DType::Q4K, 0.11),
        (DType::Q5K, 0.055),
        (DType::Q6K, 0.03),
    ];
    for (d, bound) in bounds {
        let n = 1024;
        let x = random_vec(&mut r, n, 0.02);
        let mut b = vec![0u8; d.row_bytes(n).unwrap()];
        quantize_row(d, &x, &mut b);
        let y = deq(d, &b, n);
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        eprintln!("{}: relative round-trip error {:.5}", d.name(), err / norm);
        assert!(err <= bound * norm, "{}: relative error {} > {bound} (seed {seed})", d.name(), err / norm);
    }
}

#[test]
fn quantize_keeps_zero_rows_zero() {
    for d in ALL_TYPES {
        let x = vec![0f32; 256];
        let mut b = vec![0u8; d.row_bytes(256).unwrap()];
        quantize_row(d, &x, &mut b);
        assert!(deq(d, &b, 256).iter().all(|&v| v == 0.0), "{}", d.name());
        assert_eq!(dot_prepared(d, &b, &prepare_acts(d, &random_vec(&mut rng().0, 256, 1.0))), 0.0);
    }
}

/// The fast dot stays within the error of quantizing the activations.
#[test]
fn dot_prepared_matches_reference() {
    let (mut r, seed) = rng();
    for d in ALL_TYPES {
        for n in [256, 512, 1536] {
            let w = random_vec(&mut r, n, 0.05);
            let x = random_vec(&mut r, n, 1.0);
            let mut b = vec![0u8; d.row_bytes(n).unwrap()];
            quantize_row(d, &w, &mut b);
            let want = dot_f32(d, &b, &x);
            let wq = deq(d, &b, n);
            let scale = wq.iter().map(|v| v * v).sum::<f32>().sqrt() * x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let tol = if d == DType::F32 { 1e-5 } else { 6e-3 };
            for fine in [false, true] {
                let got = dot_prepared(d, &b, &prepare_acts(d, &x).with_q4k_gemm_order(fine));
                assert!((got - want).abs() <= tol * scale, "{} n={n}: {got} vs {want} (scale {scale}, seed {seed})", d.name());
            }
        }
    }
}

/// The AVX2 kernels compute bit-identical results to their scalar twins.
#[test]
fn avx2_matches_scalar_bitwise() {
    #[cfg(target_arch = "x86_64")]
    if !simd::available() {
        eprintln!("skipped: this CPU has no AVX2/FMA/F16C");
        return;
    }
    let (mut r, seed) = rng();
    for d in ALL_TYPES {
        for n in [256, 768, 4864, 256 + 32 + 8] {
            let Some(rb) = d.row_bytes(n) else { continue };
            for _ in 0..8 {
                let (ws, xs) = (r.random::<f32>() * 0.1 + 1e-3, r.random::<f32>() * 4.0 + 1e-2);
                let w = random_vec(&mut r, n, ws);
                let x = random_vec(&mut r, n, xs);
                let mut b = vec![0u8; rb];
                quantize_row(d, &w, &mut b);
                for fine in [false, true] {
                    let a = prepare_acts(d, &x).with_q4k_gemm_order(fine);
                    let (fast, slow) = (dot_prepared(d, &b, &a), dot_prepared_scalar(d, &b, &a));
                    assert_eq!(fast.to_bits(), slow.to_bits(), "{} n={n}: {fast} vs {slow} (seed {seed})", d.name());
                }
            }
        }
    }
}

/// Activations quantized to Q8_0 / Q8_1 / Q8_K read back close to the input.
#[test]
fn activation_formats_round_trip() {
    let (mut r, seed) = rng();
    let x = random_vec(&mut r, 512, 3.0);
    let a = legacy::quantize_acts_q8(&x, true);
    for (i, &v) in x.iter().enumerate() {
        let back = a.qs[i] as f32 * a.d[i / 32];
        assert!((back - v).abs() <= a.d[i / 32] * 0.51 + 1e-3 * v.abs(), "q8_1 value {i} (seed {seed})");
    }
    for (blk, s) in a.s.iter().enumerate() {
        let sum: i32 = a.qs[blk * 32..(blk + 1) * 32].iter().map(|&q| q as i32).sum();
        assert!((s - a.d[blk] * sum as f32).abs() <= 2e-3 * (a.d[blk] * sum as f32).abs() + 1e-6);
    }
    let k = kquants::quantize_acts_q8k(&x);
    for (i, &v) in x.iter().enumerate() {
        let back = k.qs[i] as f32 * k.d[i / 256];
        assert!((back - v).abs() <= k.d[i / 256].abs() * 0.51, "q8_k value {i} (seed {seed})");
    }
    for (g, &s) in k.bsums.iter().enumerate() {
        assert_eq!(s as i32, k.qs[g * 16..(g + 1) * 16].iter().map(|&q| q as i32).sum::<i32>());
    }
}

/// Short or mismatched inputs are processed up to the last whole block, never past the end.
#[test]
fn short_inputs_do_not_panic() {
    for d in ALL_TYPES {
        let rb = d.row_bytes(256).unwrap();
        let bytes = vec![0x5Au8; rb - 1];
        let mut out = vec![0f32; 256];
        dequantize_row(d, &bytes, &mut out);
        let _ = dot_f32(d, &bytes, &out[..100]);
        let _ = dot_prepared(d, &bytes, &prepare_acts(d, &out[..200]));
        let mut dst = vec![0u8; rb / 2];
        quantize_row(d, &out, &mut dst);
        // Activations prepared for another format fall back to the reference.
        let other = if d == DType::Q4_0 { DType::Q6K } else { DType::Q4_0 };
        let _ = dot_prepared(d, &bytes, &prepare_acts(other, &out));
    }
}

/// The row-run kernel gives each row exactly what the one-row reference gives.
#[test]
fn dot_prepared_rows_matches_row_by_row() {
    let (mut r, seed) = rng();
    for d in ALL_TYPES {
        let (n, rows) = (512, 7);
        let rb = d.row_bytes(n).unwrap();
        let mut bytes = vec![0u8; rb * rows];
        for chunk in bytes.chunks_exact_mut(rb) {
            quantize_row(d, &random_vec(&mut r, n, 0.05), chunk);
        }
        let a = prepare_acts(d, &random_vec(&mut r, n, 1.0));
        let mut out = vec![f32::NAN; rows];
        dot_prepared_rows(d, &bytes, &a, &mut out);
        for (i, chunk) in bytes.chunks_exact(rb).enumerate() {
            assert_eq!(out[i].to_bits(), dot_prepared_scalar(d, chunk, &a).to_bits(), "{} row {i} (seed {seed})", d.name());
        }
    }
}

/// Exact numerics: 16-bit float weights dotted with f32 activations (no rounding of the
/// activations) agree with the f64 reference to f32 rounding.
#[test]
fn half_weights_with_f32_activations_are_exact() {
    let (mut r, seed) = rng();
    for dtype in [DType::BF16, DType::F16] {
        for k in [1usize, 15, 16, 1000, 4096] {
            let w = random_vec(&mut r, k, 1.0);
            let x = random_vec(&mut r, k, 3.0);
            let mut row = vec![0u8; dtype.row_bytes(k).unwrap()];
            quantize_row(dtype, &w, &mut row);
            let want = dot_f32(dtype, &row, &x);
            let got = dot_prepared(dtype, &row, &prepare_acts(DType::F32, &x));
            let scale: f32 = deq(dtype, &row, k).iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            assert!((got - want).abs() <= 1e-6 * scale.max(1.0), "{dtype:?} k={k} seed {seed}: {got} vs {want}");
        }
    }
}
