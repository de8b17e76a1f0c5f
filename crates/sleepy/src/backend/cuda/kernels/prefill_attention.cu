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
