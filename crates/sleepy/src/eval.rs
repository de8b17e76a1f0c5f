//! Evaluation: perplexity over a text, and agreement with reference logits written by
//! transformers (`make_models.py`: a prompt, float32 and bfloat16 logits, float32 greedy
//! continuation).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generate::generate;
use crate::model::{Logits, Model};
use crate::sampler::{Sampler, SamplerParams};
use std::ops::ControlFlow;
use std::path::Path;

/// Tokens forwarded at once while scoring a window (bounds the `[rows, vocab]` logits).
const SCORE_BATCH: usize = 64;

/// Where a perplexity run stands after a window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PerplexityProgress {
    pub window: usize,
    pub windows: usize,
    /// Perplexity of this window's scored tokens.
    pub window_ppl: f64,
    /// Perplexity of every token scored so far.
    pub ppl: f64,
    pub scored_tokens: usize,
}

/// Perplexity of `tokens` in non-overlapping windows of `window` tokens. A window is
/// `[bos] + text tokens` when `bos` is given (as the model saw text in training), else text
/// tokens only. Within a window, the tokens of its second half are scored, each predicted
/// from every token before it in the window; the first half is context only, so every
/// scored token has at least window/2 tokens of context. A text shorter than one window is
/// one (shorter) window.
pub fn perplexity<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    window: usize,
    bos: Option<u32>,
    on_window: &mut dyn FnMut(&PerplexityProgress),
) -> Result<PerplexityProgress> {
    if window < 2 {
        return Err(Error::Other(format!("a window of {window} token(s) scores nothing: it needs at least 2")));
    }
    let text_per_window = window - bos.is_some() as usize;
    let windows: Vec<&[u32]> = if tokens.len() < text_per_window { vec![tokens] } else { tokens.chunks_exact(text_per_window).collect() };
    let mut total_nll = 0.0f64;
    let mut scored = 0usize;
    let mut last = None;
    for (w, chunk) in windows.iter().enumerate() {
        let ids: Vec<u32> = bos.into_iter().chain(chunk.iter().copied()).collect();
        if ids.len() < 2 {
            return Err(Error::Other(format!("the text has {} token(s): nothing to score", tokens.len())));
        }
        let (nll, n) = score_window(model, &ids)?;
        total_nll += nll;
        scored += n;
        let p = PerplexityProgress {
            window: w + 1,
            windows: windows.len(),
            window_ppl: (nll / n as f64).exp(),
            ppl: (total_nll / scored as f64).exp(),
            scored_tokens: scored,
        };
        on_window(&p);
        last = Some(p);
    }
    last.ok_or_else(|| Error::Other("the text has no tokens".into()))
}

/// Negative log-likelihood (nats) of the second half of `ids`, and how many tokens that is.
fn score_window<B: Backend>(model: &Model<B>, ids: &[u32]) -> Result<(f64, usize)> {
    let vocab = model.cfg.vocab_size;
    let first = ids.len() / 2; // first scored position, >= 1
    let mut seq = model.new_sequence(ids.len())?;
    if seq.max_seq < ids.len() {
        return Err(Error::Other(format!("a window of {} tokens exceeds the model's context of {}", ids.len(), seq.max_seq)));
    }
    // The context half: only its last row of logits is needed (it predicts ids[first]).
    let logits = model.read(&model.forward(&mut seq, &ids[..first], Logits::Last)?)?;
    let mut nll = token_nll(&logits, ids[first])?;
    // The scored half: row j of a batch starting at position p predicts ids[p + j + 1].
    let mut pos = first;
    while pos + 1 < ids.len() {
        let end = (pos + SCORE_BATCH).min(ids.len() - 1);
        let rows = model.read(&model.forward(&mut seq, &ids[pos..end], Logits::All)?)?;
        for (j, row) in rows.chunks_exact(vocab).enumerate() {
            nll += token_nll(row, ids[pos + j + 1])?;
        }
        pos = end;
    }
    Ok((nll, ids.len() - first))
}

