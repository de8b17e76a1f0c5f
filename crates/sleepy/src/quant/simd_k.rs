//! AVX2 dots of the K-quant formats against Q8_K activations: the arithmetic of the scalar
//! twins in `kquants` (exact integer sums, then the same float operations in the same
//! order), tested for bit equality against them.
//!
//! Block layouts are in `kquants`; activations hold 256 i8 quants per super-block, one f32
//! scale and 16 i16 sums of 16 quants.

use super::kquants::{scale_min_k4, Q8KActs, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES, QK_K};
use super::simd::{f16_at, hsum_float_8, hsum_i32_8};
use super::DType;
use std::arch::x86_64::*;

/// Scales and mins of the 8 sub-blocks of a Q4_K / Q5_K block.
#[inline(always)]
fn scales_mins(q: &[u8]) -> ([i16; 8], [i32; 8]) {
    let mut sc = [0i16; 8];
    let mut m = [0i32; 8];
    for j in 0..8 {
        let (s, mm) = scale_min_k4(j, q);
        sc[j] = s as i16;
        m[j] = mm as i32;
    }
    (sc, m)
}

/// Sum of the 32 activation quants of sub-block j (two 16-quant sums).
#[inline(always)]
fn bsum32(bs: &[i16], j: usize) -> i32 {
    bs[2 * j] as i32 + bs[2 * j + 1] as i32
}

/// The 12 packed scale bytes of a Q4_K / Q5_K block as 16 i16 lanes: the 8 scales, then the
/// 8 mins (the 6-bit fields of `kquants::scale_min_k4`, moved with 32-bit masks).
///
/// # Safety
/// `p` must point to 12 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_scales_mins(p: *const u8) -> __m256i {
    let rd = |k: usize| unsafe { (p.add(4 * k) as *const u32).read_unaligned() };
    let (u0, u1, u2) = (rd(0), rd(1), rd(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let scales_lo = u0 & LOW6;
    let scales_hi = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mins_lo = u1 & LOW6;
    let mins_hi = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    _mm256_cvtepu8_epi16(_mm_set_epi32(mins_hi as i32, mins_lo as i32, scales_hi as i32, scales_lo as i32))
}

/// Byte shuffles that spread i16 lane j over all 16 lanes (each 128-bit half).
const SCALE_SHUFFLE: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut i = 0;
        while i < 32 {
            t[j][i] = (2 * j + i % 2) as u8;
            i += 1;
        }
        j += 1;
    }
    t
};

/// Q4_K row (see `kquants::dot_q4k_scalar`): per 64 values, 32 low nibbles times sub-block
/// 2c's quants and 32 high nibbles times 2c+1's, scaled in 16-bit pairs, summed exactly.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q4k_row(row: &[u8], nb: usize, a: &Q8KActs, fine: bool) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (i, b) in row.chunks_exact(Q4K_BYTES).take(nb).enumerate() {
        let p = b.as_ptr();
        let q8 = a.qs[i * QK_K..(i + 1) * QK_K].as_ptr();
        let bs = &a.bsums[i * 16..(i + 1) * 16];
        // SAFETY: the block is 144 bytes and the activation block 256 quants and 16 sums;
        // every load below stays inside them.
        let (dx, dmin) = unsafe { (f16_at(p) * a.d[i], f16_at(p.add(2)) * a.d[i]) };
        let sm = unsafe { unpack_scales_mins(p.add(4)) };
        let scales = _mm256_permute2x128_si256(sm, sm, 0x00);
        // Sums of 32 activation quants per sub-block, times the mins: one i32 per 64 values.
        let bs16 = unsafe { _mm256_loadu_si256(bs.as_ptr() as *const __m256i) };
        let bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs16), _mm256_extracti128_si256(bs16, 1));
        let chunk_mins = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), bs32);
        let mut mins = [0i32; 4];
        // SAFETY: `mins` holds 4 i32.
        unsafe { _mm_storeu_si128(mins.as_mut_ptr() as *mut __m128i, chunk_mins) };
        let mut sum = _mm256_setzero_si256();
        for c in 0..4 {
            let (q4, q8l, q8h, s0, s1) = unsafe {
                (
                    _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i),
                    _mm256_loadu_si256(q8.add(64 * c) as *const __m256i),
                    _mm256_loadu_si256(q8.add(64 * c + 32) as *const __m256i),
                    _mm256_loadu_si256(SCALE_SHUFFLE[2 * c].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(SCALE_SHUFFLE[2 * c + 1].as_ptr() as *const __m256i),
                )
            };
            let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(q4, m4), q8l), _mm256_shuffle_epi8(scales, s0));
            let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), q8h), _mm256_shuffle_epi8(scales, s1));
            if fine {
                acc = (hsum_i32_8(_mm256_add_epi32(pl, ph)) as f32).mul_add(dx, acc);
                acc_min = (mins[c] as f32).mul_add(dmin, acc_min);
            } else {
                sum = _mm256_add_epi32(sum, _mm256_add_epi32(pl, ph));
            }
        }
        if !fine {
            acc = (hsum_i32_8(sum) as f32).mul_add(dx, acc);
            acc_min = (mins.iter().sum::<i32>() as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// Q5_K row (see `kquants::dot_q5k_scalar`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q5k_row(row: &[u8], nb: usize, a: &Q8KActs) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (i, b) in row.chunks_exact(Q5K_BYTES).take(nb).enumerate() {
        let p = b.as_ptr();
        let q8 = a.qs[i * QK_K..(i + 1) * QK_K].as_ptr();
        let bs = &a.bsums[i * 16..(i + 1) * 16];
        // SAFETY: the block is 176 bytes and the activation block 256 quants; every load
        // below stays inside them.
        let (d, dmin) = unsafe { (a.d[i] * f16_at(p), -a.d[i] * f16_at(p.add(2))) };
        let (sc, m) = scales_mins(&b[4..16]);
        let hbits = unsafe { _mm256_loadu_si256(p.add(16) as *const __m256i) };
        let mut sumi = _mm256_setzero_si256();
        let mut imin = 0i32;
        for c in 0..4 {
            imin += m[2 * c] * bsum32(bs, 2 * c) + m[2 * c + 1] * bsum32(bs, 2 * c + 1);
            let (q5, q8l, q8h) = unsafe {
                (
                    _mm256_loadu_si256(p.add(48 + 32 * c) as *const __m256i),
                    _mm256_loadu_si256(q8.add(64 * c) as *const __m256i),
                    _mm256_loadu_si256(q8.add(64 * c + 32) as *const __m256i),
                )
            };
            // The 5th bits of this chunk are bits 2c and 2c+1 of every qh byte.
            let bit = |k: i32| {
                let mask = _mm256_set1_epi8(1 << k);
                _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, mask), mask), sixteen)
            };
            let lo = _mm256_or_si256(_mm256_and_si256(q5, m4), bit(2 * c as i32));
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q5, 4), m4), bit(2 * c as i32 + 1));
            let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q8l), _mm256_set1_epi16(sc[2 * c]));
            let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, q8h), _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        summs = dmin.mul_add(imin as f32, summs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc) + summs
}

