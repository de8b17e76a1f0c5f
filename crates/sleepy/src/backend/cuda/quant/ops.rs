//! Segmented weights on the device: upload (split into segments, repacked), the decode GEMV
//! of each segment, embedding rows, and prefill GEMMs through bf16 tiles.

use super::layout::{repack, QFmt, REGION_ALIGN};
use super::{QuantLayout, QuantShape, SegKind, Segment, MAX_STREAM_THREADS};
use crate::backend::cuda::driver::{self, kargs, DevBuf};
use crate::backend::cuda::ops::StreamPlan;
use crate::backend::cuda::{CudaAct, CudaBackend, CudaWeight};
use crate::backend::WeightPart;
use crate::error::{Error, Result};
use crate::quant::{self, DType};

/// Launch-key prefix of this module's kernels (see CudaBackend::launch_keyed).
const KEY: u64 = 0x51 << 48;
/// Bytes of the bf16 weight tile a prefill GEMM dequantizes into at a time.
const TILE_BYTES: usize = 32 << 20;

/// Rows of a prefill tile of rows of `k`: as many as `TILE_BYTES` holds, in whole multiples of
/// 128, so that every tile's output starts at a multiple of 512 bytes (cuBLAS chooses its
/// kernels by the matrices' alignment, the fastest needing 16 bytes) and the GEMM's rows fill
/// whole tiles of its own; at least 128.
fn tile_rows(k: usize) -> usize {
    (TILE_BYTES / (2 * k.max(1)) / 128 * 128).max(128)
}

/// Whether `upload_weight` hands these parts here: anything but all bf16 or all f16.
pub(crate) fn wants_segments(parts: &[WeightPart]) -> bool {
    match parts.first() {
        Some(first) => !(matches!(first.dtype, DType::BF16 | DType::F16) && parts.iter().all(|p| p.dtype == first.dtype)),
        None => false,
    }
}

fn kind_of(dtype: DType) -> SegKind {
    QFmt::of(dtype).map_or(SegKind::Bf16, SegKind::Quant)
}

/// Float rows (f32, f16 or bf16) as bf16 bytes.
fn bf16_rows(dtype: DType, bytes: &[u8], k: usize, out: &mut Vec<u8>) {
    if dtype == DType::BF16 {
        out.extend_from_slice(bytes);
        return;
    }
    let rb = dtype.row_bytes(k).unwrap_or(0).max(1);
    let mut row = vec![0f32; k];
    for src in bytes.chunks_exact(rb) {
        quant::dequantize_row(dtype, src, &mut row);
        out.extend(row.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()));
    }
}

/// Launch key and dynamic shared memory of the quantized GEMV kernel a shape runs.
fn gemvq_key(fmt: QFmt, k: usize, s: &QuantShape, norm: bool, mode: u32) -> (u64, u32) {
    let key = KEY | 1 << 32 | (fmt.id() as u64) << 16 | (s.unroll as u64) << 8 | (norm as u64) << 4 | mode as u64;
    (key, (k * 3 / 2 + 256) as u32)
}

fn gemvq_name(fmt: QFmt, s: &QuantShape, norm: bool, mode: u32) -> String {
    format!("gemvq_{}_{}_{}_{mode}", fmt.id(), s.unroll, norm as u32)
}

fn gemvq_stream_key(fmt: QFmt, norm: bool, mode: u32) -> (u64, impl Fn() -> String) {
    let key = KEY | 3 << 32 | (fmt.id() as u64) << 16 | (norm as u64) << 4 | mode as u64;
    (key, move || format!("gemvq_stream_{}_{}_{mode}", fmt.id(), norm as u32))
}

/// Shared memory the streamed blocks on one SM may fill together.
const STREAM_SMEM_SM: u32 = 192 * 1024;

