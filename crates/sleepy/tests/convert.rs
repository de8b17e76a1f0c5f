//! `sleepy convert` on tiny random models written by the tests: the converted GGUF file gives
//! the logits of the Hugging Face directory it came from (llama Q/K permutation and Llama 3
//! rope scaling included), its tokenizer encodes like tokenizer.json, and the GGUF writer
//! round-trips what it writes.

#[path = "common/tiny.rs"]
mod tiny;

use sleepy::convert::{convert_hf_to_gguf, permute_for_interleaved_rope};
use sleepy::engine::ModelFiles;
use sleepy::loader::gguf::{GgufFile, Value};
use sleepy::loader::gguf_write::GgufWriter;
use sleepy::model::{LoadOptions, Logits};
use sleepy::quant::DType;
use std::path::{Path, PathBuf};
use tiny::Tiny;

const IDS: [u32; 12] = [5, 77, 123, 299, 0, 42, 42, 250, 17, 180, 3, 96];

fn logits(path: &Path) -> Vec<f32> {
    logits_with(path, LoadOptions::default())
}

fn logits_with(path: &Path, opts: LoadOptions) -> Vec<f32> {
    let files = ModelFiles::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // The same numerics for HF directories and GGUF files: the conversion is what is compared.
    let model = files.load_on(sleepy::backend::cpu::CpuBackend::new_exact(2).unwrap(), opts).unwrap();
    let mut seq = model.new_sequence(64).unwrap();
    model.read(&model.forward(&mut seq, &IDS, Logits::All).unwrap()).unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

fn convert(dir: &Path, ty: DType) -> PathBuf {
    let out = dir.with_extension(format!("{}.gguf", ty.name()));
    convert_hf_to_gguf(dir, &out, ty, &mut |_| {}).unwrap_or_else(|e| panic!("convert {} to {}: {e}", dir.display(), ty.name()));
    out
}

const VARIANTS: [(&str, Tiny); 4] = [
    ("llama-f32", Tiny { model_type: "llama", f32_weights: true, tied: false, llama3_scaling: false, bias: false, head_dim: None }),
    ("llama3-bf16", Tiny { model_type: "llama", f32_weights: false, tied: true, llama3_scaling: true, bias: true, head_dim: None }),
    ("qwen3-bf16", Tiny { model_type: "qwen3", f32_weights: false, tied: false, llama3_scaling: false, bias: false, head_dim: Some(32) }),
    ("qwen2-bf16", Tiny { model_type: "qwen2", f32_weights: false, tied: true, llama3_scaling: false, bias: true, head_dim: None }),
];

#[test]
fn converted_models_give_the_logits_of_the_hf_directory() {
    for (i, (name, t)) in VARIANTS.iter().enumerate() {
        let dir = tiny::fresh_dir(name);
        tiny::write_model(&dir, t, 100 + i as u64);
        let hf = logits(&dir);
        // The checkpoint's own format keeps the weights and the matmul arithmetic exactly:
        // only the layout (permutation, rope style) and the order of float sums may differ.
        // f16 and q8_0 round the weights (and the activations they are dotted with).
        let own = if t.f32_weights { DType::F32 } else { DType::BF16 };
        for (ty, tol) in [(own, 1e-5), (DType::F16, 1e-2), (DType::Q8_0, 5e-2)] {
            let gguf = convert(&dir, ty);
            let err = rel_err(&logits(&gguf), &hf);
            eprintln!("{name}: {} relative error {err:.2e} (bound {tol:.0e})", ty.name());
            assert!(err < tol, "{name}: {} GGUF logits differ from the HF directory's: relative error {err:.3e}", ty.name());
            // A tied model quantized at load has every matrix quantized like the converted
            // file (rows are quantized one by one, so the llama row permutation changes nothing).
            if ty.is_quantized() && t.tied {
                let in_situ = logits_with(&dir, LoadOptions { quant: Some(ty) });
                let err = rel_err(&logits(&gguf), &in_situ);
                assert!(err < 1e-5, "{name}: converted {} differs from quantizing at load: {err:.3e}", ty.name());
            }
        }
    }
}

#[test]
fn llama3_rope_scaling_survives_conversion() {
    let (name, t) = VARIANTS[1];
    let dir = tiny::fresh_dir(&format!("{name}-scaling"));
    tiny::write_model(&dir, &t, 7);
    let gguf = convert(&dir, DType::BF16);
    let f = GgufFile::open(&gguf).unwrap();
    let factors = f.tensor("rope_freqs.weight").expect("rope_freqs.weight written");
    assert_eq!((factors.dtype, factors.dims.clone()), (DType::F32, vec![t.head_dim() as u64 / 2]));
    let files = ModelFiles::open(&gguf).unwrap();
    assert!(files.cfg.rope_freq_factors.is_some());
    let hf_files = ModelFiles::open(&dir).unwrap();
    let (a, b) = (files.cfg.rope_inv_freqs(), hf_files.cfg.rope_inv_freqs());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * y.abs(), "frequencies {a:?} vs {b:?}");
    }
    // The scaling matters for this prompt: without it the logits are far off.
    let plain = tiny::fresh_dir(&format!("{name}-plain"));
    tiny::write_model(&plain, &Tiny { llama3_scaling: false, ..t }, 7);
    let (scaled, unscaled, converted) = (logits(&dir), logits(&plain), logits(&gguf));
    assert!(rel_err(&unscaled, &scaled) > 1e-2, "rope scaling does not change the logits: test is blind");
    let err = rel_err(&converted, &scaled);
    assert!(err < 1e-5, "converted llama3 model: relative error {err:.3e}");
}

