// Small element-wise and row kernels: embedding lookup, RMSNorm, conversions, residual and
// bias adds, SwiGLU, argmax. All activations are f32, row-major.

// out[t, k] = table[ids[t], k] (ids checked on the host). table [vocab, K] 16-bit.
// Grid (ceil(K / 256), T), block 256.
template <int DT>
__device__ __forceinline__ void embed_body(const u16* table, const u32* ids, float* out, int K) {
    pdl_wait();
    pdl_launch_next();
    const int t = blockIdx.y, k = blockIdx.x * 256 + threadIdx.x;
    if (k < K) out[(size_t)t * K + k] = to_f32<DT>(table[(size_t)ids[t] * K + k]);
}
extern "C" __global__ void embed_0(const u16* table, const u32* ids, float* out, int K) { embed_body<0>(table, ids, out, K); }
extern "C" __global__ void embed_1(const u16* table, const u32* ids, float* out, int K) { embed_body<1>(table, ids, out, K); }

// One block (256 threads) per row of x [T, K]: when y is given, x += y first (written
// back); then out = x * rsqrt(mean(x^2) + eps) * w as f32 (out) and/or 16-bit (out_h, DT hdt).
extern "C" __global__ void rmsnorm(float* x, const float* y, const float* w, float eps, float* out, u16* out_h,
                                   int hdt, int K) {
    __shared__ float red[32];
    pdl_wait();
    pdl_launch_next();
    float* xr = x + (size_t)blockIdx.x * K;
    float ss = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float v = xr[k];
        if (y) {
            v += y[(size_t)blockIdx.x * K + k];
            xr[k] = v;
        }
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss, red) / (float)K + eps);
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float v = xr[k] * r * w[k];
        if (out) out[(size_t)blockIdx.x * K + k] = v;
        if (out_h) out_h[(size_t)blockIdx.x * K + k] = hdt == 0 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

// out[i] = x[i] as 16-bit (DT hdt), n elements. Grid-stride, block 256.
extern "C" __global__ void to_half(const float* x, u16* out, int hdt, long long n) {
    pdl_wait();
    pdl_launch_next();
    for (long long i = blockIdx.x * 256ll + threadIdx.x; i < n; i += (long long)gridDim.x * 256)
        out[i] = hdt == 0 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
}

// x[i] += y[i]; with ncols > 0, y is a bias row: x[i] += y[i % ncols]. Grid-stride, block 256.
extern "C" __global__ void add(float* x, const float* y, long long n, int ncols) {
    pdl_wait();
    pdl_launch_next();
    for (long long i = blockIdx.x * 256ll + threadIdx.x; i < n; i += (long long)gridDim.x * 256)
        x[i] += ncols > 0 ? y[i % ncols] : y[i];
}

// gu [T, 2F] (gate | up) -> out [T, F] = silu(gate) * up, f32 and/or 16-bit. Grid-stride, block 256.
extern "C" __global__ void swiglu(const float* gu, float* out, u16* out_h, int hdt, int F, long long n) {
    pdl_wait();
    pdl_launch_next();
    for (long long i = blockIdx.x * 256ll + threadIdx.x; i < n; i += (long long)gridDim.x * 256) {
        const long long t = i / F, f = i % F;
        const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
        const float v = g / (1.f + expf(-g)) * u;
        if (out) out[i] = v;
        if (out_h) out_h[i] = hdt == 0 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

// Index of the largest of x[0..n) (ties to the lowest index) into result[0]. Grid (B),
// block 256: each block reduces a strided share (4 loads in flight per thread) into
// part_v/part_i [B]; the last block to finish (counter, zero at rest) reduces those with all
// its threads and resets the counter.
__device__ __forceinline__ void argmax_pick(float& bv, int& bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}
__device__ __forceinline__ void argmax_block(float bv, int bi, float* sv, int* si) {
    const int tid = threadIdx.x;
    sv[tid] = bv;
    si[tid] = bi;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (tid < s) argmax_pick(sv[tid], si[tid], sv[tid + s], si[tid + s]);
        __syncthreads();
    }
}
extern "C" __global__ void argmax(const float* x, int n, float* part_v, int* part_i, u32* counter, int* result) {
    __shared__ float sv[256];
    __shared__ int si[256];
    __shared__ int is_last;
    pdl_wait();
    pdl_launch_next();
    const int tid = threadIdx.x;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i0 = blockIdx.x * 1024 + tid; i0 < n; i0 += gridDim.x * 1024) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = i0 + u * 256 < n ? x[i0 + u * 256] : NEG_INF;
#pragma unroll
        for (int u = 0; u < 4; ++u)
            if (i0 + u * 256 < n) argmax_pick(bv, bi, v[u], i0 + u * 256);
    }
    argmax_block(bv, bi, sv, si);
    if (tid == 0) {
        part_v[blockIdx.x] = sv[0];
        part_i[blockIdx.x] = si[0];
        __threadfence();
        is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    bv = NEG_INF;
    bi = 0x7fffffff;
    for (int b = tid; b < (int)gridDim.x; b += 256) argmax_pick(bv, bi, __ldcg(part_v + b), __ldcg(part_i + b));
    argmax_block(bv, bi, sv, si);
    if (tid == 0) {
        result[0] = si[0] == 0x7fffffff ? 0 : si[0];
        *counter = 0u;
    }
}

// Top-k for sampling (Backend::top_k_last). A token's key orders tokens as the sampler does:
// the larger value first, then the lower index; a non-finite value keys 0, below every finite
// one (whose ordered bits are at least 0x00800000), and the host drops those.
__device__ __forceinline__ u64 topk_key(float v, u32 i) {
    u32 b = __float_as_uint(v);
    if ((b & 0x7f800000u) == 0x7f800000u) return 0ull;
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)b << 32) | (0xffffffffu - i);
}

#define TOPK_SPAN 4096
// Each block sorts the keys of a span of TOPK_SPAN (bitonic, in shared memory) and writes its
// k best (k <= TOPK_SPAN) to out[blockIdx.x * k ...]: keys of x[0..n) where x is given, else
// keys[0..n) as an earlier launch wrote them. Grid ceil(n / TOPK_SPAN), block 1024; the host
// launches again on the output until one block is left.
extern "C" __global__ void __launch_bounds__(1024) topk(const float* x, const u64* keys, int n, int k, u64* out) {
    __shared__ u64 s[TOPK_SPAN];
    pdl_wait();
    pdl_launch_next();
    const int base = blockIdx.x * TOPK_SPAN;
    for (int i = threadIdx.x; i < TOPK_SPAN; i += blockDim.x) {
        const int g = base + i;
        s[i] = g >= n ? 0ull : x ? topk_key(x[g], (u32)g) : keys[g];
    }
    __syncthreads();
    for (int size = 2; size <= TOPK_SPAN; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < TOPK_SPAN / 2; t += blockDim.x) {
                // Pair t of this pass: i in a run of 2 * stride, j = i + stride.
                const int i = 2 * t - (t & (stride - 1)), j = i + stride;
                const u64 a = s[i], b = s[j];
                // Runs of `size` alternate descending / ascending, so each two merge as one
                // bitonic run next pass; the last pass's single run is descending.
                if ((a < b) == ((i & size) == 0)) {
                    s[i] = b;
                    s[j] = a;
                }
            }
            __syncthreads();
        }
    }
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[(size_t)blockIdx.x * k + i] = s[i];
}