/// How the streamed kernel (kernels/gemv_quant.cu, gemvq_stream) runs a one-row launch of
/// shape `s`, or None where the register kernel runs it: shapes that do not ask for it, copies
/// that would not be 16-byte aligned
/// (a tile's bytes of a region, or for SwiGLU the up rows' offset), or fewer than two tiles
/// in the budget. Mirrors the kernel's layout of shared memory.
pub(super) fn stream_plan(fmt: QFmt, r: &[u64; 4], units: usize, k: usize, s: &QuantShape, mode: u32, sms: u32) -> Option<StreamPlan> {
    if !s.streamed || units == 0 || s.rows_per_block == 0 || k % 32 != 0 || (fmt.dtype().block_len() == 256 && k % 256 != 0) {
        return None;
    }
    let (tpr, rpb) = (s.threads_per_row as usize, s.rows_per_block as usize);
    // The kernel's barriers count whole consumer warps, and its row reductions need a
    // power-of-two row width (`sanitize` makes both so; this guards direct callers).
    if !tpr.is_power_of_two() || (tpr * rpb) % 32 != 0 {
        return None;
    }
    // The K-quants' loop takes a thread's units to share their place in the super-block (8
    // units, or 4 Q4_K / Q5_K pairs): rows of at least 8 threads.
    if fmt.dtype().block_len() == 256 && tpr < 8 {
        return None;
    }
    let nb = k / fmt.dtype().block_len();
    let mut half = 0;
    // The kernel's groups of rows: 8 (checked below), or for the K-quants the fewest (1, 2, 4
    // or 8) whose bytes in every region are a multiple of 16.
    let mut gs = if fmt.dtype().block_len() == 256 { 1 } else { 8 };
    while gs < 8 && fmt.regions().iter().any(|&(_, len)| (gs * nb * len) % 16 != 0) {
        gs *= 2;
    }
    for (i, &(_, len)) in fmt.regions().iter().enumerate() {
        let rb = nb * len;
        let up = if mode == 2 { units * rb } else { 0 };
        if (rpb * rb) % 16 != 0 || (8 * rb) % 16 != 0 || up % 16 != 0 || r[i] % 16 != 0 {
            return None;
        }
        half += (rpb * rb).next_multiple_of(16);
    }
    let stage = if mode == 2 { 2 * half } else { half };
    // Blocks take even shares of the groups of gs rows (the kernel's split); `rows` is the
    // most one takes.
    let groups = units.div_ceil(gs);
    let blocks = (sms * s.blocks_per_sm).min(groups as u32).max(1);
    let rows = groups.div_ceil(blocks as usize) * gs;
    let wpr = if tpr > 32 { tpr / 32 } else { 1 };
    let slots = rows * wpr * if mode == 2 { 2 } else { 1 };
    let fixed = (3 * k / 2).next_multiple_of(128) + 4 * slots;
    // The SM's budget shared by the shape's blocks; no more stages than a block has tiles,
    // so a block with few rows queues all of them at once (before the dependency wait) and
    // leaves the rest of the SM to the kernels beside it. Short kernels are mostly that
    // start: on an H200, Qwen3-4B's Q8_0 output projection took 5.3 us for 11 MB in tiles
    // through two stages of a 64 KB budget (BENCHMARKS.md).
    let budget = (STREAM_SMEM_SM / s.blocks_per_sm.max(1)) as usize;
    let per_block = rows.div_ceil(rpb);
    let mut stages = (budget.saturating_sub(fixed) / stage).min(16).min(per_block.max(2));
    if s.stages >= 2 {
        stages = stages.min(s.stages as usize);
    }
    let threads = (tpr * rpb + 32) as u32;
    (stages >= 2 && tpr * rpb <= MAX_STREAM_THREADS as usize).then_some(StreamPlan { blocks, threads, stages: stages as u32, smem: (fixed + stages * stage) as u32 })
}

/// Pipeline stages of the streamed kernel's one-row launch of `s` (aligned regions), or None
/// where it would not stream (the tuner's candidates: a stage cap at or above this changes
/// nothing).
pub(crate) fn stream_stages(fmt: QFmt, units: usize, k: usize, s: &QuantShape, mode: u32, sms: u32) -> Option<u32> {
    stream_plan(fmt, &[0; 4], units, k, s, mode, sms).map(|p| p.stages)
}