#[test]
fn matrices_whose_rows_do_not_fit_the_block_fall_back_to_f16() {
    let (name, t) = VARIANTS[0];
    let dir = tiny::fresh_dir(&format!("{name}-fallback"));
    tiny::write_model(&dir, &t, 9);
    let out = dir.with_extension("q4k.gguf");
    // Rows of 64 and 128 values do not fill a 256-value k-quant block.
    let summary = convert_hf_to_gguf(&dir, &out, DType::Q4K, &mut |_| {}).unwrap();
    assert_eq!(summary.fallbacks, 2 + 7 * tiny::LAYERS);
    let f = GgufFile::open(&out).unwrap();
    for t in &f.tensors {
        let want = if t.dims.len() == 2 { DType::F16 } else { DType::F32 };
        assert_eq!(t.dtype, want, "{}", t.name);
    }
    assert_eq!(f.get_u64("general.file_type"), Some(14));
    assert_eq!(logits(&out), logits(&convert(&dir, DType::F16)));
}

#[test]
fn hyperparameters_are_written_under_the_architecture() {
    let (name, t) = VARIANTS[2];
    let dir = tiny::fresh_dir(&format!("{name}-keys"));
    tiny::write_model(&dir, &t, 11);
    let f = GgufFile::open(&convert(&dir, DType::F16)).unwrap();
    assert_eq!(f.get_str("general.architecture"), Some("qwen3"));
    for (key, want) in [
        ("qwen3.block_count", 2),
        ("qwen3.embedding_length", 64),
        ("qwen3.feed_forward_length", 128),
        ("qwen3.attention.head_count", 4),
        ("qwen3.attention.head_count_kv", 2),
        ("qwen3.attention.key_length", 32),
        ("qwen3.attention.value_length", 32),
        ("qwen3.context_length", 256),
        ("general.file_type", 1),
    ] {
        assert_eq!(f.get_u64(key), Some(want), "{key}");
    }
    assert_eq!(f.get_f64("qwen3.rope.freq_base"), Some(10000.0));
    assert!((f.get_f64("qwen3.attention.layer_norm_rms_epsilon").unwrap() - 1e-6).abs() < 1e-12);
    assert_eq!(f.tensor("blk.1.attn_q_norm.weight").map(|t| t.dtype), Some(DType::F32));
    assert_eq!(f.tensor("output.weight").map(|t| t.dims.clone()), Some(vec![64, 300]));
}

#[test]
fn a_directory_without_tokenizer_converts_to_a_model_without_one() {
    let (name, t) = VARIANTS[3];
    let dir = tiny::fresh_dir(&format!("{name}-notok"));
    tiny::write_model(&dir, &t, 13);
    let gguf = convert(&dir, DType::F16);
    assert_eq!(GgufFile::open(&gguf).unwrap().get_str("tokenizer.ggml.model"), Some("none"));
    let files = ModelFiles::open(&gguf).unwrap();
    assert!(files.tokenizer.is_none());
    assert_eq!(files.cfg.vocab_size, tiny::VOCAB);
}

#[test]
fn the_converted_tokenizer_encodes_like_tokenizer_json() {
    let (name, t) = VARIANTS[2];
    let dir = tiny::fresh_dir(&format!("{name}-tok"));
    tiny::write_model(&dir, &t, 17);
    tiny::write_tokenizer(&dir);
    let gguf = convert(&dir, DType::F16);
    let f = GgufFile::open(&gguf).unwrap();
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("qwen2"));
    let tokens = f.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
    assert_eq!(tokens.len(), tiny::VOCAB);
    let types = f.get("tokenizer.ggml.token_type").and_then(Value::as_array).unwrap();
    let im_end = tokens.iter().position(|v| v.as_str() == Some("<|im_end|>")).unwrap();
    assert_eq!(types[im_end], Value::I32(3), "special tokens are control tokens");
    assert_eq!(types[tiny::VOCAB - 1], Value::I32(5), "rows past the vocabulary are unused padding");
    assert_eq!(f.get_u64("tokenizer.ggml.eos_token_id"), Some(im_end as u64));
    assert_eq!(f.get("tokenizer.ggml.add_bos_token"), Some(&Value::Bool(false)));
    assert!(f.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));

    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let ours = ModelFiles::open(&gguf).unwrap();
    let ours = ours.tokenizer().unwrap();
    for text in ["the cat hello", "Hello there, in the 1234 hats!", "<|im_start|>user\nhi<|im_end|>\n", "  two  spaces\n\n\nand héllo wörld 😀", ""] {
        let want = hf.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(ours.decode_with_special(&want), text);
    }
}

