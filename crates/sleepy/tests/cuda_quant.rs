//! Quantized weights on the GPU against the CPU reference, on fresh random blocks made with
//! `quant::quantize_row` from random floats: every format's decode GEMV (all epilogues, odd row
//! counts), prefill GEMMs through bf16 tiles, embedding rows, weights mixing formats, and whole
//! tiny models (in-situ quantized, and a Q4_K_M-like mix) giving the CPU's greedy tokens.
//! The GPU and the CPU quantize activations the same way (Q8_0 / Q8_1 / Q8_K), so decode
//! results agree to float rounding; prefill rounds weights and activations to bf16.
//! Where no GPU or driver is present each test prints a skip line and passes.

use rand::{Rng, SeedableRng};
use sleepy::backend::cpu::{CpuAct, CpuBackend};
use sleepy::backend::cuda::{CudaAct, CudaBackend};
use sleepy::backend::{Backend, WeightPart};
use sleepy::config::{Arch, ModelConfig, RopeStyle};
use sleepy::loader::{Bytes, TensorRef};
use sleepy::model::{LoadOptions, Logits, Model};
use sleepy::quant::{self, DType};
use std::collections::HashMap;

#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{MemSource, GPU_LOCK, assert_close, gpu, rel_err};

const FORMATS: [DType; 8] = [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K];

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ 0x0071_a2b3)
}

/// Uniform in [-scale, scale], never exactly zero.
fn randv(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale + scale * 1e-3).collect()
}

/// `rows` random rows of length k quantized to `dtype` (plain floats for F32 / BF16); rows
/// are quantized in parallel (the K-quant search is slow).
fn rows_of(r: &mut impl Rng, dtype: DType, rows: usize, k: usize) -> Vec<u8> {
    use rayon::prelude::*;
    let rb = dtype.row_bytes(k).expect("whole blocks");
    let vals = randv(r, rows * k, 0.08);
    let mut out = vec![0u8; rows * rb];
    out.par_chunks_mut(rb).zip(vals.par_chunks(k)).for_each(|(dst, src)| quant::quantize_row(dtype, src, dst));
    out
}

fn part(dtype: DType, rows: usize, bytes: Vec<u8>) -> WeightPart {
    WeightPart { dtype, rows, bytes: Bytes::from_vec(bytes) }
}

struct Pair {
    cpu: CpuBackend,
    gpu: CudaBackend,
}

impl Pair {
    fn new(test: &str) -> Option<Pair> {
        Some(Pair { gpu: gpu(test)?, cpu: CpuBackend::new_exact(threads()).unwrap() })
    }
    fn act(&self, rows: usize, cols: usize, v: &[f32]) -> (CpuAct, CudaAct) {
        let c = CpuAct { rows, cols, data: v.to_vec() };
        let mut g = self.gpu.upload_vector(v).unwrap();
        g.rows = rows;
        g.cols = cols;
        (c, g)
    }
    fn weights(&self, k: usize, parts: &[WeightPart]) -> (<CpuBackend as Backend>::Weight, <CudaBackend as Backend>::Weight) {
        (self.cpu.upload_weight("w", k, parts.to_vec()).unwrap(), self.gpu.upload_weight("w", k, parts.to_vec()).unwrap())
    }
}

/// Decode tolerance: the same integer sums as the CPU, floats summed in another order.
const DECODE_TOL: f64 = 1e-4;
/// A product with a single output row is one number whose relative error can be far above
/// the per-product rounding when its terms cancel (q5_1, k=4864 measured 1.4e-4 on an H100).
const DECODE_TOL_ONE_ROW: f64 = 1e-3;
/// Prefill tolerance: weights and activations rounded to bf16 for cuBLAS.
const PREFILL_TOL: f64 = 1.5e-2;