impl CudaBackend {
    /// Upload a weight of quantized, f32 or mixed-format parts as segments (see the module doc).
    pub(crate) fn upload_quant(&self, name: &str, k: usize, parts: Vec<WeightPart>) -> Result<CudaWeight> {
        // Runs of consecutive parts of one kind become one segment.
        let mut runs: Vec<(SegKind, usize, Vec<&WeightPart>)> = Vec::new();
        for p in &parts {
            let rb = p.dtype.row_bytes(k).ok_or_else(|| Error::tensor(name, format!("row length {k} is not a whole number of {} blocks", p.dtype.name())))?;
            if rb * p.rows != p.bytes.len() {
                return Err(Error::tensor(name, format!("{} bytes for {} rows of {k} {}", p.bytes.len(), p.rows, p.dtype.name())));
            }
            let kind = kind_of(p.dtype);
            match runs.last_mut() {
                Some((kd, rows, ps)) if *kd == kind => {
                    *rows += p.rows;
                    ps.push(p);
                }
                _ => runs.push((kind, p.rows, vec![p])),
            }
        }
        // The host image of the device buffer, and each segment's region offsets in it.
        let mut image: Vec<u8> = Vec::new();
        let mut metas = Vec::new();
        let mut row0 = 0;
        for (kind, rows, ps) in &runs {
            let start = image.len();
            let offsets = match kind {
                SegKind::Quant(f) => {
                    let joined;
                    let bytes = if ps.len() == 1 {
                        ps[0].bytes.as_slice()
                    } else {
                        joined = ps.iter().flat_map(|p| p.bytes.as_slice().iter().copied()).collect::<Vec<u8>>();
                        &joined
                    };
                    let (seg, off) = repack(name, *f, k, *rows, bytes)?;
                    image.extend_from_slice(&seg);
                    off.map(|o| start + o)
                }
                SegKind::Bf16 => {
                    for p in ps {
                        bf16_rows(p.dtype, p.bytes.as_slice(), k, &mut image);
                    }
                    [start; 4]
                }
            };
            image.resize(image.len().next_multiple_of(REGION_ALIGN), 0);
            metas.push((*kind, row0, *rows, offsets));
            row0 += rows;
        }
        let buf = DevBuf::alloc(image.len())?;
        driver::upload(buf.ptr, &image, self.stream.0)?;
        let segs = metas.into_iter().map(|(kind, row0, rows, off)| Segment { kind, row0, rows, regions: off.map(|o| buf.ptr + o as u64) }).collect::<Vec<_>>();
        let scratch = if segs.len() > 1 { Some(DevBuf::alloc(2 * row0 * 4)?) } else { None };
        Ok(CudaWeight { n: row0, k, dt: 0, buf, quant: Some(Box::new(QuantLayout { segs, scratch })) })
    }

