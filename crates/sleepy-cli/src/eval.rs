//! `sleepy eval`: perplexity over a text file, or agreement with reference logits.

use crate::common::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use sleepy::backend::Backend;
use sleepy::eval::{self, Reference, ReferenceReport};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
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
    /// Perplexity of the text in FILE, in non-overlapping windows of --ctx tokens
    /// (a window starts with BOS when the model adds one). Only the second half of each window
    /// is scored, each token predicted from all tokens before it in its window, so every
    /// scored token has at least ctx/2 tokens of context.
    #[arg(long, value_name = "FILE", required_unless_present = "reference", conflicts_with = "reference")]
    pub text: Option<PathBuf>,
    /// Tokens per perplexity window
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Compare with a reference written by make_models.py (prompt ids, float32 and bfloat16
    /// logits, float32 greedy continuation): logit error, top-1 and greedy agreement
    #[arg(long, value_name = "FILE.safetensors")]
    pub reference: Option<PathBuf>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let margs = ModelArgs { model: args.model.clone(), threads: args.threads, device: args.device.clone(), quant: args.quant.clone(), ctx: None };
    let files = margs.open()?;
    // Read the inputs before loading weights, so a bad path fails fast.
    let reference = match &args.reference {
        Some(p) => Some(Reference::open(p).with_context(|| format!("could not read the reference {}", p.display()))?),
        None => None,
    };
    let text = match &args.text {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("could not read {}", p.display()))?),
        None => None,
    };
    let model = files.load(margs.device()?, margs.threads(), margs.load_options()?)?;
    let model_name = files.path.display().to_string();
    if let Some(r) = reference {
        let (report, backend) = sleepy::with_model!(&model, m => (eval::eval_reference(m, &r)?, m.backend.name()));
        if args.json {
            let mut v = serde_json::to_value(&report)?;
            v["model"] = model_name.into();
            v["backend"] = backend.into();
            v["quant"] = args.quant.clone().into();
            println!("{v}");
        } else {
            print_report(&model_name, &backend, &report);
        }
        return Ok(());
    }
    let text = text.context("--text or --reference is required")?;
    let tok = files.tokenizer()?;
    let tokens = tok.encode(&text, false)?;
    let bos = if tok.adds_bos() { tok.bos_id() } else { None };
    let json = args.json;
    let result = sleepy::with_model!(&model, m => eval::perplexity(m, &tokens, args.ctx, bos, &mut |p| {
        if !json {
            eprintln!("[{}/{}] window ppl {:.4}, running ppl {:.4}", p.window, p.windows, p.window_ppl, p.ppl);
        }
    }))?;
    if json {
        let v = serde_json::json!({
            "model": model_name,
            "ppl": result.ppl,
            "scored_tokens": result.scored_tokens,
            "windows": result.windows,
            "ctx": args.ctx,
            "text_tokens": tokens.len(),
        });
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} over {} scored tokens ({} window(s) of up to {} tokens, {} text tokens)",
            result.ppl,
            result.scored_tokens,
            result.windows,
            args.ctx,
            tokens.len()
        );
    }
    Ok(())
}

fn print_report(model: &str, backend: &str, r: &ReferenceReport) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3e}"));
    let of = |n: Option<usize>, total: usize| n.map_or("-".to_string(), |n| format!("{n}/{total}"));
    println!("model:   {model} on {backend}");
    println!("prompt:  {} tokens, vocabulary {}", r.tokens, r.vocab);
    println!("{:<34} {:>12} {:>18}", "against transformers float32", "sleepy", "transformers bf16");
    println!("{:<34} {:>12.3e} {:>18}", "relative error ||x - f32||/||f32||", r.rel_err, opt(r.bf16_rel_err));
    println!("{:<34} {:>12.3e} {:>18}", "rms logit error", r.rms_err, opt(r.bf16_rms_err));
    println!("{:<34} {:>12} {:>18}", "top-1 agreement", format!("{}/{}", r.top1_agree, r.tokens), of(r.bf16_top1_agree, r.tokens));
    println!("max abs logit error: {:.3e}; median top-1/top-2 gap of the f32 logits: {:.3e}", r.max_abs_err, r.ref_top2_gap_median);
    println!("greedy, free running: {}/{} leading tokens equal the float32 reference's", r.greedy_matched, r.greedy_total);
    println!("greedy, teacher-forced: {}/{} steps choose the reference's token", r.teacher_forced_matched, r.greedy_total);
    for (step, margin) in &r.teacher_forced_mismatches {
        println!("  step {step}: our choice leads the reference's token by {margin:.3e} (rms error {:.1e})", r.rms_err);
    }
}
