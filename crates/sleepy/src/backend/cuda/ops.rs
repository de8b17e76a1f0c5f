//! The Backend trait on the GPU: each op checks shapes, picks a kernel and its launch shape,
//! and launches it (or records it, inside a decode step).

use super::driver::{self, kargs, DevBuf};
use super::gemv::{kernel_name, GemvShape};
use super::attn::attn_dims;
use super::{CudaAct, CudaBackend, CudaKv, CudaWeight, ARGMAX_BLOCKS, ARGMAX_RESULT};
use std::sync::atomic::Ordering;
use crate::backend::{AttnShape, Backend, Rope, WeightPart, QUEUED_TOKEN};
use crate::config::{ModelConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::quant::DType;

fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Other(format!("shape mismatch in {what}")))
    }
}

/// A count from the environment (None: unset; an error: not a number).
pub(super) fn env_count(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| Error::Cuda(format!("{name}={v}: not a count"))),
        Err(_) => Ok(None),
    }
}

/// Launch key and chunks per thread of the dense GEMV kernel a shape runs (an error where the
/// rows are too long for any compiled chunk count).
fn gemv_key(dt: u32, k: usize, s: &GemvShape, norm: bool, mode: u32) -> Result<(u64, u32)> {
    let Some(ch) = s.chunks_per_thread(k) else {
        return Err(Error::Cuda(format!("GEMV: rows of {k} weights are too long for the kernels (at most 32768, or 4096 when not a multiple of 8)")));
    };
    let key = 1 << 40 | (dt as u64) << 24 | (s.vec as u64) << 16 | (ch as u64) << 8 | (norm as u64) << 4 | mode as u64;
    Ok((key, ch))
}

/// Shared memory a streamed GEMV block may fill with weight tiles (one block per SM).
const STREAM_SMEM: u32 = 96 * 1024;

/// A streamed GEMV launch (bf16/f16 here, quantized in quant/ops.rs): blocks, threads
/// (consumers and the producer warp), pipeline stages and dynamic shared memory (the tiles
/// and the block's sums; the quantized kernel's activations too).
#[derive(Debug, PartialEq)]
pub(super) struct StreamPlan {
    pub(super) blocks: u32,
    pub(super) threads: u32,
    pub(super) stages: u32,
    pub(super) smem: u32,
}

impl CudaBackend {
    /// y = epilogue(W x') for one or two token rows; see kernels/gemv.cu for the modes.
    #[allow(clippy::too_many_arguments)]
    fn gemv(&self, w: &CudaWeight, x: &CudaAct, norm: Option<(&CudaAct, f32)>, bias: Option<&CudaAct>, mode: u32, y: u64, ldy: usize) -> Result<()> {
        let first = self.recorded()?;
        if let Some(q) = &w.quant {
            self.gemv_quant(w, q, x, norm, bias, mode, y, ldy)?;
        } else {
            let units = if mode == 2 { w.n / 2 } else { w.n };
            let s = self.dense_shape(w.dt, units, w.k, norm.is_some(), mode);
            let norm = norm.map(|(n, e)| (n.ptr(), e));
            self.gemv_shaped(w.buf.ptr, w.dt, units, w.k, &s, x.ptr(), x.rows, norm, bias.map_or(0, |b| b.ptr()), mode, y, ldy)?;
        }
        self.note_gemv(first)
    }

