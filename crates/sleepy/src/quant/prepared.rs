//! The fast path: activations converted once into the companion format of a weight format
//! (as llama.cpp's CPU path does), then dotted with every row of that format.
//!
//! | weights                | activations |
//! |------------------------|-------------|
//! | Q4_0, Q5_0, Q8_0       | Q8_0        |
//! | Q4_1, Q5_1             | Q8_1        |
//! | Q4_K, Q5_K, Q6_K       | Q8_K        |
//! | F16 / BF16 / F32       | f16 / bf16 / f32 |

use super::float;
use super::kquants::{self, Q8KActs, QK_K};
use super::legacy::{self, Legacy, Q8Acts, QK};
use super::DType;
use half::{bf16, f16};

/// Activations of one row, converted for one weight format.
#[derive(Clone, Debug)]
pub struct PreparedActs {
    acts: Acts,
    /// Values held (whole blocks of the companion format).
    len: usize,
    /// Q4_K only: accumulate in floats per 64 values instead of per super-block, the
    /// arithmetic of llama.cpp's 4-row GEMM (rows of a prompt in groups of 4).
    q4k_fine: bool,
}

#[derive(Clone, Debug)]
enum Acts {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// Q8_0, or Q8_1 when the block sums are kept.
    Q8(Q8Acts),
    Q8K(Q8KActs),
}

fn legacy_kind(dtype: DType) -> Option<Legacy> {
    Some(match dtype {
        DType::Q4_0 => Legacy::Q4_0,
        DType::Q4_1 => Legacy::Q4_1,
        DType::Q5_0 => Legacy::Q5_0,
        DType::Q5_1 => Legacy::Q5_1,
        DType::Q8_0 => Legacy::Q8_0,
        _ => return None,
    })
}

/// Convert one row of activations into the companion format of `weight_dtype`. A tail
/// shorter than a block is dropped: weight rows are whole blocks, so a row of the matching
/// length never has one.
pub fn prepare_acts(weight_dtype: DType, x: &[f32]) -> PreparedActs {
    let len = x.len() / weight_dtype.block_len() * weight_dtype.block_len();
    let acts = match weight_dtype {
        DType::F32 => Acts::F32(x.to_vec()),
        DType::F16 => Acts::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
        DType::BF16 => Acts::BF16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => Acts::Q8(quantize_q8(x, false)),
        DType::Q4_1 | DType::Q5_1 => Acts::Q8(quantize_q8(x, true)),
        DType::Q4K | DType::Q5K | DType::Q6K => Acts::Q8K(quantize_q8k(x)),
    };
    PreparedActs { acts, len, q4k_fine: false }
}

fn quantize_q8(x: &[f32], with_sums: bool) -> Q8Acts {
    #[cfg(target_arch = "x86_64")]
    if super::simd::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { super::simd::quantize_acts_q8(x, with_sums) };
    }
    legacy::quantize_acts_q8(x, with_sums)
}

fn quantize_q8k(x: &[f32]) -> Q8KActs {
    #[cfg(target_arch = "x86_64")]
    if super::simd::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { super::simd::quantize_acts_q8k(x) };
    }
    kquants::quantize_acts_q8k(x)
}

impl PreparedActs {
    /// Use the 4-row GEMM arithmetic for Q4_K weights (see the field). Other formats are
    /// computed the same way in llama.cpp for one row or many, so this changes nothing for them.
    pub fn with_q4k_gemm_order(mut self, on: bool) -> PreparedActs {
        self.q4k_fine = on;
        self
    }

    /// The activations back as f32 (the values the companion format holds).
    fn to_f32(&self) -> Vec<f32> {
        match &self.acts {
            Acts::F32(v) => v.clone(),
            Acts::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Acts::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Acts::Q8(a) => a.qs.iter().enumerate().map(|(i, &q)| q as f32 * a.d[i / QK]).collect(),
            Acts::Q8K(a) => a.qs.iter().enumerate().map(|(i, &q)| q as f32 * a.d[i / QK_K]).collect(),
        }
    }
}

