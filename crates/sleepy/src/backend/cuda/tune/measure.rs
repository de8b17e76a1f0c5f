//! Measuring GEMV launch configurations: outputs checked against a reference, times taken
//! with CUDA events around replayed graphs, and the search over a problem's candidates.
//!
//! A timed graph is a run of launches of one configuration cycling over every copy of the
//! problem's weights the model has (one per layer), at least `bytes_per_sample` of weights
//! in all: like the decode step, each launch finds its weights in DRAM (not L2) and starts
//! while the previous launch drains (PDL). One sample is one replay between two events.

use super::{space, GemvOperands, GemvProblem, LaunchConfig};
use crate::backend::cuda::driver::{self, check, DevBuf, Event, Graph};
use crate::backend::cuda::quant::layout::{unpack, QFmt};
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use crate::quant::DType;
use cudarc::driver::sys;

/// The default configuration's output against the CPU (f64 sums for 16-bit weights, the
/// CPU's integer dot products for quantized ones): a wrong row, a missing chunk or a lost
/// epilogue is off by O(1); f32 summation by ~1e-6.
const CPU_TOLERANCE: f64 = 1e-3;
/// A candidate against the default configuration: both f32 sums, in another order.
const MATCH_TOLERANCE: f64 = 1e-4;

/// How hard to search. The defaults keep a 4B model's handful of problems to seconds each.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Weight bytes one timed replay reads (spread over the model's copies of the weight).
    pub bytes_per_sample: usize,
    /// Samples per candidate in the first pass (median taken).
    pub screen_samples: usize,
    /// Fastest candidates of the first pass timed again, with the default.
    pub finalists: usize,
    /// Rounds of the final pass: one sample of every finalist each, in rotating order.
    pub final_rounds: usize,
    /// A candidate replaces the default only when faster by this fraction, and by more
    /// than the default's own spread.
    pub min_gain: f64,
    /// Candidates to try at most (None: the whole pruned space).
    pub max_candidates: Option<usize>,
    /// Fastest candidates handed to the decode-step stage (tune.rs), beside the fastest of
    /// each footprint (blocks an SM; `step_pool`).
    pub step_top: usize,
    /// The fastest of a footprint joins them when within this factor of the default's time.
    pub step_slack: f64,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions { bytes_per_sample: 256 << 20, screen_samples: 3, finalists: 6, final_rounds: 9, min_gain: 0.01, max_candidates: None, step_top: 3, step_slack: 1.15 }
    }
}

/// Progress of a tuning run, for a progress bar.
#[derive(Clone, Debug)]
pub enum TuneEvent {
    /// Steps ahead (added to the bar's length).
    Steps(u64),
    /// One step done.
    Done,
    /// What is being done now.
    Stage(String),
}

/// A measured configuration (microseconds per launch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub config: LaunchConfig,
    pub us: f64,
}

/// The outcome of tuning one problem.
#[derive(Clone, Debug)]
pub struct ShapeResult {
    pub problem: GemvProblem,
    /// Launches of this problem in one decode step.
    pub launches_per_step: usize,
    pub default: Candidate,
    /// The fastest configuration (the default when nothing beat it clearly).
    pub best: Candidate,
    /// The default's output against the CPU reference (max error over max value).
    pub cpu_error: f64,
    /// The winner's output against the default's.
    pub best_error: f64,
    pub tried: usize,
    /// Candidates whose output disagreed with the reference or that failed to launch.
    pub rejected: usize,
    /// Relative spread (interquartile range over median) of the default's final samples.
    pub noise: f64,
    /// Candidates worth timing in the whole decode step (`step_pool`), fastest first.
    pub pool: Vec<Candidate>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::INFINITY)
}

/// Interquartile range over median.
fn spread(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.len() < 4 {
        return 0.0;
    }
    (s[3 * s.len() / 4] - s[s.len() / 4]) / s[s.len() / 2]
}

