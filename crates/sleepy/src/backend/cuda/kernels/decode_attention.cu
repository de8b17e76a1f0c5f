// Decode attention for one new token, flash-decoding style, in one pass over K and V, with
// the Q/K norm, rope and the KV-cache write of the new token folded in.
//
// qkv [(H + 2 KVH) * D] f32 as the QKV projection wrote it (before norm and rope).
// kc, vc: this layer's cache [max_seq, KVH * D] bf16. step[0]: the new token's position.
// qn, kn: per-head norm weights [D] or null. inv_freq [rope_dims / 2] (unused when
// rope_dims == 0); style 0 rotates pairs (2j, 2j+1), style 1 (neox) pairs (j, j + rope_dims/2).
// Grid (H / HB, NC), block 128 (4 warps). Block (b, c) serves query heads b*HB .. b*HB+HB-1
// (one KV head) over chunk c of positions 0..pos. The chunk length is chosen at run time
// from pos (at least min_chunk), so short contexts use one block per head group and no merge.
// Inside a block, D/16 lanes share a position (16 dims each) and keep a running max, sum
// and 16 accumulators per head (online softmax); the 128/(D/16) slots merge in shared memory.
// min_chunk: the fewest positions a chunk has (a multiple of 32); a context shorter than
// twice that is one chunk.
// The first block of each KV head whose chunk holds pos writes the new K/V into the cache;
// blocks use their own copy for position pos.
// Before the dependency wait, everything that does not come from the previous kernel: the
// position (written before the step began), the rope cos/sin and norm weights of every dim,
// and the first batch of cached K/V (positions < pos, written by earlier steps). After it
// the critical path is one load of q/k/v, a warp-local norm and rope, and the dots.
// With several chunks: partials part [H, NC, D + 2] (acc, max, sum); counters [H / HB] are
// zero at rest; the last active block of a head group merges and resets its counter.
// Dynamic shared memory (floats): HB*D + 6D + 3*NSLOT*HB + 4 + NSLOT*HB*D + 2*HB*NC.

// Norm (when w), rope and scale of one head of D values in shared memory, by one warp.
// cs/sn: per-dim cosine and signed sine of the rotation (1 and 0 where dims do not rotate).
template <int D>
__device__ __forceinline__ void warp_norm_rope(float* h, const float* w, float eps, const float* cs,
                                               const float* sn, int rope_dims, int style, float scale,
                                               int lane) {
    constexpr int PER = D / 32;
    float v[PER];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        v[i] = h[lane + 32 * i];
        ss += v[i] * v[i];
    }
    if (w) {
        const float r = rsqrtf(warp_sum(ss) / (float)D + eps);
#pragma unroll
        for (int i = 0; i < PER; ++i) v[i] *= r * w[lane + 32 * i];
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) h[lane + 32 * i] = v[i];
    __syncwarp();
    const int half = rope_dims / 2;
    float o[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        int p = style == 0 ? d ^ 1 : (d < half ? d + half : d - half);
        if (d >= rope_dims) p = d;
        o[i] = (v[i] * cs[d] + h[p] * sn[d]) * scale;
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < PER; ++i) h[lane + 32 * i] = o[i];
    __syncwarp();
}

// Where one decode-attention block runs: query heads h0 .. h0 + HB - 1, chunk c of nc, its
// thread tid (0 .. 127), the named barrier its 128 threads share, and its shared memory. A
// kernel of its own (attn_decode_*) is one such block with barrier 0. The place, the named
// barriers and attn_decode_body's OWN and Wait served decode attention run inside the QKV
// projection's launch, several places a block (removed: slower on an H200 in every
// configuration measured). They stay: without them NVRTC 13.5 schedules these kernels
// differently (sm_90 SASS: other instruction orders and registers; even renaming the body
// does), and the kernels as they are are the ones measured.
struct AttnPlace {
    int h0, c, nc, tid, bar;
    float* sm;
};