    /// Decode GEMV of a segmented weight: one launch per segment on its rows (see
    /// CudaBackend::gemv for the modes). x has 1 or 2 rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv_quant(&self, w: &CudaWeight, q: &QuantLayout, x: &CudaAct, norm: Option<(&CudaAct, f32)>, bias: Option<&CudaAct>, mode: u32, y: u64, ldy: usize) -> Result<()> {
        let norm = norm.map(|(n, e)| (n.ptr(), e));
        let bias = bias.map_or(0, |b| b.ptr());
        if mode == 2 && q.segs.len() > 1 {
            // Gate and up rows in different formats: both into a scratch, then SwiGLU. Decode
            // steps (recorded as graphs) use the weight's own scratch, so addresses stay fixed;
            // more rows (prefill without cuBLAS, never recorded) take a pooled buffer.
            let tmp;
            let gate_up = match &q.scratch {
                Some(b) if x.rows <= 2 => b.ptr,
                _ => {
                    tmp = self.new_act(x.rows, w.n)?;
                    tmp.ptr()
                }
            };
            for s in &q.segs {
                self.gemv_segment(s, s.rows, w.k, x, norm, 0, 0, gate_up + 4 * s.row0 as u64, w.n)?;
            }
            let f = w.n / 2;
            let n = x.rows * f;
            let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
            return self.launch("swiglu", [blocks, 1, 1], [256, 1, 1], 0, kargs![gate_up, y, 0u64, 0u32, f as i32, n as i64]);
        }
        for s in &q.segs {
            // SwiGLU (one segment): unit u reads rows u and u + rows / 2 of the segment.
            let (units, at) = if mode == 2 { (s.rows / 2, 0) } else { (s.rows, 4 * s.row0 as u64) };
            let b = if bias == 0 { 0 } else { bias + at };
            self.gemv_segment(s, units, w.k, x, norm, b, mode, y + at, ldy)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn gemv_segment(&self, s: &Segment, units: usize, k: usize, x: &CudaAct, norm: Option<(u64, f32)>, bias: u64, mode: u32, y: u64, ldy: usize) -> Result<()> {
        match s.kind {
            SegKind::Bf16 => {
                let shape = self.dense_shape(0, units, k, norm.is_some(), mode);
                self.gemv_shaped(s.regions[0], 0, units, k, &shape, x.ptr(), x.rows, norm, bias, mode, y, ldy)
            }
            SegKind::Quant(f) => {
                let shape = self.quant_shape(f, units, k, norm.is_some(), mode);
                self.gemvq_shaped(f, &s.regions, units, k, &shape, x.ptr(), x.rows, norm, bias, mode, y, ldy)
            }
        }
    }

    /// Whether a one-row GEMV of segment `s` adding into the residual (mode 1) runs a streamed
    /// kernel: the choice its launch makes.
    pub(crate) fn segment_streams(&self, s: &Segment, k: usize) -> bool {
        match s.kind {
            SegKind::Bf16 => self.dense_streams(s.regions[0], 0, s.rows, k),
            SegKind::Quant(f) => self.quant_stream(f, &s.regions, s.rows, k, &self.quant_shape(f, s.rows, k, false, 1), 1, 1).is_some(),
        }
    }

    /// How the streamed kernel runs a launch of `rows` token rows, or None where the register
    /// kernel runs it (two token rows, no streaming on this device, or see stream_plan).
    #[allow(clippy::too_many_arguments)]
    fn quant_stream(&self, fmt: QFmt, r: &[u64; 4], units: usize, k: usize, s: &QuantShape, mode: u32, rows: usize) -> Option<StreamPlan> {
        if rows != 1 || !self.table.streamed {
            return None;
        }
        stream_plan(fmt, r, units, k, s, mode, self.gpu.info.sms)
    }

    /// The quantized GEMV launch with an explicit shape (kernels/gemv_quant.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn gemvq_shaped(&self, fmt: QFmt, r: &[u64; 4], units: usize, k: usize, s: &QuantShape, x: u64, rows: usize, norm: Option<(u64, f32)>, bias: u64, mode: u32, y: u64, ldy: usize) -> Result<()> {
        self.log_quant(fmt, r, units, k, x, rows, norm, bias, mode);
        let (g, eps) = norm.unwrap_or((0, 0.0));
        if let Some(p) = self.quant_stream(fmt, r, units, k, s, mode, rows) {
            let (key, name) = gemvq_stream_key(fmt, norm.is_some(), mode);
            self.blocks_per_sm(key, &name, p.threads, p.smem)?;
            let args = kargs![r[0], r[1], r[2], r[3], x, g, eps, bias, y, units as i32, k as i32, s.threads_per_row as i32, p.stages];
            return self.launch_keyed(key, &name, [p.blocks, 1, 1], [p.threads, 1, 1], p.smem, args);
        }
        // A streamed shape this launch cannot stream (two token rows; no streaming on this
        // device) runs the register kernel within that kernel's thread limit.
        let s = &super::register_shape(s, mode);
        let (key, smem) = gemvq_key(fmt, k, s, norm.is_some(), mode);
        let name = || gemvq_name(fmt, s, norm.is_some(), mode);
        // One wave of blocks (the shape's blocks per SM, capped by what fits), each taking the
        // same number of row groups: a ragged last round would leave most SMs idle.
        let fit = self.blocks_per_sm(key, &name, s.threads_per_row * s.rows_per_block, smem)?;
        let cap = (self.gpu.info.sms * s.blocks_per_sm.min(fit)).max(1) as usize;
        let groups = units.div_ceil(s.rows_per_block as usize).max(1);
        let rounds = groups.div_ceil(cap);
        let blocks = groups.div_ceil(rounds) as u32;
        let args = kargs![r[0], r[1], r[2], r[3], x, g, eps, bias, y, units as i32, k as i32, ldy as i32];
        self.launch_keyed(key, &name, [blocks, rows as u32, 1], [s.threads_per_row, s.rows_per_block, 1], smem, args)
    }

