//! The GPU layout of quantized weights. The file's GGML blocks are split at upload into up to
//! four regions (quants, scales, high bits, ...), each an array over every block of the
//! segment in row-major block order, so that the kernels read quants with aligned 16-byte
//! loads and every scale with one aligned load. The bytes are the same as the file's, only
//! reordered: a weight read per token costs exactly its stored size. Q4_K and Q5_K also have
//! the bits of their 12 scale bytes rearranged (`k_scales_to_gpu`), so that a kernel gets the
//! four 6-bit scales and mins a unit needs as the bytes of one word in a few operations, and
//! their quants (R0) in each row's even-odd unit order (`k45_pos`).

use crate::error::{Error, Result};
use crate::quant::kquants::{pack_scale_min_k4, scale_min_k4};
use crate::quant::DType;

/// A quantized format the GPU kernels read; `id()` is the FMT number in the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QFmt {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

pub const ALL_FORMATS: [QFmt; 8] = [QFmt::Q8_0, QFmt::Q4_0, QFmt::Q4_1, QFmt::Q5_0, QFmt::Q5_1, QFmt::Q4K, QFmt::Q5K, QFmt::Q6K];

impl QFmt {
    pub fn of(dtype: DType) -> Option<QFmt> {
        Some(match dtype {
            DType::Q8_0 => QFmt::Q8_0,
            DType::Q4_0 => QFmt::Q4_0,
            DType::Q4_1 => QFmt::Q4_1,
            DType::Q5_0 => QFmt::Q5_0,
            DType::Q5_1 => QFmt::Q5_1,
            DType::Q4K => QFmt::Q4K,
            DType::Q5K => QFmt::Q5K,
            DType::Q6K => QFmt::Q6K,
            _ => return None,
        })
    }

    pub fn dtype(self) -> DType {
        match self {
            QFmt::Q8_0 => DType::Q8_0,
            QFmt::Q4_0 => DType::Q4_0,
            QFmt::Q4_1 => DType::Q4_1,
            QFmt::Q5_0 => DType::Q5_0,
            QFmt::Q5_1 => DType::Q5_1,
            QFmt::Q4K => DType::Q4K,
            QFmt::Q5K => DType::Q5K,
            QFmt::Q6K => DType::Q6K,
        }
    }

    /// The FMT template argument of the kernels (quant_units.cu).
    pub fn id(self) -> u32 {
        match self {
            QFmt::Q8_0 => 0,
            QFmt::Q4_0 => 1,
            QFmt::Q4_1 => 2,
            QFmt::Q5_0 => 3,
            QFmt::Q5_1 => 4,
            QFmt::Q4K => 5,
            QFmt::Q5K => 6,
            QFmt::Q6K => 7,
        }
    }

    /// Byte ranges (start, length) of one GGML block that make regions R0, R1, ... in order.
    pub fn regions(self) -> &'static [(usize, usize)] {
        match self {
            QFmt::Q8_0 => &[(2, 32), (0, 2)],
            QFmt::Q4_0 => &[(2, 16), (0, 2)],
            QFmt::Q4_1 => &[(4, 16), (0, 4)],
            QFmt::Q5_0 => &[(6, 16), (0, 2), (2, 4)],
            QFmt::Q5_1 => &[(8, 16), (0, 4), (4, 4)],
            QFmt::Q4K => &[(16, 128), (0, 16)],
            QFmt::Q5K => &[(48, 128), (0, 16), (16, 32)],
            QFmt::Q6K => &[(0, 128), (128, 64), (192, 16), (208, 2)],
        }
    }

    /// 16-byte units of quants per row of `k` values (what one kernel thread loads at once; the
    /// Q4_K and Q5_K GEMVs take them in pairs).
    pub fn units_per_row(self, k: usize) -> usize {
        if self == QFmt::Q8_0 {
            k / 16
        } else {
            k / 32
        }
    }
}

/// Where unit `cc` of a Q4_K / Q5_K row of `nu` units sits in R0 (kernels/quant_units.cu,
/// k45_pos): the row's even units first, then its odd ones.
pub fn k45_pos(cc: usize, nu: usize) -> usize {
    (cc & 1) * (nu / 2) + (cc >> 1)
}

