//! The K-quant super-block formats (256 values): Q4_K, Q5_K, Q6_K (weights) and Q8_K
//! (activations). Layouts, little-endian, as GGML writes them:
//!
//! - Q4_K (144 B): f16 d, f16 dmin, 12 B of 6-bit scales and mins for 8 sub-blocks of 32,
//!   128 B nibbles. Chunk c (values 64c..64c+64) is bytes 32c..32c+32: low nibbles are
//!   sub-block 2c, high nibbles sub-block 2c+1. x = d * sc * q - dmin * m.
//! - Q5_K (176 B): f16 d, f16 dmin, 12 B scales, 32 B qh, 128 B nibbles (as Q4_K). Bit 2c of
//!   qh[l] is the 5th bit of value 64c + l, bit 2c+1 that of value 64c + 32 + l.
//! - Q6_K (210 B): 128 B ql, 64 B qh, 16 i8 scales (one per 16 values), f16 d. In half h
//!   (values 128h..), for l < 32: ql[64h + l] holds values l (low nibble) and l + 64 (high),
//!   ql[64h + 32 + l] values l + 32 and l + 96; qh[32h + l] holds their top 2 bits at bit
//!   0, 2, 4, 6 for values l, l + 32, l + 64, l + 96. x = d * sc * (q - 32).
//! - Q8_K (activations): f32 d, 256 i8, 16 i16 sums of 16 consecutive quants.
//!
//! The dots follow the arithmetic of GGML's x86 CPU path (see `dot_*` below); quantization
//! of weights is our own least-squares search (`kquantize`).

use super::legacy::{hsum8, signed_absmax};
use super::read_f16;

pub const QK_K: usize = 256;
pub const Q4K_BYTES: usize = 144;
pub const Q5K_BYTES: usize = 176;
pub const Q6K_BYTES: usize = 210;

fn blocks(src_bytes: usize, block_bytes: usize, dst_len: usize) -> usize {
    (src_bytes / block_bytes).min(dst_len / QK_K)
}

/// Scale and min of sub-block j (0..8) from the 12 packed bytes: 6 bits each; sub-blocks 4..8
/// keep their low 4 bits in bytes 8..12 and their top 2 bits in the top of bytes 0..8.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The inverse of `scale_min_k4` for all 8 sub-blocks (values must fit 6 bits).
pub fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] & 63;
        q[j + 4] = m[j] & 63;
    }
    for j in 4..8 {
        q[j + 4] = (sc[j] & 0x0F) | ((m[j] & 0x0F) << 4);
        q[j - 4] |= (sc[j] >> 4) << 6;
        q[j] |= (m[j] >> 4) << 6;
    }
    q
}

/// Unsigned quants of a Q4_K / Q5_K block in value order (5th bit from qh when given).
#[inline(always)]
pub fn unpack_q45k(qs: &[u8], qh: Option<&[u8]>, out: &mut [u8; QK_K]) {
    for c in 0..4 {
        for l in 0..32 {
            let b = qs[32 * c + l];
            let (mut lo, mut hi) = (b & 0x0F, b >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            out[64 * c + l] = lo;
            out[64 * c + 32 + l] = hi;
        }
    }
}

/// Unsigned 6-bit quants (0..64) of a Q6_K block in value order.
#[inline(always)]
pub fn unpack_q6k(ql: &[u8], qh: &[u8], out: &mut [u8; QK_K]) {
    for h in 0..2 {
        for l in 0..32 {
            let (a, b, hb) = (ql[64 * h + l], ql[64 * h + 32 + l], qh[32 * h + l]);
            out[128 * h + l] = (a & 0x0F) | ((hb & 3) << 4);
            out[128 * h + 32 + l] = (b & 0x0F) | (((hb >> 2) & 3) << 4);
            out[128 * h + 64 + l] = (a >> 4) | (((hb >> 4) & 3) << 4);
            out[128 * h + 96 + l] = (b >> 4) | (((hb >> 6) & 3) << 4);
        }
    }
}

fn dequantize_q45k(src: &[u8], dst: &mut [f32], five_bits: bool) {
    let bb = if five_bits { Q5K_BYTES } else { Q4K_BYTES };
    let mut q = [0u8; QK_K];
    for i in 0..blocks(src.len(), bb, dst.len()) {
        let b = &src[i * bb..(i + 1) * bb];
        let (d, dmin) = (read_f16(b, 0), read_f16(b, 2));
        if five_bits {
            unpack_q45k(&b[48..176], Some(&b[16..48]), &mut q);
        } else {
            unpack_q45k(&b[16..144], None, &mut q);
        }
        let out = &mut dst[i * QK_K..(i + 1) * QK_K];
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for l in 32 * j..32 * (j + 1) {
                out[l] = d1 * q[l] as f32 - m1;
            }
        }
    }
}

