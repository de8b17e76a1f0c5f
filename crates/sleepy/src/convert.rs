//! `sleepy convert`: a Hugging Face directory (llama, qwen2, qwen3) to a GGUF file that both
//! sleepy and llama.cpp load.
//!
//! What GGUF readers expect, beyond the tensors themselves:
//! - `{arch}.*` hyperparameter keys and `general.file_type`;
//! - llama-architecture Q/K rows permuted so that rope pairs adjacent rows (GGUF llama files
//!   are stored that way and are run with interleaved rope; HF pairs row i with i + d/2);
//! - Llama 3 rope scaling as a `rope_freqs.weight` tensor of per-pair frequency divisors;
//! - norms and biases in f32; matrices in the chosen format when their rows fit its block,
//!   else f16 (as llama.cpp does);
//! - the tokenizer as `tokenizer.ggml.*` (see `vocab.rs`).

mod vocab;

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::hf::read_json;
use crate::loader::gguf::Value;
use crate::loader::gguf_write::GgufWriter;
use crate::loader::safetensors::SafetensorsDir;
use crate::loader::{names, TensorSource};
use crate::quant::{self, DType};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub arch: Arch,
    pub tensors: usize,
    pub bytes: u64,
    /// Matrices written in f16 because their rows do not fit the target's block.
    pub fallbacks: usize,
    pub has_tokenizer: bool,
}

/// Where a planned tensor's data comes from.
#[derive(Clone, Debug)]
enum Source {
    /// A weight of the HF directory (under its GGUF name), with the Q/K row permutation for
    /// interleaved rope when `permute_heads` is set.
    Weight { permute_heads: Option<usize> },
    /// Values computed here (rope frequency factors).
    Computed(Vec<f32>),
}

struct Planned {
    name: String,
    /// GGUF-order dims.
    dims: Vec<usize>,
    dtype: DType,
    source: Source,
}

/// The formats a converted matrix can be written in.
pub fn output_types() -> &'static [DType] {
    &[DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K]
}

/// llama.cpp's `general.file_type` number for a file whose matrices are mostly `t`. The
/// k-quant numbers are those of the _S mixes, the nearest to one format everywhere.
fn file_type(t: DType) -> u32 {
    match t {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::Q4K => 14,
        DType::Q5K => 16,
        DType::Q6K => 18,
        DType::BF16 => 32,
    }
}

/// Convert the HF model in `dir` to a GGUF file at `out`, matrices in `target`. `progress`
/// receives one line per tensor and any warnings.
pub fn convert_hf_to_gguf(dir: &Path, out: &Path, target: DType, progress: &mut dyn FnMut(&str)) -> Result<ConvertSummary> {
    if !dir.is_dir() {
        return Err(Error::Other(format!("{}: not a Hugging Face model directory", dir.display())));
    }
    let config = read_json(&dir.join("config.json"))?;
    let mut cfg = ModelConfig::from_hf_json(&config)?;
    let st = SafetensorsDir::open(dir)?;
    if !cfg.tied_embeddings && st.tensor("output.weight").is_none() {
        cfg.tied_embeddings = true; // no lm_head: the embedding is the output, as hf.rs reads it
    }
    let plan = plan_tensors(&cfg, target);
    check_all_used(&st, &plan)?;
    for p in &plan {
        if let Source::Weight { .. } = p.source {
            let t = st.require(&p.name)?;
            if t.dims != p.dims {
                return Err(Error::tensor(&p.name, format!("shape {:?}, expected {:?} from config.json", t.dims, p.dims)));
            }
        }
    }
    let mut w = GgufWriter::new();
    write_hparams(&mut w, &cfg, dir, target);
    let has_tokenizer = vocab::write_tokenizer(&mut w, dir, &cfg, &config, progress)?;
    for p in &plan {
        let dims: Vec<u64> = p.dims.iter().map(|&d| d as u64).collect();
        w.add_tensor(&p.name, p.dtype, &dims)?;
    }
    let n = plan.len();
    // The writer checks each tensor's byte count against its declaration.
    w.write(out, &mut |i, _| {
        let p = &plan[i];
        progress(&format!("[{:>3}/{n}] {:<28} {:?} -> {}", i + 1, p.name, p.dims, p.dtype.name()));
        tensor_bytes(&st, p)
    })?;
    let fallbacks = plan.iter().filter(|p| p.dims.len() == 2 && p.dtype != target).count();
    let bytes = w.tensors().iter().map(|t| t.n_bytes as u64).sum();
    Ok(ConvertSummary { arch: cfg.arch, tensors: n, bytes, fallbacks, has_tokenizer })
}

