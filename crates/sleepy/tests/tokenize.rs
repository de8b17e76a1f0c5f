//! The tokenizer against llama.cpp's ids (tests/data/dev_tokenize.json, recorded from
//! llama.cpp on the same GGUF files), decode round trips, the streaming decoder against
//! one-shot decoding, special tokens, and hostile ids and metadata.

mod common;

use sleepy::loader::gguf::GgufFile;
use sleepy::tokenizer::{StreamDecoder, TokenKind, Tokenizer};
use std::collections::HashMap;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct.gguf";

fn tokenizer(name: &str) -> Tokenizer {
    let gguf = GgufFile::open(&common::model_path(name)).unwrap();
    Tokenizer::from_gguf(&gguf).unwrap()
}

/// Texts with characters spread over several byte-level tokens.
const MULTI_BYTE: &[&str] = &[
    "Ünïcödé: café, naïve, 日本語, 😀👍",
    "🦀 Rust 🚀🚀 and 👨‍👩‍👧‍👦 family, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "中文分词测试：我们在北京。한국어 텍스트. Ελληνικά. עברית. العربية",
    "mixed\u{a0}spaces\u{3000}ideographic\u{2028}separator\ttab",
];

/// A small xorshift generator seeded from the clock: fresh inputs on every run, and the seed
/// printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn ids_match_llama_cpp() {
    let cases = common::data("dev_tokenize.json");
    let cases = cases.as_array().expect("array of cases");
    let (smol, qwen) = (tokenizer(SMOL), tokenizer(QWEN));
    let mut checked = 0;
    for c in cases {
        let tok = match c["model"].as_str().unwrap() {
            SMOL => &smol,
            QWEN => &qwen,
            other => panic!("unexpected model {other}"),
        };
        let prompt = c["prompt"].as_str().unwrap();
        let want: Vec<u32> = c["prompt_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(prompt, true).unwrap(), want, "{}: {prompt:?}", c["model"]);
        // Round trip: control tokens come back only when asked for.
        assert_eq!(tok.decode_with_special(&want), prompt, "{}: decode of {prompt:?}", c["model"]);
        checked += 1;
    }
    assert_eq!(checked, 22);
}

#[test]
fn facts_of_both_models() {
    let smol = tokenizer(SMOL);
    assert_eq!(smol.vocab_size(), 49152);
    assert_eq!(smol.kind(), "gpt2 (smollm)");
    assert_eq!((smol.bos_id(), smol.eos_id(), smol.adds_bos()), (Some(1), Some(2), false));
    // <|endoftext|>, <|im_end|>, and <reponame> (a fill-in-the-middle repository marker).
    assert_eq!(smol.eog_ids(), vec![0, 2, 4]);
    let qwen = tokenizer(QWEN);
    assert_eq!(qwen.vocab_size(), 151936);
    assert_eq!(qwen.kind(), "gpt2 (qwen2)");
    assert_eq!((qwen.bos_id(), qwen.eos_id(), qwen.adds_bos()), (Some(151643), Some(151645), false));
    // <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>.
    assert_eq!(qwen.eog_ids(), vec![151643, 151645, 151662, 151663, 151664]);
    assert!(qwen.is_eog(151645) && !qwen.is_eog(151644) && !qwen.is_eog(u32::MAX));
    assert_eq!(qwen.token_kind(151657), Some(TokenKind::UserDefined));
    assert_eq!(qwen.token_kind(151665), Some(TokenKind::Unused));
}

#[test]
fn specials_in_text_are_single_tokens() {
    for (name, start, end, eot) in [(SMOL, 1, 2, 0), (QWEN, 151644, 151645, 151643)] {
        let tok = tokenizer(name);
        assert_eq!(tok.token_id("<|im_start|>"), Some(start));
        assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![start]);
        let ids = tok.encode("a<|im_end|><|endoftext|>b<|im_start|>", false).unwrap();
        assert_eq!(ids.len(), 5, "{name}: {ids:?}");
        assert_eq!((ids[1], ids[2], ids[4]), (end, eot, start));
        // Control tokens are left out of plain decoding and of token bytes.
        assert_eq!(tok.decode(&ids), "ab");
        assert!(tok.token_bytes(end).is_empty());
        assert_eq!(tok.decode_with_special(&[end]), "<|im_end|>");
        // A broken special is ordinary text.
        assert!(tok.encode("<|im_end", false).unwrap().len() > 1);
    }
    // Qwen's user-defined <tool_call> is one token too, and is printed.
    let qwen = tokenizer(QWEN);
    let ids = qwen.encode("<tool_call>{}</tool_call>", false).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 1]), (151657, 151658));
    assert_eq!(qwen.decode(&ids), "<tool_call>{}</tool_call>");
}