// Barrier `bar` (0 to 5) of 128 threads. Constant ids: with a run-time id ptxas reserves all 16.
__device__ __forceinline__ void sync128(int bar) {
    switch (bar) {
    case 0: asm volatile("bar.sync 0, 128;" ::: "memory"); break;
    case 1: asm volatile("bar.sync 1, 128;" ::: "memory"); break;
    case 2: asm volatile("bar.sync 2, 128;" ::: "memory"); break;
    case 3: asm volatile("bar.sync 3, 128;" ::: "memory"); break;
    case 4: asm volatile("bar.sync 4, 128;" ::: "memory"); break;
    default: asm volatile("bar.sync 5, 128;" ::: "memory"); break;
    }
}

// ---- Tensor-core path of decode attention (MMA: from the switch at four heads a block, ops.rs).
//
// Why: at long contexts the scalar loop below runs at about a quarter of the memory bandwidth,
// bound by issue (scores by 8 lanes and shuffles, unpacking, a rescale each batch). Here each
// warp takes 16 cached positions at a time: S = Q K^T and O += P V by mma.m16n8k16 (bf16 in,
// f32 accumulate), the block's query heads as rows 0..HB-1 of the 16 (the rest zero).
// Q is split into bf16 high and low parts (two MMAs), so scores keep about 16 bits of Q; P
// too, so the weights keep about 16 bits; the cache is bf16 already.
// Fragments (PTX ISA, mma.m16n8k16 .bf16): lane = 4 g + t; A a0 = (row g, k 2t..2t+1),
// a1 = row g + 8, a2 = (row g, k 2t+8..2t+9), a3 = row g + 8; B b0 = (k 2t..2t+1, col g),
// b1 = k + 8; C c0..c1 = (row g, cols 2t..2t+1), c2..c3 = row g + 8.
// Each lane loads 16 bytes of a K or V row (8 dims), so the reduction index of S is permuted
// within each span of 32 dims the same way in Q's fragments and K's: of span sp, step st
// (two per span), k 2t..2t+1 is dim sp*32 + 8t + 4st and k 2t+8.. is dim sp*32 + 8t + 4st + 2.
// V comes transposed by movmatrix from the same 16-byte loads, word w (of 4) of span sp
// making n-tile (sp, w), whose column 2t + e is dim sp*32 + 8t + 2w + e.
__device__ __forceinline__ u32 bf16x2_rn(float lo, float hi) {
    u32 d;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#else
    d = 0u;  // unreachable: the MMA kernels exist from sm_80 (below)
#endif
    return d;
}
// x as bf16 high parts h and the rest r, each pair packed: x ~= h + r to about 16 bits.
__device__ __forceinline__ void bf16x2_split(float lo, float hi, u32& h, u32& r) {
    h = bf16x2_rn(lo, hi);
    const float2 hv = unpack2<0>(h);
    r = bf16x2_rn(lo - hv.x, hi - hv.y);
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], u32 a0, u32 a2, u32 b0, u32 b1) {
    // Rows 8..15 of A are zero (at most 8 query heads a block): a1 = a3 = 0.
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ u32 movmatrix_t(u32 x) {
    u32 y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}
__device__ __forceinline__ u32 word(const uint4& v, int w) { return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w; }

// A warp's tile of 16 cached positions from `base`: this lane's 16 bytes of each span of the
// K and V rows base + g (n-tile 0 of S; k rows 0..7 of P V) and base + 8 + g. Rows past the
// cache's end are zero (their scores are masked, and P V must not meet stale NaNs there).
// kb, vb: the cache at the chunk's first position and this KV head; kvd: a position's stride.
template <int D>
struct MmaTile {
    uint4 k0[D / 32], k1[D / 32], v0[D / 32], v1[D / 32];
};
// K or V (KV: 0 or 1) of the tile; mma_load_tile both.
template <int D, int KV>
__device__ __forceinline__ void mma_load_half(MmaTile<D>& tl, const u16* b, int kvd, int ncache, int base, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const bool r0 = base + g < ncache, r1 = base + 8 + g < ncache;
    const size_t o0 = (size_t)(base + g) * kvd + 8 * t, o1 = o0 + (size_t)8 * kvd;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int sp = 0; sp < D / 32; ++sp) {
        const uint4 x0 = r0 ? *(const uint4*)(b + o0 + sp * 32) : zero;
        const uint4 x1 = r1 ? *(const uint4*)(b + o1 + sp * 32) : zero;
        if constexpr (KV == 0) {
            tl.k0[sp] = x0;
            tl.k1[sp] = x1;
        } else {
            tl.v0[sp] = x0;
            tl.v1[sp] = x1;
        }
    }
}
template <int D>
__device__ __forceinline__ void mma_load_tile(MmaTile<D>& tl, const u16* kb, const u16* vb, int kvd, int ncache, int base, int lane) {
    mma_load_half<D, 0>(tl, kb, kvd, ncache, base, lane);
    mma_load_half<D, 1>(tl, vb, kvd, ncache, base, lane);
}