/// Every tensor of the GGUF file, in order, with its format.
fn plan_tensors(cfg: &ModelConfig, target: DType) -> Vec<Planned> {
    let matrix_type = |k: usize| if target.row_bytes(k).is_some() { target } else { DType::F16 };
    let mut plan = Vec::new();
    let matrix = |plan: &mut Vec<Planned>, name: String, k: usize, n: usize, permute_heads: Option<usize>| {
        plan.push(Planned { name, dims: vec![k, n], dtype: matrix_type(k), source: Source::Weight { permute_heads } });
    };
    let vector = |plan: &mut Vec<Planned>, name: String, n: usize, permute_heads: Option<usize>| {
        plan.push(Planned { name, dims: vec![n], dtype: DType::F32, source: Source::Weight { permute_heads } });
    };
    let (h, q, kv) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());
    // llama GGUF files are run with interleaved rope: Q and K rows (and biases) are reordered.
    let llama = cfg.arch == Arch::Llama;
    let (q_perm, k_perm) = if llama { (Some(cfg.n_heads), Some(cfg.n_kv_heads)) } else { (None, None) };
    matrix(&mut plan, "token_embd.weight".into(), h, cfg.vocab_size, None);
    for i in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        vector(&mut plan, n("attn_norm.weight"), h, None);
        matrix(&mut plan, n("attn_q.weight"), h, q, q_perm);
        matrix(&mut plan, n("attn_k.weight"), h, kv, k_perm);
        matrix(&mut plan, n("attn_v.weight"), h, kv, None);
        if cfg.qkv_bias {
            vector(&mut plan, n("attn_q.bias"), q, q_perm);
            vector(&mut plan, n("attn_k.bias"), kv, k_perm);
            vector(&mut plan, n("attn_v.bias"), kv, None);
        }
        if cfg.qk_norm {
            vector(&mut plan, n("attn_q_norm.weight"), cfg.head_dim, None);
            vector(&mut plan, n("attn_k_norm.weight"), cfg.head_dim, None);
        }
        matrix(&mut plan, n("attn_output.weight"), q, h, None);
        vector(&mut plan, n("ffn_norm.weight"), h, None);
        matrix(&mut plan, n("ffn_gate.weight"), h, cfg.ffn_hidden, None);
        matrix(&mut plan, n("ffn_up.weight"), h, cfg.ffn_hidden, None);
        matrix(&mut plan, n("ffn_down.weight"), cfg.ffn_hidden, h, None);
    }
    vector(&mut plan, "output_norm.weight".into(), h, None);
    if !cfg.tied_embeddings {
        matrix(&mut plan, "output.weight".into(), h, cfg.vocab_size, None);
    }
    if let Some(factors) = cfg.llama3_freq_factors() {
        plan.push(Planned { name: "rope_freqs.weight".into(), dims: vec![factors.len()], dtype: DType::F32, source: Source::Computed(factors) });
    }
    plan
}

/// Refuse a directory with weights the plan would drop: a variant we do not know (an extra
/// norm, a bias) would convert without error and then compute something else.
fn check_all_used(st: &SafetensorsDir, plan: &[Planned]) -> Result<()> {
    let used: HashSet<String> = plan.iter().filter_map(|p| names::hf_name(&p.name)).collect();
    let mut unused: Vec<&String> = st
        .hf_names()
        .filter(|n| !used.contains(*n))
        // Rope tables some checkpoints save are recomputed from the config; lm_head of a
        // tied model is a copy of the embedding.
        .filter(|n| !n.ends_with("rotary_emb.inv_freq") && n.as_str() != "lm_head.weight")
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort();
    let list: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
    Err(Error::Other(format!(
        "{} weight(s) of this checkpoint have no place in the converted model (e.g. {}): unsupported architecture variant",
        unused.len(),
        list.join(", ")
    )))
}

fn write_hparams(w: &mut GgufWriter, cfg: &ModelConfig, dir: &Path, target: DType) {
    let arch = cfg.arch.name();
    let u32v = |v: usize| Value::U32(v as u32);
    w.set("general.architecture", Value::String(arch.into()));
    let name = dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(name) = name {
        w.set("general.name", Value::String(name));
    }
    w.set("general.file_type", Value::U32(file_type(target)));
    if target.is_quantized() {
        w.set("general.quantization_version", Value::U32(2));
    }
    let mut k = |key: &str, v: Value| w.set(&format!("{arch}.{key}"), v);
    k("vocab_size", u32v(cfg.vocab_size));
    k("context_length", u32v(cfg.context_length));
    k("embedding_length", u32v(cfg.hidden));
    k("block_count", u32v(cfg.n_layers));
    k("feed_forward_length", u32v(cfg.ffn_hidden));
    k("attention.head_count", u32v(cfg.n_heads));
    k("attention.head_count_kv", u32v(cfg.n_kv_heads));
    k("attention.key_length", u32v(cfg.head_dim));
    k("attention.value_length", u32v(cfg.head_dim));
    k("attention.layer_norm_rms_epsilon", Value::F32(cfg.norm_eps));
    k("rope.freq_base", Value::F32(cfg.rope_theta));
    k("rope.dimension_count", u32v(cfg.rope_dims));
}