#[test]
fn decode_round_trips() {
    for name in [SMOL, QWEN] {
        let tok = tokenizer(name);
        for text in MULTI_BYTE.iter().copied().chain(["", " ", "\n\n", "fn main() {\n    println!(\"hi\");\n}\n"]) {
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(tok.decode(&ids), text, "{name}");
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
            assert_eq!(bytes, text.as_bytes(), "{name}: token bytes of {text:?}");
        }
    }
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut d = StreamDecoder::new(tok);
    let mut out = String::new();
    let mut held = 0;
    for &id in ids {
        let piece = d.push(id);
        if piece.is_empty() && !tok.token_bytes(id).is_empty() {
            held += 1;
        }
        out += &piece;
    }
    out += &d.finish();
    (out, held)
}

#[test]
fn stream_decoder_equals_one_shot_decode() {
    let mut rng = Rng::new();
    for name in [SMOL, QWEN] {
        let tok = tokenizer(name);
        let mut held_total = 0;
        for text in MULTI_BYTE {
            let ids = tok.encode(text, false).unwrap();
            let (streamed, held) = stream(&tok, &ids);
            assert_eq!(streamed, *text, "{name}");
            held_total += held;
        }
        // Characters really were split across tokens, so the hold-back path ran.
        assert!(held_total > 0, "{name}: no character was split across tokens");

        // Random token sequences, including bytes that never form a character: streaming
        // gives exactly what one-shot decoding gives (U+FFFD in the same places).
        let n = tok.vocab_size();
        for _ in 0..300 {
            let len = 1 + rng.below(12);
            let ids: Vec<u32> = (0..len).map(|_| rng.below(n) as u32).collect();
            assert_eq!(stream(&tok, &ids).0, tok.decode(&ids), "{name}: {ids:?}");
        }
        // A character cut off at the end comes out as U+FFFD from finish().
        let split = ["😀", "🧿", "𝔘", "\u{10348}"].iter().map(|c| tok.encode(c, false).unwrap()).find(|ids| ids.len() > 1);
        let split = split.unwrap_or_else(|| panic!("{name}: no test character spans several tokens"));
        let mut d = StreamDecoder::new(&tok);
        assert_eq!(d.push(split[0]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        // with_special writes control tokens out.
        let mut d = StreamDecoder::with_special(&tok);
        let im_end = tok.token_id("<|im_end|>").unwrap();
        assert_eq!(d.push(im_end), "<|im_end|>");
    }
}

/// The plain BPE definition, as a reference for the tokenizers crate: start from the
/// byte-level characters of a pre-token and merge the adjacent pair of lowest merge rank
/// (leftmost among equals) until no pair has a rank.
fn reference_bpe(word: &str, ranks: &HashMap<(String, String), usize>, vocab: &HashMap<String, u32>) -> Vec<u32> {
    let mut syms: Vec<String> = word.bytes().map(|b| sleepy::tokenizer::byte_level_char(b).to_string()).collect();
    loop {
        let best = (0..syms.len().saturating_sub(1))
            .filter_map(|i| ranks.get(&(syms[i].clone(), syms[i + 1].clone())).map(|&r| (r, i)))
            .min();
        let Some((_, i)) = best else { break };
        let right = syms.remove(i + 1);
        syms[i].push_str(&right);
    }
    syms.iter().map(|s| vocab[s]).collect()
}

#[test]
fn bpe_matches_a_naive_reference_on_random_words() {
    // Words of letters only, separated by single spaces: every pre-tokenizer here splits them
    // the same way ("w1", " w2", " w3"), so the reference needs no regex.
    let letters: Vec<char> = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéèàüöñçßжзийкщ日本語中文字한국어ñøå".chars().collect();
    let mut rng = Rng::new();
    for name in [SMOL, QWEN] {
        let gguf = GgufFile::open(&common::model_path(name)).unwrap();
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        let strs = |key: &str| -> Vec<String> {
            gguf.get(key).unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
        };
        let vocab: HashMap<String, u32> = strs("tokenizer.ggml.tokens").into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        let mut ranks = HashMap::new();
        for (r, m) in strs("tokenizer.ggml.merges").into_iter().enumerate() {
            let (a, b) = m.split_once(' ').unwrap();
            ranks.entry((a.to_string(), b.to_string())).or_insert(r);
        }
        for _ in 0..300 {
            let words: Vec<String> = (0..1 + rng.below(6)).map(|_| (0..1 + rng.below(10)).map(|_| letters[rng.below(letters.len())]).collect()).collect();
            let text = words.join(" ");
            let mut want = Vec::new();
            for (i, w) in words.iter().enumerate() {
                let piece = if i == 0 { w.clone() } else { format!(" {w}") };
                want.extend(reference_bpe(&piece, &ranks, &vocab));
            }
            assert_eq!(tok.encode(&text, false).unwrap(), want, "{name}: {text:?}");
        }
    }
}

#[test]
fn ids_outside_the_vocabulary_are_skipped() {
    let tok = tokenizer(SMOL);
    let hello = tok.encode("Hello", false).unwrap();
    let mut ids = vec![u32::MAX, 49152, 1 << 30];
    ids.extend(&hello);
    assert_eq!(tok.decode(&ids), "Hello");
    assert_eq!(tok.decode_with_special(&ids), "Hello");
    assert!(tok.token_bytes(u32::MAX).is_empty());
    assert_eq!(tok.token_kind(49152), None);
    let mut d = StreamDecoder::new(&tok);
    assert_eq!(d.push(u32::MAX), "");
    assert_eq!(d.finish(), "");
}

// ---- hostile metadata: a minimal GGUF with only tokenizer keys ----

enum Meta<'a> {
    Str(&'a str),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn write_gguf(path: &std::path::Path, kv: &[(&str, Meta)]) {
    let mut b = Vec::new();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        string(&mut b, k);
        match v {
            Meta::Str(s) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, s);
            }
            Meta::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                b.extend(7u32.to_le_bytes());
                b.push(*x as u8);
            }
            Meta::Strs(list) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((list.len() as u64).to_le_bytes());
                for s in list {
                    string(&mut b, s);
                }
            }
            Meta::I32s(list) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((list.len() as u64).to_le_bytes());
                for x in list {
                    b.extend(x.to_le_bytes());
                }
            }
        }
    }
    std::fs::write(path, b).unwrap();
}

