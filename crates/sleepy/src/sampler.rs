//! Token sampling: greedy, or repetition penalty -> top-k -> top-p -> min-p -> temperature ->
//! a draw from a seeded RNG (the order llama.cpp's default chain uses).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 (or below) means greedy: the most likely token, ties to the lowest id.
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f32,
    /// 0.0 keeps every token.
    pub min_p: f32,
    /// 1.0 means no penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplerParams {
    pub fn greedy() -> Self {
        SamplerParams { temperature: 0.0, ..Default::default() }
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    /// Greedy without a penalty needs only the argmax, which a GPU can do without copying logits.
    pub fn needs_logits(&self) -> bool {
        !(self.is_greedy() && self.repeat_penalty == 1.0)
    }
}

pub struct Sampler {
    pub params: SamplerParams,
    rng: StdRng,
    /// Recent tokens (prompt and generated) for the repetition penalty.
    recent: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Sampler {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng, recent: Vec::new() }
    }

    /// Remember a token that entered the sequence (for the repetition penalty).
    pub fn accept(&mut self, id: u32) {
        self.recent.push(id);
        let keep = self.params.repeat_last_n;
        if self.recent.len() > keep.max(1) * 4 {
            self.recent.drain(..self.recent.len() - keep);
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let penalized;
        let logits = if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            penalized = penalize(logits, &self.recent[self.recent.len().saturating_sub(p.repeat_last_n)..], p.repeat_penalty);
            &penalized[..]
        } else {
            logits
        };
        if p.is_greedy() {
            return crate::backend::cpu::argmax(logits);
        }
        let cand = candidates(logits, p);
        self.draw(&cand)
    }

    /// The top-k for a backend to select on its device (`Backend::top_k_last`), where the chain
    /// needs no more of the logits than those: sampling (not greedy), top-k on, no penalty.
    pub fn device_top_k(&self) -> Option<usize> {
        let p = &self.params;
        (!p.is_greedy() && p.top_k > 0 && p.repeat_penalty == 1.0).then_some(p.top_k)
    }

    /// `sample` from the `device_top_k()` most likely tokens alone (as `Backend::top_k_last`
    /// gives them): the same token, for the same logits and seed.
    pub fn sample_top_k(&mut self, top: Vec<(u32, f32)>) -> u32 {
        let cand = after_top_k(top, &self.params);
        self.draw(&cand)
    }

    fn draw(&mut self, cand: &[(u32, f32)]) -> u32 {
        let p = &self.params;
        if cand.is_empty() {
            return 0;
        }
        let probs = softmax(cand, p.temperature);
        let r: f32 = self.rng.random();
        let mut cum = 0.0;
        for (c, pr) in cand.iter().zip(&probs) {
            cum += pr;
            if r < cum {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

fn penalize(logits: &[f32], recent: &[u32], penalty: f32) -> Vec<f32> {
    let mut logits = logits.to_vec();
    let mut seen = recent.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            // As llama.cpp: divide positive logits, multiply negative ones.
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
    logits
}

/// Most likely first; ties keep the lower id first.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The tokens that top-k, then top-p, then min-p keep, most likely first (in id order where
/// none of the three is on, the sampler's one order-free case): the finite logits
/// sorted, cut to `top_k`, cut where the cumulative probability (softmax of what top-k kept,
/// its denominator summed in id order) reaches `top_p`, and cut below `min_p` times the most
/// likely. A vocabulary is ~150K tokens and the sampler runs once a token, beside a GPU step of
/// 0.5-2 ms, so no step sorts the whole vocabulary unless nothing cuts it: top-k selects in one
/// pass, and without it only the tokens that can survive min-p, or that carry top-p's mass, are
/// sorted (all of them where that mass turns out to lie deeper).
fn candidates(logits: &[f32], p: &SamplerParams) -> Vec<(u32, f32)> {
    candidates_with_margin(logits, p, 2)
}

fn candidates_with_margin(logits: &[f32], p: &SamplerParams, margin: usize) -> Vec<(u32, f32)> {
    let top_p = p.top_p < 1.0;
    if p.top_k > 0 {
        return after_top_k(top_k(logits, p.top_k), p);
    }
    let Some(max) = logits.iter().copied().filter(|l| l.is_finite()).reduce(f32::max) else { return Vec::new() };
    // min-p keeps the tokens at or above this.
    let floor = if p.min_p > 0.0 { max + p.min_p.ln() } else { f32::NEG_INFINITY };
    let mut sum = 0.0;
    let mut from = floor;
    if top_p {
        // The softmax's mass by distance below the most likely, one logit a bucket: the
        // shallowest depth whose buckets reach top_p bounds what needs sorting.
        const BUCKETS: usize = 64;
        let mut mass = [0.0f32; BUCKETS];
        for &l in logits.iter().filter(|l| l.is_finite()) {
            let e = (l - max).exp();
            sum += e;
            mass[((max - l) as usize).min(BUCKETS - 1)] += e;
        }
        let mut cum = 0.0;
        if let Some(b) = mass.iter().position(|m| {
            cum += m;
            cum >= p.top_p * sum
        }) {
            // Sort down to `margin` below bucket b's top: 1 covers the buckets counted, 2 one
            // more, so that rounding seldom sends us to the fallback at the end (the tests also
            // run 0, which leaves bucket b out, to reach it).
            if b + margin < BUCKETS {
                from = from.max(max - (b + margin) as f32);
            }
        }
    }
    if !top_p && p.min_p <= 0.0 {
        // Nothing cuts: the draw walks every finite token, in id order (sorting 150K tokens
        // would only order the walk: ~6 ms).
        return logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
    }
    let above = |from: f32| {
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().filter(|(_, l)| l.is_finite() && **l >= from).map(|(i, &l)| (i as u32, l)).collect();
        cand.sort_unstable_by(by_logit);
        cand
    };
    // Where top-p's mass reaches below what was sorted, sort down to min-p's floor.
    cut(above(from), sum, p, from <= floor).or_else(|| cut(above(floor), sum, p, true)).unwrap_or_default()
}

/// `candidates` from the top-k tokens (in any order).
fn after_top_k(mut cand: Vec<(u32, f32)>, p: &SamplerParams) -> Vec<(u32, f32)> {
    let sum = if p.top_p < 1.0 {
        cand.sort_unstable_by_key(|c| c.0);
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        cand.iter().map(|c| (c.1 - max).exp()).sum()
    } else {
        0.0
    };
    cand.sort_unstable_by(by_logit);
    cut(cand, sum, p, true).unwrap_or_default()
}

/// The `k` most likely finite logits, in no order, in one pass: a token enters a buffer when it
/// beats the k-th best of the last cut (ties lose: it has the higher id), and the buffer is cut
/// back to the best k when full.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let cap = 2 * k + 64;
    let mut buf = Vec::with_capacity(cap.min(logits.len()));
    let mut kth = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        // total_cmp decides, as in the sort (+0.0 beats -0.0); `>=` first, as most tokens fail it.
        if l >= kth && l.is_finite() && l.total_cmp(&kth).is_gt() {
            buf.push((i as u32, l));
            if buf.len() == cap {
                buf.select_nth_unstable_by(k - 1, by_logit);
                buf.truncate(k);
                kth = buf[k - 1].1;
            }
        }
    }
    if buf.len() > k {
        buf.select_nth_unstable_by(k - 1, by_logit);
        buf.truncate(k);
    }
    buf
}

/// Applies top-p (cumulative softmax with denominator `sum`) and min-p to `cand`, the most
/// likely tokens in order: all that top-k kept, or that min-p can keep, when `complete`. None
/// when it is not and top-p's cut lies beyond it.
fn cut(mut cand: Vec<(u32, f32)>, sum: f32, p: &SamplerParams, complete: bool) -> Option<Vec<(u32, f32)>> {
    let Some(&(_, max)) = cand.first() else { return Some(cand) };
    let floor = max + p.min_p.ln();
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        let keep = cand.iter().position(|c| {
            cum += (c.1 - max).exp() / sum;
            cum >= p.top_p
        });
        match keep {
            Some(i) => cand.truncate(i + 1),
            None if complete => {}
            None => return None,
        }
    }
    if p.min_p > 0.0 {
        cand.retain(|c| c.1 >= floor);
    }
    Some(cand)
}