/// Every epilogue of the product `x @ W^T` on `rows` token rows, GPU against CPU.
fn check_all_ops(p: &Pair, tag: &str, k: usize, parts: &[WeightPart], rows: usize, r: &mut impl Rng) {
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let tol = if rows > 2 { PREFILL_TOL } else if n == 1 { DECODE_TOL_ONE_ROW } else { DECODE_TOL };
    let (wc, wg) = p.weights(k, parts);
    let xv = randv(r, rows * k, 1.0);
    let (xc, xg) = p.act(rows, k, &xv);
    let (bc, bg) = p.act(1, n, &randv(r, n, 0.1));
    let nv: Vec<f32> = randv(r, k, 0.2).iter().map(|v| 1.0 + v).collect();
    let (nc, ng) = p.act(1, k, &nv);
    let tag = format!("{tag} n={n} k={k} rows={rows}");
    // Plain, with bias.
    let (mut oc, mut og) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
    p.cpu.matmul(&xc, &wc, Some(&bc), &mut oc).unwrap();
    p.gpu.matmul(&xg, &wg, Some(&bg), &mut og).unwrap();
    assert_close(&format!("matmul {tag}"), &p.gpu.read(&og).unwrap(), &oc.data, tol);
    // RMSNorm folded in.
    let (mut xnc, mut xng) = (p.cpu.alloc(rows, k).unwrap(), p.gpu.alloc(rows, k).unwrap());
    p.cpu.rmsnorm_matmul(&xc, &nc, 1e-6, &wc, Some(&bc), &mut xnc, &mut oc).unwrap();
    p.gpu.rmsnorm_matmul(&xg, &ng, 1e-6, &wg, Some(&bg), &mut xng, &mut og).unwrap();
    assert_close(&format!("rmsnorm_matmul {tag}"), &p.gpu.read(&og).unwrap(), &oc.data, tol);
    // Residual add in the epilogue.
    let resid = randv(r, rows * n, 1.0);
    let (mut rc, mut rg) = p.act(rows, n, &resid);
    let (mut tc, mut tg) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
    p.cpu.matmul_add(&xc, &wc, &mut tc, &mut rc).unwrap();
    p.gpu.matmul_add(&xg, &wg, &mut tg, &mut rg).unwrap();
    // Compare the products (the residual would hide their error).
    let sub = |v: Vec<f32>| v.iter().zip(&resid).map(|(a, b)| a - b).collect::<Vec<_>>();
    assert_close(&format!("matmul_add {tag}"), &sub(p.gpu.read(&rg).unwrap()), &sub(rc.data.clone()), tol);
    // SwiGLU over gate rows then up rows.
    if n % 2 == 0 {
        let f = n / 2;
        let (mut guc, mut gug) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
        let (mut fc, mut fg) = (p.cpu.alloc(rows, f).unwrap(), p.gpu.alloc(rows, f).unwrap());
        p.cpu.rmsnorm_matmul_swiglu(&xc, &nc, 1e-6, &wc, &mut xnc, &mut guc, &mut fc).unwrap();
        p.gpu.rmsnorm_matmul_swiglu(&xg, &ng, 1e-6, &wg, &mut xng, &mut gug, &mut fg).unwrap();
        assert_close(&format!("swiglu {tag}"), &p.gpu.read(&fg).unwrap(), &fc.data, tol);
    }
}

/// Row lengths for a format: one block, a few, and real model widths.
fn lengths(dtype: DType) -> Vec<usize> {
    if dtype.block_len() == 256 {
        vec![256, 768, 2560, 9728]
    } else {
        vec![32, 96, 896, 2560, 4864]
    }
}

#[test]
fn decode_gemv_every_format_matches_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Pair::new("decode_gemv_every_format_matches_cpu") else { return };
    let mut r = rng(1);
    for dtype in FORMATS {
        // Odd row counts at every length, and one tall matrix of a real width.
        let shapes = lengths(dtype).into_iter().flat_map(|k| [1, 7, 38, 1000].map(|n| (n, k))).chain([(4097, 2560)]);
        for (n, k) in shapes {
            let parts = [part(dtype, n, rows_of(&mut r, dtype, n, k))];
            for rows in [1, 2] {
                check_all_ops(&p, dtype.name(), k, &parts, rows, &mut r);
            }
        }
    }
}

/// The GEMV against the exact f32 dot (no activation quantization on the reference side):
/// only the int8 rounding of the activations separates them.
#[test]
fn decode_gemv_is_close_to_the_exact_dot() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Pair::new("decode_gemv_is_close_to_the_exact_dot") else { return };
    let mut r = rng(2);
    for dtype in FORMATS {
        let (n, k) = (257, 2560);
        let bytes = rows_of(&mut r, dtype, n, k);
        let w = p.gpu.upload_weight("w", k, vec![part(dtype, n, bytes.clone())]).unwrap();
        let xv = randv(&mut r, k, 1.0);
        let (_, xg) = p.act(1, k, &xv);
        let mut og = p.gpu.alloc(1, n).unwrap();
        p.gpu.matmul(&xg, &w, None, &mut og).unwrap();
        let rb = dtype.row_bytes(k).unwrap();
        let want: Vec<f32> = (0..n).map(|i| quant::dot_f32(dtype, &bytes[i * rb..(i + 1) * rb], &xv)).collect();
        assert_close(&format!("{} exact dot", dtype.name()), &p.gpu.read(&og).unwrap(), &want, 2e-2);
    }
}

