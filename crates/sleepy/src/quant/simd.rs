//! AVX2 (+FMA, F16C) dots, picked at run time. Each computes exactly the arithmetic of its
//! scalar twin in `legacy` / `kquants` / `float` (the integer parts are exact; the float
//! operations happen in the same order), so the two are tested for bit equality.
//!
//! Layout reminders: a legacy block is f16 d [, f16 m] [, u32 qh], 16 nibble bytes (value j
//! low nibble of byte j, value j + 16 high nibble); activations are i8 quants in value
//! order with one f32 scale per block. Every load here is unaligned: blocks of 18..210
//! bytes sit at any offset of a mapped file.

use super::float::{reduce_4x8, STEP};
use super::kquants::Q8KActs;
use super::legacy::{Legacy, Q8Acts, QK};
use half::{bf16, f16};
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether this CPU runs the AVX2 kernels (checked once).
pub fn available() -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
}

#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum_float_8(x: __m256) -> f32 {
    let mut l = [0f32; 8];
    // SAFETY: `l` holds 8 floats.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), x) };
    super::legacy::hsum8(&l)
}

#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum_i32_8(x: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

/// Unsigned x signed byte products summed in groups of 4 into 8 i32 lanes, as floats.
#[target_feature(enable = "avx2,fma")]
fn mul_sum_us8_pairs_float(ux: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// Signed x signed bytes: move the sign of x onto y so the unsigned form applies.
#[target_feature(enable = "avx2,fma")]
fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    mul_sum_us8_pairs_float(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// 16 nibble bytes at p -> 32 bytes: low nibbles (values 0..16), then high nibbles.
///
/// # Safety
/// `p` must point to 16 readable bytes.
#[target_feature(enable = "avx2,fma")]
unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of qh -> 32 bytes, 0xFF where the bit is set.
#[target_feature(enable = "avx2,fma")]
fn bytes_from_bits_32(qh: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit)
}

/// An f16 field at p (F16C conversion).
///
/// # Safety
/// `p` must point to 2 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// One row of a legacy format against Q8_0 / Q8_1 activations (the arithmetic of
/// `legacy::dot_scalar`); the format is a compile-time constant so each is its own loop.
/// (Interleaving 4 rows to share the activation loads was measured 2x slower.)
///
/// # Safety
/// The row holds `nb` blocks; `a` holds `nb` blocks (with sums for the affine formats).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn legacy_row<const KIND: u8>(row: *const u8, nb: usize, a: &Q8Acts) -> f32 {
    let kind = LEGACY_KINDS[KIND as usize];
    let bb = kind.block_bytes();
    let (d_act, s_act, qs) = (a.d.as_ptr(), a.s.as_ptr(), a.qs.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for i in 0..nb {
        // SAFETY: block i of the row and of the activations exist (caller's contract).
        unsafe {
            let p = row.add(i * bb);
            let qy = _mm256_loadu_si256(qs.add(i * QK) as *const __m256i);
            let d = f16_at(p) * *d_act.add(i);
            let qh = |at: usize| (p.add(at) as *const u32).read_unaligned();
            acc = match kind {
                Legacy::Q4_0 => {
                    let qx = _mm256_sub_epi8(bytes_from_nibbles_32(p.add(2)), _mm256_set1_epi8(8));
                    _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8_pairs_float(qx, qy), acc)
                }
                Legacy::Q8_0 => {
                    let qx = _mm256_loadu_si256(p.add(2) as *const __m256i);
                    _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8_pairs_float(qx, qy), acc)
                }
                Legacy::Q5_0 => {
                    // Values without their 5th bit get 0xF0 or'ed in: nibble - 16 as a signed byte.
                    let hi = _mm256_andnot_si256(bytes_from_bits_32(qh(2)), _mm256_set1_epi8(0xF0u8 as i8));
                    let qx = _mm256_or_si256(bytes_from_nibbles_32(p.add(6)), hi);
                    _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8_pairs_float(qx, qy), acc)
                }
                Legacy::Q4_1 => {
                    summs = f16_at(p.add(2)).mul_add(*s_act.add(i), summs);
                    let qx = bytes_from_nibbles_32(p.add(4));
                    _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_us8_pairs_float(qx, qy), acc)
                }
                Legacy::Q5_1 => {
                    summs = f16_at(p.add(2)).mul_add(*s_act.add(i), summs);
                    let hi = _mm256_and_si256(bytes_from_bits_32(qh(4)), _mm256_set1_epi8(0x10));
                    let qx = _mm256_or_si256(bytes_from_nibbles_32(p.add(8)), hi);
                    _mm256_fmadd_ps(mul_sum_us8_pairs_float(qx, qy), _mm256_set1_ps(d), acc)
                }
            };
        }
    }
    hsum_float_8(acc) + summs
}

const LEGACY_KINDS: [Legacy; 5] = [Legacy::Q4_0, Legacy::Q4_1, Legacy::Q5_0, Legacy::Q5_1, Legacy::Q8_0];

/// All rows of one format.
///
/// # Safety
/// As `legacy_row`, for `out.len()` rows of `row_bytes` starting at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn legacy_all<const KIND: u8>(p: *const u8, row_bytes: usize, nb: usize, a: &Q8Acts, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: r < out.len(), which the caller bounds by the rows present.
        *o = unsafe { legacy_row::<KIND>(p.add(r * row_bytes), nb, a) };
    }
}

