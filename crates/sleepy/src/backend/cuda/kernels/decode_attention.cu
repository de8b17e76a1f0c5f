// Decode attention for one new token, flash-decoding style, in one pass over K and V, with
// the Q/K norm, rope and the KV-cache write of the new token folded in.
// The scalar loop and the merge of chunks are here; the tensor-core loop over the cached
// positions is in decode_attention_mma.cu (compiled just before this file).
//
// qkv [(H + 2 KVH) * D] f32 as the QKV projection wrote it (before norm and rope).
// kc, vc: this layer's cache [max_seq, KVH * D] bf16. step[0]: the new token's position.
// qn, kn: per-head norm weights [D] or null. inv_freq [rope_dims / 2] (unused when
// rope_dims == 0); style 0 rotates pairs (2j, 2j+1), style 1 (neox) pairs (j, j + rope_dims/2).
// Grid (H / HB, NC), block 128 (4 warps). Block (b, c) serves query heads b*HB .. b*HB+HB-1
// (one KV head) over chunk c of the cached positions 0..pos-1, the last chunk with the new
// position pos too. The chunk length is chosen at run time
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
// Dynamic shared memory (floats): HB*D + 6D + 3*NSLOT*HB + 4 + NSLOT*HB*D.

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
    // The chunks split the cached positions 0..pos-1; the last active one also takes the new
    // position (its K/V come from qkv). A chunk of its own for the new position would be one
    // more block a head group that does almost nothing: at depth 4096, 8 x 17 blocks where
    // 8 x 16 fill an H100's SMs once. (It times the same: BENCHMARKS.md, session 24.)
    const int len = pos + 1;
    int chunk = (pos + NC - 1) / NC;
    chunk = max(min_chunk, (chunk + 31) & ~31);
    // A context shorter than two chunks is one: a short second chunk costs a merge of the
    // chunks for little work.
    if (len < 2 * min_chunk) chunk = max(pos, 1);
    const int nact = max(1, (pos + chunk - 1) / chunk);
    const int c0 = c * chunk;
    // No positions: takes no part. Chunk 0 of every head group always waits below, so the
    // kernel still completes only after the previous one.
    if (c >= nact) return;
    const bool has_cur = c == nact - 1;
    const int ncache = min(c0 + chunk, pos) - c0;
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
    // Each (head, 4 dims) item is merged over the chunks by S threads, each taking every S-th
    // chunk into a running max, sum and 4 accumulators. A chunk's loads do not depend on the
    // running state, so a thread's loads of several chunks are in flight at once: the merge is
    // on the step's critical path, and it is one round trip to L2 (the max and sum of every
    // chunk, then the weights, then the accumulators took two and a serial loop between).
    // With S > 1 the partial states meet in shared memory (sm_acc: the slots are merged by now).
    constexpr int ITEMS = HB * D / 4;
    constexpr int S = ITEMS >= 128 ? 1 : 128 / ITEMS;
    for (int i = tid; i < ITEMS * S; i += 128) {
        const int item = i % ITEMS, s0 = i / ITEMS;
        const int g = item / (D / 4), d = (item % (D / 4)) * 4;
        const float* pg = gbase + (size_t)g * NC * (D + 2);
        float M = NEG_INF, L = 0.f;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int k = s0; k < nact; k += S) {
            const float* q = pg + (size_t)k * (D + 2);
            // Rows are D + 2 floats long, so only 8-byte alignment is guaranteed.
            const float2 ml = __ldcg((const float2*)(q + D));
            const float2 x = __ldcg((const float2*)(q + d)), y = __ldcg((const float2*)(q + d + 2));
            // Every active chunk holds a cached position, so its max is finite.
            const float mn = fmaxf(M, ml.x);
            const float cold = __expf(M - mn), cnew = __expf(ml.x - mn);
            L = L * cold + ml.y * cnew;
            a.x = a.x * cold + x.x * cnew;
            a.y = a.y * cold + x.y * cnew;
            a.z = a.z * cold + y.x * cnew;
            a.w = a.w * cold + y.y * cnew;
            M = mn;
        }
        if (S == 1) {
            float* o = out + (size_t)(h0 + g) * D + d;
            const float r = 1.f / L;
            o[0] = a.x * r;
            o[1] = a.y * r;
            o[2] = a.z * r;
            o[3] = a.w * r;
        } else {
            float* st = sm_acc + (size_t)i * 6;
            st[0] = M;
            st[1] = L;
            st[2] = a.x;
            st[3] = a.y;
            st[4] = a.z;
            st[5] = a.w;
        }
    }
    if (S > 1) {
        bsync();
        for (int item = tid; item < ITEMS; item += 128) {
            float M = NEG_INF;
#pragma unroll
            for (int s1 = 0; s1 < S; ++s1) M = fmaxf(M, sm_acc[(size_t)(s1 * ITEMS + item) * 6]);
            float L = 0.f;
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int s1 = 0; s1 < S; ++s1) {
                const float* st = sm_acc + (size_t)(s1 * ITEMS + item) * 6;
                // A thread with no chunk (nact < S) left M = -inf and L = 0: weight 0.
                const float w = st[1] == 0.f ? 0.f : __expf(st[0] - M);
                L += st[1] * w;
                a.x += st[2] * w;
                a.y += st[3] * w;
                a.z += st[4] * w;
                a.w += st[5] * w;
            }
            const int g = item / (D / 4), d = (item % (D / 4)) * 4;
            float* o = out + (size_t)(h0 + g) * D + d;
            const float r = 1.f / L;
            o[0] = a.x * r;
            o[1] = a.y * r;
            o[2] = a.z * r;
            o[3] = a.w * r;
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

// A context of one chunk (shorter than two minimum chunks) at one head a block: the grid is
// the heads alone, and each lane group loads up to 8 positions before the dependency wait
// (128 positions at D = 128, where attn_decode_128_1 loads 64 and waits on memory again for
// the rest), at one block an SM (255 registers).
#define ATTN_DECODE_ONE(D, UNR)                                                                   \
    extern "C" __global__ void __launch_bounds__(128, 1) attn_decode_one_##D(                     \
        const float* qkv, u16* kc, u16* vc, const int* step, int H, int KVH, const float* qn,      \
        const float* kn, float eps, const float* inv_freq, int rope_dims, int style, float* part,   \
        u32* counters, float* out, int min_chunk) {                                               \
        extern __shared__ float dec_sm[];                                                         \
        const AttnPlace pl = {(int)blockIdx.x, 0, 1, (int)threadIdx.x, 0, dec_sm};                \
        attn_decode_body<D, 1, UNR, true, false>(pl, [] {}, qkv, kc, vc, step, H, KVH, qn, kn, eps,  \
                                                 inv_freq, rope_dims, style, part, counters, out, min_chunk); \
    }
ATTN_DECODE_ONE(64, 4) ATTN_DECODE_ONE(128, 8) ATTN_DECODE_ONE(256, 8)

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
