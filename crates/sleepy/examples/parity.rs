//! Numerical parity with transformers on a model written by make_models.py (the GPU
//! machine's random-weight models): our logits of the reference prompt against transformers'
//! float32 logits, next to transformers' own bfloat16 error, and greedy tokens against its
//! float32 greedy continuation.
//!
//! usage: parity MODEL_DIR [cpu|cuda|auto]

use sleepy::backend::Backend;
use sleepy::engine::{Device, ModelFiles};
use sleepy::model::{LoadOptions, Logits};
use std::path::Path;

fn tensor_f32(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn tensor_i64(st: &safetensors::SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).map(String::as_str).unwrap_or("."));
    let device = Device::parse(args.get(2).map(String::as_str).unwrap_or("auto")).expect("device");
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse reference");
    let ids: Vec<u32> = tensor_i64(&st, "input_ids").iter().map(|&v| v as u32).collect();
    let f32_ref = tensor_f32(&st, "logits_f32");
    let bf16_ref = tensor_f32(&st, "logits_bf16");
    let greedy: Vec<u32> = tensor_i64(&st, "greedy_f32").iter().map(|&v| v as u32).collect();
    let files = ModelFiles::open(dir).expect("open model");
    let model = files.load(device, sleepy::engine::default_threads(), LoadOptions::default()).expect("load");
    sleepy::with_model!(&model, m => {
        let mut seq = m.new_sequence(ids.len() + greedy.len() + 1).expect("sequence");
        let ours = m.read(&m.forward(&mut seq, &ids, Logits::All).expect("forward")).expect("read");
        let mut seq = m.new_sequence(ids.len() + greedy.len() + 1).expect("sequence");
        let mut l = m.forward(&mut seq, &ids, Logits::Last).expect("forward");
        let mut toks = Vec::new();
        for _ in 0..greedy.len() {
            let t = m.backend.argmax_last(&l).expect("argmax");
            toks.push(t);
            l = m.forward(&mut seq, &[t], Logits::Last).expect("forward");
        }
        let same = toks.iter().zip(&greedy).take_while(|(a, b)| a == b).count();
        println!(
            "parity {} on {}: logits rel. error vs transformers f32 {:.3e} (transformers bf16: {:.3e}); greedy {}/{} tokens match f32",
            dir.display(),
            m.backend.name(),
            rel(&ours, &f32_ref),
            rel(&bf16_ref, &f32_ref),
            same,
            greedy.len()
        );
    });
}
