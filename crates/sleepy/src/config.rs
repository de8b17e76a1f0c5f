//! ModelConfig: the architecture facts the decoder needs, normalised from GGUF metadata or a
//! Hugging Face config.json. One decoder serves every family; the differences are these flags.

use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama-architecture GGUF files, whose Q/K rows were permuted at conversion.
    Interleaved,
    /// Pairs (i, i + head_dim/2): Hugging Face layout, qwen2/qwen3 GGUF files.
    Neox,
}

/// Llama 3 style frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_context: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rope_scaling: Option<RopeScaling>,
    /// Per-pair divisors of the rotation frequencies, as GGUF files carry them
    /// (`rope_freqs.weight`, or linear scaling keys); applied after `rope_scaling`.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Dimensions of each head that are rotated (the rest pass through).
    pub rope_dims: usize,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub tied_embeddings: bool,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let arch_name = f.get_str("general.architecture").ok_or_else(|| Error::Config("general.architecture missing".into()))?;
        let arch = Arch::parse(arch_name)
            .ok_or_else(|| Error::Config(format!("architecture '{arch_name}' is not supported (llama, qwen2, qwen3 are)")))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            f.get_u64(&key(k))
                .filter(|&v| v > 0 && v < (1 << 31))
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("{} missing or out of range", key(k))))
        };
        let hidden = req("embedding_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = f.get_u64(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(n_heads);
        let head_dim = match f.get_u64(&key("attention.key_length")) {
            Some(v) => v as usize,
            None => hidden / n_heads,
        };
        let vocab_size = match f.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0),
        };
        let tied = f.tensor("output.weight").is_none();
        let rope_dims = f.get_u64(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim);
        let rope_freq_factors = gguf_rope_factors(f, arch_name, rope_dims)?;
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers: req("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_hidden: req("feed_forward_length")?,
            vocab_size,
            context_length: req("context_length")?,
            norm_eps: f.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            rope_theta: f.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32,
            rope_style: if arch == Arch::Llama { RopeStyle::Interleaved } else { RopeStyle::Neox },
            rope_scaling: None,
            rope_freq_factors,
            rope_dims,
            qkv_bias: f.tensor("blk.0.attn_q.bias").is_some(),
            qk_norm: f.tensor("blk.0.attn_q_norm.weight").is_some(),
            tied_embeddings: tied,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the dimensions fit together, so the decoder can index without surprises.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!("{} heads is not a multiple of {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 || self.rope_dims > self.head_dim || self.rope_dims % 2 != 0 {
            return bad(format!("head_dim {} / rope dims {} are not usable", self.head_dim, self.rope_dims));
        }
        if self.vocab_size == 0 {
            return bad("vocabulary size is 0".into());
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("norm epsilon and rope theta must be positive".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Rotation frequency of each dimension pair, Llama 3 scaling and frequency factors applied.
    pub fn rope_inv_freqs(&self) -> Vec<f32> {
        let half = self.rope_dims / 2;
        (0..half)
            .map(|i| {
                let freq = self.rope_base_freq(i);
                let freq = match self.rope_scaling {
                    Some(s) => llama3_scale(freq, s),
                    None => freq,
                };
                match &self.rope_freq_factors {
                    Some(f) => freq / f.get(i).copied().unwrap_or(1.0),
                    None => freq,
                }
            })
            .collect()
    }

    fn rope_base_freq(&self, pair: usize) -> f32 {
        1.0 / self.rope_theta.powf(2.0 * pair as f32 / self.rope_dims as f32)
    }

    /// Llama 3 scaling written as per-pair frequency divisors: the `rope_freqs.weight`
    /// tensor GGUF files carry instead of the scaling parameters.
    pub fn llama3_freq_factors(&self) -> Option<Vec<f32>> {
        let s = self.rope_scaling?;
        Some(
            (0..self.rope_dims / 2)
                .map(|i| {
                    let freq = self.rope_base_freq(i);
                    freq / llama3_scale(freq, s)
                })
                .collect(),
        )
    }
}

/// Frequency divisors of a GGUF file: the `rope_freqs.weight` tensor (Llama 3 scaling) and
/// linear scaling keys, combined. Other scaling types are refused rather than ignored.
fn gguf_rope_factors(f: &GgufFile, arch: &str, rope_dims: usize) -> Result<Option<Vec<f32>>> {
    if rope_dims > 1 << 16 {
        return Err(Error::Config(format!("{arch}.rope.dimension_count {rope_dims} is absurd")));
    }
    let half = rope_dims / 2;
    let mut factors: Option<Vec<f32>> = None;
    if let Some(t) = f.tensor("rope_freqs.weight") {
        let n: u64 = t.dims.iter().product();
        if t.dtype != crate::quant::DType::F32 || n != half as u64 {
            return Err(Error::tensor(&t.name, format!("expected {half} f32 values, found {n} {}", t.dtype.name())));
        }
        let v: Vec<f32> = f.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(Error::tensor(&t.name, "frequency factors must be positive"));
        }
        factors = Some(v);
    }
    match f.get_str(&format!("{arch}.rope.scaling.type")) {
        None | Some("none") => {}
        Some("linear") => {
            let key = format!("{arch}.rope.scaling.factor");
            let factor = f.get_f64(&key).filter(|x| x.is_finite() && *x > 0.0);
            let factor = factor.ok_or_else(|| Error::Config(format!("{key} missing or not positive")))? as f32;
            let mut v = factors.unwrap_or_else(|| vec![1.0; half]);
            v.iter_mut().for_each(|x| *x *= factor);
            factors = Some(v);
        }
        Some(other) => return Err(Error::Config(format!("rope scaling type '{other}' is not supported (linear and llama3 are)"))),
    }
    Ok(factors)
}

fn llama3_scale(freq: f32, s: RopeScaling) -> f32 {
    let wavelen = 2.0 * std::f32::consts::PI / freq;
    let low_wavelen = s.original_context / s.low_freq_factor;
    let high_wavelen = s.original_context / s.high_freq_factor;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}

impl ModelConfig {
    /// From a Hugging Face config.json, in the forms found in the wild: rope_theta at top level
    /// or inside rope_parameters, Llama 3 rope_scaling, head_dim given or derived.
    pub fn from_hf_json(j: &serde_json::Value) -> Result<ModelConfig> {
        let model_type = j.get("model_type").and_then(|v| v.as_str()).ok_or_else(|| Error::Config("config.json has no model_type".into()))?;
        let arch = Arch::parse(model_type)
            .ok_or_else(|| Error::Config(format!("model_type '{model_type}' is not supported (llama, qwen2, qwen3 are)")))?;
        let num = |k: &str| j.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let req = |k: &str| num(k).filter(|&v| v > 0).ok_or_else(|| Error::Config(format!("config.json: {k} missing or zero")));
        let float = |k: &str| j.get(k).and_then(|v| v.as_f64());
        let hidden = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let head_dim = num("head_dim").unwrap_or(hidden / n_heads);
        let rope_params = j.get("rope_parameters");
        let rope_theta = float("rope_theta")
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()))
            .unwrap_or(10000.0);
        let scaling = j.get("rope_scaling").filter(|v| !v.is_null()).or(rope_params);
        let rope_scaling = match scaling {
            Some(s) => {
                let ty = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
                let f = |k: &str, d: f64| s.get(k).and_then(|v| v.as_f64()).unwrap_or(d) as f32;
                match ty {
                    "llama3" => Some(RopeScaling {
                        factor: f("factor", 8.0),
                        low_freq_factor: f("low_freq_factor", 1.0),
                        high_freq_factor: f("high_freq_factor", 4.0),
                        original_context: f("original_max_position_embeddings", 8192.0),
                    }),
                    "default" => None,
                    other => return Err(Error::Config(format!("rope scaling type '{other}' is not supported"))),
                }
            }
            None => None,
        };
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers: req("num_hidden_layers")?,
            n_heads,
            n_kv_heads: num("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
            ffn_hidden: req("intermediate_size")?,
            vocab_size: req("vocab_size")?,
            context_length: num("max_position_embeddings").unwrap_or(4096),
            norm_eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            // HF checkpoints keep Q/K unpermuted: rotate_half pairs (i, i + d/2).
            rope_style: RopeStyle::Neox,
            rope_scaling,
            rope_freq_factors: None,
            rope_dims: head_dim,
            qkv_bias: match arch {
                Arch::Qwen2 => true,
                _ => j.get("attention_bias").and_then(|v| v.as_bool()).unwrap_or(false),
            },
            qk_norm: arch == Arch::Qwen3,
            tied_embeddings: j.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
