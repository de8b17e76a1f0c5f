//! Tuning GEMV launch configurations on the device.
//!
//! A decode step runs a handful of distinct GEMV problems (weight format, row units, row
//! length, and the fused variant: RMSNorm folded in, residual add or SwiGLU epilogue), each
//! many times. The tuner times candidate launch configurations of each problem's kernel
//! family on the model's own weights, checks every candidate's output against the default
//! configuration's (itself checked against a CPU reference once) and keeps the fastest.
//!
//! Everything here is generic over the kernel family through `LaunchConfig`: a family is
//! one enum variant with its shape type, its candidate space (space.rs), its launch and its
//! host reference (measure.rs). bf16/f16 run kernels/gemv.cu (`Dense`); the GGML block
//! formats run kernels/gemv_quant.cu (`Quant`).
//!
//! - space.rs: candidate configurations (launchable only, pruned).
//! - measure.rs: timing with CUDA events over replayed graphs, output checks, the search.
//! - store.rs: the choices on disk, keyed by GPU, driver and kernel source.

mod measure;
pub mod space;
pub mod store;

pub use measure::{Candidate, ShapeResult, TuneEvent, TuneOptions};
pub use store::{TuneKey, TunedSet};

use super::gemv::GemvShape;
use super::quant::{self, QFmt, QuantShape};
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::quant::DType;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One GEMV problem of a decode step: `units` row units (gate+up pairs for SwiGLU) of `k`
/// weights in `format`, one token row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemvProblem {
    #[serde(with = "format_name")]
    pub format: DType,
    pub units: usize,
    pub k: usize,
    /// The input's RMSNorm is folded into the GEMV.
    pub norm: bool,
    /// Epilogue: 0 plain (+ bias), 1 residual add, 2 SwiGLU over gate and up rows.
    pub mode: u32,
}

impl GemvProblem {
    /// Weight rows the problem reads (SwiGLU reads two per unit).
    pub fn rows(&self) -> usize {
        self.units * if self.mode == 2 { 2 } else { 1 }
    }

    /// Bytes of weights one launch reads.
    pub fn weight_bytes(&self) -> usize {
        self.format.row_bytes(self.k).unwrap_or(0) * self.rows()
    }

    /// The fused variant, in words: "norm+swiglu", "+residual", "plain".
    pub fn variant(&self) -> String {
        let epilogue = match self.mode {
            1 => "residual",
            2 => "swiglu",
            _ => "",
        };
        match (self.norm, epilogue) {
            (false, "") => "plain".to_string(),
            (true, "") => "norm".to_string(),
            (false, e) => format!("+{e}"),
            (true, e) => format!("norm+{e}"),
        }
    }

    /// "bf16 9728x2560 norm+swiglu".
    pub fn label(&self) -> String {
        format!("{} {}x{} {}", self.format.name(), self.units, self.k, self.variant())
    }
}

/// Formats serialize by name ("bf16", "q4_k"): readable, and stable across enum changes.
mod format_name {
    use crate::quant::DType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        DType::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown weight format {name}")))
    }
}

/// A launch configuration of one GEMV kernel family. Adding a family is a variant here, its
/// candidates in space.rs, and its launch and host reference in measure.rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum LaunchConfig {
    /// kernels/gemv.cu: 16-bit float weights.
    Dense(GemvShape),
    /// kernels/gemv_quant.cu: GGML block formats (int8 activations, dp4a).
    Quant(QuantShape),
}

impl LaunchConfig {
    /// Short form for tables: "rpb8 tpr64 v8 b4" (dense), "rpb8 tpr64 u4 b4" (quantized),
    /// "rpb8 tpr64 b1 tma s2" (streamed, at most 2 stages).
    pub fn short(&self) -> String {
        match self {
            LaunchConfig::Dense(s) => format!("rpb{} tpr{} v{} b{}{}", s.rows_per_block, s.threads_per_row, s.vec, s.blocks_per_sm, if s.streamed { " tma" } else { "" }),
            LaunchConfig::Quant(s) if s.streamed => {
                let cap = if s.stages != 0 { format!(" s{}", s.stages) } else { String::new() };
                format!("rpb{} tpr{} b{} tma{cap}", s.rows_per_block, s.threads_per_row, s.blocks_per_sm)
            }
            LaunchConfig::Quant(s) => format!("rpb{} tpr{} u{} b{}", s.rows_per_block, s.threads_per_row, s.unroll, s.blocks_per_sm),
        }
    }
}

