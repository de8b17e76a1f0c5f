//! The GEMV tuner on the GPU: one small shape tuned and its winner checked against the CPU
//! reference; a tiny model tuned end to end (every decode-step shape, the decode-step
//! comparison) with its greedy tokens unchanged. Where no GPU or driver is present each test
//! prints a skip line and passes. Nothing here asserts a time.

#[path = "common/tiny.rs"]
mod tiny;

use rand::{Rng, SeedableRng};
use sleepy::backend::cpu::{CpuAct, CpuBackend};
use sleepy::backend::cuda::gemv::GemvShape;
use sleepy::backend::cuda::tune::{space, GemvOperands, GemvProblem, LaunchConfig, TuneOptions};
use sleepy::backend::cuda::CudaBackend;
use sleepy::backend::{Backend, WeightPart};
use sleepy::loader::Bytes;
use sleepy::model::Logits;
use sleepy::quant::DType;
use sleepy::tune::ModelTuneOptions;

#[path = "common/gpu.rs"]
mod gpu_common;
use gpu_common::{GPU_LOCK, gpu};

/// A short search: a handful of candidates, small samples (correctness, not speed).
fn quick() -> TuneOptions {
    TuneOptions { bytes_per_sample: 8 << 20, screen_samples: 2, finalists: 3, final_rounds: 3, min_gain: 0.0, max_candidates: Some(24), step_top: 2, step_slack: 1.5 }
}

fn uniform(r: &mut impl Rng, n: usize, center: f32, half_width: f32) -> Vec<f32> {
    (0..n).map(|_| center + half_width * (2.0 * r.random::<f32>() - 1.0)).collect()
}

fn part(dtype: DType, rows: usize, v: &[f32]) -> WeightPart {
    let bytes: Vec<u8> = match dtype {
        DType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        _ => {
            let k = v.len() / rows;
            let rb = dtype.row_bytes(k).unwrap();
            let mut out = vec![0u8; rows * rb];
            for (src, dst) in v.chunks_exact(k).zip(out.chunks_exact_mut(rb)) {
                sleepy::quant::quantize_row(dtype, src, dst);
            }
            out
        }
    };
    WeightPart { dtype, rows, bytes: Bytes::from_vec(bytes) }
}

/// max |a - b| / max |b|.
fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite GPU output");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale.max(1e-30)
}

/// Fresh random operands of `p` on both backends: the CPU's exact output, the GPU launch's
/// operands (seen through the backend's own GEMV call), and the device buffers behind them.
fn operands(cpu: &CpuBackend, g: &CudaBackend, p: &GemvProblem, r: &mut impl Rng) -> (Vec<f32>, GemvOperands, Box<dyn std::any::Any>) {
    let GemvProblem { format, units, k, norm, mode } = *p;
    let rows = p.rows();
    let wv = uniform(r, rows * k, 0.0, 0.1);
    let xv = uniform(r, k, 0.0, 1.0);
    let nv = uniform(r, k, 1.0, 0.2);
    let bv = uniform(r, units, 0.0, 0.5);
    let wc = cpu.upload_weight("w", k, vec![part(format, rows, &wv)]).unwrap();
    let wg = g.upload_weight("w", k, vec![part(format, rows, &wv)]).unwrap();
    let xc = CpuAct { rows: 1, cols: k, data: xv.clone() };
    let xg = g.upload_vector(&xv).unwrap();
    let (nc, ng) = (CpuAct { rows: 1, cols: k, data: nv.clone() }, g.upload_vector(&nv).unwrap());
    let (bc, bg) = (CpuAct { rows: 1, cols: units, data: bv.clone() }, g.upload_vector(&bv).unwrap());
    let mut want = CpuAct { rows: 1, cols: units, data: vec![0.0; units] };
    let mut xn = CpuAct { rows: 1, cols: k, data: vec![0.0; k] };
    let call = match (norm, mode) {
        (true, 2) => {
            let mut gate_up = CpuAct { rows: 1, cols: 2 * units, data: vec![0.0; 2 * units] };
            cpu.rmsnorm_matmul_swiglu(&xc, &nc, 1e-6, &wc, &mut xn, &mut gate_up, &mut want).unwrap();
            g.gemv_call(&wg, &xg, Some((&ng, 1e-6)), None, 2)
        }
        (true, _) => {
            cpu.rmsnorm_matmul(&xc, &nc, 1e-6, &wc, None, &mut xn, &mut want).unwrap();
            g.gemv_call(&wg, &xg, Some((&ng, 1e-6)), None, 0)
        }
        (false, 1) => {
            cpu.matmul(&xc, &wc, None, &mut want).unwrap();
            g.gemv_call(&wg, &xg, None, None, 1)
        }
        _ => {
            cpu.matmul(&xc, &wc, Some(&bc), &mut want).unwrap();
            g.gemv_call(&wg, &xg, None, Some(&bg), 0)
        }
    }
    .unwrap();
    assert_eq!(call.problem, *p);
    (want.data, call.operands, Box::new((wg, xg, ng, bg)))
}

