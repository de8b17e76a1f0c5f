// Matrix-vector products for decode: y[t, u] = epilogue(sum_k W[u, k] * x'[t, k]).
//
// Layout: W row-major [rows, K], 16-bit (DT 0 bf16, DT 1 f16), rows 16-byte aligned when
// VEC == 8 (K % 8 == 0). x f32 [T, K] (row stride K). y f32 [T, ldy].
// NORM: x' = x * g * rsqrt(mean(x^2) + eps): the RMSNorm of the input is folded in; every
//       block recomputes the scale from the x it stages anyway.
// MODE 0: y = acc (+ bias[u]).  MODE 1: y += acc (residual add in the epilogue).
// MODE 2: SwiGLU; unit u reads rows u (gate) and u + n_units (up): y = silu(g) * up.
//
// Launch: block (tpr, rpb): tpr threads (power of two) share a row unit, rpb units per
// block. Grid (blocks, T); blocks stride over groups of rpb units. Dynamic shared memory:
// (K rounded up to 4) + 64 floats. Each thread keeps U 16-byte loads in flight per row.

// The U-load batch `step` of row unit `unit` (rows unit and, for SwiGLU, unit + n_units).
template <int DT, int VEC, int U, int MODE>
__device__ __forceinline__ void gemv_load(const u16* __restrict__ W, int unit, int n_units, int K, int step,
                                          int nchunks, uint4 (&a)[U], uint4 (&b)[U]) {
    if (unit >= n_units) return;
    const int tpr = blockDim.x;
    const u16* w0 = W + (size_t)unit * K;
    const u16* w1 = W + (size_t)(unit + (MODE == 2 ? n_units : 0)) * K;
#pragma unroll
    for (int i = 0; i < U; ++i) {
        const int cc = threadIdx.x + (step * U + i) * tpr;
        if (cc < nchunks) {
            if (VEC == 8) {
                a[i] = ld_stream16(w0 + (size_t)cc * 8);
                if (MODE == 2) b[i] = ld_stream16(w1 + (size_t)cc * 8);
            } else {
                a[i].x = w0[cc];
                if (MODE == 2) b[i].x = w1[cc];
            }
        }
    }
}

