//! Decode attention folded into the QKV projection's launch (kernels/decode_attention.cu,
//! qkv_attention_tail): when it applies, and the launch's extra argument and shared memory.
//! The GEMV launches themselves (gemv_shaped, gemvq_shaped) take a `Fold`.

use super::driver;
use super::gemv::GemvShape;
use super::quant::QuantShape;
use super::ops::{attn_dims, check, StreamPlan};
use super::quant::SegKind;
use super::{CudaAct, CudaBackend, CudaKv, CudaWeight, FOLD_ARGS};
use crate::backend::{AttnShape, Rope};
use crate::config::RopeStyle;
use crate::error::Result;

/// Below this position decode attention runs inside the QKV projection's launch
/// (kernels/decode_attention.cu, qkv_attention_tail): once a query head's rows are written,
/// 128 threads of one of the launch's blocks run its attention, with no kernel boundary
/// between them. They walk all the head's positions, 32 a round trip to memory, where the
/// kernel of its own splits them over chunks: past a few round trips that costs more than the
/// boundary it saves (about 5 us a layer, BENCHMARKS.md session 9). Written without a GPU to
/// run it: off until measured. SLEEPY_ATTN_FOLD=N folds below position N (128 predicted to
/// pay); the GPU tests fold explicitly (CudaKv::set_fold_ctx).
pub(super) const FOLD_CTX: usize = 0;

/// A QKV launch with decode attention folded in: its AttnArgs' device address, and the head
/// size (the shared memory it needs).
pub(super) struct Fold {
    pub(super) args: u64,
    head_dim: usize,
}

impl Fold {
    /// Dynamic shared memory a block of `threads` threads needs for the attention: a place
    /// of fold_place_floats (kernels/decode_attention.cu) for each 128 of them; None under 128.
    pub(super) fn smem(&self, threads: u32) -> Option<u32> {
        let d = self.head_dim;
        let slots = 2048 / d;
        let place = ((7 * d + 3 * slots + 5 + slots * d).next_multiple_of(32) * 4) as u32;
        (threads >= 128).then_some(threads / 128 * place)
    }
}

/// A register-kernel shape of fewer than 128 threads a block (which cannot run a head) as
/// blocks of 128, with the same threads an SM: rows a block and blocks an SM. Qwen3-0.6B's
/// bf16 QKV runs 1 row of 32 threads, 16 blocks an SM; folding, 4 rows, 4 blocks.
fn fold_block(streamed: bool, threads_per_row: u32, rows_per_block: u32, blocks_per_sm: u32) -> (u32, u32) {
    if streamed || threads_per_row * rows_per_block >= 128 || 128 % threads_per_row != 0 {
        return (rows_per_block, blocks_per_sm);
    }
    let rows = 128 / threads_per_row;
    (rows, (blocks_per_sm * rows_per_block / rows).max(1))
}

fn fold_rows(s: GemvShape) -> GemvShape {
    let (rows_per_block, blocks_per_sm) = fold_block(s.streamed, s.threads_per_row, s.rows_per_block, s.blocks_per_sm);
    GemvShape { rows_per_block, blocks_per_sm, ..s }
}

/// Kernel arguments with one more at the end (a folded launch's AttnArgs).
pub(super) fn with_arg((mut a, n): ([u64; 16], usize), v: u64) -> ([u64; 16], usize) {
    a[n] = v;
    (a, n + 1)
}

impl CudaBackend {
    /// A folded streamed launch's plan and shared memory (None: the folded kernel does not
    /// run it). `plan(b)`: the launch's plan at b blocks an SM, asked at `bps` first. The
    /// folded kernel also holds the attention's registers: where fewer of its blocks fit an SM,
    /// it takes the plan of that many (fewer, larger blocks).
    pub(super) fn fold_stream_plan(&self, key: u64, name: &dyn Fn() -> String, f: &Fold, bps: u32, plan: &dyn Fn(u32) -> Option<StreamPlan>) -> Option<(StreamPlan, u32)> {
        let mut b = bps;
        loop {
            let p = plan(b)?;
            let smem = p.smem.max(f.smem(p.threads - 32)?);
            let fit = self.blocks_per_sm(key, name, p.threads, smem).unwrap_or(0);
            if fit >= b {
                return Some((p, smem));
            }
            if fit == 0 {
                return None;
            }
            b = fit;
        }
    }

    /// A folded register-kernel launch's dynamic shared memory (`base`, or what the attention
    /// needs if more), where the folded kernel (`fold`) fits as many blocks an SM as the plain
    /// one (`plain`, with `base`) up to the shape's `bps`; None where it does not.
    pub(super) fn fold_register_smem(&self, f: &Fold, fold: (u64, &dyn Fn() -> String), plain: (u64, &dyn Fn() -> String), threads: u32, base: u32, bps: u32) -> Option<u32> {
        let smem = base.max(f.smem(threads)?);
        let fit = self.blocks_per_sm(fold.0, fold.1, threads, smem).unwrap_or(0);
        let want = bps.min(self.blocks_per_sm(plain.0, plain.1, threads, base).ok()?);
        (fit >= want.max(1)).then_some(smem)
    }

