//! The 32-value block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (weights) and Q8_0 / Q8_1
//! (activations). Layouts, all little-endian, as GGML writes them:
//!
//! - Q4_0 (18 B): f16 d, 16 B nibbles. Value j < 16 is the low nibble of byte j, value j + 16
//!   its high nibble; x = (q - 8) * d.
//! - Q4_1 (20 B): f16 d, f16 m, 16 B nibbles (same order); x = q * d + m.
//! - Q5_0 (22 B): f16 d, u32 qh (bit j = 5th bit of value j), 16 B nibbles; x = (q - 16) * d.
//! - Q5_1 (24 B): f16 d, f16 m, u32 qh, 16 B nibbles; x = q * d + m.
//! - Q8_0 (34 B): f16 d, 32 i8; x = q * d.
//! - Q8_1 (activations only): d, s = d * sum(q) and 32 i8, kept here as f32 values of the
//!   f16 fields.
//!
//! Weight quantization follows GGML's reference rounding (what its quantizer writes, so a
//! file we write matches one it writes); activation quantization and the dots follow GGML's
//! AVX2 CPU path, whose arithmetic the greedy-parity tests depend on.

use super::{read_f16, write_f16};

pub const QK: usize = 32;
pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;

/// Whole blocks that both the source bytes and the destination values hold.
fn blocks(src_bytes: usize, block_bytes: usize, dst_len: usize) -> usize {
    (src_bytes / block_bytes).min(dst_len / QK)
}