/// A tiny byte-level vocabulary: the 256 byte characters, "ab", and two specials.
fn tiny_vocab() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| sleepy::tokenizer::byte_level_char(b).to_string()).collect();
    tokens.push("ab".into());
    tokens.push("<|im_end|>".into());
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1; 257];
    types.extend([3, 3]);
    (tokens, types)
}

fn open_tiny(dir: &std::path::Path, name: &str, kv: &[(&str, Meta)]) -> Result<Tokenizer, String> {
    let path = dir.join(name);
    write_gguf(&path, kv);
    let gguf = GgufFile::open(&path).map_err(|e| e.to_string())?;
    std::panic::catch_unwind(|| Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())).unwrap_or_else(|_| panic!("{name}: panicked"))
}

#[test]
fn invalid_metadata_gives_clear_errors() {
    let dir = std::env::temp_dir().join(format!("sleepy-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tokens, types) = tiny_vocab();
    let model = ("tokenizer.ggml.model", Meta::Str("gpt2"));
    let merges = || ("tokenizer.ggml.merges", Meta::Strs(vec!["a b".into()]));

    // The well-formed file works: merges apply, specials split, unknown pre falls back.
    let tok = open_tiny(&dir, "ok.gguf", &[model, ("tokenizer.ggml.pre", Meta::Str("no-such-pre")), ("tokenizer.ggml.tokens", Meta::Strs(tokens.clone())), ("tokenizer.ggml.token_type", Meta::I32s(types.clone())), merges(), ("tokenizer.ggml.eos_token_id", Meta::U32(257))]).unwrap();
    assert_eq!(tok.encode("ab<|im_end|>", true).unwrap(), vec![256, 257]);
    assert!(tok.kind().contains("unknown pre-tokenizer 'no-such-pre'"), "{}", tok.kind());
    assert_eq!(tok.eog_ids(), vec![257, 258]);

    let model = || ("tokenizer.ggml.model", Meta::Str("gpt2"));
    let toks = || ("tokenizer.ggml.tokens", Meta::Strs(tokens.clone()));
    let cases: Vec<(&str, Vec<(&str, Meta)>, &str)> = vec![
        ("types.gguf", vec![model(), toks(), ("tokenizer.ggml.token_type", Meta::I32s(vec![1; 3])), merges()], "token_type has 3 entries"),
        ("nomerges.gguf", vec![model(), toks()], "merges is missing"),
        ("badmerge.gguf", vec![model(), toks(), ("tokenizer.ggml.merges", Meta::Strs(vec!["ab".into()]))], "merge #0"),
        ("oovmerge.gguf", vec![model(), toks(), ("tokenizer.ggml.merges", Meta::Strs(vec!["x yz".into()]))], "bad merges"),
        ("eos.gguf", vec![model(), toks(), merges(), ("tokenizer.ggml.eos_token_id", Meta::U32(9999))], "outside the vocabulary"),
        ("dup.gguf", vec![model(), ("tokenizer.ggml.tokens", Meta::Strs(vec!["a".into(), "a".into()])), merges()], "appears twice"),
        ("notstr.gguf", vec![model(), ("tokenizer.ggml.tokens", Meta::Bool(true)), merges()], "not an array"),
        ("spm.gguf", vec![("tokenizer.ggml.model", Meta::Str("llama")), toks()], "not supported"),
    ];
    for (name, kv, want) in cases {
        let err = open_tiny(&dir, name, &kv).err().unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(err.contains(want), "{name}: {err}");
    }

    // A GGUF without a tokenizer opens as a model that runs on ids.
    let path = dir.join("none.gguf");
    write_gguf(&path, &[("tokenizer.ggml.model", Meta::Str("none"))]);
    assert!(!Tokenizer::gguf_has_tokenizer(&GgufFile::open(&path).unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- tokenizer.json (from_hf): byte-level and SentencePiece-style decoders ----

fn hf_tokenizer(json: serde_json::Value) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap()
}

fn added(id: u32, content: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
}

/// Post-processor that puts `<s>`-like token `bos` (id `id`) in front, as Llama 3's does.
fn bos_template(bos: &str, id: u32) -> serde_json::Value {
    serde_json::json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}})
}

#[test]
fn tokenizer_json_byte_level() {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(sleepy::tokenizer::byte_level_char(b).to_string(), (b as u32).into());
    }
    vocab.insert("ab".into(), 256.into());
    vocab.insert("<|begin_of_text|>".into(), 257.into());
    vocab.insert("<|eot_id|>".into(), 258.into());
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let hf = hf_tokenizer(serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(257, "<|begin_of_text|>"), added(258, "<|eot_id|>")],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": bos_template("<|begin_of_text|>", 257),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": ["a b"]}
    }));
    // add_bos_token not given (as in Llama 3's tokenizer_config.json): the post-processor adds it.
    let tok = Tokenizer::from_hf(hf, Some(257), vec![258], false);
    assert!(tok.adds_bos());
    assert_eq!(tok.kind(), "tokenizer.json (BPE, byte-level)");
    assert_eq!(tok.encode("ab", true).unwrap(), vec![257, 256]);
    assert_eq!(tok.encode("ab<|eot_id|>", false).unwrap(), vec![256, 258]);
    assert_eq!(tok.eog_ids(), vec![258]);
    for text in MULTI_BYTE {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids), *text);
        assert_eq!(stream(&tok, &ids).0, *text);
    }
    assert_eq!(tok.decode_with_special(&[257, 256]), "<|begin_of_text|>ab");
}

#[test]
fn tokenizer_json_sentencepiece_style() {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), (i as u32).into());
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
    }
    for (i, t) in ["▁", "h", "i", "▁h", "▁hi"].iter().enumerate() {
        vocab.insert(t.to_string(), (259 + i as u32).into());
    }
    let hf = hf_tokenizer(serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null, "post_processor": bos_template("<s>", 1),
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": ["▁ h", "▁h i"]}
    }));
    let tok = Tokenizer::from_hf(hf, Some(1), vec![2], true);
    assert_eq!(tok.kind(), "tokenizer.json (BPE, sentencepiece-style)");
    // "hi 😀": the emoji is not in the vocabulary and falls back to its four byte tokens.
    let ids = tok.encode("hi 😀", true).unwrap();
    assert_eq!(ids, vec![1, 263, 259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80]);
    assert_eq!(tok.token_kind(3 + 0xF0), Some(TokenKind::Byte));
    assert_eq!(tok.decode(&ids), "hi 😀");
    assert_eq!(stream(&tok, &ids).0, "hi 😀");
    assert!(tok.is_eog(2) && tok.adds_bos());
}