#[test]
fn unsupported_inputs_give_clear_errors() {
    let dir = tiny::fresh_dir("errors");
    let out = dir.join("x.gguf");
    let err = convert_hf_to_gguf(&dir.join("missing"), &out, DType::F16, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("not a Hugging Face model directory"), "{err}");
    // Unknown architecture.
    let t = VARIANTS[0].1;
    tiny::write_model(&dir, &t, 1);
    let mut cfg = tiny::config_json(&t);
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = convert_hf_to_gguf(&dir, &out, DType::F16, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("gpt_neox") && err.contains("not supported"), "{err}");
    // A weight the converted model would silently drop.
    std::fs::write(dir.join("config.json"), tiny::config_json(&t).to_string()).unwrap();
    let extra = vec![
        ("model.embed_tokens.weight".to_string(), vec![tiny::VOCAB, tiny::HIDDEN], vec![0.0; tiny::VOCAB * tiny::HIDDEN]),
        ("model.layers.0.mlp.extra_norm.weight".to_string(), vec![tiny::HIDDEN], vec![1.0; tiny::HIDDEN]),
    ];
    tiny::write_safetensors(&dir.join("model.safetensors"), &extra, true);
    let err = convert_hf_to_gguf(&dir, &out, DType::F16, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("extra_norm"), "{err}");
    assert!(!out.exists(), "no output file after a failed conversion");
}

#[test]
fn permutation_pairs_rows_i_and_i_plus_half_of_each_head() {
    // 2 heads of 4 rows, one byte per row: HF pairs rows (0, 2) and (1, 3) of each head.
    let src: Vec<u8> = (0..8).collect();
    assert_eq!(permute_for_interleaved_rope("t", &src, 1, 8, 2).unwrap(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    assert!(permute_for_interleaved_rope("t", &src, 1, 8, 3).is_err());
}

#[test]
fn gguf_writer_round_trips_every_value_type_and_tensors() {
    let dir = tiny::fresh_dir("writer");
    let path = dir.join("t.gguf");
    let values = vec![
        ("a.u8", Value::U8(7)),
        ("a.i8", Value::I8(-7)),
        ("a.u16", Value::U16(65000)),
        ("a.i16", Value::I16(-32000)),
        ("a.u32", Value::U32(4_000_000_000)),
        ("a.i32", Value::I32(-2_000_000_000)),
        ("a.u64", Value::U64(u64::MAX)),
        ("a.i64", Value::I64(i64::MIN)),
        ("a.f32", Value::F32(1.5e-6)),
        ("a.f64", Value::F64(-2.25e300)),
        ("a.bool", Value::Bool(true)),
        ("a.str", Value::String("héllo\n".into())),
        ("a.strs", Value::Array(vec![Value::String("x".into()), Value::String(String::new())])),
        ("a.ints", Value::Array((0..5).map(Value::I32).collect())),
        ("a.empty", Value::Array(vec![])),
        ("a.nested", Value::Array(vec![Value::Array(vec![Value::F32(1.0)]), Value::Array(vec![])])),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w.set(k, v.clone());
    }
    let tensors: Vec<(&str, DType, Vec<u64>, Vec<u8>)> = vec![
        ("t.f32", DType::F32, vec![3], (0..12).collect()),
        ("t.f16", DType::F16, vec![5, 3], (0..30).map(|i| i * 3).collect()),
        ("t.q8", DType::Q8_0, vec![64, 2], (0..136).map(|i| (i * 7) as u8).collect()),
    ];
    for (name, dtype, dims, _) in &tensors {
        w.add_tensor(name, *dtype, dims).unwrap();
    }
    w.write(&path, &mut |i, _| Ok(tensors[i].3.clone())).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata.len(), values.len());
    for (k, v) in &values {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.tensors.len(), tensors.len());
    for (name, dtype, dims, bytes) in &tensors {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.dtype, &t.dims), (*dtype, dims));
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_data(t), &bytes[..]);
    }
    // Wrong data size: an error, and no file left behind.
    let bad = dir.join("bad.gguf");
    assert!(w.write(&bad, &mut |_, _| Ok(vec![0u8; 1])).is_err());
    assert!(!bad.exists());
    // Rows that do not fit the block, and a name used twice.
    assert!(w.add_tensor("t.q4", DType::Q4_0, &[33, 2]).is_err());
    assert!(w.add_tensor("t.f32", DType::F32, &[3]).is_err());
}