#[test]
fn prefill_gemm_every_format_matches_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Pair::new("prefill_gemm_every_format_matches_cpu") else { return };
    let mut r = rng(3);
    for dtype in FORMATS {
        let k = if dtype.block_len() == 256 { 768 } else { 96 };
        for n in [7, 1000] {
            let parts = [part(dtype, n, rows_of(&mut r, dtype, n, k))];
            check_all_ops(&p, dtype.name(), k, &parts, 5, &mut r);
        }
    }
    // Taller than one bf16 tile (32 MiB, 6528 rows of 2560): 6600 rows cover two tiles.
    let parts = [part(DType::Q4K, 6600, rows_of(&mut r, DType::Q4K, 6600, 2560))];
    check_all_ops(&p, "q4_k two tiles", 2560, &parts, 3, &mut r);
}

/// Fused matrices of several formats (a Q4_K_M file's Q|K|V and gate|up), and float parts.
#[test]
fn mixed_format_weights_match_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Pair::new("mixed_format_weights_match_cpu") else { return };
    let mut r = rng(4);
    let k = 512;
    let mixes: [&[(DType, usize)]; 5] = [
        &[(DType::Q5_0, 512), (DType::Q5_0, 64), (DType::Q8_0, 64)],
        &[(DType::Q4K, 300), (DType::Q6K, 300)],
        &[(DType::Q8_0, 33), (DType::BF16, 31), (DType::F32, 17), (DType::Q4_1, 19)],
        &[(DType::F32, 40), (DType::F32, 24)],
        &[(DType::F16, 20), (DType::Q4_0, 20)],
    ];
    for mix in mixes {
        let parts: Vec<WeightPart> = mix.iter().map(|&(d, n)| part(d, n, rows_of(&mut r, d, n, k))).collect();
        let tag = mix.iter().map(|(d, n)| format!("{}x{n}", d.name())).collect::<Vec<_>>().join("|");
        let has_float = mix.iter().any(|(d, _)| !d.is_quantized());
        for rows in [1, 2, 6] {
            // Float parts are rounded to bf16 on the GPU: decode is then as close as bf16.
            let loose = has_float && rows <= 2;
            if loose {
                let (wc, wg) = p.weights(k, &parts);
                let n: usize = mix.iter().map(|m| m.1).sum();
                let xv = randv(&mut r, rows * k, 1.0);
                let (xc, xg) = p.act(rows, k, &xv);
                let (mut oc, mut og) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
                p.cpu.matmul(&xc, &wc, None, &mut oc).unwrap();
                p.gpu.matmul(&xg, &wg, None, &mut og).unwrap();
                assert_close(&format!("matmul {tag} rows={rows}"), &p.gpu.read(&og).unwrap(), &oc.data, 1e-2);
            } else {
                check_all_ops(&p, &tag, k, &parts, rows, &mut r);
            }
        }
    }
}

#[test]
fn embedding_rows_match_cpu_dequantization() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Pair::new("embedding_rows_match_cpu_dequantization") else { return };
    let mut r = rng(5);
    for dtype in FORMATS.into_iter().chain([DType::F32]) {
        let (vocab, k) = (1001, if dtype.block_len() == 256 { 512 } else { 160 });
        let bytes = rows_of(&mut r, dtype, vocab, k);
        let w = p.gpu.upload_weight("token_embd.weight", k, vec![part(dtype, vocab, bytes.clone())]).unwrap();
        let ids = [0u32, 1000, 17, 17, 512];
        let mut out = p.gpu.alloc(ids.len(), k).unwrap();
        p.gpu.embed(&w, &ids, &mut out).unwrap();
        let rb = dtype.row_bytes(k).unwrap();
        let mut want = vec![0f32; ids.len() * k];
        for (t, &id) in ids.iter().enumerate() {
            quant::dequantize_row(dtype, &bytes[id as usize * rb..(id as usize + 1) * rb], &mut want[t * k..(t + 1) * k]);
        }
        // Quantized rows dequantize bit for bit as on the CPU; f32 tables are kept as bf16.
        let tol = if dtype.is_quantized() { 1e-7 } else { 4e-3 };
        assert_close(&format!("embed {}", dtype.name()), &p.gpu.read(&out).unwrap(), &want, tol);
        let mut bad = p.gpu.alloc(1, k).unwrap();
        assert!(p.gpu.embed(&w, &[1001], &mut bad).is_err());
    }
}