/// max |a - b| / max |b| (infinite when `a` has a NaN or infinity).
pub(crate) fn max_rel_diff(a: &[f32], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs())) / scale
}

/// How much of an SM a launch of `c` takes, as the number of such launches that would fit it
/// (1, 2, 3, 4 or more): `fit` of its blocks fit an SM (shared memory, registers, threads),
/// and the launch puts its blocks per SM there (fewer where fewer fit).
fn footprint(c: &LaunchConfig, fit: u32) -> u32 {
    let placed = match c {
        LaunchConfig::Dense(s) => s.blocks_per_sm,
        LaunchConfig::Quant(s) => s.blocks_per_sm,
    };
    (fit / placed.clamp(1, fit.max(1))).min(4)
}

/// The candidates the decode-step stage times in the whole step: the `top` fastest of
/// `measured` (config, us per launch, footprint; the default excluded), and the fastest of
/// each footprint within `slack` of the default's time. A block starts (and queues its
/// weights) before the previous kernel ends only where it fits on an SM beside that kernel's
/// blocks: back-to-back launches of one shape (how `measured` was timed) show that for any
/// shape of footprint 2 or more, but in the step each launch follows another shape, and a
/// slower shape with a smaller footprint can win there.
fn step_pool(measured: &[(LaunchConfig, f64, u32)], default: &LaunchConfig, default_us: f64, top: usize, slack: f64) -> Vec<Candidate> {
    let mut ranked: Vec<&(LaunchConfig, f64, u32)> = measured.iter().filter(|m| m.0 != *default && m.1.is_finite()).collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut pool: Vec<Candidate> = ranked.iter().take(top).map(|m| Candidate { config: m.0, us: m.1 }).collect();
    let mut footprints: Vec<u32> = Vec::new();
    for m in &ranked {
        if m.1 > default_us * slack || footprints.contains(&m.2) {
            continue;
        }
        footprints.push(m.2);
        if !pool.iter().any(|c| c.config == m.0) {
            pool.push(Candidate { config: m.0, us: m.1 });
        }
    }
    pool.sort_by(|a, b| a.us.total_cmp(&b.us));
    pool
}

/// Units a CPU check covers: all of a small problem, else 32 runs of 32 consecutive units
/// spread over the rows (first and last included), so block and group edges are seen.
fn sample_units(units: usize) -> Vec<usize> {
    if units <= 1024 {
        return (0..units).collect();
    }
    let last = units - 32;
    let mut out = Vec::new();
    for i in 0..32 {
        let start = last * i / 31;
        out.extend(start..start + 32);
    }
    out.dedup();
    out
}

impl CudaBackend {
    /// Output of `p` under `c` for operands `o`, in `y` (zeroed first, so the residual
    /// epilogue gives the bare product). Runs at once, outside any recording.
    pub(crate) fn run_into(&self, p: &GemvProblem, c: &LaunchConfig, o: &GemvOperands, y: &DevBuf) -> Result<Vec<f32>> {
        self.synchronize()?;
        // SAFETY: y holds at least `units` floats.
        check(unsafe { sys::cuMemsetD8Async(y.ptr, 0, p.units * 4, self.stream.0) }, "cuMemsetD8Async")?;
        self.launch_config(p, c, o, y.ptr, p.units)?;
        driver::download(y.ptr, p.units, self.stream.0)
    }

    /// Output of `p` under configuration `c` (the residual epilogue adds to zeros).
    pub fn run_gemv(&self, p: &GemvProblem, c: &LaunchConfig, o: &GemvOperands) -> Result<Vec<f32>> {
        let y = DevBuf::alloc(p.units * 4)?;
        self.run_into(p, c, o, &y)
    }