/// -log softmax(logits)[target], in f64 so long vocabularies lose nothing.
fn token_nll(logits: &[f32], target: u32) -> Result<f64> {
    let x = *logits.get(target as usize).ok_or_else(|| Error::Other(format!("token {target} is outside the vocabulary")))?;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    Ok(max + sum.ln() - x as f64)
}

/// A reference written by make_models.py.
pub struct Reference {
    pub input_ids: Vec<u32>,
    pub vocab: usize,
    /// `[tokens, vocab]`, float32 transformers forward: the ground truth.
    pub logits_f32: Vec<f32>,
    /// `[tokens, vocab]`, bfloat16 transformers forward, if present.
    pub logits_bf16: Option<Vec<f32>>,
    /// Greedy continuation by the float32 model.
    pub greedy: Vec<u32>,
}

impl Reference {
    pub fn open(path: &Path) -> Result<Reference> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
        let bad = |m: String| Error::Safetensors(format!("{}: {m}", path.display()));
        let input_ids = ids_of(&st, "input_ids").map_err(&bad)?.ok_or_else(|| bad("no input_ids".into()))?;
        let greedy = ids_of(&st, "greedy_f32").map_err(&bad)?.unwrap_or_default();
        let (logits_f32, shape) = f32_of(&st, "logits_f32").map_err(&bad)?.ok_or_else(|| bad("no logits_f32".into()))?;
        if shape.len() != 2 || shape[0] != input_ids.len() || shape[1] == 0 {
            return Err(bad(format!("logits_f32 has shape {shape:?}, expected [{}, vocab]", input_ids.len())));
        }
        let logits_bf16 = match f32_of(&st, "logits_bf16").map_err(&bad)? {
            Some((v, s)) if s == shape => Some(v),
            Some((_, s)) => return Err(bad(format!("logits_bf16 has shape {s:?}, logits_f32 {shape:?}"))),
            None => None,
        };
        if input_ids.is_empty() {
            return Err(bad("input_ids is empty".into()));
        }
        Ok(Reference { input_ids, vocab: shape[1], logits_f32, logits_bf16, greedy })
    }
}

/// An integer tensor (i64 or i32, as torch saves token ids) as u32 ids.
fn ids_of(st: &safetensors::SafeTensors, name: &str) -> std::result::Result<Option<Vec<u32>>, String> {
    let Ok(t) = st.tensor(name) else { return Ok(None) };
    let values: Vec<i64> = match t.dtype() {
        safetensors::Dtype::I64 => t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect(),
        safetensors::Dtype::I32 => t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as i64).collect(),
        other => return Err(format!("{name} is {other:?}, expected i64 or i32")),
    };
    values.into_iter().map(|v| u32::try_from(v).map_err(|_| format!("{name} holds {v}, not a token id"))).collect::<std::result::Result<_, _>>().map(Some)
}

fn f32_of(st: &safetensors::SafeTensors, name: &str) -> std::result::Result<Option<(Vec<f32>, Vec<usize>)>, String> {
    let Ok(t) = st.tensor(name) else { return Ok(None) };
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(format!("{name} is {:?}, expected f32", t.dtype()));
    }
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Some((v, t.shape().to_vec())))
}

/// How the engine's logits and greedy text compare with a reference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReferenceReport {
    pub tokens: usize,
    pub vocab: usize,
    /// ||ours - f32|| / ||f32|| over every prompt logit.
    pub rel_err: f64,
    /// The same for transformers' own bf16 forward (what a bf16 engine should land near).
    pub bf16_rel_err: Option<f64>,
    pub max_abs_err: f64,
    /// Prompt positions whose top-1 token is the f32 reference's.
    pub top1_agree: usize,
    pub bf16_top1_agree: Option<usize>,
    /// Median over prompt positions of the f32 reference's gap between its two best logits:
    /// with errors much smaller than this, top-1 choices are stable.
    pub ref_top2_gap_median: f64,
    /// Root-mean-square logit error, ours and transformers' bf16, in the same units.
    pub rms_err: f64,
    pub bf16_rms_err: Option<f64>,
    pub greedy_total: usize,
    /// Free-running greedy decoding: leading tokens equal to the reference's (the first
    /// mismatch stops the count).
    pub greedy_matched: usize,
    pub greedy_ours: Vec<u32>,
    /// Teacher-forced: fed the reference's continuation, steps where our top-1 is its token.
    pub teacher_forced_matched: usize,
    /// Teacher-forced steps where we differ: (step, our logit margin of our choice over the
    /// reference's token). A margin near the logit error means a near-tie, not a bug.
    pub teacher_forced_mismatches: Vec<(usize, f64)>,
}

