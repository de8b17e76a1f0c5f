//! Quantized and mixed-format weights on the GPU.
//!
//! A weight whose parts are not all bf16 or all f16 (any GGML quant format, f32, or a mix as
//! in a fused Q|K|V of a Q4_K_M file) is stored as row segments: runs of parts of one format,
//! each in the GPU layout of `layout` (quantized) or as bf16 rows (float parts). Decode runs
//! one GEMV launch per segment on its row range (kernels/gemv_quant.cu: int8 activations,
//! dp4a, the weight dequantized in registers; on Hopper, large launches stream tiles of each
//! layout region into shared memory instead of loading weights into registers); prefill
//! dequantizes row chunks to bf16 and uses the cuBLAS path; the embedding lookup dequantizes
//! the rows it needs.
//!
//! Launch shapes are data, as for bf16: a default rule, replaced per problem (format, rows, k,
//! fused variant) by what `sleepy tune` measured on this GPU (cuda/tune/store.rs).

#[cfg(test)]
mod emul;
pub mod layout;
mod ops;

pub(crate) use ops::{stream_stages, wants_segments};

pub use layout::QFmt;
use serde::{Deserialize, Serialize};

/// What a segment's rows are stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegKind {
    Quant(QFmt),
    /// bf16 rows (float parts of a mixed weight, converted at upload).
    Bf16,
}

/// A run of rows of one format inside a weight's device buffer.
#[derive(Clone, Debug)]
pub struct Segment {
    pub kind: SegKind,
    /// First row of the segment in the whole matrix, and its row count.
    pub row0: usize,
    pub rows: usize,
    /// Device addresses of regions R0..R3 (bf16: R0 only).
    pub regions: [u64; 4],
}

/// The segments of a quantized or mixed weight, in row order.
pub struct QuantLayout {
    pub segs: Vec<Segment>,
    /// Weights of several segments: room for the two rows of a decode GEMV's output, where a
    /// SwiGLU whose gate and up rows differ in format is computed in two steps.
    scratch: Option<super::driver::DevBuf>,
}

/// A launch shape of the quantized GEMV (see kernels/gemv_quant.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantShape {
    /// Rows (gate+up pairs for SwiGLU) per block.
    pub rows_per_block: u32,
    /// Threads that share a row (a power of two).
    pub threads_per_row: u32,
    /// 16-byte units per row each thread keeps in flight: 2, 4, or 8 (not for SwiGLU).
    pub unroll: u32,
    /// Grid size as blocks per multiprocessor (blocks loop over the remaining rows).
    pub blocks_per_sm: u32,
    /// Run the streamed kernel (tiles of each region brought into shared memory by bulk
    /// copies; Hopper and later, one token row) rather than the register kernel; `unroll`
    /// does not apply to it.
    #[serde(default)]
    pub streamed: bool,
    /// The streamed kernel's most pipeline stages (2 to 16), 0 for as many as its budget
    /// holds: fewer leave room on the SM for the next kernel's block, which then starts (and
    /// queues its own tiles) before this one ends. Not for the register kernel.
    #[serde(default)]
    pub stages: u32,
}

/// Threads per block are capped so that any kernel variant can launch: the largest use
/// about 160 registers (ptxas, sm_90), and 256 threads x 255 registers fit an SM's 64K.
pub(crate) const MAX_THREADS: u32 = 256;
/// The streamed kernel's consumer threads (plus its producer warp) are compiled for 544 a
/// block (`__launch_bounds__`); it uses about 50 registers.
pub(crate) const MAX_STREAM_THREADS: u32 = 512;

/// The most threads a block of this shape's kernel may have (its producer warp aside).
pub(crate) fn max_threads(s: &QuantShape) -> u32 {
    if s.streamed {
        MAX_STREAM_THREADS
    } else {
        MAX_THREADS
    }
}

/// The default rule: threads per row so that each has about six units, 256 threads a block.
/// Weights of 10 MiB and more (a launch's rows, gate and up together) go to the streamed
/// kernel where the device runs it (`stream_sms`: its SM count), two blocks per SM, with
/// fewer rows a tile where two tiles would not fit its budget. On an H200 (`sleepy tune`,
/// BENCHMARKS.md) the register kernel keeps too few bytes in flight for those (Qwen3-4B Q8_0:
/// output projection, 11 MB, 6.1 us in registers against 4.9 streamed; down 13.3 against
/// 11.0), while smaller ones are mostly start-up, where the register kernel starts sooner
/// (Q4_K QKV, 8.9 MB: 7.0 against 7.3 us; every Qwen3-0.6B shape). Otherwise up to four blocks per SM
/// (fewer where registers do not allow), eight units in flight where a thread has more than
/// four (four for SwiGLU, which loads two rows, and for the register-heavy Q5_K / Q6_K units).
/// Weight bytes of a launch from which the default is the streamed kernel.
const STREAM_MIN_BYTES: usize = 10 << 20;

