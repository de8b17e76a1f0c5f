// Decode attention for one new token, flash-decoding style, in one pass over K and V, with
// the Q/K norm, rope and the KV-cache write of the new token folded in.
//
// qkv [(H + 2 KVH) * D] f32 as the QKV projection wrote it (before norm and rope).
// kc, vc: this layer's cache [max_seq, KVH * D] bf16. step[0]: the new token's position.
// Grid (H / HB, NC), block 128 (4 warps). Block (b, c) serves query heads b*HB .. b*HB+HB-1
// (one KV head) over chunk c of positions 0..pos. The chunk length is chosen at run time
// from pos (at least 64), so short contexts use one block per head group and no merge.
// Inside a block, D/16 lanes share a position (16 dims each) and keep a running max, sum
// and 16 accumulators per head (online softmax); the 128/(D/16) slots merge in shared memory.
// The first block of each KV head whose chunk holds pos writes the new K/V into the cache;
// blocks use their own copy for position pos.
// With several chunks: partials part [H, NC, D + 2] (acc, max, sum); counters [H / HB] are
// zero at rest; the last active block of a head group merges and resets its counter.
// Dynamic shared memory: HB*D + 2D + 2*NSLOT*HB + NSLOT*HB*D + HB*NC floats.
#define DEC_MIN_CHUNK 64

