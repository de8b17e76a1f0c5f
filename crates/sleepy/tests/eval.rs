//! `sleepy eval` on a tiny random model: perplexity against a direct computation from one
//! full forward, and the reference report against a reference made from our own outputs.

#[path = "common/tiny.rs"]
mod tiny;

use sleepy::engine::ModelFiles;
use sleepy::eval::{eval_reference, perplexity, Reference};
use sleepy::model::{LoadOptions, Logits};
use std::path::Path;
use tiny::Tiny;

const T: Tiny = Tiny { model_type: "qwen3", f32_weights: false, tied: true, llama3_scaling: false, bias: false, head_dim: None };

fn nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    lse - row[target as usize] as f64
}

#[test]
fn perplexity_scores_the_second_half_of_each_window() {
    let dir = tiny::fresh_dir("eval-ppl");
    tiny::write_model(&dir, &T, 3);
    let files = ModelFiles::open(&dir).unwrap();
    let model = files.load_cpu(2, LoadOptions::default()).unwrap();
    let tokens: Vec<u32> = (0..200u32).map(|i| (i * 37 + 11) % tiny::VOCAB as u32).collect();
    let (window, bos) = (70, 1u32);
    // By hand: windows of [bos] + 69 text tokens (two of them; the last 62 tokens are
    // dropped), each token at positions 35..70 scored from one full forward.
    let mut total = 0.0;
    let mut n = 0;
    for chunk in tokens.chunks_exact(window - 1) {
        let ids: Vec<u32> = std::iter::once(bos).chain(chunk.iter().copied()).collect();
        let mut seq = model.new_sequence(window).unwrap();
        let logits = model.read(&model.forward(&mut seq, &ids, Logits::All).unwrap()).unwrap();
        for p in window / 2..window {
            total += nll(&logits[(p - 1) * tiny::VOCAB..p * tiny::VOCAB], ids[p]);
            n += 1;
        }
    }
    let want = (total / n as f64).exp();
    let mut windows_seen = 0;
    let got = perplexity(&model, &tokens, window, Some(bos), &mut |_| windows_seen += 1).unwrap();
    assert_eq!((windows_seen, got.windows, got.scored_tokens), (2, 2, n));
    assert!((got.ppl - want).abs() <= 1e-4 * want, "perplexity {} vs {want} by hand", got.ppl);
    // Too short a text is one shorter window; nothing to score is an error.
    assert_eq!(perplexity(&model, &tokens[..9], window, None, &mut |_| {}).unwrap().scored_tokens, 5);
    assert!(perplexity(&model, &tokens[..1], window, None, &mut |_| {}).is_err());
}

fn write_reference(path: &Path, ids: &[u32], f32_logits: &[f32], bf16_logits: &[f32], greedy: &[u32]) {
    let i64s = |v: &[u32]| v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect::<Vec<u8>>();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ids_b, greedy_b, f_b, b_b) = (i64s(ids), i64s(greedy), f32s(f32_logits), f32s(bf16_logits));
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let shape = vec![ids.len(), tiny::VOCAB];
    let views = vec![
        ("input_ids", TensorView::new(Dtype::I64, vec![ids.len()], &ids_b).unwrap()),
        ("greedy_f32", TensorView::new(Dtype::I64, vec![greedy.len()], &greedy_b).unwrap()),
        ("logits_f32", TensorView::new(Dtype::F32, shape.clone(), &f_b).unwrap()),
        ("logits_bf16", TensorView::new(Dtype::F32, shape, &b_b).unwrap()),
    ];
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn reference_report_of_a_reference_made_from_our_own_outputs() {
    let dir = tiny::fresh_dir("eval-ref");
    tiny::write_model(&dir, &T, 5);
    let files = ModelFiles::open(&dir).unwrap();
    let model = files.load_cpu(2, LoadOptions::default()).unwrap();
    let ids: Vec<u32> = vec![3, 140, 7, 299, 64, 12, 12, 80];
    // Our greedy continuation, token by token from one growing prompt (no cache tricks).
    let mut greedy = Vec::new();
    let mut seq_ids = ids.clone();
    for _ in 0..6 {
        let mut seq = model.new_sequence(64).unwrap();
        let row = model.read(&model.forward(&mut seq, &seq_ids, Logits::Last).unwrap()).unwrap();
        let next = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32;
        greedy.push(next);
        seq_ids.push(next);
    }
    let mut seq = model.new_sequence(64).unwrap();
    let logits = model.read(&model.forward(&mut seq, &ids, Logits::All).unwrap()).unwrap();
    let noisy: Vec<f32> = logits.iter().enumerate().map(|(i, x)| x + if i % 2 == 0 { 0.01 } else { -0.01 }).collect();
    let path = dir.join("reference.safetensors");
    write_reference(&path, &ids, &logits, &noisy, &greedy);

    let r = eval_reference(&model, &Reference::open(&path).unwrap()).unwrap();
    assert!(r.rel_err < 1e-6, "rel err {}", r.rel_err);
    let norm = logits.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let want_bf16 = 0.01 * (logits.len() as f64).sqrt() / norm;
    assert!((r.bf16_rel_err.unwrap() - want_bf16).abs() < 1e-3 * want_bf16);
    assert_eq!((r.top1_agree, r.tokens, r.vocab), (ids.len(), ids.len(), tiny::VOCAB));
    assert_eq!((r.greedy_matched, r.teacher_forced_matched, r.greedy_total), (6, 6, 6));
    assert_eq!(r.greedy_ours, greedy);

    // A reference whose continuation goes astray at step 2: the count stops there, the
    // teacher-forced count misses one step only.
    let mut astray = greedy.clone();
    astray[2] = (astray[2] + 1) % tiny::VOCAB as u32;
    write_reference(&path, &ids, &logits, &noisy, &astray);
    let r = eval_reference(&model, &Reference::open(&path).unwrap()).unwrap();
    assert_eq!(r.greedy_matched, 2);
    assert!(r.teacher_forced_matched <= 5 && r.teacher_forced_mismatches.iter().any(|(s, m)| *s == 2 && *m >= 0.0));

    // Without a continuation only the logits are compared; a file that is not a reference
    // is refused.
    let short = dir.join("short.safetensors");
    write_reference(&short, &ids[..2], &logits[..2 * tiny::VOCAB], &logits[..2 * tiny::VOCAB], &[]);
    let r = eval_reference(&model, &Reference::open(&short).unwrap()).unwrap();
    assert_eq!((r.top1_agree, r.greedy_total, r.greedy_matched), (2, 0, 0));
    std::fs::write(&short, b"not a safetensors file").unwrap();
    assert!(Reference::open(&short).is_err());
}
