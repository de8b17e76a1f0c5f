//! Decode and prefill attention on the GPU: how a KV cache splits the work over blocks (heads
//! a block, chunks of positions, the tensor-core or scalar kernels) and the launches.

use super::driver::{kargs, DevBuf};
use super::ops::env_count;
use super::{AttnSplit, CudaAct, CudaBackend, CudaKv};
use crate::backend::{AttnShape, Rope};
use crate::config::{ModelConfig, RopeStyle};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

pub(super) fn attn_dims(s: &AttnShape) -> Result<()> {
    if ![64, 128, 256].contains(&s.head_dim) {
        return Err(Error::Cuda(format!("head_dim {} is not supported by the GPU attention kernels (64, 128, 256 are)", s.head_dim)));
    }
    if s.n_kv_heads == 0 || s.n_heads % s.n_kv_heads != 0 {
        return Err(Error::Cuda(format!("{} query heads do not group over {} KV heads", s.n_heads, s.n_kv_heads)));
    }
    Ok(())
}

/// Query heads per decode-attention block: two where the group size is a multiple of 4, else
/// one (each KV head's K/V is then read by group / heads blocks, from L2 after the first).
/// Fewer heads a block keep fewer accumulators (ptxas, before the launch bounds below: 254
/// registers a thread at 4 heads, 167 at 2, 128 at 1), so more blocks fit an SM to hide the
/// kernel's latency: on an H200, Qwen3-4B (group 4) ran 2.420 -> 2.344 ms a token and 2.903
/// -> 2.769 at depth 4096 with two heads instead of four (one: 2.330 and 2.827), and
/// Qwen3-0.6B (group 2) 0.747 -> 0.717 with one instead of two.
fn heads_per_block(group: usize) -> usize {
    if group % 4 == 0 { 2 } else { 1 }
}

/// Below this many positions decode attention runs one query head a block whatever the rule
/// above picks: short contexts are bound by each block's latency, not by K/V reads. On an
/// H200 (BENCHMARKS.md, session 11), tg128 of Qwen3-4B at two heads a block against one, from
/// depth 0: q4_k 1.299 / 1.256 ms, bf16 2.362 / 2.335; from 512: q4_k 1.473 / 1.437; from
/// 1024: q4_k 1.547 / 1.528, bf16 2.609 / 2.603; from 2048: q4_k 1.650 / 1.651, bf16 2.698 /
/// 2.737 (and at 4096, session 6: 2.769 / 2.827).
const SHORT_CTX: usize = 1024;

/// The tensor-core decode attention (attn_decode_mma_*) exists for heads of 64 or 128 from
/// sm_80 (bf16 MMA).
fn mma_fits(arch: (i32, i32), head_dim: usize) -> bool {
    arch.0 >= 8 && (head_dim == 64 || head_dim == 128)
}

/// Decode-attention blocks an SM that the chunk count aims at, over all head groups, at `hb`
/// heads a block. The kernels are compiled to fit 2, 3 and 4 blocks an SM at 4, 2 and 1 heads
/// (`__launch_bounds__` with DEC_BLOCKS_SM in kernels/decode_attention.cu: at most 255, 168
/// and 128 registers a thread); at two heads fewer, longer chunks measured faster once the
/// loop loaded ahead and the merge of chunks was quick: on an H100, Qwen3-4B tg128 from
/// depth 4096 took 3.364 ms at two blocks an SM against 3.388 at three (BENCHMARKS.md,
/// session 17).
fn attn_blocks_per_sm(hb: usize) -> usize {
    match hb {
        4 | 2 => 2,
        _ => 4,
    }
}

