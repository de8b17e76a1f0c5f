//! A tokenizer from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE ("gpt2") built as a
//! `tokenizers::Tokenizer` from the vocabulary and merges, with the pre-tokenizer split
//! regexes llama.cpp uses for the name in `tokenizer.ggml.pre`, and control / user-defined
//! tokens as added tokens so that writing one in a prompt gives its single id.

use super::bytes::ByteLevelTable;
use super::{end_of_generation, TokenKind, Tokenizer};
use crate::error::{Error, Result};
use crate::loader::gguf::{GgufFile, Value};
use std::collections::hash_map::Entry;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

// Split regexes (the facts of each model family's pre-tokenizer, as llama.cpp applies them:
// each regex in turn splits the pieces the previous one left, matches and gaps alike).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];

/// How a `tokenizer.ggml.pre` name pre-tokenizes, and llama.cpp's defaults that go with it.
struct PreTokenizer {
    regexes: &'static [&'static str],
    /// A pre-token that is itself in the vocabulary is used whole (Llama 3).
    ignore_merges: bool,
    /// BOS is added when the file has no `tokenizer.ggml.add_bos_token`.
    default_add_bos: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer of a `tokenizer.ggml.pre` name; None for names we do not know.
    fn named(name: &str) -> Option<PreTokenizer> {
        let pre = |regexes, ignore_merges, default_add_bos| Some(PreTokenizer { regexes, ignore_merges, default_add_bos });
        match name {
            "default" => pre(DEFAULT, false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => pre(&[LLAMA3], true, true),
            "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => pre(&[LLAMA3], false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "megrez" | "stablelm2" | "hunyuan" => pre(&[QWEN2], false, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => pre(&[r"\p{N}", GPT2], false, false),
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4" | "mellum"
            | "gigachat" | "a.x-4.0" | "roberta-bpe" | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de"
            | "jina-v2-code" => pre(&[GPT2], false, false),
            "falcon" => pre(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], false, false),
            _ => None,
        }
    }
}