template <int DT, int VEC, int U, bool NORM, int MODE>
__device__ __forceinline__ void gemv_body(const u16* __restrict__ W, const float* __restrict__ x,
                                          const float* __restrict__ g, float eps,
                                          const float* __restrict__ bias, float* y, int n_units,
                                          int K, int ldy) {
    extern __shared__ float smem[];
    float* xs = smem;
    float* red = smem + ((K + 3) & ~3);
    const int tpr = blockDim.x, rpb = blockDim.y;
    const int tid = threadIdx.y * tpr + threadIdx.x;
    const int nthreads = tpr * rpb;
    const int t = blockIdx.y;
    const int nchunks = K / VEC;
    const int steps = (nchunks + tpr * U - 1) / (tpr * U);

    // Weights never depend on the previous kernel: load this thread's first batch into
    // registers and warm L2 with the rest of the block's first rows while that kernel drains.
    int base = blockIdx.x * rpb;
    uint4 a[U], b[U];
    gemv_load<DT, VEC, U, MODE>(W, base + threadIdx.y, n_units, K, 0, nchunks, a, b);
    {
        const int nu = min(rpb, n_units - base);
        if (nu > 0) {
            const char* wb = (const char*)(W + (size_t)base * K);
            const size_t bytes = (size_t)nu * K * 2;
            for (size_t off = (size_t)tid * 128; off < bytes; off += (size_t)nthreads * 128) {
                prefetch_l2(wb + off);
                if (MODE == 2) prefetch_l2(wb + (size_t)n_units * K * 2 + off);
            }
        }
    }
    pdl_wait();
    pdl_launch_next();

    const float* xr = x + (size_t)t * K;
    float ss = 0.f;
    for (int k = tid; k < K; k += nthreads) {
        float v = xr[k];
        if (NORM) {
            ss += v * v;
            v *= g[k];
        }
        xs[k] = v;
    }
    float scale = 1.f;
    if (NORM) {
        ss = block_sum(ss, red);
        scale = rsqrtf(ss / (float)K + eps);
    }
    __syncthreads();

    // Every thread walks the same (group, step) sequence, so the barriers below are uniform.
    float acc0 = 0.f, acc1 = 0.f;
    for (int step = 0; base < n_units;) {
        const int unit = base + threadIdx.y;
        if (unit < n_units) {
#pragma unroll
            for (int i = 0; i < U; ++i) {
                const int cc = threadIdx.x + (step * U + i) * tpr;
                if (cc < nchunks) {
                    if (VEC == 8) {
                        const float4 x0 = *(const float4*)(xs + cc * 8);
                        const float4 x1 = *(const float4*)(xs + cc * 8 + 4);
                        float2 p;
                        p = unpack2<DT>(a[i].x); acc0 += p.x * x0.x + p.y * x0.y;
                        p = unpack2<DT>(a[i].y); acc0 += p.x * x0.z + p.y * x0.w;
                        p = unpack2<DT>(a[i].z); acc0 += p.x * x1.x + p.y * x1.y;
                        p = unpack2<DT>(a[i].w); acc0 += p.x * x1.z + p.y * x1.w;
                        if (MODE == 2) {
                            p = unpack2<DT>(b[i].x); acc1 += p.x * x0.x + p.y * x0.y;
                            p = unpack2<DT>(b[i].y); acc1 += p.x * x0.z + p.y * x0.w;
                            p = unpack2<DT>(b[i].z); acc1 += p.x * x1.x + p.y * x1.y;
                            p = unpack2<DT>(b[i].w); acc1 += p.x * x1.z + p.y * x1.w;
                        }
                    } else {
                        acc0 += to_f32<DT>((u16)a[i].x) * xs[cc];
                        if (MODE == 2) acc1 += to_f32<DT>((u16)b[i].x) * xs[cc];
                    }
                }
            }
        }
        if (++step < steps) {
            gemv_load<DT, VEC, U, MODE>(W, unit, n_units, K, step, nchunks, a, b);
            continue;
        }
        // Row group done: reduce over the tpr threads of each unit (shuffles inside a warp,
        // then shared memory), write, and move to the next group.
        const int width = tpr < 32 ? tpr : 32;
        for (int o = width >> 1; o > 0; o >>= 1) {
            acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
            if (MODE == 2) acc1 += __shfl_xor_sync(0xffffffffu, acc1, o);
        }
        if (tpr > 32) {
            const int wpr = tpr >> 5;
            __syncthreads();
            if ((threadIdx.x & 31) == 0) {
                red[threadIdx.y * wpr + (threadIdx.x >> 5)] = acc0;
                if (MODE == 2) red[32 + threadIdx.y * wpr + (threadIdx.x >> 5)] = acc1;
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                acc0 = 0.f;
                acc1 = 0.f;
                for (int i = 0; i < wpr; ++i) {
                    acc0 += red[threadIdx.y * wpr + i];
                    if (MODE == 2) acc1 += red[32 + threadIdx.y * wpr + i];
                }
            }
        }
        if (threadIdx.x == 0 && unit < n_units) {
            float* out = y + (size_t)t * ldy + unit;
            if (MODE == 0) *out = acc0 * scale + (bias ? bias[unit] : 0.f);
            if (MODE == 1) *out += acc0 * scale;
            if (MODE == 2) {
                const float gv = acc0 * scale, uv = acc1 * scale;
                *out = gv / (1.f + __expf(-gv)) * uv;
            }
        }
        acc0 = 0.f;
        acc1 = 0.f;
        step = 0;
        base += gridDim.x * rpb;
        if (base < n_units) gemv_load<DT, VEC, U, MODE>(W, base + threadIdx.y, n_units, K, 0, nchunks, a, b);
    }
}

#define GEMV(DT, VEC, U, NORM, MODE)                                                              \
    extern "C" __global__ void gemv_##DT##_##VEC##_##U##_##NORM##_##MODE(                       \
        const u16* __restrict__ W, const float* __restrict__ x, const float* __restrict__ g,     \
        float eps, const float* __restrict__ bias, float* y, int n_units, int K, int ldy) {      \
        gemv_body<DT, VEC, U, NORM, MODE>(W, x, g, eps, bias, y, n_units, K, ldy);               \
    }
#define GEMV_MODES(DT, VEC, U) GEMV(DT, VEC, U, 0, 0) GEMV(DT, VEC, U, 1, 0) GEMV(DT, VEC, U, 0, 1) GEMV(DT, VEC, U, 1, 2)
#define GEMV_DT(DT) GEMV_MODES(DT, 8, 1) GEMV_MODES(DT, 8, 2) GEMV_MODES(DT, 8, 4) GEMV_MODES(DT, 8, 8) GEMV_MODES(DT, 1, 4)
GEMV_DT(0)
GEMV_DT(1)
