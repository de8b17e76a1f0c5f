//! The chat template stored in each real GGUF model (`tokenizer.chat_template`) renders a
//! conversation to exactly the ChatML text the model was trained on, and that text
//! tokenizes with its markers as single special tokens.

mod common;

use sleepy::chat::{ChatTemplate, Message};
use sleepy::engine::ModelFiles;

fn conversation(system: Option<&str>) -> Vec<Message> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(Message::new("system", s));
    }
    m.push(Message::new("user", "What is 2+2?"));
    m.push(Message::new("assistant", "2+2 is 4."));
    m.push(Message::new("user", "And times 3?"));
    m
}

fn check(file: &str, want_without_system: &str, want_with_system: &str) {
    let files = ModelFiles::open(&common::model_path(file)).unwrap();
    let tok = files.tokenizer().unwrap();
    let text = |id: Option<u32>| id.map(|i| tok.decode_with_special(&[i])).unwrap_or_default();
    let src = files.chat_template.as_deref().expect("the model has a chat template");
    let template = ChatTemplate::new(src, &text(tok.bos_id()), &text(tok.eos_id())).unwrap();

    assert_eq!(template.render(&conversation(None), true).unwrap(), want_without_system, "{file}");
    let rendered = template.render(&conversation(Some("Answer briefly.")), true).unwrap();
    assert_eq!(rendered, want_with_system, "{file}");

    // Without the generation prompt the text ends after the last user turn.
    let closed = template.render(&conversation(Some("Answer briefly.")), false).unwrap();
    assert_eq!(closed, want_with_system.strip_suffix("<|im_start|>assistant\n").unwrap(), "{file}");

    // Each marker is one token: 5 turns open and 4 close.
    let ids = tok.encode(&rendered, false).unwrap();
    let count = |t: &str| {
        let id = tok.token_id(t).unwrap();
        ids.iter().filter(|&&i| i == id).count()
    };
    assert_eq!((count("<|im_start|>"), count("<|im_end|>")), (5, 4), "{file}");
    assert_eq!(tok.decode_with_special(&ids), rendered, "{file}");
}

#[test]
fn smollm2_template_renders_chatml() {
    // Without a system message, SmolLM2's template writes its own.
    check(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n2+2 is 4.<|im_end|>\n\
         <|im_start|>user\nAnd times 3?<|im_end|>\n\
         <|im_start|>assistant\n",
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n2+2 is 4.<|im_end|>\n\
         <|im_start|>user\nAnd times 3?<|im_end|>\n\
         <|im_start|>assistant\n",
    );
}

#[test]
fn qwen25_template_renders_chatml() {
    // Qwen's default system prompt; a given system message replaces it (and is not
    // repeated by the loop over messages).
    check(
        "qwen2.5-coder-0.5b-instruct.gguf",
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n2+2 is 4.<|im_end|>\n\
         <|im_start|>user\nAnd times 3?<|im_end|>\n\
         <|im_start|>assistant\n",
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n2+2 is 4.<|im_end|>\n\
         <|im_start|>user\nAnd times 3?<|im_end|>\n\
         <|im_start|>assistant\n",
    );
}
