//! The Backend trait: the small set of fused operations the decoder is written in. The CPU
//! backend is the reference; other backends are tested against it. Decoder code never asks
//! which backend it runs on.
//!
//! Shapes: activations are row-major f32 matrices `[rows, cols]`, one row per token. Weight
//! matrices are `[n, k]` (n output features, each a row of k inputs) kept in their stored
//! format; a matrix may be made of several row blocks of different formats (fused Q|K|V of
//! a mixed-precision file), stacked in order.

pub mod cpu;
pub mod cuda;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::loader::Bytes;
use crate::quant::DType;

/// The token id `embed` reads from the device: the result of the last `queue_argmax`.
pub const QUEUED_TOKEN: u32 = u32::MAX;

/// One block of rows of a weight matrix, as stored in the file.
#[derive(Clone, Debug)]
pub struct WeightPart {
    pub dtype: DType,
    pub rows: usize,
    pub bytes: Bytes,
}

/// Per-step attention facts the decoder passes down.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

pub trait Backend {
    /// An activation matrix on the backend (f32).
    type Act;
    /// A weight matrix in its stored format(s).
    type Weight;
    /// The K/V cache of one sequence, for all layers.
    type Kv;

    fn name(&self) -> String;

    /// Upload a weight matrix `[sum(parts.rows), k]` made of stacked row blocks.
    fn upload_weight(&self, name: &str, k: usize, parts: Vec<WeightPart>) -> Result<Self::Weight>;
    /// Upload a small f32 vector (norm weights, biases) as a `[1, n]` activation.
    fn upload_vector(&self, data: &[f32]) -> Result<Self::Act>;
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Act>;
    fn new_kv(&self, cfg: &ModelConfig, max_seq: usize) -> Result<Self::Kv>;