/// Whether a context of one chunk (shorter than two minimum chunks) at one head a block on
/// the scalar kernels runs on attn_decode_one_* (one block a head, up to 8 positions a lane
/// group loaded before the dependency wait) rather than on the split's kernel. Its effect
/// follows the kernel after it, not the model's heads: on an H100 (BENCHMARKS.md, sessions 22
/// and 27), tg128 against the split's kernel, it gains where the output projection runs the
/// streamed GEMV (Qwen3-4B bf16 2.971 -> 2.933 ms, q8_0 1.806 -> 1.786) and loses where it
/// runs the register kernel (Qwen3-4B q4_k 1.333 -> 1.362, Qwen3-0.6B 0.708 -> 0.717, q8_0
/// 0.528 -> 0.534). So that is the default (`o_streams`); SLEEPY_ATTN_ONE=1|0 (`env`) forces it.
/// It fits the shapes the table and the tuner pick, not every shape: Qwen3-0.6B q8_0 with its
/// output projection forced onto the streamed kernel lost with it (0.555 -> 0.563 ms).
fn one_block_a_head(hb: usize, mma: bool, env: Option<usize>, o_streams: bool) -> bool {
    hb == 1 && !mma && env.map_or(o_streams, |n| n > 0)
}

impl CudaBackend {
    /// Decode attention over the cache with Q/K norm and rope folded in (`rope` None: qkv is
    /// already normed and roped).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attn_decode(&self, qkv: &CudaAct, kv: &CudaKv, layer: usize, pos: usize, s: AttnShape, rope: Option<(&Rope, Option<(&CudaAct, &CudaAct, f32)>)>, out: &mut CudaAct) -> Result<()> {
        let d = s.head_dim;
        let step = self.set_pos(pos)?;
        let (freqs, rope_dims, style, qn, kn, eps) = match rope {
            Some((r, norm)) => {
                let f = self.rope_freqs(&r.inv_freqs)?;
                let (qn, kn, eps) = norm.map_or((0, 0, 0.0), |(q, k, e)| (q.ptr(), k.ptr(), e));
                (f, r.dims as i32, if r.style == RopeStyle::Interleaved { 0 } else { 1 }, qn, kn, eps)
            }
            None => (0, 0, 0, 0, 0, 0.0),
        };
        let split = if pos < kv.short_ctx { kv.short } else { kv.long };
        let hb = split.heads_per_block;
        // A context the kernel keeps in one chunk (shorter than two minimum chunks), at one head
        // a block on the scalar kernels: see one_block_a_head.
        let one = pos + 1 < 2 * kv.min_chunk && hb == 1 && !split.mma && split.one;
        let chunks = if one { 1 } else { split.chunks };
        let slots = 2048 / d;
        // Layout in kernels/decode_attention.cu.
        let floats = hb * d + 6 * d + 3 * slots * hb + 4 + slots * hb * d;
        let layer_off = (layer * kv.max_seq * kv.kv_dim * 2) as u64;
        let args = kargs![
            qkv.ptr(),
            kv.k.ptr + layer_off,
            kv.v.ptr + layer_off,
            step,
            s.n_heads as i32,
            s.n_kv_heads as i32,
            qn,
            kn,
            eps,
            freqs,
            rope_dims,
            style,
            kv.part.ptr,
            kv.counters.ptr,
            out.ptr(),
            kv.min_chunk as i32
        ];
        let mma = split.mma; // new_kv_split: heads of 64 or 128 only
        let key = 2 << 40 | (one as u64) << 33 | (mma as u64) << 32 | (d as u64) << 8 | hb as u64;
        let name = || match (mma, one) {
            (true, _) => format!("attn_decode_mma_{d}_{hb}"),
            (false, true) => format!("attn_decode_one_{d}"),
            _ => format!("attn_decode_{d}_{hb}"),
        };
        self.launch_keyed(key, &name, [(s.n_heads / hb) as u32, chunks as u32, 1], [128, 1, 1], (floats * 4) as u32, args)?;
        self.note_attn()
    }

    /// Prefill: store K/V of the (roped) rows, then causal attention of every row.
    pub(super) fn attn_prefill(&self, qkv: &CudaAct, kv: &CudaKv, layer: usize, pos0: usize, s: AttnShape, out: &mut CudaAct) -> Result<()> {
        let d = s.head_dim;
        let t = qkv.rows;
        let layer_off = (layer * kv.max_seq * kv.kv_dim * 2) as u64;
        let (kc, vc) = (kv.k.ptr + layer_off, kv.v.ptr + layer_off);
        let (h, kvh) = (s.n_heads as i32, s.n_kv_heads as i32);
        self.launch("kv_store", [t as u32, 1, 1], [256, 1, 1], 0, kargs![qkv.ptr(), kc, vc, h, kvh, d as i32, pos0 as i32])?;
        let args = kargs![qkv.ptr(), kc, vc, out.ptr(), t as i32, h, kvh, pos0 as i32];
        // Tensor cores where the heads fit them (kernels/prefill_attention.cu): 64 rows a block.
        if mma_fits(self.gpu.info.arch, d) {
            let smem = (2 * 64 * (d + 8) * 2) as u32;
            return self.launch(&format!("attn_prefill_mma_{d}"), [t.div_ceil(64) as u32, s.n_heads as u32, 1], [128, 1, 1], smem, args);
        }
        let smem = (4 * (16 * d + 2 * 32 * (d + 4))) as u32;
        self.launch(&format!("attn_prefill_{d}"), [t.div_ceil(16) as u32, s.n_heads as u32, 1], [128, 1, 1], smem, args)
    }

    /// A KV cache whose decode attention runs `hb` query heads a block (1, 2 or 4, dividing
    /// the group size) and splits the positions into `chunks` blocks a head group at most;
    /// None: the rule (heads_per_block, and as many blocks an SM as fit, with one head a block
    /// before position `short_ctx`, SHORT_CTX when None). Tests use this to run the kernel
    /// variants a model's rule would not pick, long chunks at short contexts, and the switch.
    pub fn new_kv_split(&self, cfg: &ModelConfig, max_seq: usize, hb: Option<usize>, chunks: Option<usize>, short_ctx: Option<usize>) -> Result<CudaKv> {
        let s = AttnShape { n_heads: cfg.n_heads, n_kv_heads: cfg.n_kv_heads, head_dim: cfg.head_dim };
        attn_dims(&s)?;
        let kv_dim = cfg.kv_dim();
        let max_seq = max_seq.max(1);
        let cache_bytes = cfg.n_layers * max_seq * kv_dim * 2;
        let group = cfg.n_heads / cfg.n_kv_heads;
        // SLEEPY_ATTN_HB and SLEEPY_ATTN_BLOCKS_SM override the rule, to measure (one split at
        // every position); SLEEPY_ATTN_SHORT moves the rule's switch (0: none).
        let env_hb = if hb.is_none() { env_count("SLEEPY_ATTN_HB")? } else { None };
        let from_env = env_hb.is_some();
        let fixed = hb.is_some() || from_env;
        let hb = hb.or(env_hb).unwrap_or(heads_per_block(group));
        if ![1, 2, 4].contains(&hb) || group % hb != 0 {
            let what = if from_env { format!("SLEEPY_ATTN_HB={hb}") } else { format!("{hb} query heads a decode-attention block") };
            return Err(Error::Cuda(format!("{what}: must be 1, 2 or 4 and divide this model's {group} query heads a KV head")));
        }
        let per_sm_env = env_count("SLEEPY_ATTN_BLOCKS_SM")?;
        // The fewest positions a chunk holds: longer chunks spare short contexts the merge of
        // chunks and cost longer ones their spread over blocks. On an H200 (tg128 from depth
        // 0 / 512), 64 -> 128 took Qwen3-0.6B 0.710 -> 0.684 ms but 0.787 -> 0.801 at 512,
        // and Qwen3-4B 2.508 -> 2.538 at 512; 256: 0.873 and 2.649 at 512. 64 stays, and
        // the kernel keeps a context under two chunks (128) in one: 0.6B tg128 0.708 ->
        // 0.697 ms, 0.6B q8_0 0.540 -> 0.520, Qwen3-4B 2.363 -> 2.370.
        let min_chunk = env_count("SLEEPY_ATTN_MIN_CHUNK")?.unwrap_or(64);
        if min_chunk == 0 || min_chunk % 32 != 0 {
            return Err(Error::Cuda(format!("SLEEPY_ATTN_MIN_CHUNK={min_chunk}: must be a positive multiple of 32")));
        }
        // From the switch on, the tensor-core kernels where they exist and a block takes four
        // query heads (SLEEPY_ATTN_MMA=1: at any group size, as many heads a block as divide
        // it; SLEEPY_ATTN_MMA=0: never; a fixed head count, from a test or SLEEPY_ATTN_HB,
        // keeps the scalar kernels unless SLEEPY_ATTN_MMA=1), one block an SM: fewer, longer
        // chunks spare the merge. On an H100 (BENCHMARKS.md, session 18), tg128 against the
        // scalar kernels (two heads a block, two blocks an SM) from depth 1024 / 2048 / 4096:
        // Qwen3-4B (four heads a KV head) 3.206 / 3.245 / 3.364 -> 3.151 / 3.216 / 3.339 ms;
        // Qwen3-0.6B (two) 0.871 / 0.923 / 0.974 -> 0.872 / 0.910 / 1.004, so not there.
        let mma = env_count("SLEEPY_ATTN_MMA")?.map_or(!fixed && group % 4 == 0, |n| n > 0) && mma_fits(self.gpu.info.arch, cfg.head_dim);
        let hb = if mma && !fixed { [4, 2, 1].into_iter().find(|h| group % h == 0).unwrap_or(1) } else { hb };
        let one_env = env_count("SLEEPY_ATTN_ONE")?;
        let split = |hb: usize, chunks: Option<usize>, mma: bool| {
            let per_sm = per_sm_env.unwrap_or(if mma { 1 } else { attn_blocks_per_sm(hb) }).max(1);
            let chunks = chunks.unwrap_or((per_sm * self.gpu.info.sms as usize).div_ceil(cfg.n_heads / hb)).clamp(1, max_seq.div_ceil(min_chunk));
            let one = one_block_a_head(hb, mma, one_env, self.o_streams.load(Ordering::Relaxed));
            AttnSplit { heads_per_block: hb, chunks, mma, one }
        };
        // SLEEPY_ATTN_CHUNKS=N: the long split's chunks a head group (to measure).
        let long = split(hb, chunks.or(env_count("SLEEPY_ATTN_CHUNKS")?.filter(|&n| n > 0)), mma);
        let short_ctx = if fixed || (hb == 1 && !mma) { 0 } else { match short_ctx { Some(n) => n, None => env_count("SLEEPY_ATTN_SHORT")?.unwrap_or(SHORT_CTX) } };
        let short = if short_ctx > 0 { split(1, chunks, false) } else { long };
        let most_chunks = long.chunks.max(short.chunks);
        Ok(CudaKv {
            max_seq,
            kv_dim,
            k: DevBuf::alloc(cache_bytes)?,
            v: DevBuf::alloc(cache_bytes)?,
            part: DevBuf::alloc(cfg.n_heads * most_chunks * (cfg.head_dim + 2) * 4)?,
            // A counter a head group, for the split of the most groups (one head a block).
            counters: DevBuf::zeroed(cfg.n_heads / short.heads_per_block.min(long.heads_per_block) * 4, self.stream.0)?,
            short,
            long,
            short_ctx,
            min_chunk,
        })
    }

    pub(super) fn check_fits(&self, kv: &CudaKv, pos0: usize, t: usize) -> Result<()> {
        if pos0 + t > kv.max_seq {
            return Err(Error::Other(format!("sequence of {} tokens does not fit the context of {}", pos0 + t, kv.max_seq)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::one_block_a_head;

    #[test]
    fn one_block_a_head_where_the_output_projection_streams() {
        // The default follows the output projection's kernel.
        assert!(!one_block_a_head(1, false, None, false));
        assert!(one_block_a_head(1, false, None, true));
        // SLEEPY_ATTN_ONE forces it either way.
        assert!(!one_block_a_head(1, false, Some(0), true));
        assert!(one_block_a_head(1, false, Some(1), false));
        // Never at more heads a block or on tensor cores.
        assert!(!one_block_a_head(2, false, Some(1), true));
        assert!(!one_block_a_head(1, true, Some(1), true));
    }
}