/// Whether a tunable kernel family runs GEMVs of `format`.
pub fn family_supports(format: DType) -> bool {
    is_dense(format) || QFmt::of(format).is_some()
}

fn is_dense(format: DType) -> bool {
    matches!(format, DType::BF16 | DType::F16)
}

/// The dense kernels' dtype code (kernels/gemv.cu DT) and its format.
fn dense_format(dt: u32) -> DType {
    if dt == 1 {
        DType::F16
    } else {
        DType::BF16
    }
}

fn dense_dt(format: DType) -> u32 {
    u32::from(format == DType::F16)
}

/// Where one GEMV launch of a decode step reads: weight regions (the dense family uses the
/// first), the input row, the folded norm's weights and epsilon, and the bias (0: none).
/// These are device addresses inside the model's buffers: valid while the model lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemvOperands {
    /// Weight regions: the dense family reads the first; quantized layouts up to four.
    pub(crate) w: [u64; 4],
    pub(crate) x: u64,
    pub(crate) g: u64,
    pub(crate) eps: f32,
    pub(crate) bias: u64,
}

/// One GEMV launch seen while a decode step was recorded.
#[derive(Clone, Copy, Debug)]
pub struct GemvCall {
    pub problem: GemvProblem,
    pub operands: GemvOperands,
}

impl CudaBackend {
    /// The problem and operands of a one-row GEMV of `w` over `x` (tests and tools that build
    /// their own problem). `norm`: the folded RMSNorm's weights and epsilon; `mode` the
    /// epilogue (0 plain, 1 residual add, 2 SwiGLU over the two halves of `w`'s rows).
    pub fn gemv_call(&self, w: &super::CudaWeight, x: &super::CudaAct, norm: Option<(&super::CudaAct, f32)>, bias: Option<&super::CudaAct>, mode: u32) -> Result<GemvCall> {
        let (format, regions) = match &w.quant {
            None => (dense_format(w.dt), [w.buf.ptr, 0, 0, 0]),
            Some(q) => match q.segs.as_slice() {
                [s] => match s.kind {
                    quant::SegKind::Quant(f) => (f.dtype(), s.regions),
                    quant::SegKind::Bf16 => (DType::BF16, [s.regions[0], 0, 0, 0]),
                },
                _ => return Err(Error::Cuda("a weight of several formats is several GEMV problems".into())),
            },
        };
        let (g, eps) = norm.map_or((0, 0.0), |(n, e)| (n.ptr(), e));
        let units = if mode == 2 { w.n / 2 } else { w.n };
        Ok(GemvCall {
            problem: GemvProblem { format, units, k: w.k, norm: norm.is_some(), mode },
            operands: GemvOperands { w: regions, x: x.ptr(), g, eps, bias: bias.map_or(0, |b| b.ptr()) },
        })
    }

    /// The configuration the backend uses for `p` when nothing is tuned: the built-in table
    /// or the default rule.
    pub fn default_config(&self, p: &GemvProblem) -> Result<LaunchConfig> {
        if is_dense(p.format) {
            return Ok(LaunchConfig::Dense(self.table.shape(p.units, p.k)));
        }
        if let Some(f) = QFmt::of(p.format) {
            return Ok(LaunchConfig::Quant(self.quant_default(f, p.units, p.k, p.mode)));
        }
        Err(Error::Cuda(format!("no tunable GEMV kernel for {} weights", p.format.name())))
    }

    /// The configuration the backend uses for `p` now (tuned, else default).
    pub fn active_config(&self, p: &GemvProblem) -> Result<LaunchConfig> {
        match self.tuned_set().get(p) {
            Some(c) => Ok(c),
            None => self.default_config(p),
        }
    }

    /// Launch `p` with configuration `c`, writing row `y` (`ldy` floats apart per token row).
    pub(crate) fn launch_config(&self, p: &GemvProblem, c: &LaunchConfig, o: &GemvOperands, y: u64, ldy: usize) -> Result<()> {
        let norm = (o.g != 0).then_some((o.g, o.eps));
        let wrong = || Error::Cuda(format!("configuration {c:?} does not run {} weights", p.format.name()));
        match c {
            LaunchConfig::Dense(s) => {
                if !is_dense(p.format) {
                    return Err(wrong());
                }
                self.gemv_shaped(o.w[0], dense_dt(p.format), p.units, p.k, s, o.x, 1, norm, o.bias, p.mode, y, ldy)
            }
            LaunchConfig::Quant(s) => {
                let f = QFmt::of(p.format).ok_or_else(wrong)?;
                self.gemvq_shaped(f, &o.w, p.units, p.k, s, o.x, 1, norm, o.bias, p.mode, y, ldy)
            }
        }
    }

