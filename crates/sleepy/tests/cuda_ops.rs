//! Every CUDA op against the CPU reference on fresh random, non-zero inputs, at the real
//! shapes of Qwen3-0.6B/4B and at odd shapes (rows and row lengths that are not multiples
//! of any block). Where no GPU or driver is present each test prints a skip line and passes.

use rand::{Rng, SeedableRng};
use sleepy::backend::cpu::CpuBackend;
use sleepy::backend::cuda::CudaBackend;
use sleepy::backend::{AttnShape, Backend, Rope, WeightPart};
use sleepy::config::RopeStyle;
use sleepy::loader::Bytes;
use sleepy::quant::DType;

#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{GPU_LOCK, assert_close, gpu, rel_err};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_1234)
}

fn randn(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    // Uniform in [-scale, scale], never exactly zero.
    (0..n).map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale + scale * 1e-3).collect()
}

fn weight_bytes(dtype: DType, v: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; v.len() * 2];
    for (i, &x) in v.iter().enumerate() {
        let b = if dtype == DType::BF16 { half::bf16::from_f32(x).to_bits() } else { half::f16::from_f32(x).to_bits() };
        out[2 * i..2 * i + 2].copy_from_slice(&b.to_le_bytes());
    }
    out
}

/// The weights as the GPU holds them (rounded to the 16-bit format).
fn stored(dtype: DType, v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| if dtype == DType::BF16 { half::bf16::from_f32(x).to_f32() } else { half::f16::from_f32(x).to_f32() }).collect()
}

/// What the GEMV path (1-2 token rows, f32 activations) computes, in f64: y[t] = W x'[t], x'
/// the input RMS-normed with weights g when given. The CPU backend is no reference at 2e-5
/// for these rows: like llama.cpp it rounds activations to the weight's format first.
fn exact_matvec(w: &[f32], n: usize, k: usize, x: &[f32], rows: usize, norm: Option<(&[f32], f64)>) -> Vec<f64> {
    let mut out = vec![0f64; rows * n];
    for t in 0..rows {
        let xr = &x[t * k..(t + 1) * k];
        let xs: Vec<f64> = match norm {
            Some((g, eps)) => {
                let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
                let r = 1.0 / (ms + eps).sqrt();
                xr.iter().zip(g).map(|(&v, &gv)| v as f64 * r * gv as f64).collect()
            }
            None => xr.iter().map(|&v| v as f64).collect(),
        };
        for u in 0..n {
            out[t * n + u] = w[u * k..(u + 1) * k].iter().zip(&xs).map(|(&a, &b)| a as f64 * b).sum();
        }
    }
    out
}

fn part(dtype: DType, rows: usize, v: &[f32]) -> WeightPart {
    WeightPart { dtype, rows, bytes: Bytes::from_vec(weight_bytes(dtype, v)) }
}

struct Pair {
    cpu: CpuBackend,
    gpu: CudaBackend,
}

impl Pair {
    fn act(&self, rows: usize, cols: usize, v: &[f32]) -> (sleepy::backend::cpu::CpuAct, sleepy::backend::cuda::CudaAct) {
        let c = sleepy::backend::cpu::CpuAct { rows, cols, data: v.to_vec() };
        let mut g = self.gpu.upload_vector(v).unwrap();
        g.rows = rows;
        g.cols = cols;
        (c, g)
    }
}

fn pair(test: &str) -> Option<Pair> {
    Some(Pair { gpu: gpu(test)?, cpu: CpuBackend::new_exact(4).unwrap() })
}

/// GEMV (1-2 rows) is f32 arithmetic, checked against the exact product; GEMM rows go
/// through 16-bit activations, as on the CPU, and are checked against it.
fn tol(rows: usize, dtype: DType) -> f64 {
    match (rows > 2, dtype) {
        (false, _) => 2e-5,
        (true, DType::BF16) => 1e-2,
        (true, _) => 2e-3,
    }
}

const SHAPES: [(usize, usize); 9] = [(6144, 2560), (2560, 4096), (4096, 1024), (1024, 3072), (37, 100), (1000, 264), (5, 8), (4097, 1032), (300, 9728)];

