//! A tokenizer from a Hugging Face tokenizer.json: the `tokenizers::Tokenizer` encodes as it
//! is; the bytes of each token are worked out from the decoder it declares (byte-level BPE
//! or SentencePiece-style) so that decoding and streaming go through the same code as GGUF.

use super::bytes::{byte_token, sentencepiece_bytes, ByteLevelTable};
use super::{end_of_generation, TokenKind, Tokenizer};
use tokenizers::models::ModelWrapper;

/// How a tokenizer.json writes bytes in its vocabulary, read off its decoder.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    ByteLevel,
    /// `▁` for spaces and `<0xAB>` byte tokens; `strip` drops the space SentencePiece puts
    /// before the first word.
    SentencePiece { strip: bool },
    /// Anything else (WordPiece, ...): each token decoded alone by the tokenizers crate.
    Other,
}

fn style_of(hf: &tokenizers::Tokenizer) -> Style {
    // The decoder's JSON names its steps ("ByteLevel", "ByteFallback", "Metaspace", "Strip");
    // reading the names avoids depending on the crate's private fields.
    let json = hf.get_decoder().and_then(|d| serde_json::to_string(d).ok()).unwrap_or_default();
    let has = |name: &str| json.contains(&format!("\"{name}\""));
    if has("ByteLevel") {
        Style::ByteLevel
    } else if has("ByteFallback") || has("Metaspace") || json.contains('\u{2581}') {
        let metaspace_prefix = has("Metaspace") && !json.contains("\"never\"");
        Style::SentencePiece { strip: has("Strip") || metaspace_prefix }
    } else {
        Style::Other
    }
}

pub(super) fn from_hf(hf: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>, add_bos: bool) -> Tokenizer {
    let vocab = hf.get_vocab(true);
    // Ids are dense in real files; a file claiming absurd ids has them ignored rather than
    // allocating for them.
    let limit = vocab.len() * 4 + 1024;
    let n = vocab.values().copied().filter(|&id| (id as usize) < limit).max().map_or(0, |m| m as usize + 1);
    let mut texts: Vec<Option<String>> = vec![None; n];
    for (text, id) in vocab {
        if let Some(slot) = texts.get_mut(id as usize) {
            *slot = Some(text);
        }
    }
    let added = hf.get_added_tokens_decoder();
    let style = style_of(&hf);
    let table = ByteLevelTable::new();
    let mut kinds = vec![TokenKind::Unused; n];
    let mut pieces = vec![Vec::new(); n];
    for (id, text) in texts.iter().enumerate() {
        // Added tokens are stored as the text they stand for.
        if let Some(tok) = added.get(&(id as u32)) {
            kinds[id] = if tok.special { TokenKind::Control } else { TokenKind::UserDefined };
            pieces[id] = tok.content.as_bytes().to_vec();
            continue;
        }
        let Some(text) = text else { continue };
        (kinds[id], pieces[id]) = match style {
            Style::ByteLevel => (TokenKind::Normal, table.decode(text)),
            Style::SentencePiece { .. } if byte_token(text).is_some() => (TokenKind::Byte, sentencepiece_bytes(text)),
            Style::SentencePiece { .. } => (TokenKind::Normal, sentencepiece_bytes(text)),
            Style::Other => (TokenKind::Normal, hf.decode(&[id as u32], false).unwrap_or_default().into_bytes()),
        };
    }
    let in_vocab = |id: &u32| (*id as usize) < n;
    let bos = bos.filter(in_vocab);
    let eos_ids: Vec<Option<u32>> = eos.iter().copied().filter(in_vocab).map(Some).collect();
    let eog = end_of_generation(&eos_ids, &mut kinds, |t| hf.token_to_id(t));
    // tokenizer.json files may add BOS/EOS themselves through their post-processor (Llama 3
    // does; its tokenizer_config.json does not say add_bos_token). Encoding through it is
    // what transformers does, so the post-processor is used whenever it adds anything.
    let probe = hf.encode_fast("", true).map(|e| e.get_ids().to_vec()).unwrap_or_default();
    let post_processor_adds = !probe.is_empty();
    let add_bos = (add_bos || (post_processor_adds && probe.first() == bos.as_ref())) && bos.is_some();
    let model = match hf.get_model() {
        ModelWrapper::BPE(_) => "BPE",
        ModelWrapper::WordPiece(_) => "WordPiece",
        ModelWrapper::WordLevel(_) => "WordLevel",
        ModelWrapper::Unigram(_) => "Unigram",
    };
    let kind = match style {
        Style::ByteLevel => format!("tokenizer.json ({model}, byte-level)"),
        Style::SentencePiece { .. } => format!("tokenizer.json ({model}, sentencepiece-style)"),
        Style::Other => format!("tokenizer.json ({model})"),
    };
    Tokenizer {
        hf,
        pieces,
        kinds,
        bos,
        eos: eos_ids.first().copied().flatten(),
        eog,
        add_bos,
        add_eos: false,
        post_processor_adds,
        strip_leading_space: matches!(style, Style::SentencePiece { strip: true }),
        kind,
    }
}