    /// Blocks of a quantized GEMV shape that fit on one SM, for a one-row launch of `units`
    /// rows (0 for a streamed shape this device or these rows cannot stream).
    pub(crate) fn gemvq_occupancy(&self, fmt: QFmt, units: usize, k: usize, s: &QuantShape, norm: bool, mode: u32) -> Result<u32> {
        if s.streamed {
            // Region addresses are 256-aligned (layout.rs); 0 stands for them here.
            let Some(p) = self.quant_stream(fmt, &[0; 4], units, k, s, mode, 1) else { return Ok(0) };
            let (key, name) = gemvq_stream_key(fmt, norm, mode);
            return self.blocks_per_sm(key, &name, p.threads, p.smem);
        }
        let (key, smem) = gemvq_key(fmt, k, s, norm, mode);
        self.blocks_per_sm(key, &|| gemvq_name(fmt, s, norm, mode), s.threads_per_row * s.rows_per_block, smem)
    }

    /// Rows of a quantized segment dequantized into `out` ([n, k], f32 or bf16): rows
    /// ids[0..n] when `ids` is given, else rows row0 .. row0 + n.
    #[allow(clippy::too_many_arguments)]
    fn dequant(&self, fmt: QFmt, r: &[u64; 4], ids: u64, row0: usize, n: usize, k: usize, out: u64, bf16: bool) -> Result<()> {
        let key = KEY | 2 << 32 | (fmt.id() as u64) << 8 | bf16 as u64;
        let name = || format!("dequant_{}_{}", fmt.id(), bf16 as u32);
        let grid = [n as u32, fmt.units_per_row(k).div_ceil(128) as u32, 1];
        self.launch_keyed(key, &name, grid, [128, 1, 1], 0, kargs![r[0], r[1], r[2], r[3], ids, row0 as i32, k as i32, out])
    }

    /// out[t, :] = row ids[t] of a segmented embedding table (ids already on the device).
    pub(crate) fn embed_quant(&self, q: &QuantLayout, k: usize, ids: u64, n_ids: usize, out: &CudaAct) -> Result<()> {
        let [s] = q.segs.as_slice() else {
            return Err(Error::Cuda("an embedding table made of several formats is not supported".into()));
        };
        match s.kind {
            SegKind::Bf16 => self.launch("embed_0", [k.div_ceil(256) as u32, n_ids as u32, 1], [256, 1, 1], 0, kargs![s.regions[0], ids, out.ptr(), k as i32]),
            SegKind::Quant(f) => self.dequant(f, &s.regions, ids, 0, n_ids, k, out.ptr(), false),
        }
    }

