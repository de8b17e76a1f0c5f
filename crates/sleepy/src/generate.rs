//! The one generation loop, shared by run, chat, bench and serve: prefill the new prompt
//! tokens as one batch, then decode one token per step until a stop rule fires.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{Logits, Model, Sequence};
use crate::sampler::Sampler;
use std::ops::ControlFlow;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token was sampled.
    EndOfGeneration,
    /// The requested number of tokens was generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The caller asked to stop (Ctrl-C, client gone, stop string).
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    /// Single-token forward passes after the prefill, and their time.
    pub decode_steps: usize,
    pub generate_secs: f64,
    pub stop: StopReason,
}

impl Stats {
    pub fn prompt_tok_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }
    pub fn generate_tok_per_sec(&self) -> f64 {
        self.decode_steps as f64 / self.generate_secs.max(1e-9)
    }
}

/// Prefill `new_tokens` at the sequence's current position, then generate up to
/// `max_tokens`. `on_token` sees every generated token (end-of-generation tokens excluded)
/// and may stop the loop. The last generated token is left un-forwarded: a later call that
/// continues the sequence passes it at the front of `new_tokens`.
pub fn generate<B: Backend>(
    model: &Model<B>,
    seq: &mut Sequence<B>,
    new_tokens: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Stats> {
    if new_tokens.is_empty() {
        return Err(Error::Other("the prompt is empty".into()));
    }
    if seq.pos + new_tokens.len() > seq.max_seq {
        return Err(Error::Other(format!(
            "the prompt ({} tokens, {} already in the context) does not fit the context of {} tokens",
            new_tokens.len(),
            seq.pos,
            seq.max_seq
        )));
    }
    for &t in new_tokens {
        sampler.accept(t);
    }
    let start = Instant::now();
    let mut logits = model.forward(seq, new_tokens, Logits::Last)?;
    let mut next = pick(model, sampler, &logits)?;
    let prompt_secs = start.elapsed().as_secs_f64();
    let gen_start = Instant::now();
    let mut generated = 0;
    let mut decode_steps = 0;
    let stop = loop {
        if is_eog(next) {
            break StopReason::EndOfGeneration;
        }
        generated += 1;
        sampler.accept(next);
        if on_token(next).is_break() {
            break StopReason::Cancelled;
        }
        if generated >= max_tokens {
            break StopReason::MaxTokens;
        }
        if seq.pos >= seq.max_seq {
            break StopReason::ContextFull;
        }
        logits = model.forward(seq, &[next], Logits::Last)?;
        decode_steps += 1;
        next = pick(model, sampler, &logits)?;
    };
    Ok(Stats {
        prompt_tokens: new_tokens.len(),
        prompt_secs,
        generated_tokens: generated,
        decode_steps,
        generate_secs: gen_start.elapsed().as_secs_f64(),
        stop,
    })
}

fn pick<B: Backend>(model: &Model<B>, sampler: &mut Sampler, logits: &B::Act) -> Result<u32> {
    if sampler.params.needs_logits() {
        Ok(sampler.sample(&model.backend.read(logits)?))
    } else {
        model.backend.argmax_last(logits)
    }
}