// One warp's share of the cached positions [0, ncache) of a chunk (tiles of 16 from 16 warp,
// strided by 64), as slot `warp` of the block's merge: its running max, sum and accumulators
// per head (sm_m, sm_l [slot * HB + g], sm_acc [(slot * HB + g) * D + d]). qs: the block's
// HB query heads, normed, roped and scaled. tl: the warp's first tile, loaded (before the
// dependency wait: earlier steps wrote it).
template <int D, int HB>
__device__ __forceinline__ void attn_mma_slot(const float* qs, MmaTile<D>& tl, const u16* kb, const u16* vb, int kvd, int ncache,
                                              int warp, int lane, float* sm_m, float* sm_l, float* sm_acc) {
    constexpr int SP = D / 32;
    static_assert(HB <= 8, "query heads a block fill rows 0..7");
    const int g = lane >> 2, t = lane & 3;
    u32 qh[SP][2][2], ql[SP][2][2];
#pragma unroll
    for (int sp = 0; sp < SP; ++sp)
#pragma unroll
        for (int st = 0; st < 2; ++st)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int d = sp * 32 + 8 * t + 4 * st + 2 * h;
                const float x0 = g < HB ? qs[g * D + d] : 0.f, x1 = g < HB ? qs[g * D + d + 1] : 0.f;
                bf16x2_split(x0, x1, qh[sp][st][h], ql[sp][st][h]);
            }
    float o[SP][4][4];
#pragma unroll
    for (int sp = 0; sp < SP; ++sp)
#pragma unroll
        for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[sp][w][e] = 0.f;
    float m = NEG_INF, l = 0.f;
    for (int base = warp * 16; base < ncache; base += 64) {
        // The next tile's K is loaded once this one's scores are taken, its V once this one's
        // P V is done, into the registers just freed (as the scalar loop does).
        const int next = base + 64;
        const uint4 (&k0)[SP] = tl.k0, (&k1)[SP] = tl.k1, (&v0)[SP] = tl.v0, (&v1)[SP] = tl.v1;
        float s0[4] = {0.f, 0.f, 0.f, 0.f}, s1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int st = 0; st < 2; ++st) {
                const u32 b00 = word(k0[sp], 2 * st), b01 = word(k0[sp], 2 * st + 1);
                const u32 b10 = word(k1[sp], 2 * st), b11 = word(k1[sp], 2 * st + 1);
                mma_bf16(s0, qh[sp][st][0], qh[sp][st][1], b00, b01);
                mma_bf16(s0, ql[sp][st][0], ql[sp][st][1], b00, b01);
                mma_bf16(s1, qh[sp][st][0], qh[sp][st][1], b10, b11);
                mma_bf16(s1, ql[sp][st][0], ql[sp][st][1], b10, b11);
            }
        if (next < ncache) mma_load_half<D, 0>(tl, kb, kvd, ncache, next, lane);
        // Row g's scores: positions base + 2t, +1 (tile 0) and base + 8 + 2t, +1 (tile 1).
        float s[4] = {s0[0], s0[1], s1[0], s1[1]};
        const int pj[4] = {base + 2 * t, base + 2 * t + 1, base + 8 + 2 * t, base + 9 + 2 * t};
        float mx = NEG_INF;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (pj[i] >= ncache) s[i] = NEG_INF;
            mx = fmaxf(mx, s[i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Position base is in the cache, so mx is finite.
        const float mn = fmaxf(m, mx), corr = __expf(m - mn);
        float p[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) p[i] = __expf(s[i] - mn);
        // This lane's share of the sum; the quad's shares add up after the loop.
        l = l * corr + (p[0] + p[1]) + (p[2] + p[3]);
        m = mn;
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                o[sp][w][0] *= corr;
                o[sp][w][1] *= corr;
            }
        u32 ph0, pl0, ph2, pl2;
        bf16x2_split(p[0], p[1], ph0, pl0);
        bf16x2_split(p[2], p[3], ph2, pl2);
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const u32 b0 = movmatrix_t(word(v0[sp], w)), b1 = movmatrix_t(word(v1[sp], w));
                mma_bf16(o[sp][w], ph0, ph2, b0, b1);
                mma_bf16(o[sp][w], pl0, pl2, b0, b1);
            }
        if (next < ncache) mma_load_half<D, 1>(tl, vb, kvd, ncache, next, lane);
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (g < HB) {
        if (t == 0) {
            sm_m[warp * HB + g] = m;
            sm_l[warp * HB + g] = l;
        }
        float* a = sm_acc + (size_t)(warp * HB + g) * D;
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                a[sp * 32 + 8 * t + 2 * w] = o[sp][w][0];
                a[sp * 32 + 8 * t + 2 * w + 1] = o[sp][w][1];
            }
    }
}

