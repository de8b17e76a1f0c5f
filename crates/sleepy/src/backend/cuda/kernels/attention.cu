// Decode attention for one new token, flash-decoding style, with the Q/K norm, rope and
// the KV-cache write of the new token folded in.
//
// qkv [(H + 2 KVH) * D] f32 as the QKV projection wrote it (before norm and rope).
// kc, vc: this layer's cache [max_seq, KVH * D] bf16. step[0]: the new token's position.
// Grid (H / HB, NC), block 128 (4 warps). Block (b, c) serves query heads b*HB .. b*HB+HB-1
// (one KV head) over chunk c of the positions 0..pos; the chunk length is chosen at run time
// from pos so all NC chunks share the work. The first block of each KV head whose chunk
// holds pos writes the new K/V into the cache; blocks use their own copy for position pos.
// Partials part [H, NC, D + 2] (acc, max, sum); counters [H / HB] are zero at rest: the
// last block to finish for a head group merges the partials into out [H * D] and resets it.
// Dynamic shared memory: HB*D + 2D + 32 + HB*max_chunk + 2HB + 4*HB*D floats.
template <int D, int HB>
__device__ __forceinline__ void attn_decode_body(const float* __restrict__ qkv, u16* kc, u16* vc,
                                                 const int* __restrict__ step, int H, int KVH,
                                                 const float* qn, const float* kn, float eps,
                                                 const float* __restrict__ inv_freq, int rope_dims,
                                                 int style, float* part, u32* counters, float* out,
                                                 int max_chunk) {
    constexpr int LPP = D / 16;   // lanes per position in pass 1 (16 dims each)
    constexpr int PPW = 32 / LPP; // positions per warp step
    constexpr int VW = D / 32;    // V values per lane in pass 2
    constexpr int UNR = 4;
    extern __shared__ float adec_sm[];
    float* qs = adec_sm;
    float* kcur = qs + HB * D;
    float* vcur = kcur + D;
    float* red = vcur + D;
    float* sc = red + 32;
    float* ml = sc + HB * max_chunk;
    float* accs = ml + 2 * HB;
    __shared__ int is_last;

    pdl_wait();
    pdl_launch_next();
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int pos = step[0];
    const int NC = gridDim.y, c = blockIdx.y;
    const int len = pos + 1;
    int chunk = (len + NC - 1) / NC;
    chunk = (chunk + 31) & ~31;
    const int c0 = c * chunk, c1 = min(c0 + chunk, len);
    const int h0 = blockIdx.x * HB, G = H / KVH, kvh = h0 / G;
    const int kvd = KVH * D;
    const float* kraw = qkv + (size_t)H * D + (size_t)kvh * D;
    const float* vraw = qkv + (size_t)(H + KVH) * D + (size_t)kvh * D;

    if (c0 < len) {
        const bool has_cur = c1 == len;
        const int n = c1 - c0;
        const int ncache = has_cur ? n - 1 : n; // positions read from the cache
        for (int i = tid; i < HB * D; i += 128) qs[i] = qkv[(size_t)h0 * D + i];
        if (has_cur)
            for (int i = tid; i < D; i += 128) {
                kcur[i] = kraw[i];
                vcur[i] = vraw[i];
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

        // Pass 1: scores of the cached positions, LPP lanes per position.
        {
            const int sub = lane % LPP, slot = lane / LPP;
            float qr[HB][16];
#pragma unroll
            for (int g = 0; g < HB; ++g)
#pragma unroll
                for (int j = 0; j < 16; ++j) qr[g][j] = qs[g * D + sub * 16 + j];
            const u16* kbase = kc + (size_t)kvh * D + sub * 16;
            for (int base = 0; base < ncache; base += 4 * PPW * UNR) {
                uint4 ka[UNR], kb[UNR];
#pragma unroll
                for (int u = 0; u < UNR; ++u) {
                    const int i = base + u * 4 * PPW + warp * PPW + slot;
                    if (i < ncache) {
                        const u16* kp = kbase + (size_t)(c0 + i) * kvd;
                        ka[u] = *(const uint4*)kp;
                        kb[u] = *(const uint4*)(kp + 8);
                    }
                }
#pragma unroll
                for (int u = 0; u < UNR; ++u) {
                    const int i = base + u * 4 * PPW + warp * PPW + slot;
                    float kf[16];
                    const u32 w[8] = {ka[u].x, ka[u].y, ka[u].z, ka[u].w, kb[u].x, kb[u].y, kb[u].z, kb[u].w};
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const float2 p = unpack2<0>(w[j]);
                        kf[2 * j] = p.x;
                        kf[2 * j + 1] = p.y;
                    }
#pragma unroll
                    for (int g = 0; g < HB; ++g) {
                        float s = 0.f;
#pragma unroll
                        for (int j = 0; j < 16; ++j) s += qr[g][j] * kf[j];
#pragma unroll
                        for (int o = LPP / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                        if (sub == 0 && i < ncache) sc[g * max_chunk + i] = s;
                    }
                }
            }
            if (has_cur && warp == 0) {
                for (int g = 0; g < HB; ++g) {
                    float s = 0.f;
                    for (int d = lane; d < D; d += 32) s += qs[g * D + d] * kcur[d];
                    s = warp_sum(s);
                    if (lane == 0) sc[g * max_chunk + n - 1] = s;
                }
            }
        }
        __syncthreads();
        // Softmax over the chunk, one warp per head: probabilities replace the scores.
        if (warp < HB) {
            float* s = sc + warp * max_chunk;
            float m = NEG_INF;
            for (int i = lane; i < n; i += 32) m = fmaxf(m, s[i]);
            m = warp_max(m);
            float l = 0.f;
            for (int i = lane; i < n; i += 32) {
                const float e = __expf(s[i] - m);
                s[i] = e;
                l += e;
            }
            l = warp_sum(l);
            if (lane == 0) {
                ml[warp] = m;
                ml[HB + warp] = l;
            }
        }
        __syncthreads();
        // Pass 2: acc = sum p * V, one warp per position, VW dims per lane.
        {
            float acc[HB][VW];
#pragma unroll
            for (int g = 0; g < HB; ++g)
#pragma unroll
                for (int j = 0; j < VW; ++j) acc[g][j] = 0.f;
            const u16* vbase = vc + (size_t)kvh * D + lane * VW;
            for (int base = 0; base < ncache; base += 4 * UNR) {
                u32 va[UNR][VW / 2];
#pragma unroll
                for (int u = 0; u < UNR; ++u) {
                    const int i = base + u * 4 + warp;
                    if (i < ncache) {
                        const u16* vp = vbase + (size_t)(c0 + i) * kvd;
                        if (VW == 2) va[u][0] = *(const u32*)vp;
                        if (VW == 4) { const uint2 t = *(const uint2*)vp; va[u][0] = t.x; va[u][1] = t.y; }
                        if (VW == 8) { const uint4 t = *(const uint4*)vp; va[u][0] = t.x; va[u][1] = t.y; va[u][2] = t.z; va[u][3] = t.w; }
                    }
                }
#pragma unroll
                for (int u = 0; u < UNR; ++u) {
                    const int i = base + u * 4 + warp;
                    if (i < ncache) {
#pragma unroll
                        for (int j = 0; j < VW / 2; ++j) {
                            const float2 v = unpack2<0>(va[u][j]);
#pragma unroll
                            for (int g = 0; g < HB; ++g) {
                                const float p = sc[g * max_chunk + i];
                                acc[g][2 * j] += p * v.x;
                                acc[g][2 * j + 1] += p * v.y;
                            }
                        }
                    }
                }
            }
            if (has_cur && warp == 0) {
#pragma unroll
                for (int g = 0; g < HB; ++g) {
                    const float p = sc[g * max_chunk + n - 1];
#pragma unroll
                    for (int j = 0; j < VW; ++j) acc[g][j] += p * vcur[lane * VW + j];
                }
            }
#pragma unroll
            for (int g = 0; g < HB; ++g)
#pragma unroll
                for (int j = 0; j < VW; ++j) accs[(warp * HB + g) * D + lane * VW + j] = acc[g][j];
        }
        __syncthreads();
        for (int i = tid; i < HB * D; i += 128) {
            const int g = i / D, d = i % D;
            const float a = accs[(0 * HB + g) * D + d] + accs[(1 * HB + g) * D + d] +
                            accs[(2 * HB + g) * D + d] + accs[(3 * HB + g) * D + d];
            float* pp = part + ((size_t)(h0 + g) * NC + c) * (D + 2);
            pp[d] = a;
            if (d == 0) {
                pp[D] = ml[g];
                pp[D + 1] = ml[HB + g];
            }
        }
    }
    // The last block of this head group merges the chunks.
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&counters[blockIdx.x], 1u) == (u32)(NC - 1);
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const int nact = (len + chunk - 1) / chunk;
    for (int i = tid; i < HB * D; i += 128) {
        const int g = i / D, d = i % D;
        const float* pp = part + (size_t)(h0 + g) * NC * (D + 2);
        float M = NEG_INF;
        for (int k = 0; k < nact; ++k) M = fmaxf(M, __ldcg(pp + (size_t)k * (D + 2) + D));
        float L = 0.f, A = 0.f;
        for (int k = 0; k < nact; ++k) {
            const float* q = pp + (size_t)k * (D + 2);
            const float w = __expf(__ldcg(q + D) - M);
            L += __ldcg(q + D + 1) * w;
            A += __ldcg(q + d) * w;
        }
        out[(size_t)(h0 + g) * D + d] = A / L;
    }
    if (tid == 0) counters[blockIdx.x] = 0u;
}

