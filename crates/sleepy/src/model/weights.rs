//! Named weight structs, loaded from any TensorSource onto a backend. Q, K and V are stacked
//! into one matrix (one pass over the input for all three), and so are gate and up.

use crate::backend::{Backend, WeightPart};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::loader::{Bytes, TensorRef, TensorSource};
use crate::quant::{self, DType};
use rayon::prelude::*;

pub struct LayerWeights<B: Backend> {
    pub attn_norm: B::Act,
    /// `[q_dim + 2 kv_dim, hidden]`: Q rows, then K, then V.
    pub wqkv: B::Weight,
    pub bqkv: Option<B::Act>,
    pub q_norm: Option<B::Act>,
    pub k_norm: Option<B::Act>,
    pub wo: B::Weight,
    pub ffn_norm: B::Act,
    /// `[2 ffn, hidden]`: gate rows, then up rows.
    pub w_gate_up: B::Weight,
    pub w_down: B::Weight,
}

pub struct Weights<B: Backend> {
    pub embed: B::Weight,
    pub layers: Vec<LayerWeights<B>>,
    pub output_norm: B::Act,
    /// None when the output projection is tied to the embedding table.
    pub output: Option<B::Weight>,
    /// Bytes of weights one decode step reads: every layer matrix and the output matrix
    /// as stored (norm vectors and the one embedding row are left out).
    pub matrix_bytes_per_token: usize,
}

/// Options applied while loading.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Quantize float matrices to this format at load (in-situ quantization).
    pub quant: Option<DType>,
}

impl<B: Backend> Weights<B> {
    pub fn load(backend: &B, src: &dyn TensorSource, cfg: &ModelConfig, opts: LoadOptions) -> Result<Weights<B>> {
        let h = cfg.hidden;
        let bytes = std::cell::Cell::new(0usize);
        let matrix = |names: &[(&str, usize)], k: usize| -> Result<B::Weight> {
            let mut parts = Vec::new();
            for &(name, rows) in names {
                let t = src.require(name)?;
                check_dims(&t, &[k, rows])?;
                let p = to_part(t, rows, k, opts.quant)?;
                bytes.set(bytes.get() + p.bytes.len());
                parts.push(p);
            }
            backend.upload_weight(names[0].0, k, parts)
        };
        let vector = |name: &str, n: usize| -> Result<B::Act> {
            let t = src.require(name)?;
            check_dims(&t, &[n])?;
            backend.upload_vector(&to_f32(&t)?)
        };
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bqkv = if cfg.qkv_bias {
                let mut b = to_f32(&src.require(&n("attn_q.bias"))?)?;
                b.extend(to_f32(&src.require(&n("attn_k.bias"))?)?);
                b.extend(to_f32(&src.require(&n("attn_v.bias"))?)?);
                if b.len() != q + 2 * kv {
                    return Err(Error::tensor(&n("attn_q.bias"), "Q/K/V bias sizes do not match the heads"));
                }
                Some(backend.upload_vector(&b)?)
            } else {
                None
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (Some(vector(&n("attn_q_norm.weight"), cfg.head_dim)?), Some(vector(&n("attn_k_norm.weight"), cfg.head_dim)?))
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: vector(&n("attn_norm.weight"), h)?,
                wqkv: matrix(&[(&n("attn_q.weight"), q), (&n("attn_k.weight"), kv), (&n("attn_v.weight"), kv)], h)?,
                bqkv,
                q_norm,
                k_norm,
                wo: matrix(&[(&n("attn_output.weight"), h)], q)?,
                ffn_norm: vector(&n("ffn_norm.weight"), h)?,
                w_gate_up: matrix(&[(&n("ffn_gate.weight"), cfg.ffn_hidden), (&n("ffn_up.weight"), cfg.ffn_hidden)], h)?,
                w_down: matrix(&[(&n("ffn_down.weight"), h)], cfg.ffn_hidden)?,
            });
        }
        // The embedding table is read row by row, so it stays in its stored format.
        let embed_t = src.require("token_embd.weight")?;
        check_dims(&embed_t, &[h, cfg.vocab_size])?;
        let embed_quant = if cfg.tied_embeddings { opts.quant } else { None };
        let embed_part = to_part(embed_t, cfg.vocab_size, h, embed_quant)?;
        if cfg.tied_embeddings {
            bytes.set(bytes.get() + embed_part.bytes.len());
        }
        let embed = backend.upload_weight("token_embd.weight", h, vec![embed_part])?;
        let output = if cfg.tied_embeddings { None } else { Some(matrix(&[("output.weight", cfg.vocab_size)], h)?) };
        Ok(Weights { embed, layers, output_norm: vector("output_norm.weight", h)?, output, matrix_bytes_per_token: bytes.get() })
    }

    pub fn output(&self) -> &B::Weight {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}

fn check_dims(t: &TensorRef, want: &[usize]) -> Result<()> {
    if t.dims != want {
        return Err(Error::tensor(&t.name, format!("shape {:?}, expected {:?}", t.dims, want)));
    }
    Ok(())
}

/// The tensor as a weight part, quantized to `quant` first if it is a float matrix.
fn to_part(t: TensorRef, rows: usize, k: usize, quant: Option<DType>) -> Result<WeightPart> {
    match quant {
        Some(target) if !t.dtype.is_quantized() && target != t.dtype => {
            let rb = target
                .row_bytes(k)
                .ok_or_else(|| Error::tensor(&t.name, format!("row length {k} is not a multiple of the {} block", target.name())))?;
            let src_rb = t.dtype.row_bytes(k).unwrap_or(0);
            let src = t.bytes.as_slice();
            if src.len() != rows * src_rb || rb == 0 || src_rb == 0 {
                return Err(Error::tensor(&t.name, format!("{} bytes for {rows} rows of {k} {}", src.len(), t.dtype.name())));
            }
            let mut out = vec![0u8; rb * rows];
            // Rows in parallel: the K-quant search costs about 0.3 us per value, which is
            // minutes for a 4B model on one core.
            out.par_chunks_mut(rb).zip(src.par_chunks(src_rb)).for_each_init(
                || vec![0f32; k],
                |row, (dst, src)| {
                    quant::dequantize_row(t.dtype, src, row);
                    quant::quantize_row(target, row, dst);
                },
            );
            Ok(WeightPart { dtype: target, rows, bytes: Bytes::from_vec(out) })
        }
        _ => Ok(WeightPart { dtype: t.dtype, rows, bytes: t.bytes }),
    }
}

/// A small tensor (norm weight, bias) as f32.
pub fn to_f32(t: &TensorRef) -> Result<Vec<f32>> {
    let n: usize = t.dims.iter().product();
    if t.dtype.row_bytes(n) != Some(t.bytes.len()) {
        return Err(Error::tensor(&t.name, "byte size does not match its shape"));
    }
    let mut out = vec![0f32; n];
    quant::dequantize_row(t.dtype, t.bytes.as_slice(), &mut out);
    Ok(out)
}