#[test]
fn matmul_variants_match_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pair("matmul_variants_match_cpu") else { return };
    let mut r = rng(1);
    for dtype in [DType::BF16, DType::F16] {
        for (n, k) in SHAPES {
            for rows in [1, 2, 7] {
                let wv = randn(&mut r, n * k, 0.05);
                let (wc, wg) = (p.cpu.upload_weight("w", k, vec![part(dtype, n, &wv)]).unwrap(), p.gpu.upload_weight("w", k, vec![part(dtype, n, &wv)]).unwrap());
                let xv = randn(&mut r, rows * k, 1.0);
                let (xc, xg) = p.act(rows, k, &xv);
                let bv = randn(&mut r, n, 0.1);
                let (bc, bg) = p.act(1, n, &bv);
                let nv = randn(&mut r, k, 1.0).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<_>>();
                let (nc, ng) = p.act(1, k, &nv);
                let tag = format!("{} n={n} k={k} rows={rows}", dtype.name());
                // For GEMV rows: the exact products, plain and normed.
                let gemv = rows <= 2;
                let (plain, normed) = if gemv {
                    let ws = stored(dtype, &wv);
                    (exact_matvec(&ws, n, k, &xv, rows, None), exact_matvec(&ws, n, k, &xv, rows, Some((&nv, 1e-6))))
                } else {
                    (Vec::new(), Vec::new())
                };
                let with_bias = |y: &[f64]| -> Vec<f32> { y.iter().enumerate().map(|(i, v)| (v + bv[i % n] as f64) as f32).collect() };
                // plain (+ bias)
                let (mut oc, mut og) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
                p.cpu.matmul(&xc, &wc, Some(&bc), &mut oc).unwrap();
                p.gpu.matmul(&xg, &wg, Some(&bg), &mut og).unwrap();
                let want = if gemv { with_bias(&plain) } else { oc.data.clone() };
                assert_close(&format!("matmul {tag}"), &p.gpu.read(&og).unwrap(), &want, tol(rows, dtype));
                // rmsnorm folded in
                let (mut xnc, mut xng) = (p.cpu.alloc(rows, k).unwrap(), p.gpu.alloc(rows, k).unwrap());
                p.cpu.rmsnorm_matmul(&xc, &nc, 1e-6, &wc, Some(&bc), &mut xnc, &mut oc).unwrap();
                p.gpu.rmsnorm_matmul(&xg, &ng, 1e-6, &wg, Some(&bg), &mut xng, &mut og).unwrap();
                let want = if gemv { with_bias(&normed) } else { oc.data.clone() };
                assert_close(&format!("rmsnorm_matmul {tag}"), &p.gpu.read(&og).unwrap(), &want, tol(rows, dtype));
                // residual add in the epilogue
                let resid = randn(&mut r, rows * n, 1.0);
                let (mut rc, mut rg) = p.act(rows, n, &resid);
                let (mut tc, mut tg) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
                p.cpu.matmul_add(&xc, &wc, &mut tc, &mut rc).unwrap();
                p.gpu.matmul_add(&xg, &wg, &mut tg, &mut rg).unwrap();
                let want = if gemv { plain.iter().zip(&resid).map(|(v, r)| (v + *r as f64) as f32).collect() } else { rc.data.clone() };
                assert_close(&format!("matmul_add {tag}"), &p.gpu.read(&rg).unwrap(), &want, tol(rows, dtype));
                // SwiGLU over stacked gate|up rows
                if n % 2 == 0 {
                    let f = n / 2;
                    let (mut guc, mut gug) = (p.cpu.alloc(rows, n).unwrap(), p.gpu.alloc(rows, n).unwrap());
                    let (mut fc, mut fg) = (p.cpu.alloc(rows, f).unwrap(), p.gpu.alloc(rows, f).unwrap());
                    p.cpu.rmsnorm_matmul_swiglu(&xc, &nc, 1e-6, &wc, &mut xnc, &mut guc, &mut fc).unwrap();
                    p.gpu.rmsnorm_matmul_swiglu(&xg, &ng, 1e-6, &wg, &mut xng, &mut gug, &mut fg).unwrap();
                    let want = if gemv {
                        (0..rows * f)
                            .map(|i| {
                                let (t, u) = (i / f, i % f);
                                let (g, up) = (normed[t * n + u], normed[t * n + f + u]);
                                (g / (1.0 + (-g).exp()) * up) as f32
                            })
                            .collect()
                    } else {
                        fc.data.clone()
                    };
                    assert_close(&format!("rmsnorm_matmul_swiglu {tag}"), &p.gpu.read(&fg).unwrap(), &want, tol(rows, dtype) * 2.0);
                }
            }
        }
    }
}