// OWN: a kernel of its own, whose PDL wait stands between what does not depend on the
// previous kernel and what does; else `wait()` stands there (called by every thread). Every
// kernel is OWN (see AttnPlace for why the parameters stay).
// MMA: the cached positions through attn_mma_slot (D of 64 or 128, OWN only).
template <int D, int HB, int UNR, bool OWN, bool MMA, class Wait>
__device__ __forceinline__ void attn_decode_body(const AttnPlace& pl, Wait wait, const float* __restrict__ qkv, u16* kc, u16* vc,
                                                  const int* __restrict__ step, int H, int KVH,
                                                  const float* qn, const float* kn, float eps,
                                                  const float* __restrict__ inv_freq, int rope_dims,
                                                  int style, float* part, u32* counters, float* out,
                                                  int min_chunk) {
    constexpr int LPP = D / 16;
    constexpr int PPW = 32 / LPP;
    constexpr int NSLOT = 4 * PPW;
    float* dec_sm = pl.sm;
    float* qs = dec_sm;
    float* kcur = qs + HB * D;
    float* vcur = kcur + D;
    float* cs = vcur + D;
    float* sn = cs + D;
    float* qnw = sn + D;
    float* knw = qnw + D;
    float* sm_m = knw + D;
    float* sm_l = sm_m + NSLOT * HB;
    float* sm_w = sm_l + NSLOT * HB;
    float* sm_M = sm_w + NSLOT * HB;
    float* sm_acc = sm_M + 4;
    float* wts = sm_acc + NSLOT * HB * D;
    __shared__ int is_last;

    const int tid = pl.tid, warp = tid >> 5, lane = tid & 31;
    // A kernel of its own syncs its block; a place, its 128 threads.
    const auto bsync = [&] {
        if (OWN) __syncthreads();
        else sync128(pl.bar);
    };
    // The position was written before this step's first kernel, so it is safe to read here.
    const int pos = step[0];
    const int NC = pl.nc, c = pl.c;
    const int len = pos + 1;
    int chunk = (len + NC - 1) / NC;
    chunk = max(min_chunk, (chunk + 31) & ~31);
    // A context shorter than two chunks is one: a short second chunk costs a merge of the
    // chunks for little work.
    if (len < 2 * min_chunk) chunk = len;
    const int nact = (len + chunk - 1) / chunk;
    const int c0 = c * chunk;
    // No positions: takes no part. Chunk 0 of every head group always waits below, so the
    // kernel still completes only after the previous one.
    if (c0 >= len) return;
    const int c1 = min(c0 + chunk, len);
    const bool has_cur = c1 == len;
    const int n = c1 - c0;
    const int ncache = has_cur ? n - 1 : n;
    const int h0 = pl.h0, G = H / KVH, kvh = h0 / G;
    const int kvd = KVH * D;

    const int sub = lane % LPP, slot = warp * PPW + lane / LPP;
    const u16* kbase = kc + (size_t)kvh * D + sub * 16;
    const u16* vbase = vc + (size_t)kvh * D + sub * 16;
    uint4 ka[UNR], kb[UNR], va[UNR], vb[UNR];
    // A batch: UNR positions of this lane group, K and V loaded apart (see the loop below).
    auto load_k = [&](int base) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int i = base + u * NSLOT + slot;
            if (i < ncache) {
                const size_t off = (size_t)(c0 + i) * kvd;
                ka[u] = *(const uint4*)(kbase + off);
                kb[u] = *(const uint4*)(kbase + off + 8);
            }
        }
    };
    auto load_v = [&](int base) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int i = base + u * NSLOT + slot;
            if (i < ncache) {
                const size_t off = (size_t)(c0 + i) * kvd;
                va[u] = *(const uint4*)(vbase + off);
                vb[u] = *(const uint4*)(vbase + off + 8);
            }
        }
    };
    // The first cached K/V (earlier steps wrote it) is on its way during what follows.
    MmaTile<D> tile;
    if constexpr (MMA) mma_load_tile<D>(tile, kc + (size_t)c0 * kvd + (size_t)kvh * D, vc + (size_t)c0 * kvd + (size_t)kvh * D, kvd, ncache, warp * 16, lane);
    else {
        load_k(0);
        load_v(0);
    }

    // Rope and norm tables for this position: cos, and the sine signed for the pair's order.
    for (int d = tid; d < D; d += 128) {
        float sv = 0.f, cv = 1.f;
        if (d < rope_dims) {
            const int half = rope_dims / 2;
            const int j = style == 0 ? d >> 1 : (d < half ? d : d - half);
            sincosf((float)pos * inv_freq[j], &sv, &cv);
            if (style == 0 ? (d & 1) == 0 : d < half) sv = -sv;
        }
        cs[d] = cv;
        sn[d] = sv;
        if (qn) qnw[d] = qn[d];
        if (kn) knw[d] = kn[d];
    }

    if (OWN) {
        pdl_wait();
        pdl_launch_next();
    } else {
        wait();
    }

    for (int i = tid; i < HB * D; i += 128) qs[i] = qkv[(size_t)h0 * D + i];
    if (has_cur) {
        const float* kraw = qkv + (size_t)H * D + (size_t)kvh * D;
        const float* vraw = qkv + (size_t)(H + KVH) * D + (size_t)kvh * D;
        for (int i = tid; i < D; i += 128) {
            kcur[i] = kraw[i];
            vcur[i] = vraw[i];
        }
    }
    bsync();
    if (warp < HB) warp_norm_rope<D>(qs + warp * D, qn ? qnw : nullptr, eps, cs, sn, rope_dims, style, rsqrtf((float)D), lane);
    if (has_cur && warp == (HB & 3)) {
        warp_norm_rope<D>(kcur, kn ? knw : nullptr, eps, cs, sn, rope_dims, style, 1.f, lane);
        const bool writer = (h0 % G) == 0;
        for (int d = lane; d < D; d += 32) {
            const u16 kb16 = f32_to_bf16(kcur[d]), vb16 = f32_to_bf16(vcur[d]);
            kcur[d] = bf16_to_f32(kb16);
            vcur[d] = bf16_to_f32(vb16);
            if (writer) {
                kc[(size_t)pos * kvd + (size_t)kvh * D + d] = kb16;
                vc[(size_t)pos * kvd + (size_t)kvh * D + d] = vb16;
            }
        }
    }
    bsync();

    if constexpr (MMA) {
        const size_t at = (size_t)c0 * kvd + (size_t)kvh * D;
        attn_mma_slot<D, HB>(qs, tile, kc + at, vc + at, kvd, ncache, warp, lane, sm_m, sm_l, sm_acc);
        // Slot 4: the new position (or nothing), its score in f32, warp g for head g.
        if (warp < HB) {
            float sc = 0.f;
            for (int d = lane; d < D; d += 32) sc += qs[warp * D + d] * kcur[d];
            sc = warp_sum(sc);
            if (lane == 0) {
                sm_m[4 * HB + warp] = has_cur ? sc : NEG_INF;
                sm_l[4 * HB + warp] = has_cur ? 1.f : 0.f;
            }
        }
        for (int i = tid; i < HB * D; i += 128) sm_acc[4 * HB * D + i] = has_cur ? vcur[i % D] : 0.f;
    } else {
        float qr[HB][16], acc[HB][16], m[HB], l[HB];
#pragma unroll
        for (int g = 0; g < HB; ++g) {
            m[g] = NEG_INF;
            l[g] = 0.f;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                qr[g][j] = qs[g * D + sub * 16 + j];
                acc[g][j] = 0.f;
            }
        }
        // One position into the running state of this lane group (s: score, v: this lane's dims).
        auto update = [&](const float (&s)[HB], const float (&v)[16]) {
#pragma unroll
            for (int g = 0; g < HB; ++g) {
                const float mn = fmaxf(m[g], s[g]);
                const float corr = __expf(m[g] - mn);
                const float p = __expf(s[g] - mn);
                l[g] = l[g] * corr + p;
#pragma unroll
                for (int j = 0; j < 16; ++j) acc[g][j] = acc[g][j] * corr + p * v[j];
                m[g] = mn;
            }
        };
        auto scores = [&](const float (&k)[16], float (&s)[HB]) {
#pragma unroll
            for (int g = 0; g < HB; ++g) {
                float t = 0.f;
#pragma unroll
                for (int j = 0; j < 16; ++j) t += qr[g][j] * k[j];
#pragma unroll
                for (int o = LPP / 2; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
                s[g] = t;
            }
        };
        for (int base = 0; base < ncache; base += NSLOT * UNR) {
            const int next = base + NSLOT * UNR;
            // The batch's UNR positions of this lane group: scores first, then one online-softmax
            // step for all of them (one rescale of the accumulators a batch, not one a position:
            // the dependent max -> exp -> rescale chain is what bounds this loop). The next
            // batch's K is loaded once this one's scores are taken, its V once this one's V is
            // summed: each load is in flight during half a batch's work, in the registers
            // that just freed (a long chunk no longer waits a full memory latency a batch).
            float s[UNR][HB];
#pragma unroll
            for (int u = 0; u < UNR; ++u) {
                float kf[16];
                const u32 kw[8] = {ka[u].x, ka[u].y, ka[u].z, ka[u].w, kb[u].x, kb[u].y, kb[u].z, kb[u].w};
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float2 a = unpack2<0>(kw[j]);
                    kf[2 * j] = a.x;
                    kf[2 * j + 1] = a.y;
                }
                scores(kf, s[u]); // every lane takes part in the shuffles
                if (base + u * NSLOT + slot >= ncache) {
#pragma unroll
                    for (int g = 0; g < HB; ++g) s[u][g] = NEG_INF;
                }
            }
            if (next < ncache) load_k(next);
            float p[HB][UNR];
#pragma unroll
            for (int g = 0; g < HB; ++g) {
                float mn = m[g];
#pragma unroll
                for (int u = 0; u < UNR; ++u) mn = fmaxf(mn, s[u][g]);
                // No position yet (only past the cache's end): every weight is exp(-inf) = 0.
                const float ref = mn == NEG_INF ? 0.f : mn;
                const float corr = __expf(m[g] - ref);
                float ps = 0.f;
#pragma unroll
                for (int u = 0; u < UNR; ++u) {
                    p[g][u] = __expf(s[u][g] - ref);
                    ps += p[g][u];
                }
                l[g] = l[g] * corr + ps;
#pragma unroll
                for (int j = 0; j < 16; ++j) acc[g][j] *= corr;
                m[g] = mn;
            }
#pragma unroll
            for (int u = 0; u < UNR; ++u) {
                if (base + u * NSLOT + slot >= ncache) continue; // v was not loaded
                const u32 vw[8] = {va[u].x, va[u].y, va[u].z, va[u].w, vb[u].x, vb[u].y, vb[u].z, vb[u].w};
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float2 b = unpack2<0>(vw[j]);
#pragma unroll
                    for (int g = 0; g < HB; ++g) {
                        acc[g][2 * j] = fmaf(p[g][u], b.x, acc[g][2 * j]);
                        acc[g][2 * j + 1] = fmaf(p[g][u], b.y, acc[g][2 * j + 1]);
                    }
                }
            }
            if (next < ncache) load_v(next);
        }
        if (has_cur && warp == 0) {
            float kf[16], vf[16], s[HB];
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                kf[j] = kcur[sub * 16 + j];
                vf[j] = vcur[sub * 16 + j];
            }
            scores(kf, s);
            if (slot == 0) update(s, vf);
        }
        // Merge the slots.