/// Byte shuffles that spread scale bytes 2k and 2k+1 over 8 bytes each.
const PAIR_SHUFFLE: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut k = 0;
    while k < 8 {
        let mut i = 0;
        while i < 16 {
            t[k][i] = (2 * k + i / 8) as u8;
            i += 1;
        }
        k += 1;
    }
    t
};

/// Q6_K row (see `kquants::dot_q6k_scalar`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6k_row(row: &[u8], nb: usize, a: &Q8KActs) -> f32 {
    let (m3, m15) = (_mm256_set1_epi8(3), _mm256_set1_epi8(15));
    let mut acc = _mm256_setzero_ps();
    for (i, b) in row.chunks_exact(Q6K_BYTES).take(nb).enumerate() {
        let p = b.as_ptr();
        let q8 = a.qs[i * QK_K..(i + 1) * QK_K].as_ptr();
        let bsums = &a.bsums[i * 16..(i + 1) * 16];
        // SAFETY: the block is 210 bytes (scales at 192..208, d at 208), the activation block
        // 256 quants and 16 sums; every load below stays inside them.
        let d = a.d[i] * unsafe { f16_at(p.add(208)) };
        let (scales, bs) = unsafe { (_mm_loadu_si128(p.add(192) as *const __m128i), _mm256_loadu_si256(bsums.as_ptr() as *const __m256i)) };
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, _mm256_cvtepi8_epi16(scales)), 5);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let (lo1, lo2, hb) = unsafe {
                (
                    _mm256_loadu_si256(p.add(64 * h) as *const __m256i),
                    _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i),
                    _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
                )
            };
            let q = [
                _mm256_or_si256(_mm256_and_si256(lo1, m15), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4)),
                _mm256_or_si256(_mm256_and_si256(lo2, m15), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo1, 4), m15), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo2, 4), m15), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4)),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let (q8k, shuf) = unsafe {
                    (_mm256_loadu_si256(q8.add(128 * h + 32 * k) as *const __m256i), _mm_loadu_si128(PAIR_SHUFFLE[4 * h + k].as_ptr() as *const __m128i))
                };
                let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, _mm256_maddubs_epi16(qk, q8k)));
            }
        }
        sumi = _mm256_sub_epi32(sumi, offset);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc)
}

/// K-quant rows stored back to back, each dotted with the same Q8_K activations.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_kquant_rows(dtype: DType, rows: &[u8], row_bytes: usize, a: &Q8KActs, fine: bool, out: &mut [f32]) {
    let nb = (row_bytes / dtype.block_bytes()).min(a.d.len()).min(a.qs.len() / QK_K).min(a.bsums.len() / 16);
    let chunks = rows.chunks_exact(row_bytes.max(1));
    // SAFETY: the caller guarantees the CPU features.
    unsafe {
        match dtype {
            DType::Q4K => out.iter_mut().zip(chunks).for_each(|(o, r)| *o = q4k_row(r, nb, a, fine)),
            DType::Q5K => out.iter_mut().zip(chunks).for_each(|(o, r)| *o = q5k_row(r, nb, a)),
            DType::Q6K => out.iter_mut().zip(chunks).for_each(|(o, r)| *o = q6k_row(r, nb, a)),
            _ => {}
        }
    }
}