/// Regions start on this boundary inside a weight's device buffer.
pub const REGION_ALIGN: usize = 256;

/// The segment bytes of `rows` rows of `k` values in the GPU layout, and the offset of each
/// region from the segment start (unused regions point at the segment start).
pub fn repack(name: &str, fmt: QFmt, k: usize, rows: usize, blocks: &[u8]) -> Result<(Vec<u8>, [usize; 4])> {
    let dtype = fmt.dtype();
    let row_bytes = dtype
        .row_bytes(k)
        .ok_or_else(|| Error::tensor(name, format!("row length {k} is not a multiple of the {} block of {} values", dtype.name(), dtype.block_len())))?;
    if blocks.len() != rows * row_bytes {
        return Err(Error::tensor(name, format!("{} bytes for {rows} rows of {k} {}", blocks.len(), dtype.name())));
    }
    let bb = dtype.block_bytes();
    let n_blocks = blocks.len() / bb;
    let mut offsets = [0usize; 4];
    let mut total = 0;
    for (r, &(_, len)) in fmt.regions().iter().enumerate() {
        offsets[r] = total;
        total = (total + n_blocks * len).next_multiple_of(REGION_ALIGN);
    }
    let mut out = vec![0u8; total];
    for (b, block) in blocks.chunks_exact(bb).enumerate() {
        for (r, &(start, len)) in fmt.regions().iter().enumerate() {
            let at = offsets[r] + b * len;
            out[at..at + len].copy_from_slice(&block[start..start + len]);
        }
        if matches!(fmt, QFmt::Q4K | QFmt::Q5K) {
            let at = offsets[1] + b * 16 + 4;
            let gpu = k_scales_to_gpu(out[at..at + 12].try_into().expect("12 scale bytes"));
            out[at..at + 12].copy_from_slice(&gpu);
        }
    }
    if matches!(fmt, QFmt::Q4K | QFmt::Q5K) {
        let nu = fmt.units_per_row(k);
        for row in out[offsets[0]..offsets[0] + rows * nu * 16].chunks_exact_mut(nu * 16) {
            let units = row.to_vec();
            for (cc, unit) in units.chunks_exact(16).enumerate() {
                let at = 16 * k45_pos(cc, nu);
                row[at..at + 16].copy_from_slice(unit);
            }
        }
    }
    Ok((out, offsets))
}

/// The four 6-bit values chunk c (sub-blocks 2c and 2c + 1) of a Q4_K / Q5_K super-block
/// needs, in the order the kernels want them: [scale 2c, scale 2c+1, min 2c, min 2c+1].
fn chunk_values(q: &[u8; 12]) -> [[u8; 4]; 4] {
    std::array::from_fn(|c| {
        let ((s0, m0), (s1, m1)) = (scale_min_k4(2 * c, q), scale_min_k4(2 * c + 1, q));
        [s0, s1, m0, m1]
    })
}

/// GGML's 12 scale bytes to the GPU's (kernels/quant_units.cu, QK45::scale_word): with
/// v[c][i] the chunk values above, byte i of word 0 is the low nibbles of v[0][i] and
/// v[1][i] (low, high nibble), of word 1 those of v[2][i] and v[3][i], and bits 2c, 2c + 1 of
/// byte i of word 2 are the top two bits of v[c][i].
fn k_scales_to_gpu(q: &[u8; 12]) -> [u8; 12] {
    let v = chunk_values(q);
    let mut out = [0u8; 12];
    for i in 0..4 {
        out[i] = (v[0][i] & 15) | (v[1][i] & 15) << 4;
        out[4 + i] = (v[2][i] & 15) | (v[3][i] & 15) << 4;
        out[8 + i] = (0..4).map(|c| (v[c][i] >> 4) << (2 * c)).sum();
    }
    out
}

/// The inverse of `k_scales_to_gpu`.
fn k_scales_from_gpu(g: &[u8; 12]) -> [u8; 12] {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for c in 0..4 {
        let nib = if c < 2 { &g[0..4] } else { &g[4..8] };
        let val = |i: usize| (nib[i] >> (4 * (c & 1)) & 15) | ((g[8 + i] >> (2 * c)) & 3) << 4;
        (sc[2 * c], sc[2 * c + 1], m[2 * c], m[2 * c + 1]) = (val(0), val(1), val(2), val(3));
    }
    pack_scale_min_k4(&sc, &m)
}

