//! `sleepy tune`: measured GEMV launch configurations for a model's decode step.
//!
//! 1. One decode step runs with GEMV logging on: every distinct problem (format, rows, row
//!    length, fused variant) and the weights of each of its launches.
//! 2. Each problem is tuned on those weights (backend/cuda/tune: candidates checked against
//!    the default's output, itself checked against the CPU; timed with CUDA events).
//! 3. The decode step is timed with default and with tuned configurations, alternating. The
//!    shapes share L2 and overlap their neighbours at their edges, which back-to-back launches
//!    of one shape do not show, so per-shape winners can lose as a whole (measured: Qwen3-0.6B,
//!    BENCHMARKS.md). Tuned configurations are kept only when the step is faster beyond its
//!    noise; otherwise shapes fall back to their default one by one (smallest gain first),
//!    and wholly if no subset is clearly faster.
//! 4. The choices are saved under the device's key (backend/cuda/tune/store.rs) and used by
//!    this backend at once.

use crate::backend::cuda::tune::store::{self, DecodeRecord, TunedEntry, TunedFile, TunedTable};
use crate::backend::cuda::tune::{GemvCall, GemvOperands, GemvProblem, ShapeResult, TuneEvent, TuneKey, TuneOptions, TunedSet};
use crate::backend::cuda::CudaBackend;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::{Logits, Model, Sequence};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What `tune_model` does beyond the per-shape search.
#[derive(Clone, Debug)]
pub struct ModelTuneOptions {
    pub search: TuneOptions,
    /// Rounds of the decode-step comparison (default then tuned, or the reverse, per round).
    pub decode_rounds: usize,
    /// Milliseconds of decoding per timed run (tokens are chosen to fill it).
    pub decode_ms_per_run: f64,
    /// Write the choices to `$SLEEPY_HOME/tune/gemv.json`.
    pub save: bool,
}

impl Default for ModelTuneOptions {
    fn default() -> Self {
        ModelTuneOptions { search: TuneOptions::default(), decode_rounds: 11, decode_ms_per_run: 120.0, save: true }
    }
}

/// Decode-step time with default and with tuned configurations (medians, ms per token).
#[derive(Clone, Copy, Debug)]
pub struct DecodeComparison {
    pub default_ms: f64,
    pub tuned_ms: f64,
    /// Median of the per-round ratios tuned / default.
    pub ratio: f64,
    /// What counts as noise on that ratio (from the rounds' scatter, at least 0.5%).
    pub noise: f64,
    pub tokens_per_run: usize,
}

impl DecodeComparison {
    /// Tuned faster than default by more than the noise (a gain hidden in the noise is not
    /// worth the risk of a loss hidden there too).
    pub fn tuned_faster(&self) -> bool {
        self.ratio < 1.0 - self.noise
    }
}

pub struct TuneReport {
    pub key: TuneKey,
    pub model: String,
    pub shapes: Vec<ShapeResult>,
    /// Problems of the decode step no tunable kernel runs (formats not covered yet).
    pub skipped: Vec<GemvProblem>,
    /// Problems whose tuning failed (they keep their defaults), and why.
    pub failed: Vec<(GemvProblem, String)>,
    /// Default against every per-shape winner.
    pub before: Option<DecodeComparison>,
    /// Default against the final choice (after any fallback).
    pub after: Option<DecodeComparison>,
    /// Problems put back to their default by the decode-step check.
    pub reverted: Vec<GemvProblem>,
    pub saved: Option<PathBuf>,
    pub seconds: f64,
}

impl TuneReport {
    /// The configuration kept for a problem after the decode-step check.
    pub fn chosen(&self, r: &ShapeResult) -> crate::backend::cuda::tune::Candidate {
        if self.reverted.contains(&r.problem) {
            r.default
        } else {
            r.best
        }
    }
}

/// Distinct problems of `calls` in first-seen order, each with its launches' operands.
pub fn group_calls(calls: &[GemvCall]) -> Vec<(GemvProblem, Vec<GemvOperands>)> {
    let mut out: Vec<(GemvProblem, Vec<GemvOperands>)> = Vec::new();
    for c in calls {
        match out.iter_mut().find(|(p, _)| *p == c.problem) {
            Some((_, ops)) => ops.push(c.operands),
            None => out.push((c.problem, vec![c.operands])),
        }
    }
    out
}