// ---- Whole models.

fn cfg(qwen3: bool, tied: bool) -> ModelConfig {
    ModelConfig {
        arch: if qwen3 { Arch::Qwen3 } else { Arch::Qwen2 },
        hidden: 256,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        ffn_hidden: 512,
        vocab_size: 1000,
        context_length: 512,
        norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_style: if qwen3 { RopeStyle::Neox } else { RopeStyle::Interleaved },
        rope_scaling: None,
        rope_freq_factors: None,
        rope_dims: 64,
        qkv_bias: !qwen3,
        qk_norm: qwen3,
        tied_embeddings: tied,
    }
}

/// A random model; `fmt(name)` gives each matrix's stored format (norms and biases are f32).
fn source(c: &ModelConfig, seed: u64, fmt: &dyn Fn(&str) -> DType) -> MemSource {
    let mut r = rng(seed);
    let mut m = HashMap::new();
    let mut add = |name: String, dims: Vec<usize>, kind: u8, r: &mut rand::rngs::StdRng| {
        let (k, rows) = (dims[0], dims.iter().skip(1).product::<usize>());
        let dtype = if kind == 0 { fmt(&name) } else { DType::F32 };
        let vals: Vec<f32> = match kind {
            0 => randv(r, k * rows, 0.09),
            1 => randv(r, k * rows, 0.1).iter().map(|v| 1.0 + v).collect(),
            _ => randv(r, k * rows, 0.05),
        };
        let rb = dtype.row_bytes(k).expect("whole blocks");
        let mut bytes = vec![0u8; rows * rb];
        for (row, dst) in bytes.chunks_exact_mut(rb).enumerate() {
            quant::quantize_row(dtype, &vals[row * k..(row + 1) * k], dst);
        }
        m.insert(name.clone(), TensorRef { name, dtype, dims, bytes: Bytes::from_vec(bytes) });
    };
    let (h, q, kv, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn_hidden);
    add("token_embd.weight".into(), vec![h, c.vocab_size], 0, &mut r);
    if !c.tied_embeddings {
        add("output.weight".into(), vec![h, c.vocab_size], 0, &mut r);
    }
    add("output_norm.weight".into(), vec![h], 1, &mut r);
    for i in 0..c.n_layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        add(n("attn_norm.weight"), vec![h], 1, &mut r);
        add(n("ffn_norm.weight"), vec![h], 1, &mut r);
        add(n("attn_q.weight"), vec![h, q], 0, &mut r);
        add(n("attn_k.weight"), vec![h, kv], 0, &mut r);
        add(n("attn_v.weight"), vec![h, kv], 0, &mut r);
        add(n("attn_output.weight"), vec![q, h], 0, &mut r);
        add(n("ffn_gate.weight"), vec![h, f], 0, &mut r);
        add(n("ffn_up.weight"), vec![h, f], 0, &mut r);
        add(n("ffn_down.weight"), vec![f, h], 0, &mut r);
        if c.qk_norm {
            add(n("attn_q_norm.weight"), vec![c.head_dim], 1, &mut r);
            add(n("attn_k_norm.weight"), vec![c.head_dim], 1, &mut r);
        }
        if c.qkv_bias {
            add(n("attn_q.bias"), vec![q], 2, &mut r);
            add(n("attn_k.bias"), vec![kv], 2, &mut r);
            add(n("attn_v.bias"), vec![kv], 2, &mut r);
        }
    }
    MemSource(m)
}

