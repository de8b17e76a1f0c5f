//! The generation loop's pipelined branch (greedy ids kept on the device, each step launched
//! before its token is read) against the plain loop, on the CPU backend queueing ids the way
//! the GPU does: the same tokens, stop reason, counts and sequence position for every way of
//! stopping, and a continued call that carries on the same way.

#[path = "common/tiny.rs"]
mod tiny;
#[path = "common/stops.rs"]
mod stops;

use sleepy::backend::cpu::CpuBackend;
use sleepy::backend::Backend;
use sleepy::generate::{generate, StopReason};
use sleepy::model::{LoadOptions, Model};
use sleepy::sampler::{Sampler, SamplerParams};
use std::ops::ControlFlow;

/// A run, checking that its prompt took time.
fn run<B: Backend>(m: &Model<B>, ids: &[u32], max: usize, cancel_after: usize, eog: Option<u32>, ctx: usize) -> stops::Outcome {
    let (o, prompt_secs) = stops::run(m, ids, max, cancel_after, eog, ctx);
    assert!(prompt_secs > 0.0);
    o
}

#[test]
fn queued_greedy_loop_matches_the_plain_loop() {
    let t = tiny::Tiny { model_type: "qwen3", f32_weights: true, tied: true, llama3_scaling: false, bias: false, head_dim: None };
    let dir = tiny::fresh_dir("generate-queued");
    tiny::write_model(&dir, &t, 5);
    let files = sleepy::engine::ModelFiles::open(&dir).unwrap();
    let plain = files.load_on(CpuBackend::new_exact(1).unwrap(), LoadOptions::default()).unwrap();
    let queued = files.load_on(CpuBackend::new_exact(1).unwrap().with_queued_argmax(), LoadOptions::default()).unwrap();
    let ids: Vec<u32> = (0..7).map(|i| (i * 37 + 5) % tiny::VOCAB as u32).collect();
    let reference = run(&plain, &ids, 12, usize::MAX, None, 64);
    // End-of-generation at the first token, and at a later one (the 4th token's id; its first
    // occurrence ends the run).
    let (first, later) = (reference.0[0], reference.0[3]);
    let cases = [
        ("max tokens", 12, usize::MAX, None, 64),
        ("one token", 1, usize::MAX, None, 64),
        ("two tokens", 2, usize::MAX, None, 64),
        ("cancelled", 12, 5, None, 64),
        ("cancelled at once", 12, 1, None, 64),
        ("end of generation first", 12, usize::MAX, Some(first), 64),
        ("end of generation later", 12, usize::MAX, Some(later), 64),
        ("context full", 12, usize::MAX, None, ids.len() + 6),
        ("context one short", 12, usize::MAX, None, ids.len() + 1),
    ];
    let mut stops = Vec::new();
    for (what, max, cancel, eog, ctx) in cases {
        let a = run(&plain, &ids, max, cancel, eog, ctx);
        let b = run(&queued, &ids, max, cancel, eog, ctx);
        assert_eq!(a, b, "{what}: plain loop vs queued loop");
        // Nothing is left queued for the next generation.
        assert!(queued.backend.take_queued().is_err(), "{what}: an id was left queued");
        stops.push(a.1);
    }
    for s in [StopReason::MaxTokens, StopReason::Cancelled, StopReason::EndOfGeneration, StopReason::ContextFull] {
        assert!(stops.contains(&s), "no case stopped by {s:?}: {stops:?}");
    }
}

/// A callback that panics mid-generation leaves nothing queued for the next generation.
#[test]
fn an_early_exit_leaves_nothing_queued() {
    let t = tiny::Tiny { model_type: "llama", f32_weights: true, tied: false, llama3_scaling: false, bias: false, head_dim: None };
    let dir = tiny::fresh_dir("generate-queued-exit");
    tiny::write_model(&dir, &t, 6);
    let files = sleepy::engine::ModelFiles::open(&dir).unwrap();
    let m = files.load_on(CpuBackend::new_exact(1).unwrap().with_queued_argmax(), LoadOptions::default()).unwrap();
    let mut seq = m.new_sequence(64).unwrap();
    let mut n = 0;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate(&m, &mut seq, &[1, 2, 3], 12, &mut Sampler::new(SamplerParams::greedy()), &|_| false, &mut |_| {
            n += 1;
            assert!(n < 3, "the caller's callback fails");
            ControlFlow::Continue(())
        })
    }));
    assert!(r.is_err());
    assert!(m.backend.take_queued().is_err(), "an id was left queued");
}