#[test]
fn logits_shape_and_argmax_match_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pair("logits_shape_and_argmax_match_cpu") else { return };
    let mut r = rng(2);
    let (n, k) = (151936, 1024);
    let wv = randn(&mut r, n * k, 0.05);
    let ws = stored(DType::BF16, &wv);
    let wg = p.gpu.upload_weight("w", k, vec![part(DType::BF16, n, &wv)]).unwrap();
    for trial in 0..3 {
        let xv = randn(&mut r, k, 1.0);
        let (_, xg) = p.act(1, k, &xv);
        let nv = vec![1.1f32; k];
        let (_, ng) = p.act(1, k, &nv);
        let mut og = p.gpu.alloc(1, n).unwrap();
        let mut xng = p.gpu.alloc(1, k).unwrap();
        p.gpu.rmsnorm_matmul(&xg, &ng, 1e-6, &wg, None, &mut xng, &mut og).unwrap();
        let g = p.gpu.read(&og).unwrap();
        let want: Vec<f32> = exact_matvec(&ws, n, k, &xv, 1, Some((&nv, 1e-6))).iter().map(|&v| v as f32).collect();
        assert_close(&format!("logits {trial}"), &g, &want, 2e-5);
        assert_eq!(p.gpu.argmax_last(&og).unwrap(), sleepy::backend::cpu::argmax(&g), "argmax of the GPU's own logits");
    }
    // Ties go to the lowest index, as on the CPU.
    let mut v = randn(&mut r, 5000, 1.0);
    v[4000] = 7.0;
    v[1234] = 7.0;
    let (_, g) = p.act(1, 5000, &v);
    assert_eq!(p.gpu.argmax_last(&g).unwrap(), 1234);
}

/// Sampling's top-k on the GPU (SLEEPY_TOP_K_GPU) against sorting the row on the host: the
/// same (id, value) pairs, ties to the lower id, non-finite values left out.
#[test]
fn top_k_of_the_last_row_matches_sorting() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pair("top_k_of_the_last_row_matches_sorting") else { return };
    let mut r = rng(rand::random());
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    p.gpu.set_top_k_on_device(true);
    for (rows, n) in [(1, 151936), (1, 151936), (2, 151936), (1, 4096), (1, 4097), (3, 70000), (1, 300), (1, 1), (1, 5000)] {
        let kind = r.random_range(0..3);
        let v: Vec<f32> = (0..rows * n)
            .map(|_| match kind {
                0 => r.random_range(-20.0f32..20.0),
                // Ties and both zeros.
                1 => [-0.0f32, 0.0, 1.0, -1.0, 3.0][r.random_range(0..5)],
                _ => [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, r.random_range(-3.0f32..3.0)][r.random_range(0..4)],
            })
            .collect();
        let (_, g) = p.act(rows, n, &v);
        let last = &v[(rows - 1) * n..];
        let mut all: Vec<(u32, f32)> = last.iter().enumerate().filter(|(_, x)| x.is_finite()).map(|(i, &x)| (i as u32, x)).collect();
        all.sort_by(order);
        for k in [1, 40, 256] {
            let mut got = p.gpu.top_k_last(&g, k).unwrap().expect("selected on the GPU");
            got.sort_by(order);
            let want = &all[..k.min(all.len())];
            let same = got.len() == want.len() && got.iter().zip(want).all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits());
            assert!(same, "rows {rows} n {n} kind {kind} k {k}: {:?} against {:?}", &got[..got.len().min(5)], &want[..want.len().min(5)]);
        }
        assert!(p.gpu.top_k_last(&g, 257).unwrap().is_none(), "k over the device's limit reads the row");
    }
    p.gpu.set_top_k_on_device(false);
    let (_, g) = p.act(1, 10, &[1.0; 10]);
    assert!(p.gpu.top_k_last(&g, 5).unwrap().is_none(), "off: the row is read");
}

