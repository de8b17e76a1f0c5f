//! The library's error type: every variant carries enough context (which file, tensor,
//! offset or key) for a user to see what is wrong without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid GGUF file: {0}")]
    Gguf(String),
    #[error("invalid safetensors data: {0}")]
    Safetensors(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn tensor(name: &str, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.to_string(), msg: msg.into() }
    }
}
