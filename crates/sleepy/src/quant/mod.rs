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
mod stub;
pub use stub::*;