#[test]
fn tuned_winner_matches_cpu_reference() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = gpu("tuned_winner_matches_cpu_reference") else { return };
    // The exact CPU numerics (f32 activations for float weights), as the other GPU tests use.
    let cpu = CpuBackend::new_exact(2).unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(7);
    // RMSNorm + gate/up + SwiGLU in bf16 (rows not a multiple of any block), a plain f16 GEMV
    // with a bias, and the quantized kernels: Q4_K with the residual epilogue (into zeros),
    // Q8_0 with the norm folded in.
    let cases = [(DType::BF16, 1000, 1024, true, 2u32), (DType::F16, 520, 1000, false, 0), (DType::Q4K, 700, 1024, false, 1), (DType::Q8_0, 300, 512, true, 0)];
    for (format, units, k, norm, mode) in cases {
        let p = GemvProblem { format, units, k, norm, mode };
        let (want, ops, _keep) = operands(&cpu, &g, &p, &mut r);
        let res = g.tune_gemv(&p, &[ops], &quick(), &mut |_| {}).unwrap();
        eprintln!(
            "{}: default {} {:.2} us, best {} {:.2} us, {} tried, {} rejected, default vs CPU {:.1e}",
            p.label(),
            res.default.config.short(),
            res.default.us,
            res.best.config.short(),
            res.best.us,
            res.tried,
            res.rejected,
            res.cpu_error
        );
        assert!(res.tried > 0 && res.rejected == 0, "every candidate of the pruned space launches and agrees");
        assert!(space::launchable(&p, &res.best.config));
        assert!(res.best.us > 0.0 && res.default.us > 0.0);
        // The decode-step stage's pool: timed candidates other than the default, fastest first.
        assert!(!res.pool.is_empty() && res.pool.iter().all(|c| c.config != res.default.config && c.us > 0.0));
        assert!(res.pool.windows(2).all(|w| w[0].us <= w[1].us));
        let d = g.run_gemv(&p, &res.default.config, &ops).unwrap();
        for c in &res.pool {
            assert!(max_rel(&g.run_gemv(&p, &c.config, &ops).unwrap(), &d) <= 1e-4, "{}: pool entry {c:?} differs from the default", p.label());
        }
        let w = g.run_gemv(&p, &res.best.config, &ops).unwrap();
        assert!(max_rel(&w, &d) <= 1e-4, "{}: the winner differs from the default by more than summation order", p.label());
        for (what, c) in [("default", res.default.config), ("winner", res.best.config)] {
            let out = g.run_gemv(&p, &c, &ops).unwrap();
            let e = max_rel(&out, &want);
            eprintln!("{} {what}: error against the CPU {e:.2e}", p.label());
            // f32 sums in another order; the quantized kernels sum the CPU's integer products
            // in another order.
            let tol = if format.is_quantized() { 1e-3 } else { 1e-4 };
            assert!(e < tol, "{} {what} ({c:?}): error {e:.3e} against the CPU", p.label());
        }
    }
}