    /// out[t, :] = row ids[t] of the embedding table, dequantized.
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Act) -> Result<()>;
    /// out = rmsnorm(x) * w, row by row.
    fn rmsnorm(&self, x: &Self::Act, w: &Self::Act, eps: f32, out: &mut Self::Act) -> Result<()>;
    /// x += y; out = rmsnorm(x) * w (the residual add fused with the next norm).
    fn add_rmsnorm(&self, x: &mut Self::Act, y: &Self::Act, w: &Self::Act, eps: f32, out: &mut Self::Act) -> Result<()>;
    /// out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]).
    fn matmul(&self, x: &Self::Act, w: &Self::Weight, bias: Option<&Self::Act>, out: &mut Self::Act) -> Result<()>;
    /// x += y.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// gate_up `[t, 2f]` holds gate in columns 0..f and up in f..2f; out `[t, f]` = silu(gate) * up.
    fn swiglu(&self, gate_up: &Self::Act, out: &mut Self::Act) -> Result<()>;
    /// On qkv `[t, (h + 2 kvh) * d]` (Q heads, then K heads, then V heads): optional per-head
    /// RMSNorm of Q and K, then rotary embedding of Q and K at positions pos0 + t.
    fn rope_qk(&self, qkv: &mut Self::Act, shape: AttnShape, pos0: usize, qk_norm: Option<(&Self::Act, &Self::Act, f32)>, rope: &Rope) -> Result<()>;
    /// Store K and V of `qkv` in the cache of `layer` at positions pos0.., then causal
    /// grouped-query attention of the Q rows over positions 0..=pos0+t. out is `[t, h * d]`.
    fn attention(&self, qkv: &Self::Act, kv: &mut Self::Kv, layer: usize, pos0: usize, shape: AttnShape, out: &mut Self::Act) -> Result<()>;
    /// A new `[1, cols]` activation holding the last row of x.
    fn last_row(&self, x: &Self::Act) -> Result<Self::Act>;
    /// Copy an activation back to host memory (row-major).
    fn read(&self, x: &Self::Act) -> Result<Vec<f32>>;
    /// The index of the largest value of the last row (ties to the lowest index).
    fn argmax_last(&self, x: &Self::Act) -> Result<u32>;
    /// Greedy decoding without a round trip to the host between steps: queue the argmax of
    /// the last row of x and leave the id on the device, where the next `embed` of
    /// [`QUEUED_TOKEN`] reads it (any argmax in between replaces it); its value comes back
    /// later from `take_queued`, oldest first. One queue per backend: one generation at a
    /// time may use it. False where the backend does not do this (use `argmax_last`).
    fn queue_argmax(&self, _x: &Self::Act) -> Result<bool> {
        Ok(false)
    }
    /// The id of the oldest queued argmax (waiting for that argmax only).
    fn take_queued(&self) -> Result<u32> {
        Err(crate::error::Error::Other("no argmax is queued on this backend".into()))
    }
    /// The `k` largest finite values of the last row with their indices, in any order (ties
    /// to the lower index; fewer where fewer are finite), selected where the row lives so that
    /// sampling with top-k copies k values back, not the row. None where the backend does not
    /// (the caller then reads the row).
    fn top_k_last(&self, _x: &Self::Act, _k: usize) -> Result<Option<Vec<(u32, f32)>>> {
        Ok(None)
    }

    // Fused ops. Each default is the plain composition of the ops above (the reference);
    // a backend overrides them to save passes over memory and launches. Scratch arguments
    // are only used by the defaults.

    /// Called by the decoder around each forward pass of `tokens` tokens: a backend may
    /// record the launches in between and replay them as one graph.
    fn begin_forward(&self, _tokens: usize) -> Result<()> {
        Ok(())
    }
    fn end_forward(&self) -> Result<()> {
        Ok(())
    }
    /// out = (rmsnorm(x) * norm) @ W^T (+ bias); `xn` is scratch shaped like x.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_matmul(&self, x: &Self::Act, norm: &Self::Act, eps: f32, w: &Self::Weight, bias: Option<&Self::Act>, xn: &mut Self::Act, out: &mut Self::Act) -> Result<()> {
        self.rmsnorm(x, norm, eps, xn)?;
        self.matmul(xn, w, bias, out)
    }
    /// x += a @ W^T (the residual add in the projection's epilogue); `tmp` is shaped like x.
    fn matmul_add(&self, a: &Self::Act, w: &Self::Weight, tmp: &mut Self::Act, x: &mut Self::Act) -> Result<()> {
        self.matmul(a, w, None, tmp)?;
        self.add(x, tmp)
    }
    /// out = swiglu((rmsnorm(x) * norm) @ W^T), W stacking gate rows then up rows;
    /// `xn` (like x) and `gate_up` (`[t, 2f]`) are scratch.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_matmul_swiglu(&self, x: &Self::Act, norm: &Self::Act, eps: f32, w: &Self::Weight, xn: &mut Self::Act, gate_up: &mut Self::Act, out: &mut Self::Act) -> Result<()> {
        self.rmsnorm(x, norm, eps, xn)?;
        self.matmul(xn, w, None, gate_up)?;
        self.swiglu(gate_up, out)
    }
    /// rope_qk, then attention.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(&self, qkv: &mut Self::Act, kv: &mut Self::Kv, layer: usize, pos0: usize, shape: AttnShape, qk_norm: Option<(&Self::Act, &Self::Act, f32)>, rope: &Rope, out: &mut Self::Act) -> Result<()> {
        self.rope_qk(qkv, shape, pos0, qk_norm, rope)?;
        self.attention(qkv, kv, layer, pos0, shape, out)
    }
    /// The device's memory bandwidth in GB/s (bytes read + written by a large copy),
    /// measured now; None where it is not measured (the CPU).
    fn measure_bandwidth(&self) -> Result<Option<f64>> {
        Ok(None)
    }
}

/// Rotary embedding tables, shared by all layers.
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: crate::config::RopeStyle,
    /// Dimensions of a head that rotate.
    pub dims: usize,
    pub inv_freqs: Vec<f32>,
    /// base^(-2/dims): the angle of pair i at position p is p * theta_scale^i / freq_factors[i],
    /// with the power taken by repeated f32 multiplication as ggml does (CPU greedy parity).
    pub theta_scale: f32,
    /// Divisors of the angle per pair (Llama 3 scaling); 1 without scaling.
    pub freq_factors: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &crate::config::ModelConfig) -> Rope {
        let inv_freqs = cfg.rope_inv_freqs();
        let theta_scale = cfg.rope_theta.powf(-2.0 / cfg.rope_dims as f32);
        // GGUF files carry the divisors (rope_freqs.weight); HF configs carry Llama 3 scaling.
        let freq_factors = (cfg.rope_freq_factors.clone())
            .or_else(|| cfg.llama3_freq_factors())
            .unwrap_or_else(|| vec![1.0; inv_freqs.len()]);
        Rope { style: cfg.rope_style, dims: cfg.rope_dims, inv_freqs, theta_scale, freq_factors }
    }
}
