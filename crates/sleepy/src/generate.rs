//! The one generation loop, shared by run, chat, bench and serve: prefill the new prompt
//! tokens as one batch, then decode one token per step until a stop rule fires.

use crate::backend::{Backend, QUEUED_TOKEN};
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
    // Greedy decoding on a backend that keeps the chosen id on the device: each step is
    // launched before the host reads the id it consumes, so the host's work (recording,
    // launching, the callback) overlaps the device's instead of leaving it idle.
    let queued = !sampler.params.needs_logits() && model.backend.queue_argmax(&logits)?;
    let _drain = Drain(&model.backend);
    let mut next = if queued { QUEUED_TOKEN } else { pick(model, sampler, &logits)? };
    let mut prompt_secs = start.elapsed().as_secs_f64();
    let mut gen_start = Instant::now();
    let mut generated = 0;
    let mut decode_steps = 0;
    let (stop, generate_secs) = loop {
        // The step for `next`, launched ahead where it may be needed (what the checks below
        // can tell before the id is known).
        let ahead = queued && generated + 1 < max_tokens && seq.pos < seq.max_seq;
        if ahead {
            logits = model.forward(seq, &[QUEUED_TOKEN], Logits::Last)?;
            model.backend.queue_argmax(&logits)?;
        }
        if queued {
            next = model.backend.take_queued()?;
            if generated == 0 && decode_steps == 0 {
                // Nothing waited for the prompt's step before its token arrived here.
                prompt_secs = start.elapsed().as_secs_f64();
                gen_start = Instant::now();
            }
        }
        let stop = if is_eog(next) {
            Some(StopReason::EndOfGeneration)
        } else {
            generated += 1;
            sampler.accept(next);
            if on_token(next).is_break() {
                Some(StopReason::Cancelled)
            } else if generated >= max_tokens {
                Some(StopReason::MaxTokens)
            } else if !ahead && seq.pos >= seq.max_seq {
                Some(StopReason::ContextFull)
            } else {
                None
            }
        };
        if let Some(stop) = stop {
            let secs = gen_start.elapsed().as_secs_f64();
            if ahead {
                // Take the step launched ahead back (not counted): `next` stays un-forwarded.
                model.backend.take_queued()?;
                seq.truncate(seq.pos - 1);
            }
            break (stop, secs);
        }
        if !ahead {
            logits = model.forward(seq, &[next], Logits::Last)?;
            if !(queued && model.backend.queue_argmax(&logits)?) {
                next = pick(model, sampler, &logits)?;
            }
        }
        decode_steps += 1;
    };
    Ok(Stats {
        prompt_tokens: new_tokens.len(),
        prompt_secs,
        generated_tokens: generated,
        decode_steps,
        generate_secs,
        stop,
    })
}

/// Takes the queued argmax results left when generation ends early (an error, a panicking
/// callback), so that the backend's next generation does not read a stale id first.
struct Drain<'a, B: Backend>(&'a B);

impl<B: Backend> Drop for Drain<'_, B> {
    fn drop(&mut self) {
        while self.0.take_queued().is_ok() {}
    }
}

fn pick<B: Backend>(model: &Model<B>, sampler: &mut Sampler, logits: &B::Act) -> Result<u32> {
    if sampler.params.needs_logits() {
        if let Some(k) = sampler.device_top_k() {
            if let Some(top) = model.backend.top_k_last(logits, k)? {
                return Ok(sampler.sample_top_k(top));
            }
        }
        Ok(sampler.sample(&model.backend.read(logits)?))
    } else {
        model.backend.argmax_last(logits)
    }
}