/// The streamed GEMV (bulk copies into shared memory) against the exact CPU product: every
/// epilogue, both 16-bit formats, rows that leave partial tiles and blocks with one row or
/// none, and launch shapes from one row of 512 threads to many narrow rows a tile.
#[test]
fn streamed_gemv_matches_cpu_reference() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = gpu("streamed_gemv_matches_cpu_reference") else { return };
    let sm90 = g.device_info().arch.0 >= 9;
    if !sm90 {
        eprintln!("note: this GPU is older than sm_90; the register kernel runs these shapes");
    }
    let cpu = CpuBackend::new_exact(2).unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(11);
    let cases = [
        (DType::BF16, 1000, 1024, true, 2u32),
        (DType::BF16, 6144, 2560, true, 0),
        (DType::BF16, 2560, 9728, false, 1),
        (DType::F16, 520, 1000, false, 0),
        (DType::BF16, 37, 264, false, 1),
        (DType::F16, 5, 8, true, 2),
        (DType::BF16, 300, 4104, true, 0),
    ];
    for (format, units, k, norm, mode) in cases {
        let p = GemvProblem { format, units, k, norm, mode };
        let (want, ops, _keep) = operands(&cpu, &g, &p, &mut r);
        let mut ran = 0;
        for (tpr, rpb, bps) in [(32, 8, 1), (64, 4, 2), (128, 2, 1), (256, 1, 2), (512, 1, 1), (8, 16, 4), (128, 4, 16), (4, 64, 1), (4, 8, 2)] {
            let s = GemvShape { rows_per_block: rpb, threads_per_row: tpr, vec: 8, blocks_per_sm: bps, streamed: true };
            let c = LaunchConfig::Dense(s);
            if !space::launchable(&p, &c) {
                continue;
            }
            let out = g.run_gemv(&p, &c, &ops).unwrap();
            let e = max_rel(&out, &want);
            assert!(e < 1e-4, "{} {}: error {e:.3e} against the CPU", p.label(), c.short());
            ran += 1;
        }
        eprintln!("{}: {ran} streamed shapes agree with the CPU", p.label());
        assert!(ran > 0, "{}: no streamed shape ran", p.label());
    }
}

