//! `sleepy convert`: a Hugging Face directory to a GGUF file.

use anyhow::{Context, Result};
use clap::Args;
use sleepy::quant::DType;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json)
    pub input: PathBuf,
    /// GGUF file to write
    pub output: PathBuf,
    /// Format of the weight matrices: f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k,
    /// q6_k (matrices whose rows do not fit the block fall back to f16; norms and biases stay f32)
    #[arg(long = "type", default_value = "f16")]
    pub dtype: String,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let target = DType::from_name(&args.dtype)
        .filter(|d| sleepy::convert::output_types().contains(d))
        .with_context(|| format!("unknown --type '{}'", args.dtype))?;
    let start = std::time::Instant::now();
    let summary = sleepy::convert::convert_hf_to_gguf(&args.input, &args.output, target, &mut |msg| eprintln!("{msg}"))
        .with_context(|| format!("could not convert {}", args.input.display()))?;
    eprintln!(
        "wrote {} ({}, {} tensors, {:.1} MB of weights{}{}) in {:.1}s",
        args.output.display(),
        summary.arch.name(),
        summary.tensors,
        summary.bytes as f64 / 1e6,
        if summary.fallbacks > 0 { format!(", {} matrices in f16 (rows do not fit the block)", summary.fallbacks) } else { String::new() },
        if summary.has_tokenizer { "" } else { ", no tokenizer" },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