#[test]
fn elementwise_ops_match_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pair("elementwise_ops_match_cpu") else { return };
    let mut r = rng(3);
    for (rows, cols) in [(1, 2560), (3, 1024), (5, 1000), (1, 37)] {
        let xv = randn(&mut r, rows * cols, 2.0);
        let yv = randn(&mut r, rows * cols, 1.0);
        let wv = randn(&mut r, cols, 1.0);
        let ((mut xc, mut xg), (yc, yg), (wc, wg)) = (p.act(rows, cols, &xv), p.act(rows, cols, &yv), p.act(1, cols, &wv));
        let (mut oc, mut og) = (p.cpu.alloc(rows, cols).unwrap(), p.gpu.alloc(rows, cols).unwrap());
        p.cpu.rmsnorm(&xc, &wc, 1e-5, &mut oc).unwrap();
        p.gpu.rmsnorm(&xg, &wg, 1e-5, &mut og).unwrap();
        assert_close("rmsnorm", &p.gpu.read(&og).unwrap(), &oc.data, 1e-5);
        p.cpu.add_rmsnorm(&mut xc, &yc, &wc, 1e-5, &mut oc).unwrap();
        p.gpu.add_rmsnorm(&mut xg, &yg, &wg, 1e-5, &mut og).unwrap();
        assert_close("add_rmsnorm out", &p.gpu.read(&og).unwrap(), &oc.data, 1e-5);
        assert_close("add_rmsnorm x", &p.gpu.read(&xg).unwrap(), &xc.data, 1e-6);
        p.cpu.add(&mut xc, &yc).unwrap();
        p.gpu.add(&mut xg, &yg).unwrap();
        assert_close("add", &p.gpu.read(&xg).unwrap(), &xc.data, 1e-6);
        let last_c = p.cpu.last_row(&xc).unwrap();
        let last_g = p.gpu.last_row(&xg).unwrap();
        assert_close("last_row", &p.gpu.read(&last_g).unwrap(), &last_c.data, 0.0);
        if cols % 2 == 0 {
            let (mut sc, mut sg) = (p.cpu.alloc(rows, cols / 2).unwrap(), p.gpu.alloc(rows, cols / 2).unwrap());
            p.cpu.swiglu(&xc, &mut sc).unwrap();
            p.gpu.swiglu(&xg, &mut sg).unwrap();
            assert_close("swiglu", &p.gpu.read(&sg).unwrap(), &sc.data, 1e-5);
        }
    }
    // Embedding rows, bf16 and f16.
    for dtype in [DType::BF16, DType::F16] {
        let (vocab, k) = (1000, 264);
        let tv = randn(&mut r, vocab * k, 1.0);
        let tc = p.cpu.upload_weight("emb", k, vec![part(dtype, vocab, &tv)]).unwrap();
        let tg = p.gpu.upload_weight("emb", k, vec![part(dtype, vocab, &tv)]).unwrap();
        let ids = [3u32, 999, 0, 517];
        let (mut oc, mut og) = (p.cpu.alloc(4, k).unwrap(), p.gpu.alloc(4, k).unwrap());
        p.cpu.embed(&tc, &ids, &mut oc).unwrap();
        p.gpu.embed(&tg, &ids, &mut og).unwrap();
        assert_close("embed", &p.gpu.read(&og).unwrap(), &oc.data, 0.0);
        assert!(p.gpu.embed(&tg, &[1000], &mut p.gpu.alloc(1, k).unwrap()).is_err(), "out-of-vocabulary id must be an error");
    }
}

/// Rope with theta 1e6 over `dims` dimensions (the GPU reads inv_freqs; the CPU reference
/// builds the same angles by repeated multiplication, which differs by a few ulp).
fn rope_for(dims: usize, style: RopeStyle) -> Rope {
    let inv_freqs = (0..dims / 2).map(|i| 1.0 / 1e6f32.powf(2.0 * i as f32 / dims as f32)).collect();
    Rope { style, dims, inv_freqs, theta_scale: 1e6f32.powf(-2.0 / dims as f32), freq_factors: vec![1.0; dims / 2] }
}

/// (heads, kv heads, head_dim): Qwen3-4B, Qwen3-0.6B, Qwen2.5-0.5B (group 7), odd groups.
const ATTN: [(usize, usize, usize); 5] = [(32, 8, 128), (16, 8, 128), (14, 2, 64), (6, 2, 64), (4, 4, 256)];

