//! Opening a model path: a GGUF file or a Hugging Face directory becomes a ModelConfig, a
//! tensor source, a tokenizer (when the files have one) and a chat template; then a Model on
//! the chosen backend.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
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
    /// Default sampling values the model's files suggest (generation_config.json).
    pub sampling: Option<crate::sampler::SamplerParams>,
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
        // A GGUF without a vocabulary still runs, on token ids.
        let tokenizer = if Tokenizer::gguf_has_tokenizer(&gguf) { Some(Tokenizer::from_gguf(&gguf)?) } else { None };
        let chat_template = gguf.get_str("tokenizer.chat_template").map(str::to_string);
        Ok(ModelFiles { path: path.to_path_buf(), cfg, files: Files::Gguf(gguf), tokenizer, chat_template, sampling: None })
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
        // A GGUF file promises llama.cpp's text, a Hugging Face directory transformers' logits.
        let backend = match self.files {
            Files::Gguf(_) => CpuBackend::new(threads)?,
            Files::Hf(_) => CpuBackend::new_exact(threads)?,
        };
        self.load_on(backend, opts)
    }

    /// The model on a backend the caller made (tests pick the CPU's numerics this way).
    pub fn load_on<B: crate::backend::Backend>(&self, backend: B, opts: LoadOptions) -> Result<Model<B>> {
        Model::load(backend, self.source(), self.cfg.clone(), opts)
    }

    pub fn load_cuda(&self, opts: LoadOptions) -> Result<Model<CudaBackend>> {
        Model::load(CudaBackend::new()?, self.source(), self.cfg.clone(), opts)
    }

    /// Whether the GPU should run this model's weights: 16-bit floats and every quantized
    /// format (as stored or after `--quant`). f32 matrices would be rounded to bf16 there, so
    /// they stay on the CPU unless the GPU is asked for.
    pub fn gpu_supports(&self, opts: LoadOptions) -> bool {
        use crate::quant::DType;
        let src = self.source();
        ["token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_down.weight"]
            .iter()
            .filter_map(|n| src.tensor(n))
            .all(|t| t.dtype != DType::F32 || opts.quant.is_some())
    }
}

/// Threads for the CPU backend when the user does not say: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A loaded model on whichever backend it runs on. Code that works on a model is written
/// once, generic over the backend, and called through `with_model!`.
pub enum AnyModel {
    Cpu(Model<CpuBackend>),
    Cuda(Model<CudaBackend>),
}

/// `with_model!(any, m => expr)` runs `expr` with `m: &Model<B>` for the backend in hand.
#[macro_export]
macro_rules! with_model {
    ($any:expr, $m:ident => $body:expr) => {
        match $any {
            $crate::engine::AnyModel::Cpu($m) => $body,
            $crate::engine::AnyModel::Cuda($m) => $body,
        }
    };
}

/// Which backend to load a model on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(Error::Other(format!("unknown device '{s}' (auto, cpu, cuda)"))),
        }
    }
}

impl ModelFiles {
    pub fn load(&self, device: Device, threads: usize, opts: LoadOptions) -> Result<AnyModel> {
        match device {
            Device::Cuda => Ok(AnyModel::Cuda(self.load_cuda(opts)?)),
            Device::Cpu => Ok(AnyModel::Cpu(self.load_cpu(threads, opts)?)),
            // The GPU when one initialises and its kernels cover the weights' format.
            Device::Auto => match self.gpu_supports(opts).then(CudaBackend::new) {
                Some(Ok(gpu)) => Ok(AnyModel::Cuda(Model::load(gpu, self.source(), self.cfg.clone(), opts)?)),
                _ => Ok(AnyModel::Cpu(self.load_cpu(threads, opts)?)),
            },
        }
    }
}