/// The bytes of one planned tensor in its GGUF format.
fn tensor_bytes(st: &SafetensorsDir, p: &Planned) -> Result<Vec<u8>> {
    let permute_heads = match &p.source {
        Source::Computed(values) => return convert_rows(&p.name, DType::F32, &f32_bytes(values), values.len(), p.dtype),
        Source::Weight { permute_heads } => *permute_heads,
    };
    let t = st.require(&p.name)?;
    let k = p.dims[0];
    let src_row_bytes = t.dtype.row_bytes(k).ok_or_else(|| Error::tensor(&p.name, "row length does not fit its format"))?;
    let n_rows: usize = p.dims[1..].iter().product();
    if t.bytes.len() != src_row_bytes * n_rows {
        return Err(Error::tensor(&p.name, format!("{} bytes, expected {}", t.bytes.len(), src_row_bytes * n_rows)));
    }
    // A 1-D tensor (bias) is permuted element by element: each value is one "row".
    let (unit_bytes, n_units) = if p.dims.len() == 1 { (t.dtype.row_bytes(1).unwrap_or(4), k) } else { (src_row_bytes, n_rows) };
    let src = match permute_heads {
        Some(heads) => Cow::Owned(permute_for_interleaved_rope(&p.name, t.bytes.as_slice(), unit_bytes, n_units, heads)?),
        None => Cow::Borrowed(t.bytes.as_slice()),
    };
    convert_rows(&p.name, t.dtype, &src, k, p.dtype)
}

/// Reorder the rows of each head from HF's rope layout (row i pairs with row i + d/2) to
/// GGUF llama's (row 2i pairs with row 2i + 1): GGUF row 2i is HF row i, row 2i + 1 is HF
/// row i + d/2.
pub fn permute_for_interleaved_rope(name: &str, src: &[u8], row_bytes: usize, n_rows: usize, n_heads: usize) -> Result<Vec<u8>> {
    if n_heads == 0 || n_rows % n_heads != 0 || (n_rows / n_heads) % 2 != 0 || src.len() != row_bytes * n_rows {
        return Err(Error::tensor(name, format!("{n_rows} rows cannot be split into {n_heads} heads of even size")));
    }
    let d = n_rows / n_heads;
    let mut out = vec![0u8; src.len()];
    for head in 0..n_heads {
        for i in 0..d / 2 {
            for (dst_row, src_row) in [(2 * i, i), (2 * i + 1, i + d / 2)] {
                let (dst, s) = ((head * d + dst_row) * row_bytes, (head * d + src_row) * row_bytes);
                out[dst..dst + row_bytes].copy_from_slice(&src[s..s + row_bytes]);
            }
        }
    }
    Ok(out)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Rows of `k` values stored as `from` to rows stored as `to`, in parallel. Float formats are
/// converted here; block formats go through the quant module.
fn convert_rows(name: &str, from: DType, src: &[u8], k: usize, to: DType) -> Result<Vec<u8>> {
    if from == to {
        return Ok(src.to_vec());
    }
    let src_rb = from.row_bytes(k).ok_or_else(|| Error::tensor(name, format!("row length {k} does not fit {}", from.name())))?;
    let dst_rb = to.row_bytes(k).ok_or_else(|| Error::tensor(name, format!("row length {k} does not fit {}", to.name())))?;
    let n_rows = src.len() / src_rb;
    let mut out = vec![0u8; n_rows * dst_rb];
    out.par_chunks_mut(dst_rb).zip(src.par_chunks(src_rb)).enumerate().try_for_each(|(r, (dst, s))| {
        let mut row = vec![0f32; k];
        float_row_to_f32(from, s, &mut row)?;
        if let Some(bad) = row.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(name, format!("row {r}, column {bad}: value {} is not finite", row[bad])));
        }
        match to {
            DType::F32 => dst.copy_from_slice(&f32_bytes(&row)),
            DType::BF16 => put_u16s(dst, row.iter().map(|&x| half::bf16::from_f32(x).to_bits())),
            DType::F16 => {
                if let Some(big) = row.iter().find(|x| x.abs() > half::f16::MAX.to_f32()) {
                    return Err(Error::tensor(name, format!("row {r}: value {big} overflows f16 (convert with --type bf16 or f32)")));
                }
                put_u16s(dst, row.iter().map(|&x| half::f16::from_f32(x).to_bits()));
            }
            _ => quant::quantize_row(to, &row, dst),
        }
        Ok(())
    })?;
    Ok(out)
}

fn put_u16s(dst: &mut [u8], values: impl Iterator<Item = u16>) {
    for (d, v) in dst.chunks_exact_mut(2).zip(values) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// A row of a float format (the formats HF checkpoints use) as f32.
fn float_row_to_f32(from: DType, src: &[u8], out: &mut [f32]) -> Result<()> {
    match from {
        DType::F32 => src.chunks_exact(4).zip(out.iter_mut()).for_each(|(b, o)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::F16 => src.chunks_exact(2).zip(out.iter_mut()).for_each(|(b, o)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::BF16 => src.chunks_exact(2).zip(out.iter_mut()).for_each(|(b, o)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => return Err(Error::Other(format!("cannot convert from {} (f32, f16, bf16 checkpoints are supported)", other.name()))),
    }
    Ok(())
}
