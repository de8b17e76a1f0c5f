//! Plain float formats: F32, F16 (IEEE half) and BF16 (the top 16 bits of an f32), stored
//! little-endian. Their dots use GGML's AVX2 arithmetic for float vectors: four 8-lane
//! accumulators over steps of 32 values (fused multiply-add), reduced pairwise, with the
//! tail past the last whole step added in f64.

use half::{bf16, f16};

/// Values that both a byte row of `width`-byte elements and `dst` hold.
fn count(src_bytes: usize, width: usize, dst_len: usize) -> usize {
    (src_bytes / width).min(dst_len)
}

pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    let n = count(src.len(), 4, dst.len());
    for (o, c) in dst[..n].iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    let n = count(src.len(), 2, dst.len());
    for (o, c) in dst[..n].iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    let n = count(src.len(), 2, dst.len());
    for (o, c) in dst[..n].iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

pub fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (c, v) in dst.chunks_exact_mut(4).zip(src) {
        c.copy_from_slice(&v.to_le_bytes());
    }
}

/// f32 -> f16, rounding to nearest even (as F16C and GGML do).
pub fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (c, v) in dst.chunks_exact_mut(2).zip(src) {
        c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

/// f32 -> bf16, rounding to nearest even.
pub fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (c, v) in dst.chunks_exact_mut(2).zip(src) {
        c.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}

/// Values per step of the float dots: 4 accumulators of 8 lanes.
pub const STEP: usize = 32;

/// Reduce 4 x 8 lane accumulators the way GGML's AVX2 `GGML_F32x8_REDUCE` does.
#[inline(always)]
pub fn reduce_4x8(mut s: [[f32; 8]; 4]) -> f32 {
    for l in 0..8 {
        s[0][l] += s[2][l];
        s[1][l] += s[3][l];
    }
    for l in 0..8 {
        s[0][l] += s[1][l];
    }
    let t: [f32; 4] = std::array::from_fn(|l| s[0][l] + s[0][l + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// Scalar float dot with the lane structure above, over values converted by `wx` / `ax`.
#[inline(always)]
fn dot_lanes(n: usize, wx: impl Fn(usize) -> f32, ax: impl Fn(usize) -> f32) -> f32 {
    let whole = n / STEP * STEP;
    let mut s = [[0f32; 8]; 4];
    for base in (0..whole).step_by(STEP) {
        for (a, acc) in s.iter_mut().enumerate() {
            for (l, lane) in acc.iter_mut().enumerate() {
                let i = base + 8 * a + l;
                *lane = wx(i).mul_add(ax(i), *lane);
            }
        }
    }
    let mut sum = reduce_4x8(s) as f64;
    for i in whole..n {
        sum += (wx(i) * ax(i)) as f64;
    }
    sum as f32
}

pub fn dot_f32_scalar(row: &[u8], x: &[f32]) -> f32 {
    let n = count(row.len(), 4, x.len());
    let w = |i: usize| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]);
    dot_lanes(n, w, |i| x[i])
}

/// F16 weights against activations already rounded to f16 (the companion format).
pub fn dot_f16_scalar(row: &[u8], x: &[f16]) -> f32 {
    let n = count(row.len(), 2, x.len());
    let w = |i: usize| f16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32();
    dot_lanes(n, w, |i| x[i].to_f32())
}

/// Two f16 vectors (attention scores over the f16 KV cache).
pub fn dot_f16_halves_scalar(a: &[f16], b: &[f16]) -> f32 {
    dot_lanes(a.len().min(b.len()), |i| a[i].to_f32(), |i| b[i].to_f32())
}

/// 16-bit float weights against f32 activations (exact numerics): each product exact in f32,
/// summed in 16 lanes that the compiler vectorizes.
pub fn dot_half_f32(row: &[u8], x: &[f32], to_f32: impl Fn(u16) -> f32) -> f32 {
    let n = count(row.len(), 2, x.len());
    let mut lanes = [0f32; 16];
    let whole = n / 16 * 16;
    for (w, a) in row[..2 * whole].chunks_exact(32).zip(x[..whole].chunks_exact(16)) {
        for l in 0..16 {
            lanes[l] += to_f32(u16::from_le_bytes([w[2 * l], w[2 * l + 1]])) * a[l];
        }
    }
    let mut sum = lanes.iter().map(|&v| v as f64).sum::<f64>();
    for i in whole..n {
        sum += (to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) * x[i]) as f64;
    }
    sum as f32
}

/// BF16 weights against activations rounded to bf16.
pub fn dot_bf16_scalar(row: &[u8], x: &[bf16]) -> f32 {
    let n = count(row.len(), 2, x.len());
    let w = |i: usize| bf16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32();
    dot_lanes(n, w, |i| x[i].to_f32())
}
