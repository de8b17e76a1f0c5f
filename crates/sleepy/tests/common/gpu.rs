//! Helpers shared by the GPU test binaries (included with `#[path]`): the device or a skip
//! line, and the relative error every GPU-vs-CPU comparison uses.
#![allow(dead_code)]

use sleepy::backend::cuda::CudaBackend;
use sleepy::loader::{TensorRef, TensorSource};
use std::collections::HashMap;
use std::sync::Mutex;

/// GPU tests of one binary run one at a time (one device, memory-heavy).
pub static GPU_LOCK: Mutex<()> = Mutex::new(());

/// The CUDA backend, or None after printing a skip line (no GPU or driver: CI).
pub fn gpu(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("SKIP {test}: no usable CUDA device ({e})");
            None
        }
    }
}

/// ||a - b|| / ||b||, with a non-finite GPU value failing.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite GPU output");
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    let e = rel_err(gpu, cpu);
    eprintln!("{what}: relative error {e:.2e} (limit {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:.3e} over {tol:.0e}");
}

/// Tensors a test built in memory, by GGUF name.
pub struct MemSource(pub HashMap<String, TensorRef>);

impl TensorSource for MemSource {
    fn tensor(&self, name: &str) -> Option<TensorRef> {
        self.0.get(name).cloned()
    }
}
