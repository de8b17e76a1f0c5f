//! `sleepy tokenize` and `sleepy info`.

use crate::common::ModelPathArgs;
use anyhow::Result;
use clap::Args;
use sleepy::engine::Files;
use std::collections::BTreeMap;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelPathArgs,
    /// The text to tokenize
    pub text: String,
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let files = args.model.open()?;
    let ids = files.tokenizer()?.encode(&args.text, true)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelPathArgs,
}

pub fn info(args: InfoArgs) -> Result<()> {
    let files = args.model.open()?;
    let c = &files.cfg;
    println!("model:        {}", files.path.display());
    println!("architecture: {}", c.arch.name());
    println!("layers:       {}", c.n_layers);
    println!("hidden:       {} (ffn {})", c.hidden, c.ffn_hidden);
    println!("heads:        {} query, {} key/value, head dim {}", c.n_heads, c.n_kv_heads, c.head_dim);
    println!("vocabulary:   {}", c.vocab_size);
    println!("context:      {}", c.context_length);
    println!("rope:         theta {}, {:?}, {} dims{}", c.rope_theta, c.rope_style, c.rope_dims, match (&c.rope_scaling, &c.rope_freq_factors) {
        (Some(_), _) => ", llama3 scaling",
        (None, Some(_)) => ", frequency factors",
        (None, None) => "",
    });
    println!("flags:        qkv bias {}, q/k norm {}, tied embeddings {}", c.qkv_bias, c.qk_norm, c.tied_embeddings);
    match &files.tokenizer {
        Some(t) => {
            let id = |id: Option<u32>| id.map_or("none".to_string(), |i| format!("{i} {:?}", t.decode_with_special(&[i])));
            println!("tokenizer:    {}, {} tokens, bos {}{}, eos {}", t.kind(), t.vocab_size(), id(t.bos_id()), if t.adds_bos() { " (added)" } else { "" }, id(t.eos_id()));
            println!("stops on:     {:?}", t.eog_ids().iter().map(|&i| t.decode_with_special(&[i])).collect::<Vec<_>>());
        }
        None => println!("tokenizer:    none (run on token ids)"),
    }
    println!("chat template: {}", if files.chat_template.is_some() { "yes" } else { "no" });
    // Weight formats: tensor count and bytes per format.
    let mut formats: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut add = |name: &'static str, bytes: usize| {
        let e = formats.entry(name).or_default();
        e.0 += 1;
        e.1 += bytes;
    };
    match &files.files {
        Files::Gguf(g) => g.tensors.iter().for_each(|t| add(t.dtype.name(), t.n_bytes)),
        Files::Hf(h) => {
            for name in h.hf_names() {
                if let Some((dtype, _, bytes)) = h.hf_tensor(name) {
                    add(dtype.name(), bytes.len());
                }
            }
        }
    }
    println!("weights:");
    let total: usize = formats.values().map(|v| v.1).sum();
    for (name, (count, bytes)) in &formats {
        println!("  {name:<6} {count:>5} tensors {:>10.2} MB", *bytes as f64 / 1e6);
    }
    println!("  total  {:>5} tensors {:>10.2} MB", formats.values().map(|v| v.0).sum::<usize>(), total as f64 / 1e6);
    Ok(())
}