#define ATTN_DECODE(D, HB)                                                                         \
    extern "C" __global__ void __launch_bounds__(128) attn_decode_##D##_##HB(                      \
        const float* qkv, u16* kc, u16* vc, const int* step, int H, int KVH, const float* qn,      \
        const float* kn, float eps, const float* inv_freq, int rope_dims, int style, float* part,   \
        u32* counters, float* out, int max_chunk) {                                               \
        attn_decode_body<D, HB>(qkv, kc, vc, step, H, KVH, qn, kn, eps, inv_freq, rope_dims, style, \
                                part, counters, out, max_chunk);                                  \
    }
ATTN_DECODE(64, 1) ATTN_DECODE(64, 2) ATTN_DECODE(64, 4)
ATTN_DECODE(128, 1) ATTN_DECODE(128, 2) ATTN_DECODE(128, 4)
ATTN_DECODE(256, 1) ATTN_DECODE(256, 2) ATTN_DECODE(256, 4)

// Causal attention for a prompt of T tokens at positions pos0.. (Q/K already normed and
// roped, K/V already in the cache). qkv [T, (H + 2 KVH) * D] f32; out [T, H * D] f32.
// Grid (ceil(T / 16), H), block 128: each warp owns 4 query rows; keys stream through
// shared memory 32 at a time (f32, rows padded by 4 floats), online softmax per row.
// Dynamic shared memory: 16*D + 2*32*(D+4) floats.
template <int D>
__device__ __forceinline__ void attn_prefill_body(const float* __restrict__ qkv, const u16* __restrict__ kc,
                                                  const u16* __restrict__ vc, float* out, int T, int H,
                                                  int KVH, int pos0) {
    constexpr int VW = D / 32;
    constexpr int KS = D + 4;
    extern __shared__ float apre_sm[];
    float* qs = apre_sm;
    float* ks = qs + 16 * D;
    float* vs = ks + 32 * KS;
    pdl_wait();
    pdl_launch_next();
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, kvh = h / (H / KVH);
    const int kvd = KVH * D, row_len = (H + 2 * KVH) * D;
    const int t0 = blockIdx.x * 16;
    const float scale = rsqrtf((float)D);
    for (int i = tid; i < 16 * D; i += 128) {
        const int r = i / D, d = i % D;
        const int t = min(t0 + r, T - 1);
        qs[i] = qkv[(size_t)t * row_len + (size_t)h * D + d] * scale;
    }
    float m[4], l[4], acc[4][VW];
    int lim[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        m[r] = NEG_INF;
        l[r] = 0.f;
        lim[r] = pos0 + min(t0 + warp * 4 + r, T - 1);
#pragma unroll
        for (int j = 0; j < VW; ++j) acc[r][j] = 0.f;
    }
    const int last_key = pos0 + min(t0 + 15, T - 1);
    for (int kt = 0; kt <= last_key; kt += 32) {
        __syncthreads();
        for (int i = tid; i < 32 * (D / 8); i += 128) {
            const int j = i / (D / 8), d = (i % (D / 8)) * 8;
            const int key = kt + j;
            float kf[8], vf[8];
            if (key <= last_key) {
                const uint4 a = *(const uint4*)(kc + (size_t)key * kvd + (size_t)kvh * D + d);
                const uint4 b = *(const uint4*)(vc + (size_t)key * kvd + (size_t)kvh * D + d);
                const u32 aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const float2 x = unpack2<0>(aw[q]), y = unpack2<0>(bw[q]);
                    kf[2 * q] = x.x; kf[2 * q + 1] = x.y;
                    vf[2 * q] = y.x; vf[2 * q + 1] = y.y;
                }
            } else {
#pragma unroll
                for (int q = 0; q < 8; ++q) kf[q] = vf[q] = 0.f;
            }
            *(float4*)(ks + j * KS + d) = make_float4(kf[0], kf[1], kf[2], kf[3]);
            *(float4*)(ks + j * KS + d + 4) = make_float4(kf[4], kf[5], kf[6], kf[7]);
            *(float4*)(vs + j * KS + d) = make_float4(vf[0], vf[1], vf[2], vf[3]);
            *(float4*)(vs + j * KS + d + 4) = make_float4(vf[4], vf[5], vf[6], vf[7]);
        }
        __syncthreads();
        const int key = kt + lane;
        float s[4] = {0.f, 0.f, 0.f, 0.f};
        for (int d = 0; d < D; d += 4) {
            const float4 k4 = *(const float4*)(ks + lane * KS + d);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float4 q4 = *(const float4*)(qs + (warp * 4 + r) * D + d);
                s[r] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
            }
        }
        float p[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            if (key > lim[r]) s[r] = NEG_INF;
            const float mt = warp_max(s[r]);
            const float mn = fmaxf(m[r], mt);
            p[r] = mn == NEG_INF ? 0.f : __expf(s[r] - mn);
            const float corr = (m[r] == NEG_INF) ? 0.f : __expf(m[r] - mn);
            l[r] = l[r] * corr + warp_sum(p[r]);
#pragma unroll
            for (int j = 0; j < VW; ++j) acc[r][j] *= corr;
            m[r] = mn;
        }
        for (int j = 0; j < 32; ++j) {
            float v[VW];
#pragma unroll
            for (int i = 0; i < VW; ++i) v[i] = vs[j * KS + lane + 32 * i];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float pj = __shfl_sync(0xffffffffu, p[r], j);
#pragma unroll
                for (int i = 0; i < VW; ++i) acc[r][i] += pj * v[i];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int t = t0 + warp * 4 + r;
        if (t < T)
#pragma unroll
            for (int i = 0; i < VW; ++i) out[(size_t)t * H * D + (size_t)h * D + lane + 32 * i] = acc[r][i] / l[r];
    }
}

#define ATTN_PREFILL(D)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_##D(                              \
        const float* qkv, const u16* kc, const u16* vc, float* out, int T, int H, int KVH, int pos0) { \
        attn_prefill_body<D>(qkv, kc, vc, out, T, H, KVH, pos0);                                     \
    }
ATTN_PREFILL(64) ATTN_PREFILL(128) ATTN_PREFILL(256)