#[test]
fn rope_and_prefill_attention_match_cpu() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pair("rope_and_prefill_attention_match_cpu") else { return };
    let mut r = rng(4);
    for (h, kvh, d) in ATTN {
        for (style, dims, norm) in [(RopeStyle::Neox, d, true), (RopeStyle::Interleaved, d, false), (RopeStyle::Neox, d / 2, false)] {
            let s = AttnShape { n_heads: h, n_kv_heads: kvh, head_dim: d };
            let cols = (h + 2 * kvh) * d;
            let rope = rope_for(dims, style);
            let cfg = cfg_for(h, kvh, d, 256);
            let (mut kc, mut kg) = (p.cpu.new_kv(&cfg, 256).unwrap(), p.gpu.new_kv(&cfg, 256).unwrap());
            let qn = randn(&mut r, d, 1.0).iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<_>>();
            let kn = randn(&mut r, d, 1.0).iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<_>>();
            let ((qnc, qng), (knc, kng)) = (p.act(1, d, &qn), p.act(1, d, &kn));
            // Prompts in a row: 19 tokens at 0, then 23 more at 19 (a continued chat), then 150
            // at 42 (several blocks of query rows and tiles of keys in the tensor-core kernel).
            let mut pos0 = 0;
            for t in [19, 23, 150] {
                let tag = format!("h={h} kvh={kvh} d={d} {style:?} dims={dims} norm={norm} t={t} pos0={pos0}");
                let qkv = randn(&mut r, t * cols, 1.0);
                let (mut xc, mut xg) = p.act(t, cols, &qkv);
                let (nc, ng) = if norm { (Some((&qnc, &knc, 1e-6)), Some((&qng, &kng, 1e-6))) } else { (None, None) };
                p.cpu.rope_qk(&mut xc, s, pos0, nc, &rope).unwrap();
                p.gpu.rope_qk(&mut xg, s, pos0, ng, &rope).unwrap();
                assert_close(&format!("rope_qk {tag}"), &p.gpu.read(&xg).unwrap(), &xc.data, 1e-5);
                let (mut oc, mut og) = (p.cpu.alloc(t, h * d).unwrap(), p.gpu.alloc(t, h * d).unwrap());
                p.cpu.attention(&xc, &mut kc, 0, pos0, s, &mut oc).unwrap();
                p.gpu.attention(&xg, &mut kg, 0, pos0, s, &mut og).unwrap();
                assert_close(&format!("prefill attention {tag}"), &p.gpu.read(&og).unwrap(), &oc.data, 1e-2);
                pos0 += t;
            }
        }
    }
}

fn cfg_for(h: usize, kvh: usize, d: usize, ctx: usize) -> sleepy::config::ModelConfig {
    sleepy::config::ModelConfig {
        arch: sleepy::config::Arch::Qwen3,
        hidden: h * d,
        n_layers: 2,
        n_heads: h,
        n_kv_heads: kvh,
        head_dim: d,
        ffn_hidden: 64,
        vocab_size: 64,
        context_length: ctx,
        norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_style: RopeStyle::Neox,
        rope_scaling: None,
        rope_freq_factors: None,
        rope_dims: d,
        qkv_bias: false,
        qk_norm: true,
        tied_embeddings: true,
    }
}