/// Prefill logits, then 32 greedy tokens decoded freely on both backends: the GPU must pick
/// the CPU's token at every step, unless the CPU's own top two are a near tie there (then the
/// sequences may part, and the test stops comparing).
fn greedy_parity(test: &str, c: &ModelConfig, src: &MemSource, opts: LoadOptions, tag: &str) {
    let Some(g) = gpu(test) else { return };
    let cpu = Model::load(CpuBackend::new_exact(threads()).unwrap(), src, c.clone(), opts).unwrap();
    let gpu = Model::load(g, src, c.clone(), opts).unwrap();
    assert_eq!(cpu.weights.matrix_bytes_per_token, gpu.weights.matrix_bytes_per_token);
    let v = c.vocab_size;
    let prompt: Vec<u32> = (0..9).map(|i| ((i * 7919 + 13) % v) as u32).collect();
    let (mut sc, mut sg) = (cpu.new_sequence(128).unwrap(), gpu.new_sequence(128).unwrap());
    let lc = cpu.read(&cpu.forward(&mut sc, &prompt, Logits::All).unwrap()).unwrap();
    let lg = gpu.read(&gpu.forward(&mut sg, &prompt, Logits::All).unwrap()).unwrap();
    let e = rel_err(&lg, &lc);
    eprintln!("{tag}: prefill logits relative error {e:.2e}");
    // Measured 2.1-2.3e-2 on an H100 against the exact CPU (f32 KV cache and attention; the
    // GPU keeps them in bf16), twice the bf16 model's: the quantized tiny models amplify the
    // difference. Not yet explained further; the greedy agreement below is the main check.
    assert!(e < 5e-2, "{tag}: prefill logits relative error {e:.3e}");
    // Decode from a 2-token prompt so every step runs the GEMV path.
    let (mut sc, mut sg) = (cpu.new_sequence(64).unwrap(), gpu.new_sequence(64).unwrap());
    let (mut tc, mut tg) = (prompt[..2].to_vec(), prompt[..2].to_vec());
    let mut same = 0;
    for step in 0..32 {
        let c_row = cpu.read(&cpu.forward(&mut sc, &tc, Logits::Last).unwrap()).unwrap();
        let og = gpu.forward(&mut sg, &tg, Logits::Last).unwrap();
        let g_row = gpu.read(&og).unwrap();
        let e = rel_err(&g_row, &c_row);
        assert!(e < 5e-2, "{tag} step {step}: logits relative error {e:.3e}");
        let (want, got) = (sleepy::backend::cpu::argmax(&c_row), gpu.backend.argmax_last(&og).unwrap());
        if want != got {
            let mut sorted = c_row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let margin = sorted[0] - sorted[1];
            eprintln!("{tag}: step {step}: GPU {got}, CPU {want}, CPU margin {margin:.2e}");
            // The bound of the bf16 model test (cuda_model.rs): a clear winner must not flip.
            assert!(margin < 0.05, "{tag} step {step}: GPU picked {got}, CPU {want} with margin {margin}");
            break;
        }
        same += 1;
        (tc, tg) = (vec![want], vec![got]);
    }
    eprintln!("{tag}: {same}/32 greedy tokens equal");
}

#[test]
fn in_situ_quantized_models_give_cpu_greedy_tokens() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (i, q) in [DType::Q8_0, DType::Q4_0, DType::Q4K, DType::Q6K].into_iter().enumerate() {
        let (qwen3, tied) = (i % 2 == 0, i < 2);
        let c = cfg(qwen3, tied);
        let src = source(&c, 10 + i as u64, &|_| DType::BF16);
        let opts = LoadOptions { quant: Some(q) };
        greedy_parity("in_situ_quantized_models_give_cpu_greedy_tokens", &c, &src, opts, &format!("--quant {} qwen3={qwen3} tied={tied}", q.name()));
    }
}

/// The format mix of Qwen2.5-Coder-0.5B's Q4_K_M file: Q5_0 Q/K/gate/up/o and embedding,
/// V in Q8_0 or Q5_0 by layer, down in Q4_K or Q6_K by layer, output Q8_0, norms f32.
#[test]
fn q4_k_m_like_mixed_model_gives_cpu_greedy_tokens() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let c = cfg(false, false);
    let fmt = |name: &str| -> DType {
        let layer = name.split('.').nth(1).and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
        match name {
            "output.weight" => DType::Q8_0,
            n if n.ends_with("attn_v.weight") => [DType::Q8_0, DType::Q5_0][layer % 2],
            n if n.ends_with("ffn_down.weight") => [DType::Q6K, DType::Q4K][layer % 2],
            _ => DType::Q5_0,
        }
    };
    let src = source(&c, 21, &fmt);
    greedy_parity("q4_k_m_like_mixed_model_gives_cpu_greedy_tokens", &c, &src, LoadOptions::default(), "Q4_K_M-like mix");
}