/// Legacy-format rows stored back to back, each dotted with the same activations.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; affine formats need the activation sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_legacy_rows(kind: Legacy, rows: &[u8], row_bytes: usize, a: &Q8Acts, out: &mut [f32]) {
    let nb = (row_bytes / kind.block_bytes()).min(a.d.len()).min(a.qs.len() / QK);
    if kind.affine() && a.s.len() < nb {
        return;
    }
    let n = out.len().min(rows.len() / row_bytes.max(1));
    let (p, out) = (rows.as_ptr(), &mut out[..n]);
    // SAFETY: n rows of row_bytes lie inside `rows`; nb blocks fit a row and the activations.
    unsafe {
        match kind {
            Legacy::Q4_0 => legacy_all::<0>(p, row_bytes, nb, a, out),
            Legacy::Q4_1 => legacy_all::<1>(p, row_bytes, nb, a, out),
            Legacy::Q5_0 => legacy_all::<2>(p, row_bytes, nb, a, out),
            Legacy::Q5_1 => legacy_all::<3>(p, row_bytes, nb, a, out),
            Legacy::Q8_0 => legacy_all::<4>(p, row_bytes, nb, a, out),
        }
    }
}

/// Float dot over n values with 4 x 8 lanes; `load(i)` gives 8 f32 values from index i.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float_lanes(n: usize, load_w: impl Fn(usize) -> __m256, load_a: impl Fn(usize) -> __m256, tail: impl Fn(usize) -> f32) -> f32 {
    let whole = n / STEP * STEP;
    let mut s = [_mm256_setzero_ps(); 4];
    for base in (0..whole).step_by(STEP) {
        for (k, acc) in s.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load_w(base + 8 * k), load_a(base + 8 * k), *acc);
        }
    }
    let mut lanes = [[0f32; 8]; 4];
    for (l, acc) in lanes.iter_mut().zip(&s) {
        // SAFETY: each lane array holds 8 floats.
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), *acc) };
    }
    let mut sum = reduce_4x8(lanes) as f64;
    for i in whole..n {
        sum += tail(i) as f64;
    }
    sum as f32
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let n = (row.len() / 4).min(x.len());
    let w = |i: usize| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]);
    // SAFETY: loads start at i < n - 7 for whole steps, inside both slices.
    dot_float_lanes(
        n,
        |i| unsafe { _mm256_loadu_ps(row.as_ptr().add(4 * i) as *const f32) },
        |i| unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) },
        |i| w(i) * x[i],
    )
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(row: &[u8], x: &[f16]) -> f32 {
    let n = (row.len() / 2).min(x.len());
    let w = |i: usize| f16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32();
    // SAFETY: as in dot_f32; f16 is a transparent u16.
    dot_float_lanes(
        n,
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i)) },
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i)) },
        |i| w(i) * x[i].to_f32(),
    )
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(row: &[u8], x: &[bf16]) -> f32 {
    let n = (row.len() / 2).min(x.len());
    let w = |i: usize| bf16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32();
    // bf16 -> f32 is a 16-bit left shift of the bits.
    let widen = |p: *const u8| unsafe { _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16)) };
    // SAFETY: as in dot_f32; bf16 is a transparent u16.
    dot_float_lanes(n, |i| widen(unsafe { row.as_ptr().add(2 * i) }), |i| widen(unsafe { x.as_ptr().add(i) as *const u8 }), |i| {
        w(i) * x[i].to_f32()
    })
}

/// Two f16 vectors (see `float::dot_f16_halves_scalar`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_halves(a: &[f16], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: loads of 8 halves start below the last whole step, inside both slices.
    dot_float_lanes(
        n,
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i)) },
        |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i)) },
        |i| a[i].to_f32() * b[i].to_f32(),
    )
}

/// dst = f16(src), 8 at a time (see `half_ops::f32_to_f16`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= n for both slices; f16 is a transparent u16.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        }
    }
    for i in whole..n {
        dst[i] = f16::from_f32(src[i]);
    }
}

/// acc = f16(v * s + acc) (see `half_ops::f16_axpy`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_axpy(acc: &mut [f16], v: &[f16], s: f32) {
    let n = acc.len().min(v.len());
    let whole = n / 8 * 8;
    let vs = _mm256_set1_ps(s);
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= n for both slices; f16 is a transparent u16.
        unsafe {
            let pa = acc.as_mut_ptr().add(i) as *mut __m128i;
            let a = _mm256_cvtph_ps(_mm_loadu_si128(pa));
            let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
            _mm_storeu_si128(pa, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_fmadd_ps(x, vs, a)));
        }
    }
    for i in whole..n {
        acc[i] = f16::from_f32(v[i].to_f32().mul_add(s, acc[i].to_f32()));
    }
}

/// acc = f16(acc * s) (see `half_ops::f16_scale`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_scale(acc: &mut [f16], s: f32) {
    let n = acc.len();
    let whole = n / 8 * 8;
    let vs = _mm256_set1_ps(s);
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= n; f16 is a transparent u16.
        unsafe {
            let pa = acc.as_mut_ptr().add(i) as *mut __m128i;
            let a = _mm256_cvtph_ps(_mm_loadu_si128(pa));
            _mm_storeu_si128(pa, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(a, vs)));
        }
    }
    for a in &mut acc[whole..] {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

/// Activation quantizers compiled for AVX2 (rounding is one instruction instead of a libm
/// call); the same code and values as the plain versions.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_acts_q8(x: &[f32], with_sums: bool) -> Q8Acts {
    super::legacy::quantize_acts_q8(x, with_sums)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_acts_q8k(x: &[f32]) -> Q8KActs {
    super::kquants::quantize_acts_q8k(x)
}
