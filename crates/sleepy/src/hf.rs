//! Hugging Face directories: config.json, safetensors weights, and the tokenizer files
//! (tokenizer.json, tokenizer_config.json, generation_config.json).

use crate::config::ModelConfig;
use crate::engine::{Files, ModelFiles};
use crate::error::{Error, Result};
use crate::loader::safetensors::SafetensorsDir;
use crate::loader::TensorSource;
use crate::sampler::SamplerParams;
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

pub(crate) fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

pub fn open_dir(dir: &Path) -> Result<ModelFiles> {
    let config = read_json(&dir.join("config.json"))?;
    let mut cfg = ModelConfig::from_hf_json(&config)?;
    let st = SafetensorsDir::open(dir)?;
    // Some checkpoints say nothing of tying and simply have no lm_head.
    if !cfg.tied_embeddings && st.tensor("output.weight").is_none() {
        cfg.tied_embeddings = true;
    }
    let tok_config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
    let gen_config = read_json_if_present(&dir.join("generation_config.json"))?;
    let tokenizer = load_tokenizer(dir, &config, tok_config.as_ref(), gen_config.as_ref())?;
    let chat_template = tok_config.as_ref().and_then(chat_template_of);
    let sampling = gen_config.as_ref().map(sampling_defaults);
    Ok(ModelFiles { path: dir.to_path_buf(), cfg, files: Files::Hf(st), tokenizer, chat_template, sampling })
}

/// A special token written as a string or as `{"content": ...}`.
pub(crate) fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// Token ids given as one integer or a list.
pub(crate) fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|n| n.as_u64()).map(|n| n as u32).collect(),
        _ => Vec::new(),
    }
}

fn load_tokenizer(dir: &Path, config: &Value, tok_cfg: Option<&Value>, gen_cfg: Option<&Value>) -> Result<Option<Tokenizer>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(None); // runs on token ids
    }
    let hf = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    let lookup = |v: Option<&Value>| token_text(v).and_then(|t| hf.token_to_id(&t));
    let bos = lookup(tok_cfg.and_then(|c| c.get("bos_token"))).or_else(|| ids(config.get("bos_token_id")).first().copied());
    // The first is "the" EOS (the chat template's eos_token): the tokenizer's own, then the
    // model config's; generation_config.json adds more end-of-generation ids.
    let mut eos: Vec<u32> = lookup(tok_cfg.and_then(|c| c.get("eos_token"))).into_iter().collect();
    for id in ids(config.get("eos_token_id")).into_iter().chain(ids(gen_cfg.and_then(|g| g.get("eos_token_id")))) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    let add_bos = tok_cfg.and_then(|c| c.get("add_bos_token")).and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(Some(Tokenizer::from_hf(hf, bos, eos, add_bos)))
}

/// `chat_template` as a string, or the "default" entry of a list of named templates.
pub(crate) fn chat_template_of(tok_cfg: &Value) -> Option<String> {
    match tok_cfg.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// Default sampling values from generation_config.json.
fn sampling_defaults(g: &Value) -> SamplerParams {
    let mut p = SamplerParams::default();
    let f = |k: &str| g.get(k).and_then(|v| v.as_f64());
    if g.get("do_sample").and_then(|v| v.as_bool()) == Some(false) {
        p.temperature = 0.0;
    } else if let Some(t) = f("temperature") {
        p.temperature = t as f32;
    }
    if let Some(k) = g.get("top_k").and_then(|v| v.as_u64()) {
        p.top_k = k as usize;
    }
    if let Some(v) = f("top_p") {
        p.top_p = v as f32;
    }
    if let Some(v) = f("min_p") {
        p.min_p = v as f32;
    }
    if let Some(v) = f("repetition_penalty") {
        p.repeat_penalty = v as f32;
    }
    p
}