    /// Rows `row0 .. row0 + n` of the weight as stored in the file (16-bit values, or GGML
    /// blocks reassembled from the device layout's regions).
    fn read_rows(&self, p: &GemvProblem, o: &GemvOperands, row0: usize, n: usize) -> Result<Vec<u8>> {
        let row_bytes = p.format.row_bytes(p.k).ok_or_else(|| Error::Cuda(format!("{}: rows are not whole blocks", p.label())))?;
        let Some(f) = QFmt::of(p.format) else {
            return driver::download::<u8>(o.w[0] + (row0 * row_bytes) as u64, n * row_bytes, self.stream.0);
        };
        let blocks_per_row = p.k / p.format.block_len();
        let mut seg = Vec::new();
        let mut offsets = [0usize; 4];
        for (r, &(_, len)) in f.regions().iter().enumerate() {
            offsets[r] = seg.len();
            let at = o.w[r] + (row0 * blocks_per_row * len) as u64;
            seg.extend(driver::download::<u8>(at, n * blocks_per_row * len, self.stream.0)?);
        }
        Ok(unpack(f, &seg, &offsets, n * blocks_per_row, p.k))
    }

    /// The CPU reference of `p` at `units`: 16-bit weights in f64 sums; quantized weights
    /// through the CPU's own dot products, on activations quantized as the kernels do.
    fn cpu_reference(&self, p: &GemvProblem, o: &GemvOperands, units: &[usize]) -> Result<Vec<f64>> {
        let k = p.k;
        let x: Vec<f32> = driver::download(o.x, k, self.stream.0)?;
        let g: Vec<f32> = if o.g != 0 { driver::download(o.g, k, self.stream.0)? } else { vec![1.0; k] };
        // RMSNorm as the CPU backend computes it (f64 sum, f32 scale).
        let scale = if o.g != 0 {
            let mean = (x.iter().map(|&v| (v * v) as f64).sum::<f64>() / k as f64) as f32;
            1.0 / (mean + o.eps).sqrt()
        } else {
            1.0
        };
        let row_bytes = p.format.row_bytes(k).unwrap_or(0);
        let dot: Box<dyn Fn(&[u8]) -> f64> = match p.format {
            DType::BF16 | DType::F16 => {
                let xs: Vec<f64> = x.iter().zip(&g).map(|(&v, &w)| v as f64 * w as f64).collect();
                let bf16 = p.format == DType::BF16;
                Box::new(move |row: &[u8]| {
                    let sum: f64 = row
                        .chunks_exact(2)
                        .zip(&xs)
                        .map(|(b, &v)| {
                            let bits = u16::from_le_bytes([b[0], b[1]]);
                            let w = if bf16 { f32::from_bits((bits as u32) << 16) as f64 } else { half::f16::from_bits(bits).to_f64() };
                            w * v
                        })
                        .sum();
                    sum * scale as f64
                })
            }
            f if QFmt::of(f).is_some() => {
                let xn: Vec<f32> = x.iter().zip(&g).map(|(&v, &w)| v * scale * w).collect();
                let acts = crate::quant::prepare_acts(f, &xn);
                Box::new(move |row: &[u8]| crate::quant::dot_prepared(f, row, &acts) as f64)
            }
            f => return Err(Error::Cuda(format!("no CPU reference for {} GEMVs", f.name()))),
        };
        let bias: Vec<f32> = if o.bias != 0 && p.mode == 0 { driver::download(o.bias, p.units, self.stream.0)? } else { Vec::new() };
        let mut out = Vec::with_capacity(units.len());
        // Runs of consecutive units are read back together.
        let mut i = 0;
        while i < units.len() {
            let mut n = 1;
            while i + n < units.len() && units[i + n] == units[i] + n {
                n += 1;
            }
            let gate = self.read_rows(p, o, units[i], n)?;
            let up = if p.mode == 2 { self.read_rows(p, o, units[i] + p.units, n)? } else { Vec::new() };
            for j in 0..n {
                let a = dot(&gate[j * row_bytes..(j + 1) * row_bytes]);
                out.push(match p.mode {
                    2 => a / (1.0 + (-a).exp()) * dot(&up[j * row_bytes..(j + 1) * row_bytes]),
                    1 => a,
                    _ => a + bias.get(units[i] + j).map_or(0.0, |&b| b as f64),
                });
            }
            i += n;
        }
        Ok(out)
    }