#pragma unroll
        for (int g = 0; g < HB; ++g) {
            if (sub == 0) {
                sm_m[slot * HB + g] = m[g];
                sm_l[slot * HB + g] = l[g];
            }
#pragma unroll
            for (int j = 0; j < 16; ++j) sm_acc[(slot * HB + g) * D + sub * 16 + j] = acc[g][j];
        }
    }
    bsync();
    // Slots written: the MMA path's warps and the new position fill 5.
    constexpr int MSLOT = MMA ? 5 : NSLOT;
    // Each slot's weight exp(m_s - M) per head, once (empty slots weigh 0).
    if (tid < MSLOT * HB) {
        const int g = tid % HB;
        float M = NEG_INF;
        for (int s = 0; s < MSLOT; ++s) M = fmaxf(M, sm_m[s * HB + g]);
        sm_w[tid] = sm_l[tid] == 0.f ? 0.f : __expf(sm_m[tid] - M);
        if (tid < HB) sm_M[tid] = M;
    }
    bsync();
    float* pbase = part + ((size_t)h0 * NC + c) * (D + 2);
    for (int i = tid; i < HB * D; i += 128) {
        const int g = i / D, d = i % D;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int s = 0; s < MSLOT; ++s) {
            const float w = sm_w[s * HB + g];
            L += sm_l[s * HB + g] * w;
            A += sm_acc[(s * HB + g) * D + d] * w;
        }
        if (nact == 1) {
            out[(size_t)(h0 + g) * D + d] = A / L;
        } else {
            float* pp = pbase + (size_t)g * NC * (D + 2);
            pp[d] = A;
            if (d == 0) {
                pp[D] = sm_M[g];
                pp[D + 1] = L;
            }
        }
    }
    if (nact == 1) return;
    // The last active block of this head group merges the chunks.
    __threadfence();
    bsync();
    if (tid == 0) is_last = atomicAdd(&counters[h0 / HB], 1u) == (u32)(nact - 1);
    bsync();
    if (!is_last) return;
    __threadfence();
    const float* gbase = part + (size_t)h0 * NC * (D + 2);
    // Every chunk's max and sum at once (one round trip to L2), then the weights from shared
    // memory: the merge is on the step's critical path, so no load waits on another.
    float* sums = wts + HB * NC;
    for (int i = tid; i < HB * nact; i += 128) {
        const int g = i / nact, k = i % nact;
        const float2 ml = __ldcg((const float2*)(gbase + ((size_t)g * NC + k) * (D + 2) + D));
        wts[i] = ml.x;
        sums[i] = ml.y;
    }
    bsync();
    if (tid < HB) {
        float M = NEG_INF, L = 0.f;
        for (int k = 0; k < nact; ++k) M = fmaxf(M, wts[tid * nact + k]);
        for (int k = 0; k < nact; ++k) {
            const float w = __expf(wts[tid * nact + k] - M);
            L += sums[tid * nact + k] * w;
            wts[tid * nact + k] = w;
        }
        for (int k = 0; k < nact; ++k) wts[tid * nact + k] /= L;
    }
    bsync();
    // Each (head, 4 dims) item is summed over the chunks by S threads, each taking every S-th
    // chunk, so all 128 threads have loads in flight; the S partial sums meet in shared memory
    // (sm_acc: the slots are merged by now).
    constexpr int ITEMS = HB * D / 4;
    constexpr int S = ITEMS >= 128 ? 1 : 128 / ITEMS;
    for (int i = tid; i < ITEMS * S; i += 128) {
        const int item = i % ITEMS, s0 = i / ITEMS;
        const int g = item / (D / 4), d = (item % (D / 4)) * 4;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
        const float* pg = gbase + (size_t)g * NC * (D + 2) + d;
#pragma unroll 8
        for (int k = s0; k < nact; k += S) {
            const float w = wts[g * nact + k];
            const float* q = pg + (size_t)k * (D + 2);
            // Rows are D + 2 floats long, so only 8-byte alignment is guaranteed.
            const float2 x = __ldcg((const float2*)q), y = __ldcg((const float2*)(q + 2));
            a.x += w * x.x;
            a.y += w * x.y;
            a.z += w * y.x;
            a.w += w * y.y;
        }
        if (S == 1) {
            float* o = out + (size_t)(h0 + g) * D + d;
            o[0] = a.x;
            o[1] = a.y;
            o[2] = a.z;
            o[3] = a.w;
        } else {
            ((float4*)sm_acc)[i] = a;
        }
    }
    if (S > 1) {
        bsync();
        for (int item = tid; item < ITEMS; item += 128) {
            float4 a = ((const float4*)sm_acc)[item];
#pragma unroll
            for (int s1 = 1; s1 < S; ++s1) {
                const float4 b = ((const float4*)sm_acc)[s1 * ITEMS + item];
                a.x += b.x;
                a.y += b.y;
                a.z += b.z;
                a.w += b.w;
            }
            const int g = item / (D / 4), d = (item % (D / 4)) * 4;
            float* o = out + (size_t)(h0 + g) * D + d;
            o[0] = a.x;
            o[1] = a.y;
            o[2] = a.z;
            o[3] = a.w;
        }
    }
    if (tid == 0) counters[h0 / HB] = 0u;
}

