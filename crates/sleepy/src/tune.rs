//! `sleepy tune`: measured GEMV launch configurations for a model's decode step.
//!
//! 1. One decode step runs with GEMV logging on: every distinct problem (format, rows, row
//!    length, fused variant) and the weights of each of its launches.
//! 2. Each problem is tuned on those weights (backend/cuda/tune: candidates checked against
//!    the default's output, itself checked against the CPU; timed with CUDA events).
//! 3. The choice is made in the decode step itself. The shapes share L2 and overlap their
//!    neighbours at their edges, which back-to-back launches of one shape do not show: per-shape
//!    winners can lose as a whole (measured: Qwen3-0.6B, BENCHMARKS.md), and a shape whose
//!    block fits on an SM beside the previous kernel's can start (and queue its weights) before
//!    that kernel ends, which in back-to-back launches any shape of two blocks an SM does.
//!    Starting from the defaults, problem by problem (largest share of the step first), each
//!    candidate of the problem's pool (its fastest, and the fastest of each footprint: blocks
//!    an SM) is timed in the whole step against the choice so far, alternating; the fastest
//!    that beats it beyond the noise replaces it. A second pass (the default back among the
//!    candidates) follows when the first changed something. The default against every
//!    per-shape winner, and against the final choice, are timed too, for the report.
//! 4. The choices are saved under the device's key (backend/cuda/tune/store.rs) and used by
//!    this backend at once.

use crate::backend::cuda::tune::store::{self, DecodeRecord, TunedEntry, TunedFile, TunedTable};
use crate::backend::cuda::tune::{Candidate, GemvCall, GemvOperands, GemvProblem, LaunchConfig, ShapeResult, TuneEvent, TuneKey, TuneOptions, TunedSet};
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
    /// Rounds and milliseconds per run of each candidate's trial in the step (stage 3).
    pub step_rounds: usize,
    pub step_ms_per_run: f64,
    /// Most visits of each problem in stage 3.
    pub step_passes: usize,
    /// Write the choices to `$SLEEPY_HOME/tune/gemv.json`.
    pub save: bool,
}

impl Default for ModelTuneOptions {
    fn default() -> Self {
        ModelTuneOptions { search: TuneOptions::default(), decode_rounds: 11, decode_ms_per_run: 120.0, step_rounds: 7, step_ms_per_run: 40.0, step_passes: 2, save: true }
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
    /// Default against the final choice.
    pub after: Option<DecodeComparison>,
    /// The candidates timed in the decode step, in order.
    pub trials: Vec<StepTrial>,
    /// The choice made in the step (problems not in it keep their default).
    pub choice: Arc<TunedSet>,
    pub saved: Option<PathBuf>,
    pub seconds: f64,
}

/// One candidate timed in the decode step against the choice so far.
#[derive(Clone, Debug)]
pub struct StepTrial {
    pub problem: GemvProblem,
    pub config: LaunchConfig,
    /// Against the configuration it would replace (`default_ms` is the incumbent's).
    pub vs: DecodeComparison,
    pub kept: bool,
}

impl TuneReport {
    /// The configuration kept for a problem, with its time per launch from the per-shape
    /// search (the default's where it was kept).
    pub fn chosen(&self, r: &ShapeResult) -> Candidate {
        chosen_of(&self.choice, r)
    }