    /// The default configuration's output for `o`, checked against the CPU reference;
    /// returns it and the error.
    pub fn checked_reference(&self, p: &GemvProblem, o: &GemvOperands, y: &DevBuf) -> Result<(Vec<f32>, f64)> {
        let default = self.default_config(p)?;
        let out = self.run_into(p, &default, o, y)?;
        let units = sample_units(p.units);
        let cpu = self.cpu_reference(p, o, &units)?;
        let got: Vec<f32> = units.iter().map(|&u| out[u]).collect();
        let err = max_rel_diff(&got, &cpu);
        if !(err <= CPU_TOLERANCE) {
            return Err(Error::Cuda(format!("{}: the default GEMV configuration disagrees with the CPU reference (error {err:.2e})", p.label())));
        }
        Ok((out, err))
    }

    /// Capture `launches` launches of `c` cycling over `ops` as a graph (not run).
    fn capture_config(&self, p: &GemvProblem, c: &LaunchConfig, ops: &[GemvOperands], launches: usize, y: &DevBuf) -> Result<Graph> {
        self.synchronize()?;
        self.state()?.recording = Some(Vec::new());
        let mut issued = Ok(());
        for i in 0..launches {
            issued = self.launch_config(p, c, &ops[i % ops.len()], y.ptr, p.units);
            if issued.is_err() {
                break;
            }
        }
        let list = self.state()?.recording.take().unwrap_or_default();
        issued?;
        Graph::capture(list, self.stream.0, self.pdl)
    }

    /// `samples` replays of `g`, each between two events: milliseconds per replay.
    fn time_replays(&self, g: &Graph, samples: usize) -> Result<Vec<f64>> {
        let events = (0..=samples).map(|_| Event::new()).collect::<Result<Vec<_>>>()?;
        events[0].record(self.stream.0)?;
        for e in &events[1..] {
            g.launch(self.stream.0)?;
            e.record(self.stream.0)?;
        }
        driver::sync(self.stream.0)?;
        events.windows(2).map(|w| w[0].ms_until(&w[1])).collect()
    }

    /// Blocks of a configuration that fit on one SM (0: none fits, the query failed, or a
    /// streamed shape this device or problem cannot stream, which would run the register
    /// kernel).
    pub fn occupancy(&self, p: &GemvProblem, c: &LaunchConfig) -> u32 {
        match c {
            LaunchConfig::Dense(s) => self.gemv_occupancy(super::dense_dt(p.format), p.units, p.k, s, p.norm, p.mode).unwrap_or(0),
            LaunchConfig::Quant(s) => match QFmt::of(p.format) {
                Some(f) => self.gemvq_occupancy(f, p.units, p.k, s, p.norm, p.mode).unwrap_or(0),
                None => 0,
            },
        }
    }

