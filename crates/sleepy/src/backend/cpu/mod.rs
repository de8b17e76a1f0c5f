//! The CPU backend: the reference for every op, threaded over output rows with rayon.
//! Two numerics: `LlamaCpp` (GGUF files) rounds the way llama.cpp's CPU path does (activations
//! in each weight format's companion, f16 KV cache and flash attention), so greedy text follows
//! llama.cpp's; `Exact` (Hugging Face directories, and the reference other backends are tested
//! against) keeps activations, the KV cache and attention in f32, so logits follow
//! transformers' float32 within the weights' own rounding.

mod attention;
mod matmul;
mod numerics;

use super::{AttnShape, Backend, Rope, WeightPart, QUEUED_TOKEN};
use std::collections::VecDeque;
use std::sync::Mutex;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant::{self, DType};

/// How the CPU rounds between ops (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    LlamaCpp,
    Exact,
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    pub numerics: Numerics,
    /// Sum Q4_K dots of the rows of a batch that fill groups of 4 in the order of llama.cpp's
    /// 4-row GEMM (true, the default: greedy text follows llama.cpp's), or every row in the
    /// single-row order (false: a token's result no longer depends on how tokens are batched).
    pub q4k_gemm_groups: bool,
    /// Greedy ids queued as the GPU queues them (`Backend::queue_argmax`): the ids not yet
    /// taken, oldest first; an embedding of `QUEUED_TOKEN` reads the newest (as on the GPU,
    /// only while one is queued). None (the default): the CPU does not queue. Only there so
    /// the generation loop's pipelined branch runs, and is tested, without a GPU.
    queue: Option<Mutex<VecDeque<u32>>>,
}

#[derive(Clone, Debug)]
pub struct CpuAct {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuAct {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

pub struct CpuWeight {
    pub k: usize,
    pub parts: Vec<WeightPart>,
}

impl CpuWeight {
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }
    /// The stored bytes and format of global row `r`.
    fn row(&self, mut r: usize) -> (DType, &[u8]) {
        for p in &self.parts {
            if r < p.rows {
                let rb = p.dtype.row_bytes(self.k).unwrap_or(0);
                return (p.dtype, &p.bytes.as_slice()[r * rb..(r + 1) * rb]);
            }
            r -= p.rows;
        }
        panic!("row {r} outside the weight");
    }
}

/// K and V of every layer, `[layer][pos][kv_head * d]`: f16 as in llama.cpp's default cache,
/// or f32 for exact numerics.
pub struct CpuKv {
    pub max_seq: usize,
    pub kv_dim: usize,
    pub rows: KvRows,
}

pub enum KvRows {
    F16 { k: Vec<Vec<half::f16>>, v: Vec<Vec<half::f16>> },
    F32 { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
}

impl CpuBackend {
    pub fn new(threads: usize) -> Result<CpuBackend> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Other(format!("could not start {threads} CPU threads: {e}")))?;
        Ok(CpuBackend { pool, threads, numerics: Numerics::LlamaCpp, q4k_gemm_groups: true, queue: None })
    }

    /// This backend, queueing greedy ids the way the GPU does (see the `queue` field).
    pub fn with_queued_argmax(mut self) -> CpuBackend {
        self.queue = Some(Mutex::new(VecDeque::new()));
        self
    }

    /// A backend with exact (f32) numerics: the reference for other backends and for
    /// transformers' logits. Batched Q4_K rows use the single-row order too.
    pub fn new_exact(threads: usize) -> Result<CpuBackend> {
        let mut b = CpuBackend::new(threads)?;
        b.numerics = Numerics::Exact;
        b.q4k_gemm_groups = false;
        Ok(b)
    }
}

/// f(0..n) on the pool, in order; with one thread, on the caller's thread: handing a small
/// op to a pool thread and waiting for it costs more than the op (measured per token).
fn par_map<R: Send>(pool: &rayon::ThreadPool, threads: usize, n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    use rayon::prelude::*;
    pool.install(|| (0..n).into_par_iter().map(f).collect())
}

fn check(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Other(format!("shape mismatch in {what}")))
    }
}

