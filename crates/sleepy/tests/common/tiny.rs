//! Tiny random Hugging Face model directories written by the tests themselves: config.json
#![allow(dead_code)]
//! and model.safetensors (bf16 or f32), llama / qwen2 / qwen3 variants, and an optional small
//! byte-level BPE tokenizer.json.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 128;
pub const VOCAB: usize = 300;

#[derive(Clone, Copy, Debug)]
pub struct Tiny {
    pub model_type: &'static str,
    pub f32_weights: bool,
    pub tied: bool,
    /// Llama 3 rope scaling with a small original context, so it changes the logits of
    /// a short prompt.
    pub llama3_scaling: bool,
    /// Q/K/V biases (llama: attention_bias; qwen2 always has them).
    pub bias: bool,
    /// head_dim given in config.json (else hidden / heads).
    pub head_dim: Option<usize>,
}

impl Tiny {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(HIDDEN / HEADS)
    }
}

/// A fresh, empty directory for one test.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sleepy-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn config_json(t: &Tiny) -> serde_json::Value {
    let mut c = json!({
        "model_type": t.model_type,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": t.tied,
        "attention_bias": t.bias,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    if let Some(d) = t.head_dim {
        c["head_dim"] = d.into();
    }
    if t.llama3_scaling {
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    }
    c
}

/// Write config.json and model.safetensors with weights drawn from `seed`.
pub fn write_model(dir: &Path, t: &Tiny, seed: u64) {
    std::fs::write(dir.join("config.json"), config_json(t).to_string()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut uniform = |n: usize, center: f32, half_width: f32| -> Vec<f32> {
        (0..n).map(|_| center + half_width * (2.0 * rng.random::<f32>() - 1.0)).collect()
    };
    let (hd, q, kv) = (t.head_dim(), HEADS * t.head_dim(), KV_HEADS * t.head_dim());
    let bias = t.bias || t.model_type == "qwen2";
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, v: Vec<f32>| tensors.push((name, shape, v));
    add("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN], uniform(VOCAB * HIDDEN, 0.0, 1.0));
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        add(p("input_layernorm.weight"), vec![HIDDEN], uniform(HIDDEN, 1.0, 0.2));
        add(p("self_attn.q_proj.weight"), vec![q, HIDDEN], uniform(q * HIDDEN, 0.0, 0.25));
        add(p("self_attn.k_proj.weight"), vec![kv, HIDDEN], uniform(kv * HIDDEN, 0.0, 0.25));
        add(p("self_attn.v_proj.weight"), vec![kv, HIDDEN], uniform(kv * HIDDEN, 0.0, 0.25));
        if bias {
            add(p("self_attn.q_proj.bias"), vec![q], uniform(q, 0.0, 0.5));
            add(p("self_attn.k_proj.bias"), vec![kv], uniform(kv, 0.0, 0.5));
            add(p("self_attn.v_proj.bias"), vec![kv], uniform(kv, 0.0, 0.5));
        }
        if t.model_type == "qwen3" {
            add(p("self_attn.q_norm.weight"), vec![hd], uniform(hd, 1.0, 0.2));
            add(p("self_attn.k_norm.weight"), vec![hd], uniform(hd, 1.0, 0.2));
        }
        add(p("self_attn.o_proj.weight"), vec![HIDDEN, q], uniform(HIDDEN * q, 0.0, 0.2));
        add(p("post_attention_layernorm.weight"), vec![HIDDEN], uniform(HIDDEN, 1.0, 0.2));
        add(p("mlp.gate_proj.weight"), vec![FFN, HIDDEN], uniform(FFN * HIDDEN, 0.0, 0.25));
        add(p("mlp.up_proj.weight"), vec![FFN, HIDDEN], uniform(FFN * HIDDEN, 0.0, 0.25));
        add(p("mlp.down_proj.weight"), vec![HIDDEN, FFN], uniform(HIDDEN * FFN, 0.0, 0.2));
    }
    add("model.norm.weight".into(), vec![HIDDEN], uniform(HIDDEN, 1.0, 0.2));
    if !t.tied {
        add("lm_head.weight".into(), vec![VOCAB, HIDDEN], uniform(VOCAB * HIDDEN, 0.0, 0.25));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors, t.f32_weights);
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], f32_weights: bool) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| {
            if f32_weights {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
            }
        })
        .collect();
    let dtype = if f32_weights { safetensors::Dtype::F32 } else { safetensors::Dtype::BF16 };
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| (name.clone(), safetensors::tensor::TensorView::new(dtype, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// GPT-2's map from bytes to the printable characters byte-level BPE vocabularies are
/// written in.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

pub const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE tokenizer.json: the 256 byte tokens, a few merges, and special tokens
/// (ids below VOCAB, the rest of the rows left without a token).
pub fn write_tokenizer(dir: &Path) {
    let chars = byte_chars();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("l", "l"), ("e", "ll"), ("h", "ell"), ("Ċ", "Ċ")];
    for (a, b) in merges {
        vocab.push(format!("{a}{b}"));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let first_special = vocab.len();
    let vocab_json: serde_json::Map<String, serde_json::Value> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": first_special + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level.clone()]},
        "post_processor": byte_level.clone(),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_json, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let tok_cfg = json!({
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": false,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
}
