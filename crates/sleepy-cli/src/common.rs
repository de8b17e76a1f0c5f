//! Arguments shared by the commands that load a model or sample from one.

use anyhow::{Context, Result};
use clap::Args;
use sleepy::engine::{Device, ModelFiles};
use sleepy::model::LoadOptions;
use sleepy::quant::DType;
use sleepy::sampler::SamplerParams;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face directory [default: SmolLM2-135M-Instruct Q4_1, fetched into the model cache]
    #[arg(short = 'm', long)]
    pub model: Option<PathBuf>,
    /// CPU threads [default: all cores]
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// auto, cpu or cuda
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Quantize float weights at load: q8_0, q4_0, q4_k, q6_k, ...
    #[arg(long)]
    pub quant: Option<String>,
    /// Context length to allocate [default: the model's, at most 4096]
    #[arg(short = 'c', long)]
    pub ctx: Option<usize>,
}

/// Just the model, for commands that read its files but run nothing (tokenize, info).
#[derive(Args, Clone, Debug)]
pub struct ModelPathArgs {
    /// GGUF file or Hugging Face directory [default: SmolLM2-135M-Instruct Q4_1, fetched into the model cache]
    #[arg(short = 'm', long)]
    pub model: Option<PathBuf>,
}

impl ModelPathArgs {
    pub fn open(&self) -> Result<ModelFiles> {
        open_model(self.model.as_ref())
    }
}

/// The given model path, or the default model (fetched into the cache when missing).
pub fn model_path(model: Option<&PathBuf>) -> Result<PathBuf> {
    match model {
        Some(p) => Ok(p.clone()),
        None => sleepy::fetch::ensure_model(sleepy::fetch::DEFAULT_MODEL, &mut |msg| eprintln!("{msg}"))
            .context("could not get the default model"),
    }
}

pub fn open_model(model: Option<&PathBuf>) -> Result<ModelFiles> {
    let path = model_path(model)?;
    // Said here once: the library's own message would repeat the path after our context.
    anyhow::ensure!(path.exists(), "{}: no such model file or directory", path.display());
    ModelFiles::open(&path).with_context(|| format!("could not open {}", path.display()))
}

/// The one summary line every generating command prints on stderr.
pub fn summary(stats: &sleepy::generate::Stats, backend: &str) -> String {
    use sleepy::generate::StopReason;
    let stop = match stats.stop {
        StopReason::EndOfGeneration => "end of generation",
        StopReason::MaxTokens => "token limit",
        StopReason::ContextFull => "context full",
        StopReason::Cancelled => "stopped",
    };
    format!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | {backend}, {stop}",
        stats.prompt_tokens,
        stats.prompt_tok_per_sec(),
        stats.generated_tokens,
        stats.generate_tok_per_sec(),
    )
}

impl ModelArgs {
    pub fn open(&self) -> Result<ModelFiles> {
        open_model(self.model.as_ref())
    }

    pub fn device(&self) -> Result<Device> {
        Ok(Device::parse(&self.device)?)
    }

    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(sleepy::engine::default_threads)
    }

    pub fn load_options(&self) -> Result<LoadOptions> {
        let quant = match &self.quant {
            Some(q) => Some(DType::from_name(q).filter(|d| d.is_quantized()).with_context(|| format!("unknown quantization '{q}'"))?),
            None => None,
        };
        Ok(LoadOptions { quant })
    }

    pub fn context(&self, files: &ModelFiles) -> usize {
        self.ctx.unwrap_or(files.cfg.context_length.min(4096))
    }
}

#[derive(Args, Clone, Debug)]
pub struct SampleArgs {
    /// Temperature; 0 is greedy
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the K most likely tokens (0: all)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 (1.0: off)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// RNG seed [default: random]
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SampleArgs {
    pub fn params(&self) -> Result<SamplerParams> {
        anyhow::ensure!(self.temp.is_finite() && self.temp >= 0.0, "--temp must be 0 or more");
        anyhow::ensure!((0.0..=1.0).contains(&self.top_p), "--top-p must be between 0 and 1");
        anyhow::ensure!((0.0..=1.0).contains(&self.min_p), "--min-p must be between 0 and 1");
        anyhow::ensure!(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0, "--repeat-penalty must be positive");
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        Ok(SamplerParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed,
        })
    }
}
