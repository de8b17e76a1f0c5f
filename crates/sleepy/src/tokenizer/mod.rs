//! Text <-> token ids. The BPE itself is done by the `tokenizers` crate: a GGUF vocabulary is
//! turned into a `tokenizers::Tokenizer` (gguf.rs), a tokenizer.json is loaded as one (hf.rs).
//! Decoding is ours: every id has its raw bytes computed once (`pieces`), so decoding, token
//! bytes and the UTF-8-safe stream decoder (stream.rs) all agree byte for byte.

mod bytes;
mod gguf;
mod hf;
mod stream;

pub use bytes::byte_char as byte_level_char;
pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;
use std::collections::BTreeSet;

/// Kind of a vocabulary entry (GGUF `tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// Token texts that end generation when the vocabulary has them, as llama.cpp decides (by
/// name, since many files do not list their end-of-turn token in the metadata).
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    // Fill-in-the-middle padding, repository and file separators: a code model that emits
    // one has finished its answer (llama.cpp stops on them too).
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Names that end generation only where they are already control tokens: `</s>` is
/// SentencePiece's EOS, but an ordinary piece of HTML in some byte-level vocabularies (Qwen2).
const EOG_NAMES_IF_CONTROL: &[&str] = &["</s>"];

pub struct Tokenizer {
    hf: tokenizers::Tokenizer,
    /// Per id: the bytes the token stands for (control tokens: their text, written only on
    /// request).
    pieces: Vec<Vec<u8>>,
    kinds: Vec<TokenKind>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Whether `hf`'s own post-processor adds the special tokens (tokenizer.json); GGUF
    /// tokenizers have none and rely on `add_bos`/`add_eos`.
    post_processor_adds: bool,
    /// SentencePiece-style vocabularies write a space before the first word; decoding drops it.
    strip_leading_space: bool,
    kind: String,
}

impl Tokenizer {
    /// Whether a GGUF file carries a tokenizer at all (`tokenizer.ggml.model` present and not
    /// "none"); files without one run on token ids.
    pub fn gguf_has_tokenizer(f: &GgufFile) -> bool {
        !matches!(f.get_str("tokenizer.ggml.model"), None | Some("none"))
    }

    /// From GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
        gguf::from_gguf(f)
    }

    /// From a Hugging Face tokenizer.json plus the BOS/EOS facts of the config files.
    pub fn from_hf(t: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>, add_bos: bool) -> Tokenizer {
        hf::from_hf(t, bos, eos, add_bos)
    }

    /// Text -> ids. Special/control tokens written in the text become single tokens. With
    /// `add_special`, BOS is prepended only when the model's files ask for it.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let with_post = add_special && self.post_processor_adds;
        let enc = self.hf.encode_fast(text, with_post).map_err(|e| Error::Tokenizer(format!("could not encode text: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special {
            if let Some(bos) = self.bos.filter(|_| self.add_bos) {
                if ids.first() != Some(&bos) || !with_post {
                    ids.insert(0, bos);
                }
            }
            if let Some(eos) = self.eos.filter(|_| self.add_eos) {
                if ids.last() != Some(&eos) || !with_post {
                    ids.push(eos);
                }
            }
        }
        Ok(ids)
    }

    /// Ids -> text, control tokens left out. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, false)
    }

    /// Ids -> text, control tokens written out (`<|im_end|>`).
    pub fn decode_with_special(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, true)
    }

    fn decode_impl(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id, special));
        }
        let text = String::from_utf8_lossy(&bytes);
        match text.strip_prefix(' ').filter(|_| self.strip_leading_space) {
            Some(rest) => rest.to_string(),
            None => text.into_owned(),
        }
    }

    /// The bytes `id` contributes to decoded text: nothing for ids outside the vocabulary,
    /// unused slots, and control tokens unless `special`.
    fn piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        match self.kinds.get(i) {
            Some(TokenKind::Normal | TokenKind::UserDefined | TokenKind::Byte) => &self.pieces[i],
            Some(TokenKind::Control | TokenKind::Unknown) if special => &self.pieces[i],
            _ => &[],
        }
    }

    /// The raw bytes a token stands for (control tokens: empty).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.piece(id, false).to_vec()
    }

    /// The kind of a vocabulary entry (None outside the vocabulary).
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.kinds.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    /// End of generation: EOS, EOT, `<|im_end|>`, `<|endoftext|>`, `</s>` and the like.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }
    pub fn eog_ids(&self) -> Vec<u32> {
        self.eog.iter().copied().collect()
    }
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    /// The id of a token given its vocabulary text (`<|im_end|>`, or the byte-level form of
    /// a normal token).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.hf.token_to_id(text)
    }
    /// "gpt2 (qwen2)" style description for `sleepy info`.
    pub fn kind(&self) -> String {
        self.kind.clone()
    }
}

/// The end-of-generation set: the given ids (EOS, EOT, ...) plus every token named in
/// `EOG_NAMES`. Named tokens are also made control tokens, so they are never printed and are
/// matched as one token when written in a prompt (what llama.cpp does with them).
fn end_of_generation(explicit: &[Option<u32>], kinds: &mut [TokenKind], lookup: impl Fn(&str) -> Option<u32>) -> BTreeSet<u32> {
    let mut eog: BTreeSet<u32> = explicit.iter().flatten().copied().filter(|&id| (id as usize) < kinds.len()).collect();
    for name in EOG_NAMES {
        if let Some(id) = lookup(name).filter(|&id| (id as usize) < kinds.len()) {
            eog.insert(id);
            kinds[id as usize] = TokenKind::Control;
        }
    }
    for name in EOG_NAMES_IF_CONTROL {
        if let Some(id) = lookup(name).filter(|&id| kinds.get(id as usize) == Some(&TokenKind::Control)) {
            eog.insert(id);
        }
    }
    eog
}