    /// Tune one problem over the operands of its launches (one per layer): time every
    /// candidate whose output matches the default's, time the fastest again against the
    /// default, and return the winner (the default unless clearly beaten).
    pub fn tune_gemv(&self, p: &GemvProblem, ops: &[GemvOperands], opts: &TuneOptions, progress: &mut dyn FnMut(TuneEvent)) -> Result<ShapeResult> {
        if ops.is_empty() {
            return Err(Error::Other(format!("{}: no launches to tune", p.label())));
        }
        let sms = self.gpu.info.sms;
        let default = self.default_config(p)?;
        let mut cands = space::candidates(p, sms, &mut |c| self.occupancy(p, c));
        cands.retain(|c| *c != default);
        if let Some(n) = opts.max_candidates {
            cands.truncate(n);
        }
        progress(TuneEvent::Steps((cands.len() + 1 + opts.final_rounds) as u64));
        progress(TuneEvent::Stage(p.label()));
        let y = DevBuf::alloc(p.units * 4)?;
        let (reference, cpu_error) = self.checked_reference(p, &ops[0], &y)?;
        // Enough launches per replay to read `bytes_per_sample`, each copy equally often.
        let per_round = (ops.len() * p.weight_bytes()).max(1);
        let launches = ops.len() * opts.bytes_per_sample.div_ceil(per_round).clamp(1, (1024 / ops.len()).max(1));

        // Warm-up: clocks up and the default's kernel loaded before anything is compared.
        let g = self.capture_config(p, &default, ops, launches, &y)?;
        self.time_replays(&g, 4)?;
        let default_screen = median(&self.time_replays(&g, opts.screen_samples.max(1))?);
        progress(TuneEvent::Done);

        let mut screened: Vec<(LaunchConfig, f64)> = Vec::new();
        let mut rejected = 0;
        for c in &cands {
            match self.screen(p, c, ops, launches, &y, &reference, opts) {
                Ok(Some(ms)) => screened.push((*c, ms)),
                Ok(None) | Err(_) => rejected += 1,
            }
            progress(TuneEvent::Done);
        }
        screened.sort_by(|a, b| a.1.total_cmp(&b.1));
        let all_screened = screened.clone();
        screened.retain(|s| s.1 < default_screen * 1.05);
        screened.truncate(opts.finalists);

        // Final pass: the default and the finalists, one sample each per round, in rotating
        // order so drift (clocks, temperature) falls on all alike.
        let mut finals: Vec<(LaunchConfig, Graph, Vec<f64>)> = vec![(default, g, Vec::new())];
        for (c, _) in &screened {
            finals.push((*c, self.capture_config(p, c, ops, launches, &y)?, Vec::new()));
        }
        for r in 0..opts.final_rounds.max(1) {
            for i in 0..finals.len() {
                let j = (i + r) % finals.len();
                let ms = self.time_replays(&finals[j].1, 1)?;
                finals[j].2.extend(ms);
            }
            progress(TuneEvent::Done);
        }
        let per_launch = |v: &[f64]| median(v) * 1e3 / launches as f64;
        let default_us = per_launch(&finals[0].2);
        let noise = spread(&finals[0].2);
        let (best_i, best_us) = finals.iter().enumerate().map(|(i, f)| (i, per_launch(&f.2))).fold((0, default_us), |a, b| if b.1 < a.1 { b } else { a });
        let clear = best_us < default_us * (1.0 - opts.min_gain.max(noise));
        let (best, best_us) = if clear { (finals[best_i].0, best_us) } else { (default, default_us) };
        // The decode-step stage's pool: final-pass times where there are, screen times else
        // (both per launch), and footprints.
        let mut measured: Vec<(LaunchConfig, f64, u32)> = finals.iter().map(|f| (f.0, per_launch(&f.2), footprint(&f.0, self.occupancy(p, &f.0)))).collect();
        for (c, ms) in &all_screened {
            if !measured.iter().any(|m| m.0 == *c) {
                measured.push((*c, ms * 1e3 / launches as f64, footprint(c, self.occupancy(p, c))));
            }
        }
        let pool = step_pool(&measured, &default, default_us, opts.step_top, opts.step_slack);
        let best_error = if best == default { 0.0 } else { max_rel_diff(&self.run_into(p, &best, &ops[0], &y)?, &reference.iter().map(|&v| v as f64).collect::<Vec<_>>()) };
        Ok(ShapeResult {
            problem: *p,
            launches_per_step: ops.len(),
            default: Candidate { config: default, us: default_us },
            best: Candidate { config: best, us: best_us },
            cpu_error,
            best_error,
            tried: cands.len(),
            rejected,
            noise,
            pool,
        })
    }

