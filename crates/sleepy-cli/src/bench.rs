//! `sleepy bench`: prompt processing and generation speed of a model, with the bytes each
//! generated token reads, the bandwidth that achieves, and (on a GPU) the fraction of the
//! device's own copy bandwidth, measured in the same run.

use crate::common::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use sleepy::backend::Backend;
use sleepy::generate::generate;
use sleepy::model::{Logits, Model, Sequence};
use sleepy::sampler::{Sampler, SamplerParams};
use sleepy::tune::ConfigsInUse;
use std::ops::ControlFlow;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens of the prompt-processing test (0 skips it)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens of the generation test (0 skips it)
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Fill the KV cache with this many tokens before each test
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Repetitions of each test; the median is reported
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repeats: usize,
    /// Generate by sampling at this temperature (with run's other sampling defaults: top-k
    /// 40, top-p 0.95, min-p 0.05; fixed seed) instead of greedily
    #[arg(long, default_value_t = 0.0)]
    pub temp: f64,
    /// Print one JSON object per test
    #[arg(long)]
    pub json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pseudo-random token ids (seeded), so every run processes the same tokens.
fn tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed * 40503)) % vocab.max(1)) as u32).collect()
}

pub fn bench(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    anyhow::ensure!(args.temp.is_finite() && args.temp >= 0.0, "--temp must be 0 or more");
    let files = args.model.open()?;
    let model = files.load(args.model.device()?, args.model.threads(), args.model.load_options()?)?;
    let name = files.path.file_name().map_or_else(|| files.path.display().to_string(), |n| n.to_string_lossy().into_owned());
    // Which GEMV launch configurations this run uses: tuned (`sleepy tune`) or default.
    let gemv = match &model {
        // Informational: a failure here must not stop the benchmark.
        sleepy::engine::AnyModel::Cuda(m) => sleepy::tune::tuned_in_use(m).ok(),
        _ => None,
    };
    sleepy::with_model!(&model, m => run_tests(m, &args, &name, gemv))
}

/// The GEMV fields of a JSON line (null on the CPU).
fn gemv_json(gemv: Option<ConfigsInUse>) -> serde_json::Value {
    serde_json::json!({"gemv_configs": gemv.map(|g| g.label()), "gemv_shapes": gemv.map(|g| g.shapes),
        "gemv_shapes_tuned": gemv.map(|g| g.tuned), "gemv_shapes_changed": gemv.map(|g| g.changed)})
}

/// `o` with the GEMV fields added.
fn with_gemv(mut o: serde_json::Value, gemv: Option<ConfigsInUse>) -> serde_json::Value {
    if let (Some(map), serde_json::Value::Object(extra)) = (o.as_object_mut(), gemv_json(gemv)) {
        map.extend(extra);
    }
    o
}