    /// The shape of a dense GEMV: the tuned one for this problem when there is one.
    pub(super) fn dense_shape(&self, dt: u32, units: usize, k: usize, norm: bool, mode: u32) -> GemvShape {
        let p = GemvProblem { format: dense_format(dt), units, k, norm, mode };
        match self.tuned.read().ok().and_then(|t| t.get(&p)) {
            Some(LaunchConfig::Dense(s)) => s,
            _ => self.table.shape(units, k),
        }
    }

    /// The device's SM count where it runs the streamed kernels.
    fn stream_sms(&self) -> Option<u32> {
        self.table.streamed.then_some(self.gpu.info.sms)
    }

    /// The shape of a quantized GEMV: the tuned one for this problem when there is one.
    pub(crate) fn quant_shape(&self, fmt: QFmt, units: usize, k: usize, norm: bool, mode: u32) -> QuantShape {
        let p = GemvProblem { format: fmt.dtype(), units, k, norm, mode };
        match self.tuned.read().ok().and_then(|t| t.get(&p)) {
            Some(LaunchConfig::Quant(s)) => s,
            _ => self.quant_default(fmt, units, k, mode),
        }
    }

    /// The shape of a quantized GEMV when nothing is tuned: the built-in table or the rule.
    fn quant_default(&self, fmt: QFmt, units: usize, k: usize, mode: u32) -> QuantShape {
        let s = self.table.quant_shape(fmt.dtype().name(), units, k, mode);
        quant::sanitize(s.unwrap_or_else(|| quant::default_shape(fmt, units, k, mode, self.stream_sms())), mode)
    }

    /// The tuned configurations in use.
    pub fn tuned_set(&self) -> Arc<TunedSet> {
        self.tuned.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Use `set` from the next launch on (the tuner switches between default and tuned).
    pub fn set_tuned(&self, set: Arc<TunedSet>) -> Result<()> {
        *self.tuned.write().map_err(|_| Error::Cuda("tuned table poisoned".into()))? = set;
        Ok(())
    }

    /// Run `step` with GEMV logging on and return every one-row GEMV it launched (or
    /// recorded), in order.
    pub fn log_gemv_calls<T>(&self, step: impl FnOnce() -> Result<T>) -> Result<(T, Vec<GemvCall>)> {
        self.state()?.gemv_log = Some(Vec::new());
        self.gemv_logging.store(true, Ordering::Release);
        let r = step();
        self.gemv_logging.store(false, Ordering::Release);
        let calls = self.state()?.gemv_log.take().unwrap_or_default();
        Ok((r?, calls))
    }

    /// Called by every dense GEMV launch: note it when logging is on (one atomic load else).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_dense(&self, w: u64, dt: u32, units: usize, k: usize, x: u64, rows: usize, norm: Option<(u64, f32)>, bias: u64, mode: u32) {
        self.log_gemv(dense_format(dt), [w, 0, 0, 0], units, k, x, rows, norm, bias, mode);
    }

    /// Called by every quantized GEMV launch, as `log_dense`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log_quant(&self, fmt: QFmt, w: &[u64; 4], units: usize, k: usize, x: u64, rows: usize, norm: Option<(u64, f32)>, bias: u64, mode: u32) {
        self.log_gemv(fmt.dtype(), *w, units, k, x, rows, norm, bias, mode);
    }

    #[allow(clippy::too_many_arguments)]
    fn log_gemv(&self, format: DType, w: [u64; 4], units: usize, k: usize, x: u64, rows: usize, norm: Option<(u64, f32)>, bias: u64, mode: u32) {
        if rows != 1 || !self.gemv_logging.load(Ordering::Acquire) {
            return;
        }
        let (g, eps) = norm.unwrap_or((0, 0.0));
        let call = GemvCall { problem: GemvProblem { format, units, k, norm: norm.is_some(), mode }, operands: GemvOperands { w, x, g, eps, bias } };
        if let Ok(mut st) = self.state() {
            if let Some(log) = st.gemv_log.as_mut() {
                log.push(call);
            }
        }
    }
}
