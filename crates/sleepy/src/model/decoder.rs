//! The one decoder: Llama 2/3, SmolLM2, Qwen2/2.5 and Qwen3 differ only in the flags of
//! ModelConfig (QKV bias, per-head Q/K norm, tied output, rope style and frequencies).

use super::weights::{LoadOptions, Weights};
use crate::backend::{AttnShape, Backend, Rope};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::loader::TensorSource;

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub backend: B,
    pub weights: Weights<B>,
    rope: Rope,
}

/// Activation buffers for a step of `rows` tokens, kept between steps of the same size.
struct Scratch<B: Backend> {
    rows: usize,
    x: B::Act,        // [t, hidden] residual stream
    xn: B::Act,       // [t, hidden] normed
    qkv: B::Act,      // [t, q_dim + 2 kv_dim]
    attn: B::Act,     // [t, q_dim]
    proj: B::Act,     // [t, hidden] attention / FFN output
    gate_up: B::Act,  // [t, 2 ffn]
    ffn: B::Act,      // [t, ffn]
}

/// One sequence: its KV cache and how many positions are filled. A server holds many.
pub struct Sequence<B: Backend> {
    pub kv: B::Kv,
    pub pos: usize,
    pub max_seq: usize,
    scratch: Option<Scratch<B>>,
}

impl<B: Backend> Sequence<B> {
    /// Forget every position from `pos` on (their K/V is overwritten by the next forward):
    /// a chat keeps the shared prefix of the conversation and recomputes only the rest.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's row: `[1, vocab]`.
    Last,
    /// Every token's row: `[t, vocab]` (evaluation, tests).
    All,
}

impl<B: Backend> Model<B> {
    pub fn load(backend: B, src: &dyn TensorSource, cfg: ModelConfig, opts: LoadOptions) -> Result<Model<B>> {
        let weights = Weights::load(&backend, src, &cfg, opts)?;
        let rope = Rope::new(&cfg);
        Ok(Model { cfg, backend, weights, rope })
    }

    /// Copy an activation (logits) back to the host.
    pub fn read(&self, x: &B::Act) -> Result<Vec<f32>> {
        self.backend.read(x)
    }

    pub fn new_sequence(&self, max_seq: usize) -> Result<Sequence<B>> {
        let max_seq = max_seq.min(self.cfg.context_length).max(1);
        Ok(Sequence { kv: self.backend.new_kv(&self.cfg, max_seq)?, pos: 0, max_seq, scratch: None })
    }

    fn scratch(&self, rows: usize) -> Result<Scratch<B>> {
        let c = &self.cfg;
        let b = &self.backend;
        Ok(Scratch {
            rows,
            x: b.alloc(rows, c.hidden)?,
            xn: b.alloc(rows, c.hidden)?,
            qkv: b.alloc(rows, c.q_dim() + 2 * c.kv_dim())?,
            attn: b.alloc(rows, c.q_dim())?,
            proj: b.alloc(rows, c.hidden)?,
            gate_up: b.alloc(rows, 2 * c.ffn_hidden)?,
            ffn: b.alloc(rows, c.ffn_hidden)?,
        })
    }

    /// Run `ids` through the model at the sequence's next positions, append their K/V to the
    /// cache and return the logits asked for, still on the backend.
    pub fn forward(&self, seq: &mut Sequence<B>, ids: &[u32], which: Logits) -> Result<B::Act> {
        let t = ids.len();
        if t == 0 {
            return Err(Error::Other("forward called with no tokens".into()));
        }
        if seq.pos + t > seq.max_seq {
            return Err(Error::Other(format!(
                "context full: {} tokens already, {} more would exceed the context of {}",
                seq.pos, t, seq.max_seq
            )));
        }
        let mut s = match seq.scratch.take() {
            Some(s) if s.rows == t => s,
            _ => self.scratch(t)?,
        };
        // The backend may record the whole pass and replay it as one graph.
        self.backend.begin_forward(t)?;
        let logits = self.forward_layers(seq, ids, which, &mut s);
        let ended = self.backend.end_forward();
        seq.scratch = Some(s);
        let logits = logits?;
        ended?;
        seq.pos += t;
        Ok(logits)
    }

    fn forward_layers(&self, seq: &mut Sequence<B>, ids: &[u32], which: Logits, s: &mut Scratch<B>) -> Result<B::Act> {
        let (b, c, w) = (&self.backend, &self.cfg, &self.weights);
        let shape = AttnShape { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim };
        let pos0 = seq.pos;
        let eps = c.norm_eps;
        // 1. x[t, hidden] = embedding rows of ids.
        b.embed(&w.embed, ids, &mut s.x)?;
        for (i, l) in w.layers.iter().enumerate() {
            // 2. qkv[t, q + 2kv] = rmsnorm(x) * attn_norm @ Wqkv^T (+ bias).
            b.rmsnorm_matmul(&s.x, &l.attn_norm, eps, &l.wqkv, l.bqkv.as_ref(), &mut s.xn, &mut s.qkv)?;
            // 3. attn[t, q] = causal GQA over the cache, after per-head Q/K norm and rope at
            //    pos0 + t (this step's K/V stored in the cache first).
            let qk_norm = match (&l.q_norm, &l.k_norm) {
                (Some(q), Some(k)) => Some((q, k, eps)),
                _ => None,
            };
            b.rope_attention(&mut s.qkv, &mut seq.kv, i, pos0, shape, qk_norm, &self.rope, &mut s.attn)?;
            // 4. x[t, hidden] += attn @ Wo^T.
            b.matmul_add(&s.attn, &l.wo, &mut s.proj, &mut s.x)?;
            // 5. ffn[t, f] = silu(xn @ Wgate^T) * (xn @ Wup^T), xn = rmsnorm(x) * ffn_norm.
            b.rmsnorm_matmul_swiglu(&s.x, &l.ffn_norm, eps, &l.w_gate_up, &mut s.xn, &mut s.gate_up, &mut s.ffn)?;
            // 6. x[t, hidden] += ffn @ Wdown^T.
            b.matmul_add(&s.ffn, &l.w_down, &mut s.proj, &mut s.x)?;
        }
        // 7. logits[t or 1, vocab] = rmsnorm(x) * output_norm @ Woutput^T.
        match which {
            Logits::All => {
                let mut logits = b.alloc(ids.len(), c.vocab_size)?;
                b.rmsnorm_matmul(&s.x, &w.output_norm, eps, w.output(), None, &mut s.xn, &mut logits)?;
                Ok(logits)
            }
            Logits::Last if ids.len() == 1 => {
                let mut logits = b.alloc(1, c.vocab_size)?;
                b.rmsnorm_matmul(&s.x, &w.output_norm, eps, w.output(), None, &mut s.xn, &mut logits)?;
                Ok(logits)
            }
            Logits::Last => {
                let last = b.last_row(&s.x)?;
                let mut xn = b.alloc(1, c.hidden)?;
                let mut logits = b.alloc(1, c.vocab_size)?;
                b.rmsnorm_matmul(&last, &w.output_norm, eps, w.output(), None, &mut xn, &mut logits)?;
                Ok(logits)
            }
        }
    }
}