    /// A bf16 or f16 weight, its row blocks in one buffer.
    fn upload_dense(&self, name: &str, k: usize, parts: Vec<WeightPart>) -> Result<CudaWeight> {
        let dtype = parts.first().map(|p| p.dtype).ok_or_else(|| Error::tensor(name, "no rows"))?;
        let dt = match dtype {
            DType::BF16 => 0,
            DType::F16 => 1,
            d => return Err(Error::tensor(name, format!("{} weights are not supported by the CUDA backend yet (bf16 and f16 are); use --device cpu", d.name()))),
        };
        let mut n = 0;
        for p in &parts {
            if p.dtype != dtype {
                return Err(Error::tensor(name, "mixed formats in one matrix are not supported by the CUDA backend"));
            }
            if p.bytes.len() != p.rows * k * 2 {
                return Err(Error::tensor(name, format!("{} bytes for {} rows of {k} {}", p.bytes.len(), p.rows, dtype.name())));
            }
            n += p.rows;
        }
        let buf = DevBuf::alloc(n * k * 2)?;
        if parts.len() == 1 {
            driver::upload(buf.ptr, parts[0].bytes.as_slice(), self.stream.0)?;
        } else {
            let bytes = parts.iter().map(|p| p.bytes.as_slice()).collect::<Vec<_>>().concat();
            driver::upload(buf.ptr, &bytes, self.stream.0)?;
        }
        Ok(CudaWeight { n, k, dt, buf, quant: None })
    }

    /// Whether a one-row GEMV of `w` that adds into the residual (mode 1, as the output
    /// projection's) runs the streamed kernel (for a weight of several formats, its first
    /// segment's).
    fn streams_one_row(&self, w: &CudaWeight) -> bool {
        match &w.quant {
            Some(q) => q.segs.first().is_some_and(|s| self.segment_streams(s, w.k)),
            None => self.dense_streams(w.buf.ptr, w.dt, w.n, w.k),
        }
    }

    /// Whether a one-row GEMV of 16-bit weights (`dt`) at `w` adding into the residual runs the
    /// streamed kernel: the choice gemv_shaped makes.
    pub(super) fn dense_streams(&self, w: u64, dt: u32, units: usize, k: usize) -> bool {
        self.stream_plan(w, k, &self.dense_shape(dt, units, k, false, 1), 1, 1, units).is_some()
    }