use numerics::rmsnorm_row;

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Weight = CpuWeight;
    type Kv = CpuKv;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn upload_weight(&self, name: &str, k: usize, parts: Vec<WeightPart>) -> Result<CpuWeight> {
        for p in &parts {
            let rb = p.dtype.row_bytes(k).ok_or_else(|| Error::tensor(name, format!("row length {k} does not fit {}", p.dtype.name())))?;
            if rb * p.rows != p.bytes.len() {
                return Err(Error::tensor(name, format!("{} bytes for {} rows of {k} {}", p.bytes.len(), p.rows, p.dtype.name())));
            }
        }
        Ok(CpuWeight { k, parts })
    }

    fn upload_vector(&self, data: &[f32]) -> Result<CpuAct> {
        Ok(CpuAct { rows: 1, cols: data.len(), data: data.to_vec() })
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CpuAct> {
        Ok(CpuAct { rows, cols, data: vec![0.0; rows * cols] })
    }

    fn new_kv(&self, cfg: &ModelConfig, max_seq: usize) -> Result<CpuKv> {
        let kv_dim = cfg.kv_dim();
        fn layers<T: Clone>(n: usize, len: usize, zero: T) -> Vec<Vec<T>> {
            vec![vec![zero; len]; n]
        }
        let (n, len) = (cfg.n_layers, max_seq * kv_dim);
        let rows = match self.numerics {
            Numerics::LlamaCpp => KvRows::F16 { k: layers(n, len, half::f16::ZERO), v: layers(n, len, half::f16::ZERO) },
            Numerics::Exact => KvRows::F32 { k: layers(n, len, 0f32), v: layers(n, len, 0f32) },
        };
        Ok(CpuKv { max_seq, kv_dim, rows })
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], out: &mut CpuAct) -> Result<()> {
        check(out.rows == ids.len() && out.cols == table.k, "embed")?;
        let n = table.rows();
        let queued = self.queue.as_ref().and_then(|q| q.lock().ok().and_then(|q| q.back().copied()));
        for (t, &id) in ids.iter().enumerate() {
            let id = if id == QUEUED_TOKEN { queued.unwrap_or(id) } else { id };
            if id as usize >= n {
                return Err(Error::Other(format!("token id {id} is outside the vocabulary of {n}")));
            }
            let (dtype, bytes) = table.row(id as usize);
            quant::dequantize_row(dtype, bytes, &mut out.data[t * out.cols..(t + 1) * out.cols]);
        }
        Ok(())
    }

    fn rmsnorm(&self, x: &CpuAct, w: &CpuAct, eps: f32, out: &mut CpuAct) -> Result<()> {
        check(x.cols == w.cols && out.cols == x.cols && out.rows == x.rows, "rmsnorm")?;
        for r in 0..x.rows {
            rmsnorm_row(x.row(r), &w.data, eps, &mut out.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(())
    }

    fn add_rmsnorm(&self, x: &mut CpuAct, y: &CpuAct, w: &CpuAct, eps: f32, out: &mut CpuAct) -> Result<()> {
        self.add(x, y)?;
        self.rmsnorm(x, w, eps, out)
    }

    fn matmul(&self, x: &CpuAct, w: &CpuWeight, bias: Option<&CpuAct>, out: &mut CpuAct) -> Result<()> {
        matmul::matmul(&self.pool, self.threads, self.numerics, self.q4k_gemm_groups, x, w, bias, out)
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<()> {
        check(x.data.len() == y.data.len(), "add")?;
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn swiglu(&self, gate_up: &CpuAct, out: &mut CpuAct) -> Result<()> {
        let f = out.cols;
        check(gate_up.cols == 2 * f && gate_up.rows == out.rows, "swiglu")?;
        for t in 0..out.rows {
            let gu = gate_up.row(t);
            numerics::swiglu_row(&gu[..f], &gu[f..], &mut out.data[t * f..(t + 1) * f]);
        }
        Ok(())
    }

    fn rope_qk(&self, qkv: &mut CpuAct, s: AttnShape, pos0: usize, qk_norm: Option<(&CpuAct, &CpuAct, f32)>, rope: &Rope) -> Result<()> {
        let d = s.head_dim;
        check(qkv.cols == (s.n_heads + 2 * s.n_kv_heads) * d, "rope_qk")?;
        let mut tmp = vec![0.0f32; d];
        let mut cache = Vec::with_capacity(rope.dims / 2);
        for t in 0..qkv.rows {
            numerics::rope_cache(rope, pos0 + t, &mut cache);
            let row = &mut qkv.data[t * qkv.cols..(t + 1) * qkv.cols];
            for h in 0..s.n_heads + s.n_kv_heads {
                let head = &mut row[h * d..(h + 1) * d];
                if let Some((qn, kn, eps)) = qk_norm {
                    let w = if h < s.n_heads { qn } else { kn };
                    tmp.copy_from_slice(head);
                    rmsnorm_row(&tmp, &w.data, eps, head);
                }
                numerics::rotate(head, &cache, rope.style, rope.dims);
            }
        }
        Ok(())
    }

    fn attention(&self, qkv: &CpuAct, kv: &mut CpuKv, layer: usize, pos0: usize, s: AttnShape, out: &mut CpuAct) -> Result<()> {
        attention::attention(&self.pool, self.threads, qkv, kv, layer, pos0, s, out)
    }

    fn last_row(&self, x: &CpuAct) -> Result<CpuAct> {
        check(x.rows > 0, "last_row")?;
        Ok(CpuAct { rows: 1, cols: x.cols, data: x.row(x.rows - 1).to_vec() })
    }

    fn read(&self, x: &CpuAct) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn argmax_last(&self, x: &CpuAct) -> Result<u32> {
        check(x.rows > 0, "argmax")?;
        Ok(argmax(x.row(x.rows - 1)))
    }

    fn queue_argmax(&self, x: &CpuAct) -> Result<bool> {
        let Some(q) = &self.queue else { return Ok(false) };
        let id = self.argmax_last(x)?;
        let mut q = q.lock().map_err(|_| Error::Other("argmax queue poisoned".into()))?;
        q.push_back(id);
        Ok(true)
    }

    fn take_queued(&self) -> Result<u32> {
        let q = self.queue.as_ref().ok_or_else(|| Error::Other("this CPU backend does not queue".into()))?;
        let mut q = q.lock().map_err(|_| Error::Other("argmax queue poisoned".into()))?;
        q.pop_front().ok_or_else(|| Error::Other("no argmax is queued".into()))
    }
}

/// Index of the largest value; ties go to the lowest index.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