/// Dot one stored row with prepared activations. Activations prepared for another format
/// are dotted through the plain reference instead (correct, slow).
pub fn dot_prepared(dtype: DType, row: &[u8], acts: &PreparedActs) -> f32 {
    let mut out = [0f32];
    dot_prepared_rows_with(dtype, row, row.len(), acts, &mut out);
    out[0]
}

/// Dot `out.len()` rows stored back to back in `rows` with the same activations: the
/// matmul's inner loop, dispatched once for the whole run of rows. Rows past the end of
/// `rows` are left untouched.
pub fn dot_prepared_rows(dtype: DType, rows: &[u8], acts: &PreparedActs, out: &mut [f32]) {
    let row_bytes = dtype.row_bytes(acts.len).unwrap_or(0);
    if row_bytes == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    dot_prepared_rows_with(dtype, rows, row_bytes, acts, out)
}

fn dot_prepared_rows_with(dtype: DType, rows: &[u8], row_bytes: usize, acts: &PreparedActs, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by available()).
        if unsafe { dot_avx2(dtype, rows, row_bytes, acts, out) } {
            return;
        }
    }
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes.max(1))) {
        *o = dot_prepared_scalar(dtype, row, acts);
    }
}

/// The AVX2 kernels; false when the activations do not fit the format.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn dot_avx2(dtype: DType, rows: &[u8], row_bytes: usize, acts: &PreparedActs, out: &mut [f32]) -> bool {
    use super::simd;
    let rb = row_bytes.max(1);
    // SAFETY (every call): the caller guarantees the CPU features.
    unsafe {
        match (dtype, &acts.acts) {
            (DType::F32, Acts::F32(x)) => out.iter_mut().zip(rows.chunks_exact(rb)).for_each(|(o, r)| *o = simd::dot_f32(r, x)),
            (DType::F16, Acts::F16(x)) => out.iter_mut().zip(rows.chunks_exact(rb)).for_each(|(o, r)| *o = simd::dot_f16(r, x)),
            (DType::BF16, Acts::BF16(x)) => out.iter_mut().zip(rows.chunks_exact(rb)).for_each(|(o, r)| *o = simd::dot_bf16(r, x)),
            (DType::Q4K | DType::Q5K | DType::Q6K, Acts::Q8K(a)) => super::simd_k::dot_kquant_rows(dtype, rows, row_bytes, a, acts.q4k_fine, out),
            (_, Acts::Q8(a)) => match legacy_kind(dtype) {
                Some(kind) if !kind.affine() || a.s.len() == a.d.len() => simd::dot_legacy_rows(kind, rows, row_bytes, a, out),
                _ => return false,
            },
            _ => return false,
        }
    }
    true
}

/// The same arithmetic as the AVX2 kernels in plain Rust: the fallback on other CPUs, and
/// the twin the kernels are tested against for bit equality.
pub fn dot_prepared_scalar(dtype: DType, row: &[u8], acts: &PreparedActs) -> f32 {
    match (dtype, &acts.acts) {
        (DType::F32, Acts::F32(x)) => float::dot_f32_scalar(row, x),
        (DType::F16, Acts::F16(x)) => float::dot_f16_scalar(row, x),
        (DType::BF16, Acts::BF16(x)) => float::dot_bf16_scalar(row, x),
        (DType::BF16, Acts::F32(x)) => float::dot_half_f32(row, x, |b| bf16::from_bits(b).to_f32()),
        (DType::F16, Acts::F32(x)) => float::dot_half_f32(row, x, |b| f16::from_bits(b).to_f32()),
        (DType::Q4K, Acts::Q8K(a)) => kquants::dot_q4k_scalar(row, a, acts.q4k_fine),
        (DType::Q5K, Acts::Q8K(a)) => kquants::dot_q5k_scalar(row, a),
        (DType::Q6K, Acts::Q8K(a)) => kquants::dot_q6k_scalar(row, a),
        (_, Acts::Q8(a)) => match legacy_kind(dtype) {
            Some(kind) if !kind.affine() || a.s.len() == a.d.len() => legacy::dot_scalar(kind, row, a),
            _ => super::dot_f32(dtype, row, &acts.to_f32()),
        },
        _ => super::dot_f32(dtype, row, &acts.to_f32()),
    }
}