#[test]
fn decode_attention_matches_cpu_at_every_position() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pair("decode_attention_matches_cpu_at_every_position") else { return };
    let mut r = rng(5);
    // Qwen3's rope and norm at every shape; the other rope styles (interleaved, partial,
    // no Q/K norm) at two shapes, over more than one chunk of positions. Through
    // `new_kv_split`: two chunks a head group (blocks of up to 160 positions: chunks round up
    // to 32), and two and four heads a block at every head size (the rule picks one or two).
    let mut cases = Vec::new();
    for (h, kvh, d) in ATTN {
        for (max_seq, steps, layer, chunks) in [(600, 300, 1, None), (5000, 80, 0, None), (600, 300, 0, Some(2))] {
            cases.push((h, kvh, d, max_seq, steps, layer, RopeStyle::Neox, d, true, None, chunks));
        }
    }
    for (h, kvh, d) in [ATTN[0], (8, 2, 64), (8, 2, 256)] {
        for (hb, chunks) in [(Some(2), None), (Some(4), None), (Some(4), Some(2))] {
            cases.push((h, kvh, d, 600, 300, 1, RopeStyle::Neox, d, true, hb, chunks));
        }
    }
    // The rule's switch from one head a block to two (group 4), at position 100 of 300.
    let mut short = vec![None; cases.len()];
    for (h, kvh, d) in [ATTN[0], (8, 2, 256)] {
        cases.push((h, kvh, d, 600, 300, 1, RopeStyle::Neox, d, true, None, None));
        short.push(Some(100));
    }
    for (h, kvh, d) in [ATTN[0], ATTN[2]] {
        cases.push((h, kvh, d, 600, 140, 1, RopeStyle::Interleaved, d, false, None, None));
        cases.push((h, kvh, d, 600, 140, 0, RopeStyle::Neox, d / 2, false, None, None));
    }
    short.resize(cases.len(), None);
    // The tensor-core kernels (SLEEPY_ATTN_MMA) at one, two and four heads a block, with
    // chunks of the rule's length and two long ones, and from the rule's switch at 100 on.
    let mut mma = vec![false; cases.len()];
    for (h, kvh, d, hbs) in [(32, 8, 128, [1, 4]), (16, 8, 128, [1, 2]), (14, 2, 64, [1, 1]), (8, 2, 64, [2, 4])] {
        for (hb, chunks) in [(hbs[0], None), (hbs[1], None), (hbs[1], Some(2))] {
            cases.push((h, kvh, d, 600, 300, 1, RopeStyle::Neox, d, true, Some(hb), chunks));
            short.push(None);
        }
    }
    cases.push((32, 8, 128, 600, 300, 1, RopeStyle::Neox, 128, true, None, None));
    short.push(Some(100));
    mma.resize(cases.len(), true);
    // Contexts of one chunk (positions up to 127) on the one-block-a-head kernel and on the
    // split's (the default), past the switch to two chunks.
    let mut one = vec![None; cases.len()];
    for (h, kvh, d) in ATTN {
        for on in [true, false] {
            cases.push((h, kvh, d, 600, 140, 1, RopeStyle::Neox, d, true, None, None));
            short.push(None);
            mma.push(false);
            one.push(Some(on));
        }
    }
    for ((((h, kvh, d, max_seq, steps, layer, style, dims, norm, hb, chunks), short), mma), one) in cases.into_iter().zip(short).zip(mma).zip(one) {
        {
            let s = AttnShape { n_heads: h, n_kv_heads: kvh, head_dim: d };
            let cols = (h + 2 * kvh) * d;
            let rope = rope_for(dims, style);
            let cfg = cfg_for(h, kvh, d, max_seq);
            let (mut kc, mut kg) = (p.cpu.new_kv(&cfg, max_seq).unwrap(), p.gpu.new_kv_split(&cfg, max_seq, hb, chunks, short).unwrap());
            kg.set_attn_mma(mma);
            if let Some(on) = one {
                kg.set_attn_one(on);
            }
            let qn = randn(&mut r, d, 1.0).iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<_>>();
            let kn = randn(&mut r, d, 1.0).iter().map(|v| 1.0 + 0.1 * v).collect::<Vec<_>>();
            let ((qnc, qng), (knc, kng)) = (p.act(1, d, &qn), p.act(1, d, &kn));
            let mut worst = 0f64;
            for pos in 0..steps {
                let qkv = randn(&mut r, cols, 1.0);
                let (mut xc, mut xg) = p.act(1, cols, &qkv);
                let (mut oc, mut og) = (p.cpu.alloc(1, h * d).unwrap(), p.gpu.alloc(1, h * d).unwrap());
                let (qk_cpu, qk_gpu) = if norm { (Some((&qnc, &knc, 1e-6)), Some((&qng, &kng, 1e-6))) } else { (None, None) };
                p.cpu.rope_attention(&mut xc, &mut kc, layer, pos, s, qk_cpu, &rope, &mut oc).unwrap();
                p.gpu.rope_attention(&mut xg, &mut kg, layer, pos, s, qk_gpu, &rope, &mut og).unwrap();
                let e = rel_err(&p.gpu.read(&og).unwrap(), &oc.data);
                assert!(e <= 1e-2, "decode attention h={h} kvh={kvh} d={d} {style:?} dims={dims} norm={norm} hb={hb:?} chunks={chunks:?} short={short:?} mma={mma} one={one:?} pos={pos}: relative error {e:.3e}");
                worst = worst.max(e);
            }
            eprintln!("decode attention h={h} kvh={kvh} d={d} {style:?} dims={dims} norm={norm} max_seq={max_seq} hb={hb:?} chunks={chunks:?} short={short:?} mma={mma} one={one:?}: worst relative error {worst:.2e} over {steps} positions");
        }
    }
}

#[test]
fn out_of_gpu_memory_is_a_clear_error() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = gpu("out_of_gpu_memory_is_a_clear_error") else { return };
    // 2 layers x 50M positions x 1024 x bf16 x (K, V): about 400 GB.
    let cfg = cfg_for(32, 8, 128, 50_000_000);
    match g.new_kv(&cfg, 50_000_000) {
        Ok(_) => panic!("a 400 GB cache cannot fit"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("out of GPU memory"), "unexpected error: {msg}");
        }
    }
    // The backend still works afterwards.
    let v = g.upload_vector(&[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(g.read(&v).unwrap(), vec![1.0, 2.0, 3.0]);
}
