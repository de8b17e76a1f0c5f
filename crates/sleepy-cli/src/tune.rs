//! `sleepy tune`: measure the GEMV launch configurations of a model's decode step on this
//! GPU and keep the fastest (see the library's `tune` module for how).

use crate::common::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sleepy::backend::cuda::tune::TuneEvent;
use sleepy::engine::Device;
use sleepy::tune::{DecodeComparison, ModelTuneOptions, StepTrial, TuneReport};
use std::time::Instant;

#[derive(Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Measure and report, but do not save the choices
    #[arg(long)]
    pub no_save: bool,
    /// Print the report as one JSON object
    #[arg(long)]
    pub json: bool,
}

pub fn tune(args: TuneArgs) -> Result<()> {
    anyhow::ensure!(args.model.device()? != Device::Cpu, "sleepy tune measures GPU kernels; there is nothing to tune on the CPU");
    let files = args.model.open()?;
    let name = files.path.file_name().map_or_else(|| files.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let t = Instant::now();
    let model = files.load_cuda(args.model.load_options()?).context("sleepy tune needs the CUDA backend")?;
    let load_s = t.elapsed().as_secs_f64();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let opts = ModelTuneOptions { save: !args.no_save, ..Default::default() };
    let report = sleepy::tune::tune_model(&model, &name, &opts, &mut |e| match e {
        TuneEvent::Steps(n) => bar.inc_length(n),
        TuneEvent::Done => bar.inc(1),
        TuneEvent::Stage(s) => bar.set_message(s),
    });
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", json(&report, load_s));
    } else {
        print_table(&report, load_s);
    }
    Ok(())
}

fn comparison(c: &Option<DecodeComparison>) -> serde_json::Value {
    match c {
        Some(c) => serde_json::json!({"default_ms_per_token": c.default_ms, "tuned_ms_per_token": c.tuned_ms, "ratio": c.ratio,
            "noise": c.noise, "tokens_per_run": c.tokens_per_run}),
        None => serde_json::Value::Null,
    }
}

fn json(r: &TuneReport, load_s: f64) -> serde_json::Value {
    let shapes: Vec<_> = r
        .shapes
        .iter()
        .map(|s| {
            let c = r.chosen(s);
            serde_json::json!({"shape": s.problem.label(), "problem": s.problem, "launches_per_step": s.launches_per_step,
                "weight_bytes": s.problem.weight_bytes(),
                "default": s.default.config, "default_us": s.default.us, "best": s.best.config, "best_us": s.best.us,
                "tuned": c.config, "tuned_us": c.us, "gain": 1.0 - c.us / s.default.us,
                "overruled_in_step": r.overruled(s), "cpu_error": s.cpu_error, "best_error": s.best_error,
                "candidates": s.tried, "rejected": s.rejected, "noise": s.noise})
        })
        .collect();
    serde_json::json!({"test": "tune", "model": r.model, "gpu": r.key.gpu, "driver": r.key.driver, "kernels": r.key.kernels,
        "shapes": shapes, "skipped": r.skipped.iter().map(|p| p.label()).collect::<Vec<_>>(),
        "failed": r.failed.iter().map(|(p, e)| serde_json::json!({"shape": p.label(), "error": e})).collect::<Vec<_>>(),
        "decode_before": comparison(&r.before), "decode_after": comparison(&r.after),
        "step_trials": r.trials.iter().map(|t| serde_json::json!({"shape": t.problem.label(), "config": t.config, "is_default": is_default(r, t),
            "kept": t.kept, "vs": comparison(&Some(t.vs))})).collect::<Vec<_>>(),
        "saved": r.saved.as_ref().map(|p| p.display().to_string()), "tune_seconds": r.seconds, "load_seconds": load_s})
}

/// Whether a decode-step trial put its problem back to the default configuration.
fn is_default(r: &TuneReport, t: &StepTrial) -> bool {
    r.shapes.iter().any(|s| s.problem == t.problem && s.default.config == t.config)
}

fn print_table(r: &TuneReport, load_s: f64) {
    println!("GEMV launch configurations of {} on {} (driver {}, kernels {})", r.model, r.key.gpu, r.key.driver, r.key.kernels);
    println!("{:<30} {:>4}  {:<22} {:>9}  {:<22} {:>9} {:>7} {:>7}", "shape", "n", "default", "us", "tuned", "us", "GB/s", "gain");
    for s in &r.shapes {
        let c = r.chosen(s);
        let gbs = s.problem.weight_bytes() as f64 / c.us / 1e3;
        let mark = match (c.config == s.default.config, r.overruled(s)) {
            (true, true) => " (default kept in the step)",
            (true, false) => " (default kept)",
            (false, true) => " (chosen in the step)",
            (false, false) => "",
        };
        println!(
            "{:<30} {:>4}  {:<22} {:>9.2}  {:<22} {:>9.2} {:>7.0} {:>+6.1}%{mark}",
            s.problem.label(),
            s.launches_per_step,
            s.default.config.short(),
            s.default.us,
            c.config.short(),
            c.us,
            gbs,
            100.0 * (1.0 - c.us / s.default.us)
        );
    }
    for p in &r.skipped {
        println!("{:<30} not tunable: no tunable GEMV kernel for {} yet", p.label(), p.format.name());
    }
    for (p, e) in &r.failed {
        println!("{:<30} not tuned (default kept): {e}", p.label());
    }
    let line = |what: &str, c: &DecodeComparison| {
        println!(
            "decode step, {what}: default {:.3} ms/token, tuned {:.3} ms/token ({:+.1}%, noise {:.1}%; {} tokens per run)",
            c.default_ms,
            c.tuned_ms,
            100.0 * (c.ratio - 1.0),
            100.0 * c.noise,
            c.tokens_per_run
        );
    };
    if !r.trials.is_empty() {
        println!("in the decode step, each candidate against the choice before it (kept: the fastest beyond the noise):");
        for t in &r.trials {
            let name = if is_default(r, t) { format!("{} (default)", t.config.short()) } else { t.config.short() };
            println!("  {:<30} {:<32} {:>+6.1}% (noise {:.1}%){}", t.problem.label(), name, 100.0 * (t.vs.ratio - 1.0), 100.0 * t.vs.noise, if t.kept { "  kept" } else { "" });
        }
    }
    if let Some(b) = &r.before {
        line("per-shape winners", b);
    }
    match &r.after {
        Some(a) => line("final choice", a),
        None => println!("decode step: no candidate beat the defaults in the step; defaults kept"),
    }
    match &r.saved {
        Some(p) => println!("saved to {}", p.display()),
        None => println!("not saved"),
    }
    println!("tuning took {:.1} s (model load {:.1} s)", r.seconds, load_s);
}