// Blocks an SM each variant is compiled to fit (the registers it may use); the host's
// attn_blocks_per_sm sizes the grid for at most as many.
#define DEC_BLOCKS_SM(HB) ((HB) == 4 ? 2 : (HB) == 2 ? 3 : 4)
#define ATTN_DECODE(D, HB, UNR)                                                                   \
    extern "C" __global__ void __launch_bounds__(128, DEC_BLOCKS_SM(HB)) attn_decode_##D##_##HB(  \
        const float* qkv, u16* kc, u16* vc, const int* step, int H, int KVH, const float* qn,      \
        const float* kn, float eps, const float* inv_freq, int rope_dims, int style, float* part,   \
        u32* counters, float* out, int min_chunk) {                                               \
        extern __shared__ float dec_sm[];                                                         \
        const AttnPlace pl = {(int)blockIdx.x * HB, (int)blockIdx.y, (int)gridDim.y, (int)threadIdx.x, 0, dec_sm}; \
        attn_decode_body<D, HB, UNR, true, false>(pl, [] {}, qkv, kc, vc, step, H, KVH, qn, kn, eps, \
                                                   inv_freq, rope_dims, style, part, counters, out, min_chunk); \
    }
ATTN_DECODE(64, 1, 4) ATTN_DECODE(64, 2, 4) ATTN_DECODE(64, 4, 2)
ATTN_DECODE(128, 1, 4) ATTN_DECODE(128, 2, 4) ATTN_DECODE(128, 4, 2)
ATTN_DECODE(256, 1, 4) ATTN_DECODE(256, 2, 4) ATTN_DECODE(256, 4, 2)

