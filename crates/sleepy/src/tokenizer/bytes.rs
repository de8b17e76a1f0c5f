//! Token text -> the bytes it stands for, for the two ways vocabularies write bytes:
//! byte-level BPE (GPT-2's reversible byte <-> printable character map) and SentencePiece
//! (`▁` for a space, `<0xAB>` for a raw byte).

/// The character byte-level BPE writes for byte `b`: printable Latin-1 bytes stand for
/// themselves, the other 68 (controls, space, DEL, NBSP, soft hyphen) are moved, in order,
/// to U+0100 onwards so every byte has a visible, unambiguous character.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return b as char;
    }
    let moved = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + moved).unwrap_or('\u{FFFD}') // 0x100..0x144: always valid
}

/// Inverse of `byte_char`, as a lookup from code point (below 0x144) to byte.
pub struct ByteLevelTable {
    byte_of: Vec<Option<u8>>,
}

impl ByteLevelTable {
    pub fn new() -> Self {
        let mut byte_of = vec![None; 0x144];
        for b in 0..=255u8 {
            byte_of[byte_char(b) as usize] = Some(b);
        }
        ByteLevelTable { byte_of }
    }

    /// The bytes of a byte-level token. Characters outside the map (a token written as
    /// plain text) keep their own UTF-8 bytes rather than being lost.
    pub fn decode(&self, token: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(token.len());
        for c in token.chars() {
            match self.byte_of.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    }
}

/// `<0xAB>` -> the byte 0xAB.
pub fn byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes of a SentencePiece token: `▁` is a space, byte tokens are their byte.
pub fn sentencepiece_bytes(token: &str) -> Vec<u8> {
    match byte_token(token) {
        Some(b) => vec![b],
        None => token.replace('\u{2581}', " ").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_is_gpt2s() {
        // Known anchors of the GPT-2 map: space is 'Ġ' (U+0120), newline 'Ċ' (U+010A),
        // NUL U+0100, NBSP U+0142, soft hyphen U+0143.
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(0), '\u{100}');
        assert_eq!(byte_char(0xA0), '\u{142}');
        assert_eq!(byte_char(0xAD), '\u{143}');
        assert_eq!(byte_char(b'a'), 'a');
        let t = ByteLevelTable::new();
        let all: String = (0..=255u8).map(byte_char).collect();
        assert_eq!(t.decode(&all), (0..=255u8).collect::<Vec<_>>());
        assert_eq!(t.decode("ĠhelloĊ"), b" hello\n");
    }

    #[test]
    fn sentencepiece_pieces() {
        assert_eq!(sentencepiece_bytes("▁the"), b" the");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("<0x0G>"), b"<0x0G>");
        assert_eq!(byte_token("<0xFF>"), Some(255));
    }
}
