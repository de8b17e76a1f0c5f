//! Token sampling: greedy, or repetition penalty -> top-k -> top-p -> min-p -> temperature ->
//! a draw from a seeded RNG (the order llama.cpp's default chain uses).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
        let mut logits = logits.to_vec();
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let start = self.recent.len().saturating_sub(p.repeat_last_n);
            let mut seen = self.recent[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    // As llama.cpp: divide positive logits, multiply negative ones.
                    *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                }
            }
        }
        if p.is_greedy() {
            return crate::backend::cpu::argmax(&logits);
        }
        // Candidates sorted by logit, descending; ties keep the lower id first.
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
        if cand.is_empty() {
            return 0;
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let probs = softmax(&cand, 1.0);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let max = cand[0].1;
            // p_i >= min_p * p_max  <=>  l_i >= l_max + ln(min_p)
            let floor = max + p.min_p.ln();
            cand.retain(|c| c.1 >= floor);
        }
        let probs = softmax(&cand, p.temperature);
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

fn softmax(cand: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = cand[0].1;
    let exps: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
