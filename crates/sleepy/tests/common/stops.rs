//! One greedy generation run, reduced to what every way of stopping must agree on.
#![allow(dead_code)]

use sleepy::backend::Backend;
use sleepy::generate::{generate, StopReason};
use sleepy::model::Model;
use sleepy::sampler::{Sampler, SamplerParams};
use std::ops::ControlFlow;

/// Tokens, stop reason, generated tokens, decode steps, sequence position, and the tokens of
/// a continued call.
pub type Outcome = (Vec<u32>, StopReason, usize, usize, usize, Vec<u32>);

/// A greedy run of up to `max` tokens in a context of `ctx`: stopped by the callback after
/// `cancel_after` tokens or by the end-of-generation id `eog`; then 4 more tokens continued
/// from the last one (left un-forwarded), where the context allows. Also the run's prompt
/// seconds.
pub fn run<B: Backend>(m: &Model<B>, ids: &[u32], max: usize, cancel_after: usize, eog: Option<u32>, ctx: usize) -> (Outcome, f64) {
    let mut seq = m.new_sequence(ctx).unwrap();
    let mut out = Vec::new();
    let st = generate(m, &mut seq, ids, max, &mut Sampler::new(SamplerParams::greedy()), &|t| Some(t) == eog, &mut |t| {
        out.push(t);
        if out.len() >= cancel_after { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    let mut more = Vec::new();
    if let Some(&last) = out.last() {
        if seq.pos + 1 < seq.max_seq {
            generate(m, &mut seq, &[last], 4, &mut Sampler::new(SamplerParams::greedy()), &|_| false, &mut |t| {
                more.push(t);
                ControlFlow::Continue(())
            })
            .unwrap();
        }
    }
    ((out, st.stop, st.generated_tokens, st.decode_steps, seq.pos, more), st.prompt_secs)
}
