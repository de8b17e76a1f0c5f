//! Streaming detokenization: text comes out token by token, and a UTF-8 character whose
//! bytes are spread over several tokens (emoji, CJK in byte-level BPE) is held back until
//! its last byte arrives, so what is printed is always whole characters.

use super::Tokenizer;

/// Streams text token by token without ever splitting a UTF-8 character.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    special: bool,
    /// Bytes of an incomplete character, waiting for the rest.
    pending: Vec<u8>,
    /// Whether any text has been emitted (the SentencePiece leading space is dropped once).
    started: bool,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(t: &'a Tokenizer) -> Self {
        StreamDecoder { tok: t, special: false, pending: Vec::new(), started: false }
    }

    /// Like `new`, but control tokens are written out.
    pub fn with_special(t: &'a Tokenizer) -> Self {
        StreamDecoder { special: true, ..Self::new(t) }
    }

    /// The text that became complete with this token (maybe empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tok.piece(id, self.special));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid` bytes were just checked, so the fallback never happens.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        // Bytes that can never become a character: one U+FFFD per bad
                        // sequence, as String::from_utf8_lossy does for one-shot decoding.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        self.emit(out)
    }

    /// Whatever is left (invalid trailing bytes as U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.emit(rest)
    }

    fn emit(&mut self, text: String) -> String {
        if self.started || text.is_empty() {
            return text;
        }
        self.started = true;
        match text.strip_prefix(' ').filter(|_| self.tok.strip_leading_space) {
            Some(rest) => rest.to_string(),
            None => text,
        }
    }
}