    /// The decoder's steps 2-3 (Backend::norm_qkv_attention) as one launch, where they can
    /// be: one token, heads of 64 or 128, at most 64 query heads, a weight of one format, and
    /// a launch gemv_shaped / gemvq_shaped can fold into. False: nothing launched.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fold_qkv_attention(&self, x: &CudaAct, norm: &CudaAct, eps: f32, w: &CudaWeight, bias: Option<&CudaAct>, qkv: &CudaAct, kv: &mut CudaKv, layer: usize, pos: usize, s: AttnShape, qk_norm: Option<(&CudaAct, &CudaAct, f32)>, rope: &Rope, out: &CudaAct) -> Result<bool> {
        let d = s.head_dim;
        // Positions below 2^20: the attention runs one chunk for any context shorter than twice
        // the smallest chunk it is given (kernels/decode_attention.cu, fold_head).
        if x.rows != 1 || !matches!(d, 64 | 128) || s.n_heads > 64 || layer >= kv.fold_written.len() || pos >= 1 << 20 {
            return Ok(false);
        }
        attn_dims(&s)?;
        let q_dim = s.n_heads * d;
        check(x.cols == w.k && norm.cols == w.k && qkv.rows == 1 && qkv.cols == w.n && w.n == q_dim + 2 * kv.kv_dim, "norm_qkv_attention")?;
        check(out.rows == 1 && out.cols == q_dim && kv.kv_dim == s.n_kv_heads * d, "attention")?;
        check(rope.dims <= d && rope.inv_freqs.len() * 2 >= rope.dims, "rope")?;
        self.check_fits(kv, pos, 1)?;
        let seg = match w.quant.as_deref() {
            None => None,
            Some(q) => match q.segs.as_slice() {
                [one] => Some(one),
                _ => return Ok(false),
            },
        };
        let step = self.set_pos(pos)?;
        let freqs = self.rope_freqs(&rope.inv_freqs)?;
        let (qn, kn, qk_eps) = qk_norm.map_or((0, 0, 0.0), |(q, k, e)| (q.ptr(), k.ptr(), e));
        let layer_off = (layer * kv.max_seq * kv.kv_dim * 2) as u64;
        let style = if rope.style == RopeStyle::Interleaved { 0u64 } else { 1 };
        let pair = |a: usize, b: u64| a as u64 | b << 32;
        let args: [u64; FOLD_ARGS] = [
            kv.k.ptr + layer_off,
            kv.v.ptr + layer_off,
            step,
            qn,
            kn,
            freqs,
            qkv.ptr(),
            out.ptr(),
            kv.fold_counters.ptr,
            pair(s.n_heads, s.n_kv_heads as u64),
            pair(d, rope.dims as u64),
            style | (qk_eps.to_bits() as u64) << 32,
        ];
        // Written in stream order before the launches that read it; rewritten only when this
        // layer's differ (another scratch, say), so a step replayed as a graph finds its own.
        let at = kv.fold_args.ptr + (layer * FOLD_ARGS * 8) as u64;
        if kv.fold_written[layer] != Some(args) {
            driver::upload(at, &args, self.stream.0)?;
            kv.fold_written[layer] = Some(args);
        }
        let fold = Fold { args: at, head_dim: d };
        let normed = Some((norm.ptr(), eps));
        let bias = bias.map_or(0, |b| b.ptr());
        let first = self.recorded()?;
        let folded = match seg.map(|g| (g.kind, g.regions)) {
            None => {
                let sh = fold_rows(self.dense_shape(w.dt, w.n, w.k, true, 0));
                self.gemv_shaped(w.buf.ptr, w.dt, w.n, w.k, &sh, x.ptr(), 1, normed, bias, 0, qkv.ptr(), w.n, Some(&fold))?
            }
            Some((SegKind::Bf16, r)) => {
                let sh = fold_rows(self.dense_shape(0, w.n, w.k, true, 0));
                self.gemv_shaped(r[0], 0, w.n, w.k, &sh, x.ptr(), 1, normed, bias, 0, qkv.ptr(), w.n, Some(&fold))?
            }
            Some((SegKind::Quant(f), r)) => {
                let sh = self.quant_shape(f, w.n, w.k, true, 0);
                let (rows_per_block, blocks_per_sm) = fold_block(sh.streamed, sh.threads_per_row, sh.rows_per_block, sh.blocks_per_sm);
                let sh = QuantShape { rows_per_block, blocks_per_sm, ..sh };
                self.gemvq_shaped(f, &r, w.n, w.k, &sh, x.ptr(), 1, normed, bias, 0, qkv.ptr(), w.n, Some(&fold))?
            }
        };
        if folded {
            self.folds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.note_gemv(first)?;
        }
        Ok(folded)
    }

}

#[cfg(test)]
mod tests {
    use super::fold_block;

    #[test]
    fn small_blocks_fold_as_blocks_of_128_with_the_same_threads_an_sm() {
        // Qwen3-0.6B's bf16 QKV (1 row x 32 threads, 16 blocks an SM).
        assert_eq!(fold_block(false, 32, 1, 16), (4, 4));
        // 2 rows x 16 threads, 4 an SM: 8 rows, one block.
        assert_eq!(fold_block(false, 16, 2, 4), (8, 1));
        // Blocks of 128 or more, streamed shapes and rows of threads that do not divide 128
        // keep their shape.
        assert_eq!(fold_block(false, 64, 2, 4), (2, 4));
        assert_eq!(fold_block(true, 8, 8, 2), (8, 2));
        assert_eq!(fold_block(false, 96, 1, 4), (1, 4));
    }
}