/// Compare the model with a reference: one forward over prompt + reference continuation
/// (prompt logits and teacher-forced steps), then free-running greedy decoding.
pub fn eval_reference<B: Backend>(model: &Model<B>, r: &Reference) -> Result<ReferenceReport> {
    let (t, vocab) = (r.input_ids.len(), r.vocab);
    if vocab != model.cfg.vocab_size {
        return Err(Error::Other(format!("the reference has {vocab} logits per token, the model a vocabulary of {}", model.cfg.vocab_size)));
    }
    let g = r.greedy.len();
    let mut ids = r.input_ids.clone();
    ids.extend_from_slice(&r.greedy[..g.saturating_sub(1)]);
    let mut seq = model.new_sequence(t + g)?;
    let all = model.read(&model.forward(&mut seq, &ids, Logits::All)?)?;
    let (ours, continuation) = all.split_at(t * vocab);

    let (rel_err, rms_err, max_abs_err) = errors(ours, &r.logits_f32);
    let bf16 = r.logits_bf16.as_deref().map(|b| errors(b, &r.logits_f32));
    let top1 = |x: &[f32]| x.chunks_exact(vocab).zip(r.logits_f32.chunks_exact(vocab)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    let mut gaps: Vec<f64> = r.logits_f32.chunks_exact(vocab).map(top2_gap).collect();
    gaps.sort_by(f64::total_cmp);

    let mut teacher_forced_matched = 0;
    let mut teacher_forced_mismatches = Vec::new();
    let steps = std::iter::once(&ours[(t - 1) * vocab..]).chain(continuation.chunks_exact(vocab));
    for (step, (row, &want)) in steps.zip(&r.greedy).enumerate() {
        let row = &row[..vocab];
        let mine = argmax(row);
        if mine == want as usize {
            teacher_forced_matched += 1;
        } else {
            teacher_forced_mismatches.push((step, (row[mine] - row[want as usize]) as f64));
        }
    }

    let mut greedy_ours = Vec::with_capacity(g);
    if g > 0 {
        let mut seq = model.new_sequence(t + g)?;
        let mut sampler = Sampler::new(SamplerParams::greedy());
        generate(model, &mut seq, &r.input_ids, g, &mut sampler, &|_| false, &mut |id| {
            greedy_ours.push(id);
            ControlFlow::Continue(())
        })?;
    }
    let greedy_matched = greedy_ours.iter().zip(&r.greedy).take_while(|(a, b)| a == b).count();
    Ok(ReferenceReport {
        tokens: t,
        vocab,
        rel_err,
        bf16_rel_err: bf16.map(|e| e.0),
        max_abs_err,
        top1_agree: top1(ours),
        bf16_top1_agree: r.logits_bf16.as_deref().map(top1),
        ref_top2_gap_median: gaps[gaps.len() / 2],
        rms_err,
        bf16_rms_err: bf16.map(|e| e.1),
        greedy_total: g,
        greedy_matched,
        greedy_ours,
        teacher_forced_matched,
        teacher_forced_mismatches,
    })
}

/// (||a - b|| / ||b||, rms(a - b), max |a - b|), accumulated in f64.
fn errors(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let (mut diff2, mut ref2, mut max) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        diff2 += d * d;
        ref2 += y as f64 * y as f64;
        max = max.max(d.abs());
    }
    ((diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt(), (diff2 / a.len().max(1) as f64).sqrt(), max)
}

/// Index of the largest value, ties to the lowest index (as torch's argmax and our greedy).
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

fn top2_gap(x: &[f32]) -> f64 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in x {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    (a - b) as f64
}