    /// Prefill GEMM of a segmented weight: y[t, n] (= or +=) sum_k xh[t, k] * W[n, k] with xh
    /// bf16; quantized segments are dequantized to bf16 a tile of rows at a time.
    pub(crate) fn gemm_quant(&self, xh: u64, rows: usize, w: &CudaWeight, q: &QuantLayout, y: u64, accumulate: bool) -> Result<()> {
        let k = w.k;
        for s in &q.segs {
            let ys = y + 4 * s.row0 as u64;
            match s.kind {
                SegKind::Bf16 => self.gemm_ex(s.regions[0], 0, s.rows, k, xh, rows, ys, w.n, accumulate)?,
                SegKind::Quant(f) => {
                    let chunk = tile_rows(k);
                    let tile = self.buffer(2 * k * chunk)?;
                    let tp = tile.buf.as_ref().map_or(0, |b| b.ptr);
                    for c0 in (0..s.rows).step_by(chunk) {
                        let n = chunk.min(s.rows - c0);
                        self.dequant(f, &s.regions, 0, c0, n, k, tp, true)?;
                        self.gemm_ex(tp, 0, n, k, xh, rows, ys + 4 * c0 as u64, w.n, accumulate)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::default_shape;
    use super::*;

    fn shape(tpr: u32, rpb: u32, bps: u32) -> QuantShape {
        QuantShape { rows_per_block: rpb, threads_per_row: tpr, unroll: 4, blocks_per_sm: bps, streamed: true, stages: 0 }
    }

    #[test]
    fn prefill_tiles_are_whole_multiples_of_128_rows() {
        // Qwen3-4B's gate+up (19456 x 2560) took tiles of 6553 rows, whose second one's
        // output started 26212 bytes in.
        assert_eq!(tile_rows(2560), 6528);
        assert_eq!(tile_rows(9728), 1664);
        assert_eq!(tile_rows(1 << 20), 128);
        for k in [32, 96, 768, 896, 2560, 4864, 9728, 151936] {
            let r = tile_rows(k);
            assert!(r.is_multiple_of(128) && (2 * k * r <= TILE_BYTES || r == 128), "{k}: {r}");
        }
    }

    #[test]
    fn stream_plans_are_aligned_and_fit() {
        let at = [0u64; 4];
        // Qwen3-4B's big shapes in the formats it is benchmarked in stream by default: two
        // stages at least, within the budget, two blocks per SM; Q8_0's output projection
        // (11 MB) too, Q4_K's QKV (8.9 MB) and output projection not.
        for fmt in [QFmt::Q8_0, QFmt::Q4K, QFmt::Q4_0, QFmt::Q5K] {
            for (units, k, mode) in [(9728, 2560, 2), (2560, 9728, 1), (151936, 2560, 0)] {
                let s = default_shape(fmt, units, k, mode, Some(132));
                assert!(s.streamed, "{fmt:?} {units}x{k}: {s:?}");
                let p = stream_plan(fmt, &at, units, k, &s, mode, 132).unwrap_or_else(|| panic!("{fmt:?} {units}x{k}"));
                assert!(p.stages >= 2 && p.smem <= STREAM_SMEM_SM / 2 && p.blocks == 264, "{fmt:?} {units}x{k}: {p:?}");
                assert!(p.threads >= 64 + 32);
            }
        }
        assert!(default_shape(QFmt::Q8_0, 6144, 2560, 0, Some(132)).streamed);
        assert!(default_shape(QFmt::Q8_0, 2560, 4096, 1, Some(132)).streamed);
        assert!(!default_shape(QFmt::Q4K, 2560, 4096, 1, Some(132)).streamed);
        assert!(!default_shape(QFmt::Q4K, 6144, 2560, 0, Some(132)).streamed);
        assert!(!default_shape(QFmt::Q8_0, 151936, 2560, 0, None).streamed, "no streaming where the device cannot");
        // Q6_K's scales are 20 bytes a row at k = 2560: tiles of 4 rows align, of 1 or 2 not.
        assert!(stream_plan(QFmt::Q6K, &at, 1000, 2560, &shape(64, 4, 2), 0, 132).is_some());
        assert!(stream_plan(QFmt::Q6K, &at, 1000, 2560, &shape(128, 2, 2), 0, 132).is_none());
        // SwiGLU's up rows start at units * row bytes: Q4_1 at k = 64 has 8-byte scale rows.
        assert!(stream_plan(QFmt::Q4_1, &at, 6, 64, &shape(4, 8, 1), 2, 132).is_some());
        assert!(stream_plan(QFmt::Q4_1, &at, 5, 64, &shape(4, 8, 1), 2, 132).is_none());
        // Register shapes, unaligned regions, rows of partial K-blocks, tiles past the budget,
        // partial warps.
        assert!(stream_plan(QFmt::Q8_0, &at, 1000, 2560, &shape(16, 1, 2), 0, 132).is_none());
        assert!(stream_plan(QFmt::Q8_0, &at, 1000, 2560, &QuantShape { streamed: false, ..shape(32, 8, 2) }, 0, 132).is_none());
        assert!(stream_plan(QFmt::Q8_0, &[8, 0, 0, 0], 1000, 2560, &shape(32, 8, 2), 0, 132).is_none());
        assert!(stream_plan(QFmt::Q4K, &at, 1000, 896, &shape(32, 8, 2), 0, 132).is_none());
        assert!(stream_plan(QFmt::Q8_0, &at, 1000, 9728, &shape(8, 32, 8), 0, 132).is_none());
        // K-quant rows of fewer than 8 threads (the kernel takes a thread's units to share
        // their place in the super-block); Q8_0's may.
        assert!(stream_plan(QFmt::Q4K, &at, 1000, 2560, &shape(4, 8, 1), 0, 132).is_none());
        assert!(stream_plan(QFmt::Q4K, &at, 1000, 2560, &shape(8, 32, 1), 0, 132).is_some());
        assert!(stream_plan(QFmt::Q8_0, &at, 1000, 2560, &shape(4, 8, 1), 0, 132).is_some());
        // Few rows: never more blocks than groups of rows (of 8 rows; for the K-quants of one
        // where every region's row is whole 16-byte words, of 4 for Q6_K's 20-byte scale rows
        // at k = 2560), nor more stages than the most tiles a block takes (Q8_0, 2560 rows:
        // 320 groups, blocks of 16 or 24 rows; Q4_K: blocks of 19 or 20).
        let p = stream_plan(QFmt::Q8_0, &at, 20, 1024, &shape(32, 8, 2), 0, 132).unwrap();
        assert_eq!((p.blocks, p.stages), (3, 2));
        let p = stream_plan(QFmt::Q4K, &at, 20, 1024, &shape(32, 8, 2), 0, 132).unwrap();
        assert_eq!((p.blocks, p.stages), (20, 2));
        let p = stream_plan(QFmt::Q6K, &at, 20, 2560, &shape(64, 4, 2), 0, 132).unwrap();
        assert_eq!(p.blocks, 5);
        let k = stream_plan(QFmt::Q4K, &at, 2560, 9728, &shape(32, 4, 1), 1, 132).unwrap();
        assert_eq!((k.blocks, k.stages), (132, 5), "{k:?}");
        let p = stream_plan(QFmt::Q8_0, &at, 2560, 4096, &shape(32, 4, 1), 1, 132).unwrap();
        assert_eq!(p.stages, 6, "{p:?}");
        // A shape's stage cap: fewer stages, less shared memory, the same grid; a cap above
        // what the budget holds changes nothing.
        let capped = stream_plan(QFmt::Q8_0, &at, 2560, 4096, &QuantShape { stages: 2, ..shape(32, 4, 1) }, 1, 132).unwrap();
        assert_eq!((capped.stages, capped.blocks, capped.threads), (2, p.blocks, p.threads));
        assert!(capped.smem < p.smem);
        assert_eq!(stream_plan(QFmt::Q8_0, &at, 2560, 4096, &QuantShape { stages: 8, ..shape(32, 4, 1) }, 1, 132).unwrap(), p);
        // Qwen3-4B Q4_K: gate+up queues about 184 KB however its tiles are cut, down 143 KB;
        // two stages of 8 rows take gate+up to 50 KB, which fits an SM beside down.
        let (gu, down) = (shape(16, 8, 1), shape(64, 8, 1));
        assert!(stream_plan(QFmt::Q4K, &at, 9728, 2560, &gu, 2, 132).unwrap().smem > 180 << 10);
        let down_smem = stream_plan(QFmt::Q4K, &at, 2560, 9728, &down, 1, 132).unwrap().smem;
        let small = stream_plan(QFmt::Q4K, &at, 9728, 2560, &QuantShape { stages: 2, ..gu }, 2, 132).unwrap();
        assert!(small.stages == 2 && small.smem + down_smem <= 227 << 10, "{small:?} beside {down_smem}");
    }
}
