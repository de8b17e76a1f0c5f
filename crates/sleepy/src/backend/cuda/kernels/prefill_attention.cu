// Prompt attention (the decode kernel is in decode_attention.cu).

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

// ---- Tensor-core path (heads of 64 or 128, sm_80 and later).
//
// Why: the kernel above does every score and weight in f32 FMAs and re-reads K/V for each 16
// query rows, so a prompt after a long context is bound by it (Qwen3-4B pp512 after 4096
// tokens: 5.6K tok/s against 32K from an empty cache, H100, BENCHMARKS.md session 17).
// Grid (ceil(T / 64), H), block 128: warp w owns query rows t0 + 16w .. +15 of head h. Keys
// come through shared memory 64 at a time (bf16 as cached, zero past the last key the block
// needs); S = Q K^T and O += P V by mma.m16n8k16 (bf16 in, f32 accumulate), with Q and P
// split into bf16 high and low parts (two MMAs each) so they keep about 16 bits, as the
// decode kernel's tensor-core path does; online softmax per row in registers.
// Fragments (PTX ISA, mma.m16n8k16): lane = 4 g + t; A a0 = (row g, k 2t..2t+1), a1 = row
// g + 8, a2 = (row g, k 2t+8..2t+9), a3 = row g + 8; B b0 = (k 2t..2t+1, col g), b1 = k + 8;
// C c0..c1 = (row g, cols 2t..2t+1), c2..c3 = row g + 8. An S tile's C fragments of keys
// 16j..16j+15 are P's A fragment for the k-step j of P V; V's B fragments come from its
// row-major tile by ldmatrix.trans.
// Dynamic shared memory: 2 * 64 * (D + 8) u16 (K tile, V tile; rows padded by 16 bytes).
__device__ __forceinline__ void mma16_bf16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// 16 bytes from global to shared memory, zero-filled where `valid` is false.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0) : "memory");
#endif
}

template <int D>
__device__ __forceinline__ void attn_prefill_mma_body(const float* __restrict__ qkv, const u16* __restrict__ kc,
                                                      const u16* __restrict__ vc, float* out, int T, int H,
                                                      int KVH, int pos0) {
#if __CUDA_ARCH__ >= 800
    constexpr int KS = D + 8;  // a tile row's stride in u16 (16 bytes of padding: no bank conflicts)
    constexpr int KK = D / 16; // k-steps of Q K^T
    constexpr int DT = D / 8;  // n-tiles of O
    extern __shared__ __align__(16) u16 apm_sm[];
    u16* ks = apm_sm;
    u16* vs = ks + 64 * KS;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, kvh = h / (H / KVH);
    const int kvd = KVH * D, row_len = (H + 2 * KVH) * D;
    const int t0 = blockIdx.x * 64, r0 = t0 + 16 * warp;
    const int last_key = pos0 + min(t0 + 63, T - 1);  // the block's last row's position
    // This warp's rows g and g + 8, clamped to the prompt (rows past it are not written), and
    // the last key each may see.
    const int ra = min(r0 + g, T - 1), rb = min(r0 + g + 8, T - 1);
    const int lim_a = pos0 + ra, lim_b = pos0 + rb;
    const int warp_lim = r0 < T ? pos0 + min(r0 + 15, T - 1) : -1; // -1: no rows, no tiles
    pdl_wait();
    pdl_launch_next();

    // Q's A fragments for every k-step, scaled, as bf16 high and low parts.
    u32 qh[KK][4], ql[KK][4];
    {
        const float scale = rsqrtf((float)D);
        const float* qa = qkv + (size_t)ra * row_len + (size_t)h * D;
        const float* qb = qkv + (size_t)rb * row_len + (size_t)h * D;
#pragma unroll
        for (int kk = 0; kk < KK; ++kk) {
            const int d0 = kk * 16 + 2 * t;
            const float2 a0 = *(const float2*)(qa + d0), a1 = *(const float2*)(qb + d0);
            const float2 a2 = *(const float2*)(qa + d0 + 8), a3 = *(const float2*)(qb + d0 + 8);
            bf16x2_split(a0.x * scale, a0.y * scale, qh[kk][0], ql[kk][0]);
            bf16x2_split(a1.x * scale, a1.y * scale, qh[kk][1], ql[kk][1]);
            bf16x2_split(a2.x * scale, a2.y * scale, qh[kk][2], ql[kk][2]);
            bf16x2_split(a3.x * scale, a3.y * scale, qh[kk][3], ql[kk][3]);
        }
    }
    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float ma = NEG_INF, mb = NEG_INF, la = 0.f, lb = 0.f;

    for (int kt = 0; kt <= last_key; kt += 64) {
        __syncthreads(); // the previous tile is consumed
        for (int i = tid; i < 64 * (D / 8); i += 128) {
            const int j = i / (D / 8), d = (i % (D / 8)) * 8, key = kt + j;
            const bool valid = key <= last_key;
            const size_t off = (size_t)(valid ? key : 0) * kvd + (size_t)kvh * D + d;
            cp_async16(ks + j * KS + d, kc + off, valid);
            cp_async16(vs + j * KS + d, vc + off, valid);
        }
        asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
        __syncthreads();
        if (kt > warp_lim) continue; // every key of this tile is past this warp's rows

        // Half a tile at a time (registers: a whole tile's scores spill at D = 128).
#pragma unroll 1
        for (int hf = 0; hf < 2; ++hf) {
            const int kh = kt + 32 * hf;
            if (kh > warp_lim) break;
            // Scores of rows g, g + 8 against keys kh + 8n + 2t, +1.
            float s[4][4];
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
                const u16* kr = ks + (32 * hf + n * 8 + g) * KS + 2 * t;
#pragma unroll
                for (int kk = 0; kk < KK; ++kk) {
                    const u32 b0 = *(const u32*)(kr + kk * 16), b1 = *(const u32*)(kr + kk * 16 + 8);
                    mma16_bf16(s[n], qh[kk][0], qh[kk][1], qh[kk][2], qh[kk][3], b0, b1);
                    mma16_bf16(s[n], ql[kk][0], ql[kk][1], ql[kk][2], ql[kk][3], b0, b1);
                }
            }
            float mxa = NEG_INF, mxb = NEG_INF;
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int key = kh + n * 8 + 2 * t + e;
                    if (key > lim_a) s[n][e] = NEG_INF;
                    if (key > lim_b) s[n][2 + e] = NEG_INF;
                    mxa = fmaxf(mxa, s[n][e]);
                    mxb = fmaxf(mxb, s[n][2 + e]);
                }
            mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
            mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
            mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
            mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
            // Key 0 <= every row's limit, so ma and mb are finite after the first half tile; a
            // row with no key in a later one keeps its max (weights exp(-inf) = 0).
            const float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
            const float ca = __expf(ma - na), cb = __expf(mb - nb);
            ma = na;
            mb = nb;
            float pa = 0.f, pb = 0.f;
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    s[n][e] = __expf(s[n][e] - na);
                    s[n][2 + e] = __expf(s[n][2 + e] - nb);
                    pa += s[n][e];
                    pb += s[n][2 + e];
                }
            la = la * ca + pa; // this lane's share; the quad's shares add up at the end
            lb = lb * cb + pb;