    /// The GEMV launch itself, with an explicit shape (the tuner calls this too).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemv_shaped(&self, w: u64, dt: u32, units: usize, k: usize, s: &GemvShape, x: u64, rows: usize, norm: Option<(u64, f32)>, bias: u64, mode: u32, y: u64, ldy: usize) -> Result<()> {
        self.log_dense(w, dt, units, k, x, rows, norm, bias, mode);
        let (g, eps) = norm.unwrap_or((0, 0.0));
        let (key, ch) = gemv_key(dt, k, s, norm.is_some(), mode)?;
        if let Some(p) = self.stream_plan(w, k, s, rows, mode, units) {
            let name = || format!("gemv_stream_{dt}_{ch}_{}_{mode}", norm.is_some() as u32);
            self.blocks_per_sm(key | 1 << 36, &name, p.threads, p.smem)?;
            let args = kargs![w, x, g, eps, bias, y, units as i32, k as i32, s.threads_per_row as i32, p.stages];
            return self.launch_keyed(key | 1 << 36, &name, [p.blocks, 1, 1], [p.threads, 1, 1], p.smem, args);
        }
        let threads = s.threads_per_row * s.rows_per_block;
        let name = || kernel_name(dt, s, ch, norm.is_some(), mode);
        // One wave of blocks (the table's blocks per SM, capped by what fits), each taking the
        // same number of row groups: a ragged last round would leave most SMs idle.
        let fit = self.blocks_per_sm(key, &name, threads, 0)?;
        let cap = (self.gpu.info.sms * s.blocks_per_sm.min(fit)).max(1) as usize;
        let groups = units.div_ceil(s.rows_per_block as usize).max(1);
        let rounds = groups.div_ceil(cap);
        let blocks = groups.div_ceil(rounds) as u32;
        let args = kargs![w, x, g, eps, bias, y, units as i32, k as i32, ldy as i32];
        self.launch_keyed(key, &name, [blocks, rows as u32, 1], [s.threads_per_row, s.rows_per_block, 1], 0, args)
    }

    /// Launch the argmax of the last row of x; the device address of its result.
    fn launch_argmax(&self, x: &CudaAct) -> Result<u64> {
        let base = self.state()?.argmax.ptr;
        let (vals, idxs, counter, result) = (base, base + (ARGMAX_BLOCKS * 4) as u64, base + (ARGMAX_BLOCKS * 8) as u64, base + ARGMAX_RESULT);
        let row = x.ptr() + ((x.rows - 1) * x.cols * 4) as u64;
        let blocks = x.cols.div_ceil(256).clamp(1, ARGMAX_BLOCKS) as u32;
        self.launch("argmax", [blocks, 1, 1], [256, 1, 1], 0, kargs![row, x.cols as i32, vals, idxs, counter, result])?;
        Ok(result)
    }

    /// How the streamed GEMV (kernels/gemv.cu) runs this launch, or None where the register
    /// kernel runs it: shapes that do not ask for it, devices before Hopper, more than one
    /// token row, rows that are not whole 16-byte chunks, or two tiles past the budget.
    fn stream_plan(&self, w: u64, k: usize, s: &GemvShape, rows: usize, mode: u32, units: usize) -> Option<StreamPlan> {
        if !s.streamed || !self.table.streamed || rows != 1 || s.vec != 8 || k % 8 != 0 || w % 16 != 0 {
            return None;
        }
        // One block per SM (or the shape's count), each owning a contiguous run of rows.
        let blocks = (self.gpu.info.sms * s.blocks_per_sm).min(units.max(1) as u32);
        let per_block = units.div_ceil(blocks as usize) * if mode == 2 { 2 } else { 1 };
        let acc = 4 * per_block as u32;
        let tile = (s.rows_per_block as usize * k * 2 * if mode == 2 { 2 } else { 1 }).min(u32::MAX as usize) as u32;
        // A block's budget leaves room for one block of the next kernel beside it (which
        // queues its own tiles while this one finishes), and keeps a third from crowding in.
        let budget = STREAM_SMEM.min(2 * STREAM_SMEM / (s.blocks_per_sm + 1));
        let stages = (budget.saturating_sub(acc) / tile).min(16);
        (stages >= 2).then_some(StreamPlan { blocks, threads: s.threads_per_row * s.rows_per_block + 32, stages, smem: stages * tile + acc })
    }

    /// Blocks of a dense GEMV shape that fit on one SM (registers, shared memory, threads),
    /// for a one-row launch of `units` row units.
    pub(super) fn gemv_occupancy(&self, dt: u32, units: usize, k: usize, s: &GemvShape, norm: bool, mode: u32) -> Result<u32> {
        let (key, ch) = gemv_key(dt, k, s, norm, mode)?;
        if s.streamed {
            // A streamed shape the device cannot stream would run the register kernel: none.
            let Some(p) = self.stream_plan(0, k, s, 1, mode, units) else { return Ok(0) };
            let name = || format!("gemv_stream_{dt}_{ch}_{}_{mode}", norm as u32);
            return self.blocks_per_sm(key | 1 << 36, &name, p.threads, p.smem);
        }
        self.blocks_per_sm(key, &|| kernel_name(dt, s, ch, norm, mode), s.threads_per_row * s.rows_per_block, 0)
    }

}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Weight = CudaWeight;
    type Kv = CudaKv;

    fn name(&self) -> String {
        format!("cuda ({})", self.gpu.info.name)
    }

    fn upload_weight(&self, name: &str, k: usize, parts: Vec<WeightPart>) -> Result<CudaWeight> {
        let w = if super::quant::wants_segments(&parts) { self.upload_quant(name, k, parts)? } else { self.upload_dense(name, k, parts)? };
        if name == "blk.0.attn_output.weight" {
            self.o_streams.store(self.streams_one_row(&w), Ordering::Relaxed);
        }
        Ok(w)
    }

    fn upload_vector(&self, data: &[f32]) -> Result<CudaAct> {
        let a = self.new_act(1, data.len())?;
        driver::upload(a.ptr(), data, self.stream.0)?;
        Ok(a)
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaAct> {
        self.new_act(rows, cols)
    }

    fn new_kv(&self, cfg: &ModelConfig, max_seq: usize) -> Result<CudaKv> {
        self.new_kv_split(cfg, max_seq, None, None, None)
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaAct) -> Result<()> {
        check(out.rows == ids.len() && out.cols == table.k, "embed")?;
        let queued = ids == [QUEUED_TOKEN];
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.n && !queued) {
            return Err(Error::Other(format!("token id {bad} is outside the vocabulary of {}", table.n)));
        }
        let ptr = if queued {
            // The id the queued argmax leaves on the device (always inside the vocabulary).
            let st = self.state()?;
            if st.queued.is_empty() {
                return Err(Error::Other("embed of the queued token with no argmax queued".into()));
            }
            st.argmax.ptr + ARGMAX_RESULT
        } else {
            let mut st = self.state()?;
            if st.ids.bytes < ids.len() * 4 {
                drop(st);
                self.flush()?;
                driver::sync(self.stream.0)?;
                st = self.state()?;
                st.ids = DevBuf::alloc((ids.len() * 4).next_power_of_two())?;
            }
            driver::upload(st.ids.ptr, ids, self.stream.0)?;
            st.ids.ptr
        };
        if let Some(q) = &table.quant {
            return self.embed_quant(q, table.k, ptr, ids.len(), out);
        }
        let grid = [table.k.div_ceil(256) as u32, ids.len() as u32, 1];
        self.launch(&format!("embed_{}", table.dt), grid, [256, 1, 1], 0, kargs![table.buf.ptr, ptr, out.ptr(), table.k as i32])
    }

    fn rmsnorm(&self, x: &CudaAct, w: &CudaAct, eps: f32, out: &mut CudaAct) -> Result<()> {
        check(x.cols == w.cols && out.cols == x.cols && out.rows == x.rows, "rmsnorm")?;
        self.launch("rmsnorm", [x.rows as u32, 1, 1], [256, 1, 1], 0, kargs![x.ptr(), 0u64, w.ptr(), eps, out.ptr(), 0u64, 0u32, x.cols as i32])
    }

    fn add_rmsnorm(&self, x: &mut CudaAct, y: &CudaAct, w: &CudaAct, eps: f32, out: &mut CudaAct) -> Result<()> {
        check(x.cols == w.cols && out.cols == x.cols && out.rows == x.rows && y.rows == x.rows && y.cols == x.cols, "add_rmsnorm")?;
        self.launch("rmsnorm", [x.rows as u32, 1, 1], [256, 1, 1], 0, kargs![x.ptr(), y.ptr(), w.ptr(), eps, out.ptr(), 0u64, 0u32, x.cols as i32])
    }

    fn matmul(&self, x: &CudaAct, w: &CudaWeight, bias: Option<&CudaAct>, out: &mut CudaAct) -> Result<()> {
        check(x.cols == w.k && out.rows == x.rows && out.cols == w.n, "matmul")?;
        if let Some(b) = bias {
            check(b.cols == w.n, "matmul bias")?;
        }
        if self.use_gemm(x.rows) {
            return self.gemm_f32(x, w, bias, out);
        }
        self.gemv(w, x, None, bias, 0, out.ptr(), w.n)
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) -> Result<()> {
        check(x.rows * x.cols == y.rows * y.cols, "add")?;
        let n = x.rows * x.cols;
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        self.launch("add", [blocks, 1, 1], [256, 1, 1], 0, kargs![x.ptr(), y.ptr(), n as i64, 0i32])
    }

    fn swiglu(&self, gate_up: &CudaAct, out: &mut CudaAct) -> Result<()> {
        let f = out.cols;
        check(gate_up.cols == 2 * f && gate_up.rows == out.rows, "swiglu")?;
        let n = out.rows * f;
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        self.launch("swiglu", [blocks, 1, 1], [256, 1, 1], 0, kargs![gate_up.ptr(), out.ptr(), 0u64, 0u32, f as i32, n as i64])
    }

    fn rope_qk(&self, qkv: &mut CudaAct, s: AttnShape, pos0: usize, qk_norm: Option<(&CudaAct, &CudaAct, f32)>, rope: &Rope) -> Result<()> {
        let d = s.head_dim;
        check(qkv.cols == (s.n_heads + 2 * s.n_kv_heads) * d && rope.dims <= d && rope.inv_freqs.len() * 2 >= rope.dims, "rope_qk")?;
        let freqs = self.rope_freqs(&rope.inv_freqs)?;
        let (qn, kn, eps) = qk_norm.map_or((0, 0, 0.0), |(q, k, e)| (q.ptr(), k.ptr(), e));
        let style = if rope.style == RopeStyle::Interleaved { 0 } else { 1 };
        let args = kargs![qkv.ptr(), s.n_heads as i32, s.n_kv_heads as i32, d as i32, qn, kn, eps, freqs, rope.dims as i32, style, pos0 as i32];
        self.launch("rope_qk", [(s.n_heads + s.n_kv_heads) as u32, qkv.rows as u32, 1], [64, 1, 1], (4 * (d + 32)) as u32, args)
    }

    fn attention(&self, qkv: &CudaAct, kv: &mut CudaKv, layer: usize, pos0: usize, s: AttnShape, out: &mut CudaAct) -> Result<()> {
        attn_dims(&s)?;
        let q_dim = s.n_heads * s.head_dim;
        check(qkv.cols == q_dim + 2 * kv.kv_dim && out.cols == q_dim && out.rows == qkv.rows && kv.kv_dim == s.n_kv_heads * s.head_dim, "attention")?;
        self.check_fits(kv, pos0, qkv.rows)?;
        if qkv.rows == 1 {
            return self.attn_decode(qkv, kv, layer, pos0, s, None, out);
        }
        self.attn_prefill(qkv, kv, layer, pos0, s, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_attention(&self, qkv: &mut CudaAct, kv: &mut CudaKv, layer: usize, pos0: usize, s: AttnShape, qk_norm: Option<(&CudaAct, &CudaAct, f32)>, rope: &Rope, out: &mut CudaAct) -> Result<()> {
        attn_dims(&s)?;
        if qkv.rows == 1 {
            let q_dim = s.n_heads * s.head_dim;
            check(qkv.cols == q_dim + 2 * kv.kv_dim && out.cols == q_dim && out.rows == 1 && kv.kv_dim == s.n_kv_heads * s.head_dim, "attention")?;
            check(rope.dims <= s.head_dim && rope.inv_freqs.len() * 2 >= rope.dims, "rope")?;
            self.check_fits(kv, pos0, 1)?;
            return self.attn_decode(qkv, kv, layer, pos0, s, Some((rope, qk_norm)), out);
        }
        self.rope_qk(qkv, s, pos0, qk_norm, rope)?;
        self.attention(qkv, kv, layer, pos0, s, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_matmul(&self, x: &CudaAct, norm: &CudaAct, eps: f32, w: &CudaWeight, bias: Option<&CudaAct>, _xn: &mut CudaAct, out: &mut CudaAct) -> Result<()> {
        check(x.cols == w.k && norm.cols == w.k && out.rows == x.rows && out.cols == w.n, "rmsnorm_matmul")?;
        if self.use_gemm(x.rows) {
            return self.gemm_normed(x, norm, eps, w, bias, out);
        }
        self.gemv(w, x, Some((norm, eps)), bias, 0, out.ptr(), w.n)
    }

    fn matmul_add(&self, a: &CudaAct, w: &CudaWeight, _tmp: &mut CudaAct, x: &mut CudaAct) -> Result<()> {
        check(a.cols == w.k && x.rows == a.rows && x.cols == w.n, "matmul_add")?;
        if self.use_gemm(a.rows) {
            return self.gemm_add(a, w, x);
        }
        self.gemv(w, a, None, None, 1, x.ptr(), w.n)
    }

    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_matmul_swiglu(&self, x: &CudaAct, norm: &CudaAct, eps: f32, w: &CudaWeight, _xn: &mut CudaAct, gate_up: &mut CudaAct, out: &mut CudaAct) -> Result<()> {
        check(x.cols == w.k && norm.cols == w.k && w.n % 2 == 0 && out.rows == x.rows && out.cols == w.n / 2, "rmsnorm_matmul_swiglu")?;
        if self.use_gemm(x.rows) {
            check(gate_up.rows == x.rows && gate_up.cols == w.n, "rmsnorm_matmul_swiglu")?;
            self.gemm_normed(x, norm, eps, w, None, gate_up)?;
            return self.swiglu(gate_up, out);
        }
        self.gemv(w, x, Some((norm, eps)), None, 2, out.ptr(), w.n / 2)
    }

    fn last_row(&self, x: &CudaAct) -> Result<CudaAct> {
        check(x.rows > 0, "last_row")?;
        self.flush()?;
        let out = self.new_act(1, x.cols)?;
        let src = x.ptr() + ((x.rows - 1) * x.cols * 4) as u64;
        // SAFETY: both ranges lie inside their buffers.
        driver::check(unsafe { cudarc::driver::sys::cuMemcpyDtoDAsync_v2(out.ptr(), src, x.cols * 4, self.stream.0) }, "copy row")?;
        Ok(out)
    }

    fn read(&self, x: &CudaAct) -> Result<Vec<f32>> {
        self.flush()?;
        driver::download(x.ptr(), x.rows * x.cols, self.stream.0)
    }

    fn argmax_last(&self, x: &CudaAct) -> Result<u32> {
        check(x.rows > 0, "argmax")?;
        self.flush()?;
        let result = self.launch_argmax(x)?;
        let id: Vec<i32> = driver::download(result, 1, self.stream.0)?;
        Ok(id[0].max(0) as u32)
    }

    fn top_k_last(&self, x: &CudaAct, k: usize) -> Result<Option<Vec<(u32, f32)>>> {
        self.top_k_last_row(x, k)
    }

    fn queue_argmax(&self, x: &CudaAct) -> Result<bool> {
        check(x.rows > 0, "argmax")?;
        self.flush()?;
        let result = self.launch_argmax(x)?;
        let mut st = self.state()?;
        if st.queued.len() >= st.queue_events.len() {
            return Err(Error::Other("too many argmax results queued and not taken".into()));
        }
        // The copy to the host is queued right behind the argmax, before any later step can
        // overwrite the result; the event marks its arrival. Slots in flight are consecutive
        // (mod the slot count) and fewer than the slots, so the one after the newest is free.
        let slot = st.queued.back().map_or(0, |&b| (b + 1) % st.queue_events.len());
        st.queue_host.copy_from(slot, result, self.stream.0)?;
        st.queue_events[slot].record(self.stream.0)?;
        st.queued.push_back(slot);
        Ok(true)
    }

    fn take_queued(&self) -> Result<u32> {
        let mut st = self.state()?;
        let slot = st.queued.pop_front().ok_or_else(|| Error::Other("no argmax is queued".into()))?;
        st.queue_events[slot].synchronize()?;
        Ok((st.queue_host.read(slot) as i32).max(0) as u32)
    }

    fn begin_forward(&self, tokens: usize) -> Result<()> {
        self.begin(tokens)
    }

    fn end_forward(&self) -> Result<()> {
        self.end()
    }

    fn measure_bandwidth(&self) -> Result<Option<f64>> {
        Ok(Some(self.copy_bandwidth()?))
    }
}
