//! Weight storage formats (GGML block formats and plain floats): block layout,
//! dequantization, quantization and dot products against f32 activations.
//!
//! Interface used by the rest of the engine (keep these signatures):
//! - `DType`: the stored format of a tensor, with its GGML type id and block geometry.
//! - `dequantize_row(dtype, src, dst)`: bytes of one row -> f32.
//! - `quantize_row(dtype, src, dst)`: f32 -> bytes of one row (in-situ quantization, convert).
//! - `dot_f32(dtype, row, x)`: plain reference dot product of one stored row with f32 activations.
//! - `PreparedActs` + `prepare_acts` + `dot_prepared`: the fast path. Activations are converted
//!   once per matmul into the companion format the weight format is dotted with (as llama.cpp
//!   does: Q8_0 / Q8_1 / Q8_K), then every row is dotted with SIMD where the CPU has it.
//!
//! Row functions take slices whose lengths the caller has checked (`DType::row_bytes`); a
//! row given with too few bytes or values is processed up to the last whole block both
//! sides hold, never read past its end.
//!
//! Files: `float` (F32, F16, BF16), `legacy` (Q4_0 .. Q8_1, 32-value blocks), `kquants`
//! (Q4_K, Q5_K, Q6_K, Q8_K, 256-value super-blocks), `simd` / `simd_k` (AVX2 dots), `prepared` (the
//! companion formats and the dispatch of the fast path), `half_ops` (f16 vector operations
//! for an f16 KV cache).

mod float;
mod half_ops;
mod kquantize;
pub(crate) mod kquants;
mod legacy;
mod prepared;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(target_arch = "x86_64")]
mod simd_k;
#[cfg(test)]
mod tests;

pub use half_ops::{cpu_has_avx2, dot_f16_halves, f16_axpy, f16_scale, f32_to_f16};
pub use prepared::{dot_prepared, dot_prepared_rows, prepare_acts, PreparedActs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

const ALL: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

impl DType {
    /// The format of a GGML type id, as stored in a GGUF tensor table.
    pub fn from_ggml(id: u32) -> Option<DType> {
        ALL.into_iter().find(|d| d.ggml_id() == id)
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q4K => 12,
            DType::Q5K => 13,
            DType::Q6K => 14,
            DType::BF16 => 30,
        }
    }

    /// Values per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4K | DType::Q5K | DType::Q6K => kquants::QK_K,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => legacy::QK,
        }
    }

    /// Bytes per block, as GGML lays the block out.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => legacy::Q8_0_BYTES,
            DType::Q4_0 => legacy::Q4_0_BYTES,
            DType::Q4_1 => legacy::Q4_1_BYTES,
            DType::Q5_0 => legacy::Q5_0_BYTES,
            DType::Q5_1 => legacy::Q5_1_BYTES,
            DType::Q4K => kquants::Q4K_BYTES,
            DType::Q5K => kquants::Q5K_BYTES,
            DType::Q6K => kquants::Q6K_BYTES,
        }
    }

    /// Bytes of a row of `k` values, or None when `k` is not a whole number of blocks.
    pub fn row_bytes(self, k: usize) -> Option<usize> {
        (k % self.block_len() == 0).then(|| k / self.block_len() * self.block_bytes())
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
        }
    }

    /// Parse a name as written by `name()` (for `--quant`, `--type`).
    pub fn from_name(s: &str) -> Option<DType> {
        ALL.into_iter().find(|d| d.name() == s)
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }
}

/// Bytes of one stored row -> f32 values.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    match dtype {
        DType::F32 => float::dequantize_f32(src, dst),
        DType::F16 => float::dequantize_f16(src, dst),
        DType::BF16 => float::dequantize_bf16(src, dst),
        DType::Q8_0 => legacy::dequantize_q8_0(src, dst),
        DType::Q4_0 => legacy::dequantize_q4_0(src, dst),
        DType::Q4_1 => legacy::dequantize_q4_1(src, dst),
        DType::Q5_0 => legacy::dequantize_q5_0(src, dst),
        DType::Q5_1 => legacy::dequantize_q5_1(src, dst),
        DType::Q4K => kquants::dequantize_q4k(src, dst),
        DType::Q5K => kquants::dequantize_q5k(src, dst),
        DType::Q6K => kquants::dequantize_q6k(src, dst),
    }
}

/// f32 values -> bytes of one stored row, byte-identical in layout to what GGML writes.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    match dtype {
        DType::F32 => float::quantize_f32(src, dst),
        DType::F16 => float::quantize_f16(src, dst),
        DType::BF16 => float::quantize_bf16(src, dst),
        DType::Q8_0 => legacy::quantize_q8_0(src, dst),
        DType::Q4_0 => legacy::quantize_q4_0(src, dst),
        DType::Q4_1 => legacy::quantize_q4_1(src, dst),
        DType::Q5_0 => legacy::quantize_q5_0(src, dst),
        DType::Q5_1 => legacy::quantize_q5_1(src, dst),
        DType::Q4K => kquants::quantize_q4k(src, dst),
        DType::Q5K => kquants::quantize_q5k(src, dst),
        DType::Q6K => kquants::quantize_q6k(src, dst),
    }
}

/// The plain reference: dequantize the row, then an f64-accumulated dot with `x`. Slow; the
/// yardstick the fast path is tested against.
pub fn dot_f32(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let n = (row.len() / dtype.block_bytes() * dtype.block_len()).min(x.len());
    let mut w = vec![0f32; n];
    dequantize_row(dtype, row, &mut w);
    w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32
}

/// Little-endian readers for block fields: blocks sit at any byte offset in a mapped file.
#[inline(always)]
fn read_f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[inline(always)]
fn write_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}
