//! The `sleepy` command: run, chat, tokenize, info, bench, convert, eval, tune.

mod bench;
mod chat;
mod common;
mod convert;
mod eval;
mod info;
mod run;
mod tune;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sleepy", version, about = "Fast LLM inference: run, chat with, inspect and benchmark GGUF and Hugging Face models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of PROMPT and stream it to stdout.
    Run(run::RunArgs),
    /// Talk with the model through its chat template (multi-turn, KV cache kept across turns).
    Chat(chat::ChatArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(info::TokenizeArgs),
    /// Describe a model: architecture, dimensions, tokenizer, weight formats.
    Info(info::InfoArgs),
    /// Measure prompt processing and generation speed (tok/s, ms/token, GB/s).
    Bench(bench::BenchArgs),
    /// Convert a Hugging Face directory (llama, qwen2, qwen3) to a GGUF file.
    Convert(convert::ConvertArgs),
    /// Perplexity over a text file, or agreement with reference logits (make_models.py).
    Eval(eval::EvalArgs),
    /// Measure GEMV launch configurations for a model's decode step on this GPU; keep the fastest.
    Tune(tune::TuneArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Tokenize(a) => info::tokenize(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Convert(a) => convert::convert(a),
        Command::Eval(a) => eval::eval(a),
        Command::Tune(a) => tune::tune(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