pub fn dequantize_q4k(src: &[u8], dst: &mut [f32]) {
    dequantize_q45k(src, dst, false)
}

pub fn dequantize_q5k(src: &[u8], dst: &mut [f32]) {
    dequantize_q45k(src, dst, true)
}

pub fn dequantize_q6k(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK_K];
    for i in 0..blocks(src.len(), Q6K_BYTES, dst.len()) {
        let b = &src[i * Q6K_BYTES..(i + 1) * Q6K_BYTES];
        let d = read_f16(b, 208);
        unpack_q6k(&b[0..128], &b[128..192], &mut q);
        let out = &mut dst[i * QK_K..(i + 1) * QK_K];
        for (l, o) in out.iter_mut().enumerate() {
            let sc = b[192 + l / 16] as i8;
            *o = d * sc as f32 * (q[l] as i32 - 32) as f32;
        }
    }
}

pub use super::kquantize::{quantize_q4k, quantize_q5k, quantize_q6k};

/// Activations in Q8_K.
#[derive(Clone, Debug, Default)]
pub struct Q8KActs {
    pub d: Vec<f32>,
    pub qs: Vec<i8>,
    pub bsums: Vec<i16>,
}

/// Quantize activations to Q8_K as GGML does: the scale -127 / (the signed value of largest
/// magnitude), rounding half to even; a partial last block is left out.
#[inline(always)]
pub fn quantize_acts_q8k(x: &[f32]) -> Q8KActs {
    let nb = x.len() / QK_K;
    let mut a = Q8KActs { d: Vec::with_capacity(nb), qs: Vec::with_capacity(nb * QK_K), bsums: Vec::with_capacity(nb * 16) };
    for blk in x.chunks_exact(QK_K) {
        let max = signed_absmax(blk);
        if max == 0.0 {
            a.d.push(0.0);
            a.qs.extend(std::iter::repeat_n(0, QK_K));
            a.bsums.extend(std::iter::repeat_n(0, 16));
            continue;
        }
        let iscale = -127.0 / max;
        let start = a.qs.len();
        for &v in blk {
            a.qs.push((iscale * v).round_ties_even().min(127.0) as i8);
        }
        for g in a.qs[start..].chunks_exact(16) {
            a.bsums.push(g.iter().map(|&q| q as i16).sum());
        }
        a.d.push(1.0 / iscale);
    }
    a
}