#pragma unroll
            for (int i = 0; i < DT; ++i) {
                o[i][0] *= ca;
                o[i][1] *= ca;
                o[i][2] *= cb;
                o[i][3] *= cb;
            }
            // O += P V, 16 keys a k-step: P's A fragment from the S tiles 2j and 2j + 1.
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                u32 ph[4], pl[4];
                bf16x2_split(s[2 * j][0], s[2 * j][1], ph[0], pl[0]);
                bf16x2_split(s[2 * j][2], s[2 * j][3], ph[1], pl[1]);
                bf16x2_split(s[2 * j + 1][0], s[2 * j + 1][1], ph[2], pl[2]);
                bf16x2_split(s[2 * j + 1][2], s[2 * j + 1][3], ph[3], pl[3]);
                // ldmatrix.x2.trans: lanes 0-7 address keys 16j .. 16j+7 of the half, lanes
                // 8-15 the next 8 (dims 8i .. 8i+7 of each); every lane gets (keys 2t, 2t+1 |
                // +8, dim 8i + g): V's B fragments.
                const u16* vrow = vs + (32 * hf + 16 * j + (lane & 15)) * KS;
#pragma unroll
                for (int i = 0; i < DT; ++i) {
                    u32 b0, b1;
                    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                                 : "=r"(b0), "=r"(b1)
                                 : "r"(smem_addr(vrow + 8 * i)));
                    mma16_bf16(o[i], ph[0], ph[1], ph[2], ph[3], b0, b1);
                    mma16_bf16(o[i], pl[0], pl[1], pl[2], pl[3], b0, b1);
                }
            }
        }
    }
    la += __shfl_xor_sync(0xffffffffu, la, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    lb += __shfl_xor_sync(0xffffffffu, lb, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    const float ia = 1.f / la, ib = 1.f / lb;
#pragma unroll
    for (int i = 0; i < DT; ++i) {
        const int d = 8 * i + 2 * t;
        if (r0 + g < T) *(float2*)(out + (size_t)(r0 + g) * H * D + (size_t)h * D + d) = make_float2(o[i][0] * ia, o[i][1] * ia);
        if (r0 + g + 8 < T) *(float2*)(out + (size_t)(r0 + g + 8) * H * D + (size_t)h * D + d) = make_float2(o[i][2] * ib, o[i][3] * ib);
    }
#endif
}

#define ATTN_PREFILL_MMA(D)                                                                          \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_mma_##D(                          \
        const float* qkv, const u16* kc, const u16* vc, float* out, int T, int H, int KVH, int pos0) { \
        attn_prefill_mma_body<D>(qkv, kc, vc, out, T, H, KVH, pos0);                                 \
    }
ATTN_PREFILL_MMA(64) ATTN_PREFILL_MMA(128)