/// The 32 quants of a 4- or 5-bit block, in value order (unsigned, before any offset).
#[inline(always)]
pub fn unpack_nibbles(qs: &[u8], qh: u32, out: &mut [u8; QK]) {
    for j in 0..16 {
        out[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        out[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
}

#[inline(always)]
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for i in 0..blocks(src.len(), Q4_0_BYTES, dst.len()) {
        let b = &src[i * Q4_0_BYTES..(i + 1) * Q4_0_BYTES];
        let d = read_f16(b, 0);
        unpack_nibbles(&b[2..18], 0, &mut q);
        for (o, &v) in dst[i * QK..(i + 1) * QK].iter_mut().zip(&q) {
            *o = (v as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for i in 0..blocks(src.len(), Q4_1_BYTES, dst.len()) {
        let b = &src[i * Q4_1_BYTES..(i + 1) * Q4_1_BYTES];
        let (d, m) = (read_f16(b, 0), read_f16(b, 2));
        unpack_nibbles(&b[4..20], 0, &mut q);
        for (o, &v) in dst[i * QK..(i + 1) * QK].iter_mut().zip(&q) {
            *o = v as f32 * d + m;
        }
    }
}

pub fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for i in 0..blocks(src.len(), Q5_0_BYTES, dst.len()) {
        let b = &src[i * Q5_0_BYTES..(i + 1) * Q5_0_BYTES];
        let d = read_f16(b, 0);
        unpack_nibbles(&b[6..22], read_u32(b, 2), &mut q);
        for (o, &v) in dst[i * QK..(i + 1) * QK].iter_mut().zip(&q) {
            *o = (v as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for i in 0..blocks(src.len(), Q5_1_BYTES, dst.len()) {
        let b = &src[i * Q5_1_BYTES..(i + 1) * Q5_1_BYTES];
        let (d, m) = (read_f16(b, 0), read_f16(b, 2));
        unpack_nibbles(&b[8..24], read_u32(b, 4), &mut q);
        for (o, &v) in dst[i * QK..(i + 1) * QK].iter_mut().zip(&q) {
            *o = v as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for i in 0..blocks(src.len(), Q8_0_BYTES, dst.len()) {
        let b = &src[i * Q8_0_BYTES..(i + 1) * Q8_0_BYTES];
        let d = read_f16(b, 0);
        for (o, &v) in dst[i * QK..(i + 1) * QK].iter_mut().zip(&b[2..34]) {
            *o = v as i8 as f32 * d;
        }
    }
}

/// The value of largest magnitude (the first one on ties), keeping its sign; 0 for none (all
/// zeros). Shared by the quantizers and the Q8_K activation quantizer.
#[inline(always)]
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Pack 32 quants of up to 5 bits: low nibbles into 16 bytes, 5th bits into a u32.
fn pack_nibbles(q: &[u8; QK], qs: &mut [u8]) -> u32 {
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        qh |= (((q[j] >> 4) & 1) as u32) << j;
        qh |= (((q[j + 16] >> 4) & 1) as u32) << (j + 16);
    }
    qh
}

/// Symmetric formats (Q4_0, Q5_0): d = -max / 2^(bits-1), q = trunc(x / d + offset + 0.5).
fn quantize_symmetric(x: &[f32], levels: i32) -> (f32, [u8; QK]) {
    let half = (levels / 2) as f32;
    let d = signed_absmax(x) / -half;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        // The float -> int conversion truncates toward zero, as GGML's (int8_t) cast does.
        *o = ((v * id + half + 0.5) as i32).clamp(0, levels - 1) as u8;
    }
    (d, q)
}

/// Affine formats (Q4_1, Q5_1): d = (max - min) / (levels - 1), m = min.
fn quantize_affine(x: &[f32], levels: i32) -> (f32, f32, [u8; QK]) {
    let (min, max) = min_max(x);
    let d = (max - min) / (levels - 1) as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (((v - min) * id + 0.5) as i32).clamp(0, levels - 1) as u8;
    }
    (d, min, q)
}

pub fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for i in 0..blocks(dst.len(), Q4_0_BYTES, src.len()) {
        let b = &mut dst[i * Q4_0_BYTES..(i + 1) * Q4_0_BYTES];
        let (d, q) = quantize_symmetric(&src[i * QK..(i + 1) * QK], 16);
        write_f16(b, 0, d);
        pack_nibbles(&q, &mut b[2..18]);
    }
}

pub fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    for i in 0..blocks(dst.len(), Q4_1_BYTES, src.len()) {
        let b = &mut dst[i * Q4_1_BYTES..(i + 1) * Q4_1_BYTES];
        let (d, m, q) = quantize_affine(&src[i * QK..(i + 1) * QK], 16);
        write_f16(b, 0, d);
        write_f16(b, 2, m);
        pack_nibbles(&q, &mut b[4..20]);
    }
}

pub fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    for i in 0..blocks(dst.len(), Q5_0_BYTES, src.len()) {
        let b = &mut dst[i * Q5_0_BYTES..(i + 1) * Q5_0_BYTES];
        let (d, q) = quantize_symmetric(&src[i * QK..(i + 1) * QK], 32);
        write_f16(b, 0, d);
        let qh = pack_nibbles(&q, &mut b[6..22]);
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

pub fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    for i in 0..blocks(dst.len(), Q5_1_BYTES, src.len()) {
        let b = &mut dst[i * Q5_1_BYTES..(i + 1) * Q5_1_BYTES];
        let (d, m, q) = quantize_affine(&src[i * QK..(i + 1) * QK], 32);
        write_f16(b, 0, d);
        write_f16(b, 2, m);
        let qh = pack_nibbles(&q, &mut b[8..24]);
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for i in 0..blocks(dst.len(), Q8_0_BYTES, src.len()) {
        let b = &mut dst[i * Q8_0_BYTES..(i + 1) * Q8_0_BYTES];
        let x = &src[i * QK..(i + 1) * QK];
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(b, 0, d);
        for (o, &v) in b[2..34].iter_mut().zip(x) {
            // Rounding half away from zero, as C's roundf.
            *o = (v * id).round().clamp(-128.0, 127.0) as i8 as u8;
        }
    }
}

/// Activations in Q8_0 (Q8_1 when `sums` is kept): per block the f16-rounded scale, the
/// scale times the sum of the quants (Q8_1 only), and 32 quants.
#[derive(Clone, Debug, Default)]
pub struct Q8Acts {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
}

/// Quantize activations to Q8_0 / Q8_1 the way GGML's AVX2 path does: scale 127 / amax,
/// rounding half to even; a partial last block is left out (rows are whole blocks).
#[inline(always)]
pub fn quantize_acts_q8(x: &[f32], with_sums: bool) -> Q8Acts {
    let nb = x.len() / QK;
    let mut a = Q8Acts { d: Vec::with_capacity(nb), s: Vec::new(), qs: Vec::with_capacity(nb * QK) };
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for &v in blk {
            let q = (v * id).round_ties_even().clamp(-128.0, 127.0) as i32;
            sum += q;
            a.qs.push(q as i8);
        }
        a.d.push(half::f16::from_f32(d).to_f32());
        if with_sums {
            a.s.push(half::f16::from_f32(d * sum as f32).to_f32());
        }
    }
    a
}

/// Horizontal sum of 8 lanes in the order of GGML's `hsum_float_8`.
#[inline(always)]
pub fn hsum8(x: &[f32; 8]) -> f32 {
    let r = [x[4] + x[0], x[5] + x[1], x[6] + x[2], x[7] + x[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Lane sums of a 32-value integer dot: lane l holds the products of values 4l..4l+3, the
/// grouping of AVX2's multiply-add of byte pairs then word pairs.
#[inline(always)]
pub fn lane_sums(w: &[i32; QK], a: &[i8]) -> [i32; 8] {
    let mut l = [0i32; 8];
    for (j, (&x, &y)) in w.iter().zip(a).enumerate() {
        l[j / 4] += x * y as i32;
    }
    l
}

/// Which 32-value weight format a block dot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Legacy {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Legacy {
    pub fn block_bytes(self) -> usize {
        match self {
            Legacy::Q4_0 => Q4_0_BYTES,
            Legacy::Q4_1 => Q4_1_BYTES,
            Legacy::Q5_0 => Q5_0_BYTES,
            Legacy::Q5_1 => Q5_1_BYTES,
            Legacy::Q8_0 => Q8_0_BYTES,
        }
    }
    /// The formats with a min (dotted with Q8_1).
    pub fn affine(self) -> bool {
        matches!(self, Legacy::Q4_1 | Legacy::Q5_1)
    }
}

/// Scalar block dot with GGML's AVX2 arithmetic: per block, lane sums scaled by d_w * d_a
/// and fused-added into 8 lanes; the lanes summed at the end; for the affine formats the
/// sum of m * s over blocks (fused multiply-add, as the compiler builds it) added last.
pub fn dot_scalar(kind: Legacy, row: &[u8], a: &Q8Acts) -> f32 {
    let bb = kind.block_bytes();
    let nb = (row.len() / bb).min(a.d.len());
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    let mut q = [0u8; QK];
    let mut w = [0i32; QK];
    for i in 0..nb {
        let b = &row[i * bb..(i + 1) * bb];
        let d = read_f16(b, 0);
        let lanes = |w: &[i32; QK]| lane_sums(w, &a.qs[i * QK..(i + 1) * QK]);
        let (scale, l) = match kind {
            Legacy::Q4_0 | Legacy::Q5_0 | Legacy::Q8_0 => {
                match kind {
                    Legacy::Q4_0 => {
                        unpack_nibbles(&b[2..18], 0, &mut q);
                        w.iter_mut().zip(&q).for_each(|(o, &v)| *o = v as i32 - 8);
                    }
                    Legacy::Q5_0 => {
                        unpack_nibbles(&b[6..22], read_u32(b, 2), &mut q);
                        w.iter_mut().zip(&q).for_each(|(o, &v)| *o = v as i32 - 16);
                    }
                    _ => w.iter_mut().zip(&b[2..34]).for_each(|(o, &v)| *o = v as i8 as i32),
                }
                (d * a.d[i], lanes(&w))
            }
            Legacy::Q4_1 | Legacy::Q5_1 => {
                let m = read_f16(b, 2);
                summs = m.mul_add(a.s[i], summs);
                if kind == Legacy::Q4_1 {
                    unpack_nibbles(&b[4..20], 0, &mut q);
                } else {
                    unpack_nibbles(&b[8..24], read_u32(b, 4), &mut q);
                }
                w.iter_mut().zip(&q).for_each(|(o, &v)| *o = v as i32);
                (d * a.d[i], lanes(&w))
            }
        };
        for (acc, &li) in acc.iter_mut().zip(&l) {
            *acc = scale.mul_add(li as f32, *acc);
        }
    }
    hsum8(&acc) + summs
}