/// A token to start decoding from (any id works: random models, greedy continuation).
fn start_token(m: &Model<CudaBackend>) -> u32 {
    (m.cfg.vocab_size as u32 / 3).max(1)
}

/// The GEMV problems of one decode step, with the sequence they were seen in (its buffers
/// hold the step's real activations, which the tuner reads as inputs).
pub fn decode_problems(m: &Model<CudaBackend>) -> Result<(Sequence<CudaBackend>, Vec<(GemvProblem, Vec<GemvOperands>)>)> {
    let mut seq = m.new_sequence(1024)?;
    let prompt: Vec<u32> = (0..8u32).map(|i| (start_token(m) + 97 * i) % m.cfg.vocab_size.max(1) as u32).collect();
    let l = m.forward(&mut seq, &prompt, Logits::Last)?;
    let next = m.backend.argmax_last(&l)?;
    let (l, calls) = m.backend.log_gemv_calls(|| m.forward(&mut seq, &[next], Logits::Last))?;
    m.backend.argmax_last(&l)?;
    Ok((seq, group_calls(&calls)))
}

/// The GEMV configurations a model runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigsInUse {
    /// Distinct GEMV problems of the decode step.
    pub shapes: usize,
    /// Of those, how many run a configuration `sleepy tune` chose (default ones included).
    pub tuned: usize,
    /// Of those, how many differ from the default configuration.
    pub changed: usize,
}

impl ConfigsInUse {
    /// "tuned", "default" or "partly tuned".
    pub fn label(&self) -> &'static str {
        if self.tuned == 0 {
            "default"
        } else if self.tuned == self.shapes {
            "tuned"
        } else {
            "partly tuned"
        }
    }
}

/// Which configurations the model's decode-step problems run with in the backend now.
pub fn tuned_in_use(m: &Model<CudaBackend>) -> Result<ConfigsInUse> {
    let (_, problems) = decode_problems(m)?;
    let set = m.backend.tuned_set();
    let mut c = ConfigsInUse { shapes: problems.len(), tuned: 0, changed: 0 };
    for (p, _) in &problems {
        if let Some(cfg) = set.get(p) {
            c.tuned += 1;
            c.changed += usize::from(m.backend.default_config(p).map_or(true, |d| d != cfg));
        }
    }
    Ok(c)
}