/// Q4_K x Q8_K with the arithmetic of GGML's repacked x86 kernels (how llama.cpp runs every
/// Q4_K matrix whose rows are a multiple of 8): exact integer sums, one fused multiply-add
/// per super-block (`fine`: per 64 values, as the 4-row GEMM does) for the scaled quants and
/// for the mins, and the min total subtracted last.
pub fn dot_q4k_scalar(row: &[u8], a: &Q8KActs, fine: bool) -> f32 {
    let nb = (row.len() / Q4K_BYTES).min(a.d.len());
    let (mut acc, mut acc_min) = (0f32, 0f32);
    let mut q = [0u8; QK_K];
    for i in 0..nb {
        let b = &row[i * Q4K_BYTES..(i + 1) * Q4K_BYTES];
        let (dx, dmin) = (read_f16(b, 0) * a.d[i], read_f16(b, 2) * a.d[i]);
        unpack_q45k(&b[16..144], None, &mut q);
        let qa = &a.qs[i * QK_K..(i + 1) * QK_K];
        let bs = &a.bsums[i * 16..(i + 1) * 16];
        let (mut isum, mut imin) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            let dot: i32 = (32 * j..32 * (j + 1)).map(|l| q[l] as i32 * qa[l] as i32).sum();
            isum += sc as i32 * dot;
            imin += m as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
            if fine && j % 2 == 1 {
                acc = (isum as f32).mul_add(dx, acc);
                acc_min = (imin as f32).mul_add(dmin, acc_min);
                (isum, imin) = (0, 0);
            }
        }
        if !fine {
            acc = (isum as f32).mul_add(dx, acc);
            acc_min = (imin as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// Q5_K x Q8_K with GGML's AVX2 arithmetic: 8 integer lanes (lane l: values 4l..4l+3 of
/// every 32) times the sub-block scale, fused-added per super-block as floats; the mins as
/// one scalar sum.
pub fn dot_q5k_scalar(row: &[u8], a: &Q8KActs) -> f32 {
    let nb = (row.len() / Q5K_BYTES).min(a.d.len());
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    let mut q = [0u8; QK_K];
    for i in 0..nb {
        let b = &row[i * Q5K_BYTES..(i + 1) * Q5K_BYTES];
        let d = a.d[i] * read_f16(b, 0);
        let dmin = -a.d[i] * read_f16(b, 2);
        unpack_q45k(&b[48..176], Some(&b[16..48]), &mut q);
        let qa = &a.qs[i * QK_K..(i + 1) * QK_K];
        let bs = &a.bsums[i * 16..(i + 1) * 16];
        let mut lanes = [0i32; 8];
        let mut imin = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            imin += m as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
            for l in 0..32 {
                let v = 32 * j + l;
                lanes[l / 4] += sc as i32 * (q[v] as i32 * qa[v] as i32);
            }
        }
        summs = dmin.mul_add(imin as f32, summs);
        for (acc, &li) in acc.iter_mut().zip(&lanes) {
            *acc = d.mul_add(li as f32, *acc);
        }
    }
    hsum8(&acc) + summs
}

/// Q6_K x Q8_K with GGML's AVX2 arithmetic: 8 integer lanes of scale * q * q8 over unsigned
/// quants (lane l: values 4l..4l+3 of every 32), minus lane l's share of the offset,
/// 32 * (scale * sum of q8) over values 32l..32l+32; then fused-added per super-block.
pub fn dot_q6k_scalar(row: &[u8], a: &Q8KActs) -> f32 {
    let nb = (row.len() / Q6K_BYTES).min(a.d.len());
    let mut acc = [0f32; 8];
    let mut q = [0u8; QK_K];
    for i in 0..nb {
        let b = &row[i * Q6K_BYTES..(i + 1) * Q6K_BYTES];
        let d = a.d[i] * read_f16(b, 208);
        unpack_q6k(&b[0..128], &b[128..192], &mut q);
        let qa = &a.qs[i * QK_K..(i + 1) * QK_K];
        let bs = &a.bsums[i * 16..(i + 1) * 16];
        let sc = |g: usize| b[192 + g] as i8 as i32;
        let mut lanes = [0i32; 8];
        for (v, (&qv, &av)) in q.iter().zip(qa).enumerate() {
            lanes[(v % 32) / 4] += sc(v / 16) * (qv as i32 * av as i32);
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane -= 32 * (bs[2 * l] as i32 * sc(2 * l) + bs[2 * l + 1] as i32 * sc(2 * l + 1));
        }
        for (acc, &li) in acc.iter_mut().zip(&lanes) {
            *acc = d.mul_add(li as f32, *acc);
        }
    }
    hsum8(&acc)
}