pub(super) fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let model = f.get_str("tokenizer.ggml.model").unwrap_or("none");
    if model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "tokenizer model '{model}' is not supported (supported: byte-level BPE, 'gpt2')"
        )));
    }
    // Like llama.cpp, an unknown or missing pre-tokenizer name falls back to "default"; the
    // fallback shows in `kind()` (and so in `sleepy info`).
    let pre_name = f.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let (pre, kind) = match PreTokenizer::named(pre_name) {
        Some(p) => (p, format!("gpt2 ({pre_name})")),
        None => {
            let fallback = PreTokenizer { regexes: DEFAULT, ignore_merges: false, default_add_bos: false };
            (fallback, format!("gpt2 (unknown pre-tokenizer '{pre_name}', using default)"))
        }
    };

    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(Error::Tokenizer(format!("tokenizer.ggml.tokens has {n} entries")));
    }
    let mut kinds = match f.get("tokenizer.ggml.token_type") {
        None => vec![TokenKind::Normal; n],
        Some(v) => {
            let types = v.as_array().ok_or_else(|| Error::Tokenizer("tokenizer.ggml.token_type is not an array".into()))?;
            if types.len() != n {
                return Err(Error::Tokenizer(format!("tokenizer.ggml.token_type has {} entries for {n} tokens", types.len())));
            }
            types.iter().map(|t| kind_of(t.as_i64())).collect()
        }
    };

    // Vocabulary text -> id. Empty texts get a placeholder (as llama.cpp does) so that the
    // map stays one-to-one; a repeated text is a broken file.
    let mut vocab = Vocab::default();
    let mut texts = Vec::with_capacity(n);
    for (id, token) in tokens.into_iter().enumerate() {
        let text = if token.is_empty() { format!("[EMPTY_{id}]") } else { token };
        match vocab.entry(text.clone()) {
            Entry::Occupied(e) => {
                return Err(Error::Tokenizer(format!("token {text:?} appears twice (ids {} and {id})", e.get())));
            }
            Entry::Vacant(e) => e.insert(id as u32),
        };
        texts.push(text);
    }

    let merges = strings(f, "tokenizer.ggml.merges")?;
    let mut pairs = Vec::with_capacity(merges.len());
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    for (i, m) in merges.into_iter().enumerate() {
        // "left right"; the separator is searched after the first character, so a left
        // half that is itself a space still parses.
        let first = m.chars().next().map_or(0, char::len_utf8);
        let split = m[first..].find(' ').map(|p| p + first);
        let (a, b) = match split {
            Some(p) if p + 1 < m.len() => (m[..p].to_string(), m[p + 1..].to_string()),
            _ => return Err(Error::Tokenizer(format!("merge #{i} {m:?} is not two tokens separated by a space"))),
        };
        // A pair listed twice keeps its first (highest-priority) rank.
        if seen.insert((a.clone(), b.clone())) {
            pairs.push((a, b));
        }
    }

    let id = |key: &str| -> Result<Option<u32>> {
        match f.get(key).map(|v| v.as_u64()) {
            None | Some(None) => Ok(None), // absent, or negative ("no such token")
            Some(Some(id)) if (id as usize) < n => Ok(Some(id as u32)),
            Some(Some(id)) => Err(Error::Tokenizer(format!("{key} = {id} is outside the vocabulary of {n} tokens"))),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let mut explicit = vec![eos];
    for key in ["eot", "eom", "fim_pad", "fim_rep", "fim_sep"] {
        explicit.push(id(&format!("tokenizer.ggml.{key}_token_id"))?);
    }
    let eog = end_of_generation(&explicit, &mut kinds, |t| vocab.get(t).copied());
    let flag = |key: &str, default: bool| f.get(key).and_then(Value::as_bool).unwrap_or(default);
    let add_bos = flag("tokenizer.ggml.add_bos_token", pre.default_add_bos) && bos.is_some();
    let add_eos = flag("tokenizer.ggml.add_eos_token", false) && eos.is_some();

    let hf = build(vocab, pairs, &pre, &texts, &kinds)?;
    let table = ByteLevelTable::new();
    // Control and user-defined tokens are stored as the text they stand for; normal tokens
    // in the byte-level alphabet.
    let pieces = texts
        .iter()
        .zip(&kinds)
        .map(|(t, k)| match k {
            TokenKind::Normal => table.decode(t),
            TokenKind::Byte => super::bytes::byte_token(t).map(|b| vec![b]).unwrap_or_default(),
            _ => t.as_bytes().to_vec(),
        })
        .collect();
    Ok(Tokenizer {
        hf,
        pieces,
        kinds,
        bos,
        eos,
        eog,
        add_bos,
        add_eos,
        post_processor_adds: false,
        strip_leading_space: false,
        kind,
    })
}

/// GGUF token types (llama.cpp's numbering); anything else decodes to nothing, like unused.
fn kind_of(t: Option<i64>) -> TokenKind {
    match t {
        Some(1) => TokenKind::Normal,
        Some(2) => TokenKind::Unknown,
        Some(3) => TokenKind::Control,
        Some(4) => TokenKind::UserDefined,
        Some(6) => TokenKind::Byte,
        _ => TokenKind::Unused,
    }
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = f
        .get(key)
        .ok_or_else(|| Error::Tokenizer(format!("{key} is missing")))?
        .as_array()
        .ok_or_else(|| Error::Tokenizer(format!("{key} is not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| Error::Tokenizer(format!("{key}[{i}] is not a string"))))
        .collect()
}

fn build(vocab: Vocab, merges: Vec<(String, String)>, pre: &PreTokenizer, texts: &[String], kinds: &[TokenKind]) -> Result<tokenizers::Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| Error::Tokenizer(format!("bad merges: {e}")))?;
    let mut steps = Vec::with_capacity(pre.regexes.len() + 1);
    for re in pre.regexes {
        let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    // The regexes ran on the text itself; now bytes become the byte-level alphabet.
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(Sequence::new(steps)));
    hf.with_decoder(Some(ByteLevel::default()));
    // Written in a prompt, control, unknown and user-defined tokens are that one token,
    // matched on the raw text before any splitting (llama.cpp's special-token partition).
    let added: Vec<AddedToken> = texts
        .iter()
        .zip(kinds)
        .filter_map(|(t, k)| match k {
            TokenKind::Control | TokenKind::Unknown => Some(AddedToken::from(t.clone(), true)),
            TokenKind::UserDefined => Some(AddedToken::from(t.clone(), false).normalized(false)),
            _ => None,
        })
        .collect();
    hf.add_tokens(&added);
    Ok(hf)
}