/// Milliseconds per token of `tokens` greedy decode steps from position `pos0` (two steps
/// first, untimed: graph capture after a configuration change).
fn decode_ms(m: &Model<CudaBackend>, seq: &mut Sequence<CudaBackend>, pos0: usize, tokens: usize) -> Result<f64> {
    seq.truncate(pos0);
    let mut next = start_token(m);
    for _ in 0..2 {
        let l = m.forward(seq, &[next], Logits::Last)?;
        next = m.backend.argmax_last(&l)?;
    }
    let t = Instant::now();
    for _ in 0..tokens {
        let l = m.forward(seq, &[next], Logits::Last)?;
        next = m.backend.argmax_last(&l)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / tokens as f64)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Decode-step time under `default` and `tuned`, alternating which goes first per round.
fn compare(m: &Model<CudaBackend>, seq: &mut Sequence<CudaBackend>, default: &Arc<TunedSet>, tuned: &Arc<TunedSet>, o: &ModelTuneOptions) -> Result<DecodeComparison> {
    let pos0 = 16;
    m.backend.set_tuned(default.clone())?;
    let est = decode_ms(m, seq, pos0, 8)?;
    let tokens = ((o.decode_ms_per_run / est.max(1e-3)) as usize).clamp(16, 512).min(seq.max_seq.saturating_sub(pos0 + 4)).max(1);
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..o.decode_rounds.max(1) {
        let mut run = |set: &Arc<TunedSet>| -> Result<f64> {
            m.backend.set_tuned(set.clone())?;
            decode_ms(m, seq, pos0, tokens)
        };
        let (da, db) = if r % 2 == 0 {
            let da = run(default)?;
            (da, run(tuned)?)
        } else {
            let db = run(tuned)?;
            (run(default)?, db)
        };
        a.push(da);
        b.push(db);
        ratios.push(db / da);
    }
    let ratio = median(&ratios);
    let deviations: Vec<f64> = ratios.iter().map(|r| (r - ratio).abs()).collect();
    let noise = (1.5 * median(&deviations)).max(0.005);
    Ok(DecodeComparison { default_ms: median(&a), tuned_ms: median(&b), ratio, noise, tokens_per_run: tokens })
}

/// Tune every GEMV problem of `m`'s decode step; see the module comment.
pub fn tune_model(m: &Model<CudaBackend>, model_name: &str, o: &ModelTuneOptions, progress: &mut dyn FnMut(TuneEvent)) -> Result<TuneReport> {
    let t0 = Instant::now();
    let b = &m.backend;
    let key = TuneKey::for_device(b.device_info());
    let previous = b.tuned_set();
    let default = Arc::new(TunedSet::default());
    // Problems are discovered and tuned against the defaults.
    b.set_tuned(default.clone())?;
    progress(TuneEvent::Stage("decode step".into()));
    let (mut seq, problems) = decode_problems(m)?;
    let (tunable, skipped): (Vec<_>, Vec<_>) = problems.into_iter().partition(|(p, _)| crate::backend::cuda::tune::family_supports(p.format));
    let skipped: Vec<GemvProblem> = skipped.into_iter().map(|(p, _)| p).collect();
    progress(TuneEvent::Steps(2));

    let mut shapes = Vec::new();
    let mut failed = Vec::new();
    for (p, ops) in &tunable {
        // One problem that cannot be tuned (its default disagreeing with the CPU, a launch
        // failing) keeps its default; the others are still tuned.
        match b.tune_gemv(p, ops, &o.search, progress) {
            Ok(r) => shapes.push(r),
            Err(e) => failed.push((*p, e.to_string())),
        }
    }

    let winners = shapes.iter().filter(|r| r.best.config != r.default.config).fold(TunedSet::default(), |s, r| s.with(r.problem, r.best.config));
    let mut reverted = Vec::new();
    let (mut before, mut after) = (None, None);
    let mut chosen = Arc::new(winners);
    if !chosen.is_empty() {
        progress(TuneEvent::Stage("decode step: default vs tuned".into()));
        let first = compare(m, &mut seq, &default, &chosen, o)?;
        progress(TuneEvent::Done);
        before = Some(first);
        let mut last = first;
        // Smallest per-shape gain first: the least to lose by putting it back.
        let mut order: Vec<&ShapeResult> = shapes.iter().filter(|r| chosen.get(&r.problem).is_some()).collect();
        order.sort_by(|x, y| x.gain().total_cmp(&y.gain()));
        for r in order {
            if last.tuned_faster() {
                break;
            }
            progress(TuneEvent::Stage(format!("decode step without tuned {}", r.problem.label())));
            chosen = Arc::new(chosen.without(&r.problem));
            reverted.push(r.problem);
            last = if chosen.is_empty() { DecodeComparison { tuned_ms: last.default_ms, ratio: 1.0, ..last } } else { compare(m, &mut seq, &default, &chosen, o)? };
        }
        after = Some(last);
    }
    progress(TuneEvent::Done);

    let table = TunedTable {
        key: key.clone(),
        entries: shapes
            .iter()
            .map(|r| {
                let c = if reverted.contains(&r.problem) { r.default } else { r.best };
                TunedEntry { problem: r.problem, config: c.config, default: r.default.config, default_us: r.default.us, tuned_us: c.us }
            })
            .collect(),
        decode: after.map(|a| DecodeRecord { model: model_name.to_string(), default_ms: a.default_ms, tuned_ms: a.tuned_ms }).into_iter().collect(),
    };
    // Every tuned problem gets an entry, a kept default included: the choice was measured.
    let mut in_use = (*previous).clone();
    for e in &table.entries {
        in_use = in_use.with(e.problem, e.config);
    }
    let saved = if o.save && !table.entries.is_empty() {
        let path = store::path();
        // A file this build cannot read is replaced (its note was shown when it was loaded).
        let mut file = TunedFile::read(&path).ok().flatten().unwrap_or_default();
        file.merge(table);
        file.write(&path)?;
        Some(path)
    } else {
        None
    };
    b.set_tuned(Arc::new(in_use))?;
    Ok(TuneReport { key, model: model_name.to_string(), shapes, skipped, failed, before, after, reverted, saved, seconds: t0.elapsed().as_secs_f64() })
}
