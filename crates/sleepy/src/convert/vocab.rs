//! The tokenizer of a Hugging Face directory as GGUF metadata: `tokenizer.ggml.model = "gpt2"`
//! (byte-level BPE) with tokens, token types, merges, the pre-tokenizer name, special token
//! ids and `add_bos_token`; and `tokenizer.chat_template`. A directory without tokenizer.json
//! gets `tokenizer.ggml.model = "none"`, which readers take as "runs on token ids".

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::hf::{chat_template_of, ids, read_json_if_present, token_text};
use crate::loader::gguf::Value;
use crate::loader::gguf_write::GgufWriter;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// GGUF token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Write the tokenizer keys; returns whether the directory had a tokenizer.
pub(super) fn write_tokenizer(w: &mut GgufWriter, dir: &Path, cfg: &ModelConfig, config: &Json, progress: &mut dyn FnMut(&str)) -> Result<bool> {
    let tok_cfg = read_json_if_present(&dir.join("tokenizer_config.json"))?;
    let gen_cfg = read_json_if_present(&dir.join("generation_config.json"))?;
    let template = match tok_cfg.as_ref().and_then(chat_template_of) {
        Some(t) => Some(t),
        None => read_text_if_present(&dir.join("chat_template.jinja"))?,
    };
    if let Some(t) = template {
        w.set("tokenizer.chat_template", Value::String(t));
    }
    let path = dir.join("tokenizer.json");
    let Some(j) = read_json_if_present(&path)? else {
        progress("no tokenizer.json: the GGUF file gets no vocabulary (tokenizer.ggml.model = none) and runs on token ids");
        w.set("tokenizer.ggml.model", Value::String("none".into()));
        return Ok(false);
    };
    let bad = |m: String| Error::Tokenizer(format!("{}: {m}", path.display()));
    let model = j.get("model").ok_or_else(|| bad("no \"model\" section".into()))?;
    let ty = model.get("type").and_then(|t| t.as_str()).unwrap_or("BPE");
    let byte_fallback = model.get("byte_fallback").and_then(|b| b.as_bool()).unwrap_or(false);
    if ty != "BPE" || byte_fallback || !has_type(&j["pre_tokenizer"], "ByteLevel") {
        return Err(bad(format!(
            "a {ty} tokenizer{} is not supported: only byte-level BPE (GPT-2 style, as in Llama 3, SmolLM2 and Qwen) converts",
            if byte_fallback { " with byte fallback" } else { "" }
        )));
    }

    // Tokens by id: the BPE vocabulary, then added tokens, then padding up to the embedding
    // rows (readers expect exactly one token per row).
    let n_rows = cfg.vocab_size;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_rows];
    let mut put = |text: &str, id: u64, ty: i32| -> Result<()> {
        let slot = usize::try_from(id).ok().and_then(|i| tokens.get_mut(i));
        let slot = slot.ok_or_else(|| bad(format!("token {text:?} has id {id}, but the model has only {n_rows} embedding rows")))?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    let vocab = model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| bad("model.vocab is not a map".into()))?;
    for (text, id) in vocab {
        put(text, id.as_u64().ok_or_else(|| bad(format!("token {text:?}: id is not a number")))?, NORMAL)?;
    }
    for t in j.get("added_tokens").and_then(|a| a.as_array()).into_iter().flatten() {
        let (Some(id), Some(text)) = (t.get("id").and_then(|i| i.as_u64()), t.get("content").and_then(|c| c.as_str())) else {
            return Err(bad(format!("added token without id or content: {t}")));
        };
        // Special tokens, and the <|...|> ones some files leave unmarked, are control tokens
        // (never produced by splitting text, left out of decoded text).
        let special = t.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
        let looks_special = text.starts_with("<|") && text.ends_with("|>");
        put(text, id, if special || looks_special { CONTROL } else { USER_DEFINED })?;
    }
    let padded = tokens.iter().filter(|t| t.is_none()).count();
    let (texts, types): (Vec<String>, Vec<i32>) =
        tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED))).unzip();
    let by_text: HashMap<&str, u32> = texts.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();

    let merges = match model.get("merges").and_then(|m| m.as_array()) {
        Some(list) => list.iter().map(|m| merge_text(m).ok_or_else(|| bad(format!("merge {m} is not \"a b\" nor [a, b]")))).collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };

    let n_merges = merges.len();
    let pre = pre_tokenizer_name(cfg.arch, &j["pre_tokenizer"]);
    if pre == "default" {
        progress("warning: pre-tokenizer not recognised; tokenizer.ggml.pre = default (check the token ids of the converted file)");
    }
    let cfg_str = |k: &str| tok_cfg.as_ref().and_then(|c| c.get(k));
    let lookup = |k: &str| token_text(cfg_str(k)).and_then(|t| by_text.get(t.as_str()).copied());
    let in_range = |id: &u32| (*id as usize) < n_rows;
    let bos = lookup("bos_token").or_else(|| ids(config.get("bos_token_id")).first().copied()).filter(in_range);
    let eos = lookup("eos_token")
        .or_else(|| ids(config.get("eos_token_id")).first().copied())
        .or_else(|| ids(gen_cfg.as_ref().and_then(|g| g.get("eos_token_id"))).first().copied())
        .filter(in_range);
    let pad = lookup("pad_token").or_else(|| ids(config.get("pad_token_id")).first().copied()).filter(in_range);
    // tokenizer_config.json says it, or the post-processor puts BOS before every text.
    let add_bos = match cfg_str("add_bos_token").and_then(|v| v.as_bool()) {
        Some(b) => b,
        None => bos.is_some_and(|b| template_starts_with(&j["post_processor"], &texts[b as usize])),
    };

    w.set("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.set("tokenizer.ggml.pre", Value::String(pre.into()));
    w.set("tokenizer.ggml.tokens", Value::Array(texts.into_iter().map(Value::String).collect()));
    w.set("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
    w.set("tokenizer.ggml.merges", Value::Array(merges.into_iter().map(Value::String).collect()));
    for (key, id) in [("bos_token_id", bos), ("eos_token_id", eos), ("padding_token_id", pad)] {
        if let Some(id) = id {
            w.set(&format!("tokenizer.ggml.{key}"), Value::U32(id));
        }
    }
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    if let Some(b) = cfg_str("add_eos_token").and_then(|v| v.as_bool()) {
        w.set("tokenizer.ggml.add_eos_token", Value::Bool(b));
    }
    progress(&format!("tokenizer: {} tokens ({padded} padding), {n_merges} merges, pre {pre}, bos {bos:?}, eos {eos:?}, add_bos {add_bos}", n_rows));
    Ok(true)
}

fn read_text_if_present(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A merge as GGUF writes it: "a b" (tokenizer.json has "a b" or, in newer files, ["a", "b"]).
fn merge_text(m: &Json) -> Option<String> {
    match m {
        Json::String(s) => Some(s.clone()),
        Json::Array(pair) if pair.len() == 2 => Some(format!("{} {}", pair[0].as_str()?, pair[1].as_str()?)),
        _ => None,
    }
}

/// Whether a pre-tokenizer (or one nested in a Sequence) has this type.
fn has_type(v: &Json, ty: &str) -> bool {
    match v {
        Json::Object(o) => o.get("type").and_then(|t| t.as_str()) == Some(ty) || o.values().any(|c| has_type(c, ty)),
        Json::Array(a) => a.iter().any(|c| has_type(c, ty)),
        _ => false,
    }
}

/// The regexes of the Split pre-tokenizers, in order.
fn split_regexes(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(o) => {
            if o.get("type").and_then(|t| t.as_str()) == Some("Split") {
                if let Some(r) = o.get("pattern").and_then(|p| p.get("Regex")).and_then(|r| r.as_str()) {
                    out.push(r.to_string());
                }
            }
            o.values().for_each(|c| split_regexes(c, out));
        }
        Json::Array(a) => a.iter().for_each(|c| split_regexes(c, out)),
        _ => {}
    }
}

/// `tokenizer.ggml.pre`: the name under which GGUF readers know this family's pre-tokenizer
/// regex. Qwen models share one; llama-architecture models are told apart by their files.
fn pre_tokenizer_name(arch: Arch, pre: &Json) -> &'static str {
    if matches!(arch, Arch::Qwen2 | Arch::Qwen3) {
        return "qwen2";
    }
    let mut regexes = Vec::new();
    split_regexes(pre, &mut regexes);
    let llama3 = regexes.iter().any(|r| r.contains("(?i:'s|'t|'re|'ve|'m|'ll|'d)") && r.contains(r"\p{N}{1,3}"));
    let individual_digits = |v: &Json| has_type(v, "Digits") && v.to_string().contains("\"individual_digits\":true");
    if llama3 {
        "llama-bpe"
    } else if regexes.is_empty() && individual_digits(pre) {
        "smollm"
    } else if regexes.is_empty() && pre.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") {
        "gpt2"
    } else {
        "default"
    }
}

/// Whether a TemplateProcessing post-processor (maybe inside a Sequence) starts every single
/// text with the special token `bos`.
fn template_starts_with(post: &Json, bos: &str) -> bool {
    match post {
        Json::Object(o) if o.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing") => o
            .get("single")
            .and_then(|s| s.as_array())
            .and_then(|s| s.first())
            .and_then(|first| first.get("SpecialToken"))
            .and_then(|t| t.get("id"))
            .and_then(|id| id.as_str())
            == Some(bos),
        Json::Object(o) => o.get("processors").and_then(|p| p.as_array()).is_some_and(|p| p.iter().any(|c| template_starts_with(c, bos))),
        _ => false,
    }
}