template <int D, int HB, int UNR>
__device__ __forceinline__ void attn_decode_body(const float* __restrict__ qkv, u16* kc, u16* vc,
                                                  const int* __restrict__ step, int H, int KVH,
                                                  const float* qn, const float* kn, float eps,
                                                  const float* __restrict__ inv_freq, int rope_dims,
                                                  int style, float* part, u32* counters, float* out) {
    constexpr int LPP = D / 16;
    constexpr int PPW = 32 / LPP;
    constexpr int NSLOT = 4 * PPW;
    extern __shared__ float dec_sm[];
    float* qs = dec_sm;
    float* kcur = qs + HB * D;
    float* vcur = kcur + D;
    float* sm_m = vcur + D;
    float* sm_l = sm_m + NSLOT * HB;
    float* sm_acc = sm_l + NSLOT * HB;
    float* wts = sm_acc + NSLOT * HB * D;
    __shared__ int is_last;

    pdl_wait();
    pdl_launch_next();
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int pos = step[0];
    const int NC = gridDim.y, c = blockIdx.y;
    const int len = pos + 1;
    int chunk = (len + NC - 1) / NC;
    chunk = max(DEC_MIN_CHUNK, (chunk + 31) & ~31);
    const int nact = (len + chunk - 1) / chunk;
    const int c0 = c * chunk;
    if (c0 >= len) return; // no positions: takes no part in the merge
    const int c1 = min(c0 + chunk, len);
    const bool has_cur = c1 == len;
    const int n = c1 - c0;
    const int ncache = has_cur ? n - 1 : n;
    const int h0 = blockIdx.x * HB, G = H / KVH, kvh = h0 / G;
    const int kvd = KVH * D;

    for (int i = tid; i < HB * D; i += 128) qs[i] = qkv[(size_t)h0 * D + i];
    if (has_cur) {
        const float* kraw = qkv + (size_t)H * D + (size_t)kvh * D;
        const float* vraw = qkv + (size_t)(H + KVH) * D + (size_t)kvh * D;
        for (int i = tid; i < D; i += 128) {
            kcur[i] = kraw[i];
            vcur[i] = vraw[i];
        }
    }
    __syncthreads();
    if (warp < HB)
        norm_rope_head(qs + warp * D, D, qn, eps, inv_freq, rope_dims, style, pos, rsqrtf((float)D), lane, 32, 1, 0);
    if (has_cur && warp == (HB & 3)) {
        norm_rope_head(kcur, D, kn, eps, inv_freq, rope_dims, style, pos, 1.f, lane, 32, 1, 0);
        const bool writer = (h0 % G) == 0;
        for (int d = lane; d < D; d += 32) {
            const u16 kb = f32_to_bf16(kcur[d]), vb = f32_to_bf16(vcur[d]);
            kcur[d] = bf16_to_f32(kb);
            vcur[d] = bf16_to_f32(vb);
            if (writer) {
                kc[(size_t)pos * kvd + (size_t)kvh * D + d] = kb;
                vc[(size_t)pos * kvd + (size_t)kvh * D + d] = vb;
            }
        }
    }
    __syncthreads();

    const int sub = lane % LPP, slot = warp * PPW + lane / LPP;
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
    const u16* kbase = kc + (size_t)kvh * D + sub * 16;
    const u16* vbase = vc + (size_t)kvh * D + sub * 16;
    for (int base = 0; base < ncache; base += NSLOT * UNR) {
        uint4 ka[UNR], kb[UNR], va[UNR], vb[UNR];
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int i = base + u * NSLOT + slot;
            if (i < ncache) {
                const size_t off = (size_t)(c0 + i) * kvd;
                ka[u] = *(const uint4*)(kbase + off);
                kb[u] = *(const uint4*)(kbase + off + 8);
                va[u] = *(const uint4*)(vbase + off);
                vb[u] = *(const uint4*)(vbase + off + 8);
            }
        }
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int i = base + u * NSLOT + slot;
            float kf[16], vf[16], s[HB];
            const u32 kw[8] = {ka[u].x, ka[u].y, ka[u].z, ka[u].w, kb[u].x, kb[u].y, kb[u].z, kb[u].w};
            const u32 vw[8] = {va[u].x, va[u].y, va[u].z, va[u].w, vb[u].x, vb[u].y, vb[u].z, vb[u].w};
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float2 a = unpack2<0>(kw[j]), b = unpack2<0>(vw[j]);
                kf[2 * j] = a.x;
                kf[2 * j + 1] = a.y;
                vf[2 * j] = b.x;
                vf[2 * j + 1] = b.y;
            }
            scores(kf, s); // every lane takes part in the shuffles
            if (i < ncache) update(s, vf);
        }
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
    __syncthreads();
    float* pbase = part + ((size_t)h0 * NC + c) * (D + 2);
    for (int i = tid; i < HB * D; i += 128) {
        const int g = i / D, d = i % D;
        float M = NEG_INF;
        for (int s = 0; s < NSLOT; ++s) M = fmaxf(M, sm_m[s * HB + g]);
        float L = 0.f, A = 0.f;
        for (int s = 0; s < NSLOT; ++s) {
            const float w = sm_l[s * HB + g] == 0.f ? 0.f : __expf(sm_m[s * HB + g] - M);
            L += sm_l[s * HB + g] * w;
            A += sm_acc[(s * HB + g) * D + d] * w;
        }
        if (nact == 1) {
            out[(size_t)(h0 + g) * D + d] = A / L;
        } else {
            float* pp = pbase + (size_t)g * NC * (D + 2);
            pp[d] = A;
            if (d == 0) {
                pp[D] = M;
                pp[D + 1] = L;
            }
        }
    }
    if (nact == 1) return;
    // The last active block of this head group merges the chunks.
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&counters[blockIdx.x], 1u) == (u32)(nact - 1);
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const float* gbase = part + (size_t)h0 * NC * (D + 2);
    for (int i = tid; i < HB * nact; i += 128) {
        const int g = i / nact, k = i % nact;
        wts[g * nact + k] = __ldcg(gbase + ((size_t)g * NC + k) * (D + 2) + D);
    }
    __syncthreads();
    if (tid < HB) {
        float M = NEG_INF, L = 0.f;
        for (int k = 0; k < nact; ++k) M = fmaxf(M, wts[tid * nact + k]);
        for (int k = 0; k < nact; ++k) {
            const float w = __expf(wts[tid * nact + k] - M);
            L += __ldcg(gbase + ((size_t)tid * NC + k) * (D + 2) + D + 1) * w;
            wts[tid * nact + k] = w;
        }
        for (int k = 0; k < nact; ++k) wts[tid * nact + k] /= L;
    }
    __syncthreads();
    for (int i = tid; i < HB * D / 4; i += 128) {
        const int g = i / (D / 4), d = (i % (D / 4)) * 4;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
        const float* pg = gbase + (size_t)g * NC * (D + 2) + d;
#pragma unroll 4
        for (int k = 0; k < nact; ++k) {
            const float w = wts[g * nact + k];
            const float* q = pg + (size_t)k * (D + 2);
            // Rows are D + 2 floats long, so only 8-byte alignment is guaranteed.
            const float2 x = __ldcg((const float2*)q), y = __ldcg((const float2*)(q + 2));
            a.x += w * x.x;
            a.y += w * x.y;
            a.z += w * y.x;
            a.w += w * y.y;
        }
        float* o = out + (size_t)(h0 + g) * D + d;
        o[0] = a.x;
        o[1] = a.y;
        o[2] = a.z;
        o[3] = a.w;
    }
    if (tid == 0) counters[blockIdx.x] = 0u;
}

#define ATTN_DECODE(D, HB, UNR)                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_decode_##D##_##HB(                     \
        const float* qkv, u16* kc, u16* vc, const int* step, int H, int KVH, const float* qn,      \
        const float* kn, float eps, const float* inv_freq, int rope_dims, int style, float* part,   \
        u32* counters, float* out) {                                                              \
        attn_decode_body<D, HB, UNR>(qkv, kc, vc, step, H, KVH, qn, kn, eps, inv_freq, rope_dims,  \
                                      style, part, counters, out);                                \
    }
ATTN_DECODE(64, 1, 4) ATTN_DECODE(64, 2, 4) ATTN_DECODE(64, 4, 2)
ATTN_DECODE(128, 1, 4) ATTN_DECODE(128, 2, 4) ATTN_DECODE(128, 4, 2)
ATTN_DECODE(256, 1, 4) ATTN_DECODE(256, 2, 4) ATTN_DECODE(256, 4, 2)