    /// First-pass time of one candidate (ms per replay), or None when its output is wrong.
    #[allow(clippy::too_many_arguments)]
    fn screen(&self, p: &GemvProblem, c: &LaunchConfig, ops: &[GemvOperands], launches: usize, y: &DevBuf, reference: &[f32], opts: &TuneOptions) -> Result<Option<f64>> {
        let out = self.run_into(p, c, &ops[0], y)?;
        let r: Vec<f64> = reference.iter().map(|&v| v as f64).collect();
        if !(max_rel_diff(&out, &r) <= MATCH_TOLERANCE) {
            return Ok(None);
        }
        let g = self.capture_config(p, c, ops, launches, y)?;
        self.time_replays(&g, 1)?;
        Ok(Some(median(&self.time_replays(&g, opts.screen_samples.max(1))?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_edges() {
        assert_eq!(sample_units(5), vec![0, 1, 2, 3, 4]);
        let s = sample_units(151936);
        assert_eq!(s.len(), 1024);
        assert_eq!(s[0], 0);
        assert_eq!(*s.last().unwrap(), 151935);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    fn quant(rpb: u32) -> LaunchConfig {
        quant_b(rpb, 1)
    }

    fn quant_b(rpb: u32, blocks_per_sm: u32) -> LaunchConfig {
        LaunchConfig::Quant(crate::backend::cuda::quant::QuantShape { rows_per_block: rpb, threads_per_row: 8, unroll: 4, blocks_per_sm, streamed: true, stages: 0 })
    }

    #[test]
    fn footprints_count_the_blocks_a_launch_places() {
        // One block a launch: as many launches fit as blocks do (capped at 4).
        assert_eq!(footprint(&quant(16), 1), 1);
        assert_eq!(footprint(&quant(16), 3), 3);
        assert_eq!(footprint(&quant(16), 9), 4);
        // Two blocks a launch where two fit: the SM is full.
        assert_eq!(footprint(&quant_b(16, 2), 2), 1);
        assert_eq!(footprint(&quant_b(16, 2), 4), 2);
        // More blocks asked for than fit: those that fit.
        assert_eq!(footprint(&quant_b(16, 8), 3), 1);
        // None fits (not a candidate anyway).
        assert_eq!(footprint(&quant(16), 0), 0);
    }

    #[test]
    fn step_pool_takes_the_fastest_and_each_footprints_fastest() {
        let default = quant(32);
        // (config, us, footprint): three large fast ones, a small one 10% slower than the
        // default and another of its footprint, a medium one 30% slower, the default itself,
        // and one without a time.
        let measured = vec![
            (quant(1), 4.8, 1),
            (quant(2), 4.9, 1),
            (default, 5.0, 2),
            (quant(4), 4.95, 1),
            (quant(8), 5.5, 4),
            (quant(128), 5.6, 4),
            (quant(16), 6.5, 3),
            (quant(64), f64::INFINITY, 4),
        ];
        let pool = step_pool(&measured, &default, 5.0, 2, 1.15);
        let got: Vec<LaunchConfig> = pool.iter().map(|c| c.config).collect();
        // The two fastest, then the small one (its footprint's fastest, within 15%); not the
        // default, not the medium one (30% slower), not the unmeasured one.
        assert_eq!(got, vec![quant(1), quant(2), quant(8)]);
        assert!(pool.windows(2).all(|w| w[0].us <= w[1].us));
        // Nothing but the default: an empty pool.
        assert!(step_pool(&[(default, 5.0, 2)], &default, 5.0, 3, 1.15).is_empty());
    }

    #[test]
    fn differences_are_relative_and_nan_fails() {
        assert_eq!(max_rel_diff(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((max_rel_diff(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-6);
        assert!(max_rel_diff(&[f32::NAN, 2.0], &[1.0, 2.0]).is_infinite());
        assert!(!(max_rel_diff(&[1.0], &[1.0, 2.0]) <= 1.0));
    }
}
