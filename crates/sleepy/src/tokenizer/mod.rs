// Temporary stub: the tokenizer lands from its own branch. The signatures are the contract.
use crate::error::Result;
use crate::loader::gguf::GgufFile;

/// Kind of a vocabulary entry (GGUF `tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind { Normal, Unknown, Control, UserDefined, Unused, Byte }

pub struct Tokenizer;
impl Tokenizer {
    /// From GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(_f: &GgufFile) -> Result<Tokenizer> { Ok(Tokenizer) }
    /// From a Hugging Face tokenizer.json plus the BOS/EOS facts of the config files.
    pub fn from_hf(_t: tokenizers::Tokenizer, _bos: Option<u32>, _eos: Vec<u32>, _add_bos: bool) -> Tokenizer { Tokenizer }
    /// Text -> ids. Special/control tokens written in the text become single tokens. With
    /// `add_special`, BOS is prepended only when the model's files ask for it.
    pub fn encode(&self, _text: &str, _add_special: bool) -> Result<Vec<u32>> { todo!() }
    /// Ids -> text, control tokens left out.
    pub fn decode(&self, _ids: &[u32]) -> String { todo!() }
    /// Ids -> text, control tokens written out (`<|im_end|>`).
    pub fn decode_with_special(&self, _ids: &[u32]) -> String { todo!() }
    /// The raw bytes a token stands for (control tokens: empty).
    pub fn token_bytes(&self, _id: u32) -> Vec<u8> { todo!() }
    pub fn vocab_size(&self) -> usize { todo!() }
    pub fn bos_id(&self) -> Option<u32> { todo!() }
    pub fn eos_id(&self) -> Option<u32> { todo!() }
    /// End of generation: EOS, EOT, `<|im_end|>`, `<|endoftext|>`, `</s>` and the like.
    pub fn is_eog(&self, _id: u32) -> bool { todo!() }
    pub fn eog_ids(&self) -> Vec<u32> { todo!() }
    pub fn adds_bos(&self) -> bool { todo!() }
    pub fn token_id(&self, _text: &str) -> Option<u32> { todo!() }
    /// "gpt2 (qwen2)" style description for `sleepy info`.
    pub fn kind(&self) -> String { todo!() }
}

/// Streams text token by token without ever splitting a UTF-8 character.
pub struct StreamDecoder<'a> { _t: &'a Tokenizer }
impl<'a> StreamDecoder<'a> {
    pub fn new(t: &'a Tokenizer) -> Self { StreamDecoder { _t: t } }
    /// Like `new`, but control tokens are written out.
    pub fn with_special(t: &'a Tokenizer) -> Self { StreamDecoder { _t: t } }
    /// The text that became complete with this token (maybe empty).
    pub fn push(&mut self, _id: u32) -> String { todo!() }
    /// Whatever is left (invalid trailing bytes as U+FFFD).
    pub fn finish(&mut self) -> String { todo!() }
}
