//! Time the sampler on one vocabulary-sized logits vector (Qwen's 151936 tokens), once a
//! token as generation calls it, for the CLI's default chain and three others:
//!
//!     cargo run --release -p sleepy --example sample_bench
use rand::{Rng, SeedableRng};
use sleepy::sampler::{Sampler, SamplerParams};

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // A smooth spread of 15 logits, a few tokens near the top (a sum of three uniforms).
    let logits: Vec<f32> = (0..151_936).map(|_| (0..3).map(|_| rng.random::<f32>()).sum::<f32>() * 5.0).collect();
    let chains = [
        ("default (temp 0.8, top-k 40, top-p 0.95, min-p 0.05)", SamplerParams { seed: 1, ..Default::default() }),
        ("top-k 0 (top-p 0.95, min-p 0.05)", SamplerParams { top_k: 0, seed: 1, ..Default::default() }),
        ("temperature alone (top-k 0, top-p 1, min-p 0)", SamplerParams { top_k: 0, top_p: 1.0, min_p: 0.0, seed: 1, ..Default::default() }),
        ("greedy", SamplerParams::greedy()),
    ];
    for (name, params) in chains {
        let mut s = Sampler::new(params);
        let n = 50;
        let mut ids = 0u64; // the draws, so a change that alters them shows
        let t = std::time::Instant::now();
        for _ in 0..n {
            ids += s.sample(&logits) as u64;
        }
        println!("{name}: {:.3} ms a token (sum of ids {ids})", t.elapsed().as_secs_f64() * 1e3 / n as f64);
    }
}
