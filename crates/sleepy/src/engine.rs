//! Opening a model path: a GGUF file or a Hugging Face directory becomes a ModelConfig, a
//! tensor source, a tokenizer (when the files have one) and a chat template; then a Model on
//! the chosen backend.

use crate::backend::cpu::CpuBackend;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;
use crate::loader::safetensors::SafetensorsDir;
use crate::loader::TensorSource;
use crate::model::{LoadOptions, Model};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

pub enum Files {
    Gguf(GgufFile),
    Hf(SafetensorsDir),
}

/// Everything read from a model path before any weight is touched.
pub struct ModelFiles {
    pub path: PathBuf,
    pub cfg: ModelConfig,
    pub files: Files,
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<String>,
}

impl ModelFiles {
    pub fn open(path: &Path) -> Result<ModelFiles> {
        if path.is_dir() {
            return crate::hf::open_dir(path);
        }
        if !path.exists() {
            return Err(Error::Other(format!("{}: no such model file or directory", path.display())));
        }
        let gguf = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Some(Tokenizer::from_gguf(&gguf)?);
        let chat_template = gguf.get_str("tokenizer.chat_template").map(str::to_string);
        Ok(ModelFiles { path: path.to_path_buf(), cfg, files: Files::Gguf(gguf), tokenizer, chat_template })
    }

    pub fn source(&self) -> &dyn TensorSource {
        match &self.files {
            Files::Gguf(g) => g,
            Files::Hf(h) => h,
        }
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer(format!("{} has no tokenizer: pass token ids instead of text", self.path.display())))
    }

    pub fn load_cpu(&self, threads: usize, opts: LoadOptions) -> Result<Model<CpuBackend>> {
        Model::load(CpuBackend::new(threads)?, self.source(), self.cfg.clone(), opts)
    }
}

/// Threads for the CPU backend when the user does not say: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
