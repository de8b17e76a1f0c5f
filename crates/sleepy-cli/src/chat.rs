//! `sleepy chat`: an interactive multi-turn session through the model's chat template. The
//! KV cache is kept across turns: each turn re-renders the conversation, keeps the prefix
//! already in the cache and prefills only the new tokens.

use crate::common::{ModelArgs, SampleArgs};
use anyhow::{Context, Result};
use clap::Args;
use sleepy::backend::Backend;
use sleepy::chat::{ChatTemplate, Message};
use sleepy::engine::ModelFiles;
use sleepy::generate::generate;
use sleepy::model::{Model, Sequence};
use sleepy::sampler::Sampler;
use sleepy::tokenizer::{StreamDecoder, Tokenizer};
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// System message that opens the conversation
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens per answer at most
    #[arg(short = 'n', long, default_value_t = 1024)]
    pub n_predict: usize,
}

/// Set while an answer streams; Ctrl-C then stops the answer instead of the program.
static GENERATING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

pub fn template_of(files: &ModelFiles, tok: &Tokenizer) -> Result<ChatTemplate> {
    let src = files.chat_template.as_deref().context("this model has no chat template")?;
    let text = |id: Option<u32>| id.map(|i| tok.decode_with_special(&[i])).unwrap_or_default();
    Ok(ChatTemplate::new(src, &text(tok.bos_id()), &text(tok.eos_id()))?)
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let files = args.model.open()?;
    let tok = files.tokenizer()?;
    let template = template_of(&files, tok)?;
    let model = files.load(args.model.device()?, args.model.threads(), args.model.load_options()?)?;
    let ctx = args.model.context(&files);
    let mut sampler = Sampler::new(args.sample.params()?);
    ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    })
    .context("could not install the Ctrl-C handler")?;
    sleepy::with_model!(&model, m => session(m, tok, &template, args.system.as_deref(), ctx, args.n_predict, &mut sampler))
}

fn session<B: Backend>(model: &Model<B>, tok: &Tokenizer, template: &ChatTemplate, system: Option<&str>, ctx: usize, n: usize, sampler: &mut Sampler) -> Result<()> {
    let mut seq = model.new_sequence(ctx)?;
    let mut cached: Vec<u32> = Vec::new(); // tokens whose K/V is in the cache, in order
    let start = |m: &mut Vec<Message>| {
        m.clear();
        if let Some(s) = system {
            m.push(Message::new("system", s));
        }
    };
    let mut messages = Vec::new();
    start(&mut messages);
    eprintln!("sleepy chat on {}: /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops an answer", model.backend.name());
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!(); // end of input: leave the terminal on a fresh line
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                start(&mut messages);
                seq.truncate(0);
                cached.clear();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", input));
        let ids = tok.encode(&template.render(&messages, true)?, false)?;
        if ids.len() >= seq.max_seq {
            // Not an error that ends the session: the user can /reset and go on.
            eprintln!("(the conversation, {} tokens, no longer fits the context of {}: /reset to start over)", ids.len(), seq.max_seq);
            messages.pop();
            continue;
        }
        // Keep the part of the cache that the new rendering shares (at least one token is
        // always prefilled, for its logits); prefill the rest.
        let keep = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len().saturating_sub(1));
        seq.truncate(keep);
        cached.truncate(keep);
        let answer = answer(model, tok, &mut seq, &ids[keep..], n, sampler)?;
        cached.extend_from_slice(&ids[keep..]);
        cached.extend_from_slice(&answer);
        cached.truncate(seq.pos);
        messages.push(Message::new("assistant", &tok.decode(&answer)));
    }
    Ok(())
}

/// Stream one answer to stdout; returns its tokens.
fn answer<B: Backend>(model: &Model<B>, tok: &Tokenizer, seq: &mut Sequence<B>, new: &[u32], n: usize, sampler: &mut Sampler) -> Result<Vec<u32>> {
    let mut out = std::io::stdout().lock();
    let mut decoder = StreamDecoder::new(tok);
    let mut tokens = Vec::new();
    STOP.store(false, Ordering::SeqCst);
    GENERATING.store(true, Ordering::SeqCst);
    let result = generate(model, seq, new, n, sampler, &|id| tok.is_eog(id), &mut |id| {
        tokens.push(id);
        let _ = out.write_all(decoder.push(id).as_bytes());
        let _ = out.flush();
        if STOP.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    GENERATING.store(false, Ordering::SeqCst);
    let stats = result?;
    let _ = writeln!(out, "{}", decoder.finish());
    eprintln!("{}", crate::common::summary(&stats, &model.backend.name()));
    Ok(tokens)
}
