//! Hugging Face directories: config.json, safetensors weights, tokenizer files.

use crate::config::ModelConfig;
use crate::engine::{Files, ModelFiles};
use crate::error::{Error, Result};
use crate::loader::safetensors::SafetensorsDir;
use crate::loader::TensorSource;
use std::path::Path;

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

pub fn open_dir(dir: &Path) -> Result<ModelFiles> {
    let config = read_json(&dir.join("config.json"))?;
    let mut cfg = ModelConfig::from_hf_json(&config)?;
    let st = SafetensorsDir::open(dir)?;
    // Some checkpoints say nothing of tying and simply have no lm_head.
    if !cfg.tied_embeddings && st.tensor("output.weight").is_none() {
        cfg.tied_embeddings = true;
    }
    Ok(ModelFiles { path: dir.to_path_buf(), cfg, files: Files::Hf(st), tokenizer: None, chat_template: None })
}