/// The streamed quantized GEMV against the CPU (the same integer products, floats summed in
/// another order) and against the register kernel: every format and epilogue, rows that
/// leave partial tiles, launch shapes from one row of 256 threads to 32 rows of 8, and the
/// same bits on a second run (its row sums are added in a fixed order).
#[test]
fn streamed_quant_gemv_matches_cpu_reference() {
    use sleepy::backend::cuda::quant::QuantShape;
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = gpu("streamed_quant_gemv_matches_cpu_reference") else { return };
    if g.device_info().arch.0 < 9 {
        eprintln!("SKIP streamed_quant_gemv_matches_cpu_reference: the streamed kernel needs sm_90 or later");
        return;
    }
    let cpu = CpuBackend::new_exact(2).unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(13);
    let cases = [
        (DType::Q8_0, 6144, 2560, true, 0u32),
        (DType::Q8_0, 2560, 9728, false, 1),
        (DType::Q4K, 9728, 2560, true, 2),
        (DType::Q4K, 37, 512, false, 1),
        (DType::Q6K, 1000, 2560, true, 0),
        (DType::Q5K, 300, 768, true, 2),
        (DType::Q4_0, 1000, 1024, false, 0),
        (DType::Q4_1, 6, 64, true, 2),
        (DType::Q5_0, 520, 1024, false, 1),
        (DType::Q5_1, 777, 512, true, 0),
    ];
    for (format, units, k, norm, mode) in cases {
        let p = GemvProblem { format, units, k, norm, mode };
        let (want, ops, _keep) = operands(&cpu, &g, &p, &mut r);
        let register = QuantShape { rows_per_block: 8, threads_per_row: 32, unroll: 4, blocks_per_sm: 4, streamed: false, stages: 0 };
        let reference = g.run_gemv(&p, &LaunchConfig::Quant(register), &ops).unwrap();
        let mut ran = 0;
        // Stage caps (the last field, 0: none) make blocks refill their few stages many times.
        for (tpr, rpb, bps, stages) in [(32, 8, 2, 0), (16, 16, 1, 0), (128, 2, 2, 0), (64, 4, 1, 0), (8, 32, 2, 0), (4, 8, 1, 0), (256, 1, 1, 0), (32, 1, 2, 0), (16, 8, 1, 2), (8, 4, 1, 3), (32, 1, 1, 2)] {
            let c = LaunchConfig::Quant(QuantShape { rows_per_block: rpb, threads_per_row: tpr, unroll: 4, blocks_per_sm: bps, streamed: true, stages });
            // Shapes whose copies would not be aligned, or that do not fit, run the register
            // kernel: not what this test is for.
            if !space::launchable(&p, &c) || g.occupancy(&p, &c) == 0 {
                continue;
            }
            let out = g.run_gemv(&p, &c, &ops).unwrap();
            let e = max_rel(&out, &want);
            assert!(e < 1e-3, "{} {}: error {e:.3e} against the CPU", p.label(), c.short());
            let e = max_rel(&out, &reference);
            assert!(e < 1e-4, "{} {}: {e:.3e} from the register kernel", p.label(), c.short());
            let again = g.run_gemv(&p, &c, &ops).unwrap();
            assert!(out.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {}: a second run differs", p.label(), c.short());
            ran += 1;
        }
        eprintln!("{}: {ran} streamed shapes agree with the CPU and the register kernel", p.label());
        assert!(ran > 0, "{}: no streamed shape ran", p.label());
    }
}

#[test]
fn tiny_model_tunes_end_to_end() {
    let _l = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if gpu("tiny_model_tunes_end_to_end").is_none() {
        return;
    }
    let t = tiny::Tiny { model_type: "qwen3", f32_weights: false, tied: false, llama3_scaling: false, bias: false, head_dim: Some(64) };
    let dir = tiny::fresh_dir("tune");
    tiny::write_model(&dir, &t, 11);
    let files = sleepy::engine::ModelFiles::open(&dir).unwrap();
    // bf16 as stored, and quantized in-situ (the quantized kernel family).
    for quant in [None, Some(DType::Q8_0)] {
        let m = files.load_cuda(sleepy::model::LoadOptions { quant }).unwrap();
        tune_and_check(&m, quant.map_or(DType::BF16, |q| q));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tune_and_check(m: &sleepy::model::Model<CudaBackend>, format: DType) {
    let greedy = |m: &sleepy::model::Model<CudaBackend>| -> Vec<u32> {
        let mut seq = m.new_sequence(64).unwrap();
        let mut next = 5;
        let mut out = Vec::new();
        for _ in 0..12 {
            let l = m.forward(&mut seq, &[next], Logits::Last).unwrap();
            next = m.backend.argmax_last(&l).unwrap();
            out.push(next);
        }
        out
    };
    let before = greedy(m);
    let o = ModelTuneOptions { search: quick(), decode_rounds: 3, decode_ms_per_run: 5.0, step_rounds: 3, step_ms_per_run: 5.0, step_passes: 2, save: false };
    let report = sleepy::tune::tune_model(m, "tiny", &o, &mut |_| {}).unwrap();
    // qkv (norm), o (+residual), gate/up (norm+swiglu), down (+residual), logits (norm).
    let labels: Vec<String> = report.shapes.iter().map(|s| s.problem.label()).collect();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.shapes.len(), 5, "{labels:?}");
    assert!(report.skipped.is_empty() && report.saved.is_none());
    for s in &report.shapes {
        eprintln!("{}: {} -> {} (error {:.1e}, CPU {:.1e})", s.problem.label(), s.default.config.short(), s.best.config.short(), s.best_error, s.cpu_error);
        assert_eq!(s.problem.format, format);
        assert!(s.cpu_error < 1e-3 && s.best_error < 1e-4);
        assert_eq!(s.launches_per_step, if s.problem.units == tiny::VOCAB { 1 } else { tiny::LAYERS });
        // The backend now runs the kept choice.
        assert_eq!(m.backend.active_config(&s.problem).unwrap(), report.chosen(s).config);
    }
    if let (Some(b), Some(a)) = (report.before, report.after) {
        assert!(b.default_ms > 0.0 && a.tuned_ms > 0.0);
    }
    // Every pool entry was timed in the step (the first pass), and the choice is each
    // problem's last kept trial.
    for s in &report.shapes {
        let tried: Vec<_> = report.trials.iter().filter(|t| t.problem == s.problem).map(|t| t.config).collect();
        assert!(s.pool.iter().all(|c| tried.contains(&c.config)), "{}", s.problem.label());
        let kept = report.trials.iter().filter(|t| t.problem == s.problem && t.kept).map(|t| t.config).last();
        assert_eq!(kept.unwrap_or(s.default.config), report.chosen(s).config, "{}", s.problem.label());
    }
    assert_eq!(greedy(m), before, "tuned launch shapes change no token");
    let used = sleepy::tune::tuned_in_use(m).unwrap();
    assert_eq!((used.shapes, used.tuned, used.label()), (5, 5, "tuned"));
    let changed = report.shapes.iter().filter(|s| report.chosen(s).config != s.default.config).count();
    assert_eq!(used.changed, changed);
}
