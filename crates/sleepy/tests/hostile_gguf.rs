//! Truncated or corrupted GGUF files give an error that names what is wrong, never a panic.

mod common;

use sleepy::engine::ModelFiles;
use std::path::Path;

fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let result = std::panic::catch_unwind(|| ModelFiles::open(&path).map(|_| ()).map_err(|e| e.to_string()));
    match result {
        Ok(r) => r,
        Err(_) => panic!("{name}: opening panicked"),
    }
}

#[test]
fn truncated_and_corrupted_files_give_clear_errors() {
    let real = std::fs::read(common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let dir = std::env::temp_dir().join(format!("sleepy-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Truncations: inside the header, the metadata, the tensor table and the data.
    for (i, cut) in [0usize, 3, 10, 23, 1000, 100_000, 2_000_000, real.len() / 2, real.len() - 1].into_iter().enumerate() {
        let err = open_bytes(&dir, &format!("cut{i}.gguf"), &real[..cut]).expect_err("truncated file accepted");
        assert!(
            err.contains("truncated") || err.contains("end") || err.contains("magic") || err.contains("past") || err.contains("absurd"),
            "cut at {cut}: unhelpful error: {err}"
        );
    }

    let mut bad = real.clone();
    bad[..4].copy_from_slice(b"GGUX");
    assert!(open_bytes(&dir, "magic.gguf", &bad).unwrap_err().contains("magic"));

    let mut bad = real.clone();
    bad[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert!(open_bytes(&dir, "version.gguf", &bad).unwrap_err().contains("version"));

    let mut bad = real.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_bytes(&dir, "count.gguf", &bad).unwrap_err().contains("absurd"));

    // The first metadata key's length made huge.
    let mut bad = real.clone();
    bad[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(open_bytes(&dir, "keylen.gguf", &bad).unwrap_err().contains("length"));

    // Random byte flips all over the header region never panic (they may or may not error).
    let mut state = 0x9e3779b97f4a7c15u64;
    for i in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bad = real[..real.len().min(4_000_000)].to_vec();
        let at = 8 + (state as usize) % 1_500_000;
        bad[at] ^= (state >> 32) as u8 | 1;
        let _ = open_bytes(&dir, &format!("flip{i}.gguf"), &bad);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