fn run_tests<B: Backend>(m: &Model<B>, args: &BenchArgs, name: &str, gemv: Option<ConfigsInUse>) -> Result<()> {
    let c = &m.cfg;
    let device = m.backend.name();
    let bandwidth = m.backend.measure_bandwidth()?;
    let ctx = args.depth + args.n_prompt.max(args.n_gen.max(2)) + 1;
    anyhow::ensure!(ctx <= c.context_length, "depth + tokens ({ctx}) exceed the model's context of {}", c.context_length);
    let mut seq = m.new_sequence(ctx)?;
    if args.depth > 0 {
        let fill = tokens(args.depth, c.vocab_size, 1);
        for chunk in fill.chunks(2048) {
            let l = m.forward(&mut seq, chunk, Logits::Last)?;
            m.backend.argmax_last(&l)?;
        }
    }
    if !args.json {
        println!("model {name} | {device} | depth {} | {} repeats (median)", args.depth, args.repeats);
        if let Some(bw) = bandwidth {
            println!("measured copy bandwidth {bw:.0} GB/s (read + write)");
        }
        if let Some(g) = gemv {
            println!(
                "GEMV launch configurations: {} ({} of {} decode-step shapes chosen by `sleepy tune`, {} of them other than the default)",
                g.label(),
                g.tuned,
                g.shapes,
                g.changed
            );
        }
    }
    if args.n_prompt > 0 {
        let prompt = tokens(args.n_prompt, c.vocab_size, 2);
        let run = |seq: &mut Sequence<B>| -> Result<f64> {
            seq.truncate(args.depth);
            let t = Instant::now();
            let l = m.forward(seq, &prompt, Logits::Last)?;
            m.backend.argmax_last(&l)?;
            Ok(t.elapsed().as_secs_f64())
        };
        run(&mut seq).context("prompt processing warm-up")?;
        let secs = median((0..args.repeats).map(|_| run(&mut seq)).collect::<Result<Vec<_>>>()?);
        let tps = args.n_prompt as f64 / secs;
        if args.json {
            let o = serde_json::json!({"test": format!("pp{}", args.n_prompt), "model": name, "device": device, "depth": args.depth,
                "tokens": args.n_prompt, "repeats": args.repeats, "seconds": secs, "tok_per_s": tps, "ms_per_token": 1e3 * secs / args.n_prompt as f64});
            let o = with_gemv(o, gemv);
            println!("{o}");
        } else {
            println!("pp{:<6} {:>10.1} tok/s   {:>8.2} ms total", args.n_prompt, tps, secs * 1e3);
        }
    }
    if args.n_gen > 0 {
        let start = tokens(1, c.vocab_size, 3)[0];
        // Seconds per token through the generation loop (greedy, or sampling with --temp),
        // from the first generated token's arrival to the last's: n - 1 whole steps.
        let run = |seq: &mut Sequence<B>, n: usize| -> Result<f64> {
            seq.truncate(args.depth);
            let mut sampler = Sampler::new(SamplerParams { temperature: args.temp as f32, seed: 1, ..Default::default() });
            let mut times = Vec::with_capacity(n);
            generate(&m, seq, &[start], n, &mut sampler, &|_| false, &mut |_| {
                times.push(Instant::now());
                ControlFlow::Continue(())
            })?;
            let (first, last) = (times[0], times[times.len() - 1]);
            Ok(last.duration_since(first).as_secs_f64() / (times.len() - 1).max(1) as f64)
        };
        let n_gen = args.n_gen.max(2);
        run(&mut seq, n_gen.min(8)).context("generation warm-up")?;
        let secs = median((0..args.repeats).map(|_| run(&mut seq, n_gen)).collect::<Result<Vec<_>>>()?);
        // Each step reads every matrix once and the K/V of every earlier position.
        let weight_bytes = m.weights.matrix_bytes_per_token as f64;
        let avg_pos = args.depth as f64 + (n_gen as f64 - 1.0) / 2.0 + 1.0;
        let kv_bytes = 2.0 * c.n_layers as f64 * c.kv_dim() as f64 * 2.0 * avg_pos;
        let bytes = weight_bytes + kv_bytes;
        let gbs = bytes / secs / 1e9;
        let frac = bandwidth.map(|bw| gbs / bw);
        if args.json {
            let o = serde_json::json!({"test": format!("tg{}", args.n_gen), "model": name, "device": device, "depth": args.depth,
                "tokens": args.n_gen, "repeats": args.repeats, "temperature": args.temp, "tok_per_s": 1.0 / secs, "ms_per_token": secs * 1e3,
                "bytes_per_token": bytes, "weight_bytes_per_token": weight_bytes, "kv_bytes_per_token": kv_bytes,
                "gb_per_s": gbs, "bandwidth_gb_per_s": bandwidth, "fraction_of_bandwidth": frac,
                "floor_ms_per_token": bandwidth.map(|bw| bytes / bw / 1e6)});
            let o = with_gemv(o, gemv);
            println!("{o}");
        } else {
            let f = frac.map_or(String::new(), |f| format!("   {:.1}% of measured bandwidth (floor {:.3} ms)", 100.0 * f, bytes / bandwidth.unwrap_or(1.0) / 1e6));
            println!(
                "tg{:<6} {:>10.1} tok/s   {:>8.3} ms/token   {:.1} MB/token   {:.1} GB/s{f}",
                args.n_gen,
                1.0 / secs,
                secs * 1e3,
                bytes / 1e6,
                gbs
            );
        }
    }
    Ok(())
}