/// The inverse of `repack` (tests, and the tuner's CPU reference reading a weight back).
pub fn unpack(fmt: QFmt, seg: &[u8], offsets: &[usize; 4], n_blocks: usize, k: usize) -> Vec<u8> {
    let bb = fmt.dtype().block_bytes();
    let mut out = vec![0u8; n_blocks * bb];
    let (nb, nu) = (k / fmt.dtype().block_len(), fmt.units_per_row(k));
    for (b, block) in out.chunks_exact_mut(bb).enumerate() {
        for (r, &(start, len)) in fmt.regions().iter().enumerate() {
            let at = offsets[r] + b * len;
            block[start..start + len].copy_from_slice(&seg[at..at + len]);
        }
        if matches!(fmt, QFmt::Q4K | QFmt::Q5K) {
            // R0 in the row's even-odd order (k45_pos): the block's 8 units one by one.
            let (row, j, s0) = (b / nb, b % nb, fmt.regions()[0].0);
            for w in 0..8 {
                let at = offsets[0] + 16 * (row * nu + k45_pos(8 * j + w, nu));
                block[s0 + 16 * w..s0 + 16 * w + 16].copy_from_slice(&seg[at..at + 16]);
            }
            // Then the scale bytes in ggml's packing again.
            let ggml = k_scales_from_gpu(block[4..16].try_into().expect("12 scale bytes"));
            block[4..16].copy_from_slice(&ggml);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_cover_each_block_once() {
        for fmt in ALL_FORMATS {
            let bb = fmt.dtype().block_bytes();
            let mut seen = vec![0u8; bb];
            for &(start, len) in fmt.regions() {
                seen[start..start + len].iter_mut().for_each(|s| *s += 1);
            }
            assert!(seen.iter().all(|&s| s == 1), "{fmt:?}");
            // R0 is whole 16-byte units, one block's worth of a row's units.
            let (_, len0) = fmt.regions()[0];
            assert_eq!(len0 % 16, 0);
            assert_eq!(fmt.units_per_row(fmt.dtype().block_len()), len0 / 16, "{fmt:?}");
        }
    }

    #[test]
    fn repack_round_trips_and_aligns() {
        for fmt in ALL_FORMATS {
            let d = fmt.dtype();
            let (k, rows) = (2 * d.block_len(), 3);
            let bytes: Vec<u8> = (0..rows * d.row_bytes(k).unwrap()).map(|i| (i * 7 + 3) as u8).collect();
            let (seg, off) = repack("w", fmt, k, rows, &bytes).unwrap();
            for (r, &(_, len)) in fmt.regions().iter().enumerate() {
                assert_eq!(off[r] % REGION_ALIGN, 0);
                assert!(off[r] + rows * 2 * len <= seg.len());
            }
            assert_eq!(unpack(fmt, &seg, &off, rows * 2, k), bytes);
        }
        // Every 12-byte scale field round-trips (96 bits of 16 six-bit values).
        let mut r = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..1000 {
            let q: [u8; 12] = std::array::from_fn(|_| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                r as u8
            });
            assert_eq!(k_scales_from_gpu(&k_scales_to_gpu(&q)), q);
            let g = k_scales_to_gpu(&q);
            for (c, v) in chunk_values(&q).iter().enumerate() {
                // What QK45::scale_word computes from the GPU bytes.
                let w = |i: usize| u32::from_le_bytes(g[4 * i..4 * i + 4].try_into().unwrap());
                let lo = ((if c < 2 { w(0) } else { w(1) }) >> (4 * (c & 1))) & 0x0F0F_0F0F;
                let word = lo | ((w(2) >> (2 * c)) & 0x0303_0303) << 4;
                assert_eq!(word.to_le_bytes(), *v);
            }
        }
        assert!(repack("w", QFmt::Q4K, 100, 1, &[0u8; 10]).is_err());
        assert!(repack("w", QFmt::Q8_0, 32, 2, &[0u8; 34]).is_err());
    }
}