    /// Whether the per-shape winner lost in the step to another configuration or the default.
    pub fn overruled(&self, r: &ShapeResult) -> bool {
        self.chosen(r).config != r.best.config
    }
}

/// The configuration `choice` holds for `r`'s problem, with its time per launch from the
/// per-shape search (the default where `choice` has none).
fn chosen_of(choice: &TunedSet, r: &ShapeResult) -> Candidate {
    match choice.get(&r.problem) {
        // Choices come from the pool (`choose_in_step`), so the search timed them.
        Some(c) if c != r.default.config => r.pool.iter().copied().find(|x| x.config == c).unwrap_or(r.default),
        _ => r.default,
    }
}

/// One problem's place in stage 3: its default configuration and its pool.
pub struct StepPool {
    pub problem: GemvProblem,
    pub default: LaunchConfig,
    pub pool: Vec<Candidate>,
}

/// Times the decode step under the choice so far (first) and under a trial (second).
pub type StepCompare<'a> = dyn FnMut(&Arc<TunedSet>, &Arc<TunedSet>) -> Result<DecodeComparison> + 'a;

/// Stage 3: starting from `start`, problem by problem in order, time each configuration of
/// the problem's pool (and its default, once it has another) in the step against the choice
/// so far (`compare(incumbent, trial)`), and keep the fastest that is faster beyond the noise.
/// The choice of one problem decides what fits beside its neighbours, so the problems are
/// visited again, up to `passes` times, until a pass changes nothing.
pub fn choose_in_step(
    pools: &[StepPool],
    start: Arc<TunedSet>,
    passes: usize,
    compare: &mut StepCompare,
    progress: &mut dyn FnMut(TuneEvent),
) -> Result<(Arc<TunedSet>, Vec<StepTrial>)> {
    let mut chosen = start;
    let mut trials = Vec::new();
    for _ in 0..passes.max(1) {
        let mut changed = false;
        for sp in pools {
            let p = &sp.problem;
            let incumbent = chosen.clone();
            let current = incumbent.get(p).unwrap_or(sp.default);
            let mut best: Option<(usize, f64)> = None;
            for c in std::iter::once(sp.default).chain(sp.pool.iter().map(|c| c.config)).filter(|c| *c != current) {
                progress(TuneEvent::Steps(1));
                progress(TuneEvent::Stage(format!("decode step: {} {}", p.label(), c.short())));
                let trial = Arc::new(incumbent.with(*p, c));
                let vs = compare(&incumbent, &trial)?;
                progress(TuneEvent::Done);
                if vs.tuned_faster() && best.is_none_or(|b| vs.ratio < b.1) {
                    best = Some((trials.len(), vs.ratio));
                }
                trials.push(StepTrial { problem: *p, config: c, vs, kept: false });
            }
            if let Some((i, _)) = best {
                trials[i].kept = true;
                chosen = Arc::new(chosen.with(*p, trials[i].config));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok((chosen, trials))
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

/// Decode-step time under `default` and `tuned`, alternating which goes first per round:
/// `rounds` rounds of about `ms_per_run` of decoding each.
fn compare(m: &Model<CudaBackend>, seq: &mut Sequence<CudaBackend>, default: &Arc<TunedSet>, tuned: &Arc<TunedSet>, rounds: usize, ms_per_run: f64) -> Result<DecodeComparison> {
    let pos0 = 16;
    m.backend.set_tuned(default.clone())?;
    let est = decode_ms(m, seq, pos0, 8)?;
    let tokens = ((ms_per_run / est.max(1e-3)) as usize).clamp(16, 512).min(seq.max_seq.saturating_sub(pos0 + 4)).max(1);
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds.max(1) {
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
    let (mut before, mut after) = (None, None);
    if !winners.is_empty() {
        progress(TuneEvent::Stage("decode step: default vs per-shape winners".into()));
        before = Some(compare(m, &mut seq, &default, &Arc::new(winners), o.decode_rounds, o.decode_ms_per_run)?);
    }
    progress(TuneEvent::Done);
    // Largest share of the step first: its choice shapes its neighbours' the most.
    let mut order: Vec<&ShapeResult> = shapes.iter().collect();
    order.sort_by(|x, y| (y.default.us * y.launches_per_step as f64).total_cmp(&(x.default.us * x.launches_per_step as f64)));
    let pools: Vec<StepPool> = order.iter().map(|r| StepPool { problem: r.problem, default: r.default.config, pool: r.pool.clone() }).collect();
    let (choice, trials) = choose_in_step(&pools, default.clone(), o.step_passes, &mut |a, b| compare(m, &mut seq, a, b, o.step_rounds, o.step_ms_per_run), progress)?;
    if !choice.is_empty() {
        progress(TuneEvent::Stage("decode step: default vs final".into()));
        after = Some(compare(m, &mut seq, &default, &choice, o.decode_rounds, o.decode_ms_per_run)?);
    }
    progress(TuneEvent::Done);

    let table = TunedTable {
        key: key.clone(),
        entries: shapes
            .iter()
            .map(|r| {
                let c = chosen_of(&choice, r);
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
    Ok(TuneReport { key, model: model_name.to_string(), shapes, skipped, failed, before, after, trials, choice, saved, seconds: t0.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::quant::QuantShape;
    use crate::quant::DType;

    fn shape(rpb: u32) -> LaunchConfig {
        LaunchConfig::Quant(QuantShape { rows_per_block: rpb, threads_per_row: 16, unroll: 4, blocks_per_sm: 1, streamed: true, stages: 0 })
    }

    fn rpb(c: LaunchConfig) -> u32 {
        match c {
            LaunchConfig::Quant(s) => s.rows_per_block,
            LaunchConfig::Dense(s) => s.rows_per_block,
        }
    }

    /// A step of two problems, `down` then `qkv`, where a `qkv` block of 32 rows does not fit
    /// beside down's block and waits for it (+3 us), while 16 rows fit. down's 8-row shape
    /// gains 2% beside qkv's 16 rows and loses 0.1% beside the others.
    fn step_us(set: &TunedSet, down: &GemvProblem, qkv: &GemvProblem) -> f64 {
        let d = set.get(down).map_or(32, rpb);
        let q = set.get(qkv).map_or(32, rpb);
        let down_us = match (d, q) {
            (8, 16) => 98.0,
            (8, _) => 100.1,
            _ => 100.0,
        };
        let qkv_alone = match q {
            32 => 50.0,
            16 => 51.0,
            _ => 49.0,
        };
        down_us + qkv_alone + if q != 16 { 3.0 } else { 0.0 }
    }

    /// `step_us` as the tuner's comparison would measure it.
    fn modelled(a: &TunedSet, b: &TunedSet, down: &GemvProblem, qkv: &GemvProblem) -> DecodeComparison {
        let (ta, tb) = (step_us(a, down, qkv), step_us(b, down, qkv));
        DecodeComparison { default_ms: ta, tuned_ms: tb, ratio: tb / ta, noise: 0.005, tokens_per_run: 1 }
    }

    #[test]
    fn the_step_chooses_what_is_fastest_in_the_step() {
        let qkv = GemvProblem { format: DType::Q4K, units: 6144, k: 2560, norm: true, mode: 0 };
        let down = GemvProblem { format: DType::Q4K, units: 2560, k: 9728, norm: false, mode: 1 };
        let c = |rpb: u32, us: f64| Candidate { config: shape(rpb), us };
        // Largest share first: down, then qkv. qkv: 8 rows is the fastest alone but waits
        // like the default (0.65% faster in the step); 16 rows is slower alone and fits
        // (1.3% faster). down: 8 rows gains only once qkv has 16.
        let pools = vec![
            StepPool { problem: down, default: shape(32), pool: vec![c(8, 8.0)] },
            StepPool { problem: qkv, default: shape(32), pool: vec![c(8, 4.8), c(16, 5.1)] },
        ];
        let run = |passes: usize, start: TunedSet| {
            let mut calls = 0;
            let (choice, trials) = choose_in_step(&pools, Arc::new(start), passes, &mut |a, b| {
                calls += 1;
                Ok(modelled(a, b, &down, &qkv))
            }, &mut |_| {})
            .unwrap();
            let t: Vec<(u32, bool)> = trials.iter().map(|t| (rpb(t.config), t.kept)).collect();
            (choice, t, calls)
        };
        // One pass: qkv takes 16 rows; down, visited before that, keeps its default.
        let (choice, trials, calls) = run(1, TunedSet::default());
        assert_eq!(calls, 3);
        assert_eq!(choice.get(&qkv), Some(shape(16)), "the shape that fits beside down");
        assert_eq!(choice.get(&down), None);
        assert_eq!(trials, vec![(8, false), (8, false), (16, true)]);
        // Two passes: down takes its 8 rows beside qkv's 16; qkv's default and 8 rows are
        // tried again and lose.
        let (choice, trials, calls) = run(2, TunedSet::default());
        assert_eq!((choice.get(&down), choice.get(&qkv)), (Some(shape(8)), Some(shape(16))));
        assert_eq!(calls, 6);
        assert_eq!(&trials[3..], &[(8, true), (32, false), (8, false)]);
        // Nothing to gain: the pass stops early, and a pool entry equal to the choice so far
        // is not timed again.
        let start = TunedSet::default().with(down, shape(8)).with(qkv, shape(16));
        let (again, trials, calls) = run(3, start);
        assert_eq!((again.get(&down), again.get(&qkv)), (Some(shape(8)), Some(shape(16))));
        assert_eq!((calls, trials.iter().filter(|t| t.1).count()), (3, 0));
    }
}