// The tensor-core path (attn_mma_slot), two blocks an SM: its registers (accumulators of 16
// rows, Q's fragments, a tile of K and V in flight) do not depend on HB.
#define ATTN_DECODE_MMA(D, HB)                                                                    \
    extern "C" __global__ void __launch_bounds__(128, 2) attn_decode_mma_##D##_##HB(              \
        const float* qkv, u16* kc, u16* vc, const int* step, int H, int KVH, const float* qn,      \
        const float* kn, float eps, const float* inv_freq, int rope_dims, int style, float* part,   \
        u32* counters, float* out, int min_chunk) {                                               \
        extern __shared__ float dec_sm[];                                                         \
        const AttnPlace pl = {(int)blockIdx.x * HB, (int)blockIdx.y, (int)gridDim.y, (int)threadIdx.x, 0, dec_sm}; \
        attn_decode_body<D, HB, 1, true, true>(pl, [] {}, qkv, kc, vc, step, H, KVH, qn, kn, eps,    \
                                               inv_freq, rope_dims, style, part, counters, out, min_chunk); \
    }
// bf16 MMA and cvt.rn.bf16x2 need sm_80; the host asks for these kernels only there.
#if __CUDA_ARCH__ >= 800
ATTN_DECODE_MMA(64, 1) ATTN_DECODE_MMA(64, 2) ATTN_DECODE_MMA(64, 4)
ATTN_DECODE_MMA(128, 1) ATTN_DECODE_MMA(128, 2) ATTN_DECODE_MMA(128, 4)
#endif