pub fn default_shape(fmt: QFmt, rows: usize, k: usize, mode: u32, stream_sms: Option<u32>) -> QuantShape {
    let units = fmt.units_per_row(k).max(1);
    let threads_per_row = ((units / 6).max(1).next_power_of_two() as u32).clamp(8, 128);
    let per_thread = units.div_ceil(threads_per_row as usize);
    let heavy = matches!(fmt, QFmt::Q5K | QFmt::Q6K);
    let unroll = match per_thread {
        0..=2 => 2,
        3..=4 => 4,
        _ if mode == 2 || heavy => 4,
        _ => 8,
    };
    let rows_per_block = MAX_THREADS / threads_per_row;
    let bytes = rows * if mode == 2 { 2 } else { 1 } * fmt.dtype().row_bytes(k).unwrap_or(0);
    if let Some(sms) = stream_sms.filter(|_| bytes >= STREAM_MIN_BYTES) {
        let mut s = QuantShape { rows_per_block, threads_per_row, unroll: 4, blocks_per_sm: 2, streamed: true, stages: 0 };
        while s.rows_per_block > 1 && s.threads_per_row * s.rows_per_block >= 64 && ops::stream_plan(fmt, &[0; 4], rows, k, &s, mode, sms).is_none() {
            s.rows_per_block /= 2;
        }
        if ops::stream_plan(fmt, &[0; 4], rows, k, &s, mode, sms).is_some() {
            return s;
        }
    }
    QuantShape { rows_per_block, threads_per_row, unroll, blocks_per_sm: 4, streamed: false, stages: 0 }
}

/// The shape the register kernel runs for `s`: itself, or for a streamed shape (which that
/// kernel runs for two token rows, or where the device does not stream) the same rows and
/// threads within the register kernel's thread limit.
pub(crate) fn register_shape(s: &QuantShape, mode: u32) -> QuantShape {
    if s.streamed {
        sanitize(QuantShape { streamed: false, ..*s }, mode)
    } else {
        *s
    }
}

/// Keep a shape launchable whatever a table file says.
pub(crate) fn sanitize(mut s: QuantShape, mode: u32) -> QuantShape {
    if s.streamed || ![2, 4, 8].contains(&s.unroll) || (mode == 2 && s.unroll == 8) {
        s.unroll = 4;
    }
    let max = max_threads(&s);
    s.threads_per_row = s.threads_per_row.clamp(1, max).next_power_of_two();
    // A power of two, so that doubling up to a whole warp below stays within the maximum.
    let rows = s.rows_per_block.clamp(1, max / s.threads_per_row);
    s.rows_per_block = 1 << (31 - rows.leading_zeros());
    // Block sizes stay whole warps (the reductions assume it).
    while (s.threads_per_row * s.rows_per_block) % 32 != 0 {
        s.rows_per_block *= 2;
    }
    s.blocks_per_sm = s.blocks_per_sm.clamp(1, 32);
    s.stages = if s.streamed && s.stages != 0 { s.stages.clamp(2, 16) } else { 0 };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quant_shapes_are_launchable() {
        let odd = QuantShape { rows_per_block: 100, threads_per_row: 3, unroll: 9, blocks_per_sm: 0, streamed: false, stages: 5 };
        let wide = QuantShape { rows_per_block: 4, threads_per_row: 128, unroll: 4, blocks_per_sm: 2, streamed: true, stages: 1 };
        for fmt in layout::ALL_FORMATS {
            for k in [32, 256, 896, 2560, 4864, 9728] {
                for n in [1, 7, 128, 1024, 6144, 151936] {
                    for mode in [0, 1, 2] {
                        let shapes = [default_shape(fmt, n, k, mode, None), default_shape(fmt, n, k, mode, Some(132)), odd, QuantShape { streamed: true, ..odd }, wide];
                        for s in shapes.map(|s| sanitize(s, mode)).into_iter().flat_map(|s| [s, register_shape(&s, mode)]) {
                            assert!(s.threads_per_row.is_power_of_two());
                            assert!(s.threads_per_row * s.rows_per_block <= max_threads(&s));
                            assert_eq!((s.threads_per_row * s.rows_per_block) % 32, 0, "{s:?}");
                            assert!([2, 4, 8].contains(&s.unroll) && (mode != 2 || s.unroll <= 4));
                            assert!(s.blocks_per_sm >= 1);
                            assert!(if s.streamed { s.stages == 0 || (2..=16).contains(&s.stages) } else { s.stages == 0 }, "{s:?}");
                            let r = register_shape(&s, mode);
                            assert!(!r.streamed && r.threads_per_row * r.rows_per_block <= MAX_THREADS && r.stages == 0, "{s:?} -> {r:?}");
                        }
                    }
                }
            }
        }
    }
}