fn softmax(cand: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain as `candidates` documents it, sorting every token.
    fn reference_candidates(logits: &[f32], p: &SamplerParams) -> Vec<(u32, f32)> {
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
        if cand.is_empty() {
            return cand;
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        if p.top_p < 1.0 {
            let mut by_id = cand.clone();
            by_id.sort_by_key(|c| c.0);
            let sum: f32 = by_id.iter().map(|c| (c.1 - max).exp()).sum();
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                cum += (c.1 - max).exp() / sum;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = max + p.min_p.ln();
            cand.retain(|c| c.1 >= floor);
        }
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            cand.sort_by_key(|c| c.0);
        }
        cand
    }

    #[test]
    fn candidates_match_sorting_every_token() {
        let mut rng = StdRng::seed_from_u64(rand::rng().random());
        let mut cases = 0;
        for round in 0..400 {
            let n = match round % 5 {
                0 => 1 + rng.random_range(0..8),
                1 | 2 => 1 + rng.random_range(0..300),
                3 => 1 + rng.random_range(0..5000),
                _ => 151_936,
            };
            let kind = rng.random_range(0..5);
            let logits: Vec<f32> = (0..n)
                .map(|_| match kind {
                    // Wide and smooth, as a model's logits.
                    0 => rng.random_range(-20.0f32..20.0),
                    // Flat: top-p's mass lies deep.
                    1 => rng.random_range(-0.5f32..0.5),
                    // Ties, and both zeros.
                    2 => [-0.0f32, 0.0, 1.0, -1.0][rng.random_range(0..4)],
                    // One clear favourite among noise.
                    3 => if rng.random_range(0..1000) == 0 { 30.0 } else { rng.random_range(-5.0f32..5.0) },
                    // Non-finite values among the rest.
                    _ => [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 2.0, rng.random_range(-3.0f32..3.0)][rng.random_range(0..5)],
                })
                .collect();
            for _ in 0..if n > 10_000 { 2 } else { 12 } {
                let p = SamplerParams {
                    temperature: 1.0,
                    top_k: [0, 0, 1, 3, 40, 1000, 1 << 20][rng.random_range(0..7)],
                    top_p: [1.0, 1.0, 0.95, 0.5, 0.999, 0.0][rng.random_range(0..6)],
                    min_p: [0.0, 0.0, 0.05, 0.5, 1.0][rng.random_range(0..5)],
                    ..Default::default()
                };
                let want = reference_candidates(&logits, &p);
                for margin in [0, 2] {
                    let got = candidates_with_margin(&logits, &p, margin);
                    let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits());
                    assert!(same, "n {n} kind {kind} {p:?} margin {margin}: {} tokens against {}", got.len(), want.len());
                }
                cases += 1;
            }
        }
        assert!(cases > 2000);
    }

    #[test]
    fn sampling_from_the_top_k_alone_draws_the_same_tokens() {
        let mut rng = StdRng::seed_from_u64(rand::rng().random());
        for round in 0..50 {
            let logits: Vec<f32> = (0..1 + rng.random_range(0..3000)).map(|_| rng.random_range(-8.0f32..8.0)).collect();
            let p = SamplerParams { top_k: [1, 5, 40, 5000][round % 4], seed: round as u64, ..Default::default() };
            let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p.clone()));
            let k = b.device_top_k().unwrap();
            for _ in 0..20 {
                // Given in reverse order, as a device may: the sampler orders them itself.
                let mut top = top_k(&logits, k);
                top.sort_by(|x, y| by_logit(y, x));
                assert_eq!(a.sample(&logits), b.sample_top_k(top));
            }
        }
        for p in [SamplerParams::greedy(), SamplerParams { top_k: 0, ..Default::default() }, SamplerParams { repeat_penalty: 1.1, ..Default::default() }] {
            assert_eq!(Sampler::new(p).device_top_k(), None);
        }
    }

    #[test]
    fn greedy_ties_go_to_lowest_id() {
        let mut s = Sampler::new(SamplerParams::greedy());
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let mut s = Sampler::new(SamplerParams { temperature: 5.0, top_k: 1, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.5, 0.1, 2.0, 1.9]), 2);
        }
    }

    #[test]
    fn seeded_draws_repeat_and_follow_probabilities() {
        let params = SamplerParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let draw = |params: &SamplerParams| {
            let mut s = Sampler::new(params.clone());
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        let ones = a.iter().filter(|&&t| t == 1).count() as f32 / a.len() as f32;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probabilities about 0.64, 0.24, 0.09, 0.03
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplerParams { temperature: 1.0, top_k: 0, top_p: 0.8, min_p: 0.0, ..Default::default() });
        for _ in 0..500 {
            assert!(s.sample(&logits) <= 1);
        }
        let mut s = Sampler::new(SamplerParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.3, ..Default::default() });
        for _ in 0..500 {
            assert!(s.sample(&logits) <= 1);
        }
    }

    #[test]
    fn repetition_penalty_pushes_seen_tokens_down() {
        let mut s = Sampler::new(SamplerParams { temperature: 0.0, repeat_penalty: 2.0, ..Default::default() });
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.5]), 1);
    }
}
