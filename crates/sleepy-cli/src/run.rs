//! `sleepy run`: one prompt in, streamed text out, one summary line on stderr.

use crate::common::{ModelArgs, SampleArgs};
use anyhow::Result;
use clap::Args;
use sleepy::backend::Backend;
use sleepy::chat::Message;
use sleepy::generate::generate;
use sleepy::model::Model;
use sleepy::sampler::Sampler;
use sleepy::tokenizer::{StreamDecoder, Tokenizer};
use std::io::Write;
use std::ops::ControlFlow;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Tokens to generate at most
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n_predict: usize,
    /// Render the prompt as one user turn through the model's chat template
    #[arg(long)]
    pub chat: bool,
    /// System message (implies --chat)
    #[arg(long)]
    pub system: Option<String>,
    /// The prompt
    pub prompt: String,
}

pub fn run(args: RunArgs) -> Result<()> {
    let files = args.model.open()?;
    let tok = files.tokenizer()?;
    let prompt_ids = if args.chat || args.system.is_some() {
        let template = crate::chat::template_of(&files, tok)?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &args.prompt));
        tok.encode(&template.render(&messages, true)?, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    let model = files.load(args.model.device()?, args.model.threads(), args.model.load_options()?)?;
    let ctx = args.model.context(&files);
    let mut sampler = Sampler::new(args.sample.params()?);
    sleepy::with_model!(&model, m => stream(m, tok, &prompt_ids, ctx, args.n_predict, &mut sampler))
}

fn stream<B: Backend>(model: &Model<B>, tok: &Tokenizer, prompt: &[u32], ctx: usize, n: usize, sampler: &mut Sampler) -> Result<()> {
    let mut seq = model.new_sequence(ctx)?;
    let mut out = std::io::stdout().lock();
    let mut decoder = StreamDecoder::new(tok);
    let stats = generate(model, &mut seq, prompt, n, sampler, &|id| tok.is_eog(id), &mut |id| {
        let text = decoder.push(id);
        if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
            return ControlFlow::Break(()); // stdout closed: stop quietly
        }
        ControlFlow::Continue(())
    })?;
    let _ = out.write_all(decoder.finish().as_bytes());
    let _ = writeln!(out);
    eprintln!("{}", crate::common::summary(&stats, &model.backend.name()));
    Ok(())
}
