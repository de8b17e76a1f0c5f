//! Top-k of the logits on the GPU for sampling (Backend::top_k_last): a 152K-token row stays
//! on the device and k (id, logit) pairs come back (SLEEPY_TOP_K_GPU=0 copies the row). On an
//! H200 (BENCHMARKS.md, session 15), `sleepy bench -p 0 -n 128 --temp 0.8`: Qwen3-0.6B 1.099 ->
//! 0.811 ms a token, Qwen3-4B q4_k 1.729 -> 1.401.

use super::driver::{self, kargs};
use super::{CudaAct, CudaBackend};
use crate::error::Result;
use std::sync::atomic::Ordering;

/// Keys a block of `topk` (kernels/misc.cu) sorts at once.
const SPAN: usize = 4096;
/// The largest k selected on the device: each launch then cuts its input at least 16-fold.
pub(super) const MAX_K: usize = 256;

impl CudaBackend {
    /// Whether sampling selects its top-k here (default; SLEEPY_TOP_K_GPU=0 not; tests set it).
    pub fn set_top_k_on_device(&self, on: bool) {
        self.top_k_on_device.store(on, Ordering::Relaxed);
    }

    pub(super) fn top_k_last_row(&self, x: &CudaAct, k: usize) -> Result<Option<Vec<(u32, f32)>>> {
        if !self.top_k_on_device.load(Ordering::Relaxed) || k == 0 || k > MAX_K || x.rows == 0 || x.cols == 0 {
            return Ok(None);
        }
        self.flush()?;
        let row = x.ptr() + ((x.rows - 1) * x.cols * 4) as u64;
        // Launches alternate between two buffers, the first sized for the first launch's
        // output, the second for the second's; later outputs are smaller.
        let first = x.cols.div_ceil(SPAN) * k;
        let bufs = [self.buffer(first * 8)?, self.buffer(first.div_ceil(SPAN) * k * 8)?];
        let (mut n, mut src, mut launch) = (x.cols, 0u64, 0);
        loop {
            let blocks = n.div_ceil(SPAN);
            let out = bufs[launch % 2].buf.as_ref().map_or(0, |b| b.ptr);
            let input = if launch == 0 { row } else { 0 };
            self.launch("topk", [blocks as u32, 1, 1], [1024, 1, 1], 0, kargs![input, src, n as i32, k as i32, out])?;
            (n, src, launch) = (blocks * k, out, launch + 1);
            if blocks == 1 {
                break;
            }
        }
        let keys: Vec<u64> = driver::download(src, k, self.stream.0)?;
        Ok(Some(keys.into_iter().filter(|&key| key != 0).map(from_key).collect()))
    }
}

/// The (id, value) of a key of kernels/misc.cu's `topk_key`.
fn from_key(key: u64) -> (u32, f32) {
    let b = (key >> 32) as u32;
    let bits = if b & 0x8000_0000 != 0 { b & 0x7fff_ffff } else { !b };
    (u32::MAX - key as u32, f32::from_bits(bits))
}

#[cfg(test)]
mod tests {
    /// The kernel's key, written again on the host: its order is the sampler's, and it decodes.
    fn key(v: f32, i: u32) -> u64 {
        if !v.is_finite() {
            return 0;
        }
        let b = v.to_bits();
        let b = if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 };
        ((b as u64) << 32) | (u32::MAX - i) as u64
    }

    #[test]
    fn keys_order_as_the_sampler_and_decode() {
        let vals = [f32::MIN, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::MAX];
        for (a, &x) in vals.iter().enumerate() {
            for &i in &[0u32, 7, 151_935] {
                assert_eq!(super::from_key(key(x, i)), (i, x));
                assert!(key(x, i) > 0);
                // Later in the list is larger; a lower id wins a tie.
                for &y in &vals[a + 1..] {
                    assert!(key(y, i) > key(x, 0), "{y} over {x}");
                }
                assert!(key(x, i) > key(x, i + 1));
            }
        }
        assert_eq!(key(f32::NAN, 3), 0);
        assert_eq!(key(f32::INFINITY, 3), 0);
    }
}
