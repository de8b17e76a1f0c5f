// Matrix-vector products for decode: y[t, u] = epilogue(sum_k W[u, k] * x'[t, k]).
//
// Layout: W row-major [rows, K], 16-bit (DT 0 bf16, DT 1 f16). VEC 8: K % 8 == 0, a chunk is
// 8 weights (one 16-byte load); VEC 1: a chunk is one weight. x f32 [T, K] (row stride K),
// y f32 [T, ldy].
// NORM: x' = x * g * rsqrt(mean(x^2) + eps): the input's RMSNorm is folded in.
// MODE 0: y = acc (+ bias[u]).  MODE 1: y += acc (residual add in the epilogue).
// MODE 2: SwiGLU; unit u reads rows u (gate) and u + n_units (up): y = silu(g) * up.
//
// Launch: block (tpr, rpb), at most 512 threads: tpr threads share a row unit (a power of two
// up to 32, else a multiple of 32), rpb units per block; grid (blocks, T), blocks stride over
// the units. The 512 bound caps registers at 128 a thread, so every such block can launch.
// Thread x of a row owns chunks x + j * tpr, j < CH, of every row it serves (the host makes
// CH * tpr * VEC >= K). It keeps x' of those chunks in registers for the whole kernel, so no
// block-wide staging of x stands between the weights and the first product, and it keeps
// two units' weights in flight (buffers A and B, reloaded as soon as they are used). The
// first two units are requested before the dependency wait: weights never depend on the
// previous kernel. No dynamic shared memory.

// Weights of one row unit for one thread: CH chunks (and the up row's for SwiGLU).
template <int CH> struct GemvRows {
    uint4 a[CH];
    uint4 b[CH];
};

template <int DT, int VEC, int CH, int MODE>
__device__ __forceinline__ void gemv_load(const u16* __restrict__ W, int unit, int n_units, int K, int nchunks,
                                          GemvRows<CH>& r) {
    const u16* w0 = W + (size_t)unit * K;
    const u16* w1 = W + (size_t)(unit + (MODE == 2 ? n_units : 0)) * K;
#pragma unroll
    for (int j = 0; j < CH; ++j) {
        const int cc = threadIdx.x + j * blockDim.x;
        if (cc < nchunks) {
            if constexpr (VEC == 8) {
                r.a[j] = ld_stream16(w0 + (size_t)cc * 8);
                if (MODE == 2) r.b[j] = ld_stream16(w1 + (size_t)cc * 8);
            } else {
                r.a[j].x = w0[cc];
                if (MODE == 2) r.b[j].x = w1[cc];
            }
        }
    }
}

template <int DT, int VEC, int CH, int MODE>
__device__ __forceinline__ void gemv_dot(const GemvRows<CH>& r, const float (&xr)[CH][VEC], int nchunks, float& acc0,
                                         float& acc1) {
#pragma unroll
    for (int j = 0; j < CH; ++j) {
        if (threadIdx.x + j * blockDim.x < nchunks) {
            if constexpr (VEC == 8) {
                const u32 wa[4] = {r.a[j].x, r.a[j].y, r.a[j].z, r.a[j].w};
                const u32 wb[4] = {r.b[j].x, r.b[j].y, r.b[j].z, r.b[j].w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float2 p = unpack2<DT>(wa[e]);
                    acc0 += p.x * xr[j][2 * e] + p.y * xr[j][2 * e + 1];
                    if (MODE == 2) {
                        const float2 q = unpack2<DT>(wb[e]);
                        acc1 += q.x * xr[j][2 * e] + q.y * xr[j][2 * e + 1];
                    }
                }
            } else {
                acc0 += to_f32<DT>((u16)r.a[j].x) * xr[j][0];
                if (MODE == 2) acc1 += to_f32<DT>((u16)r.b[j].x) * xr[j][0];
            }
        }
    }
}

// Sums v0 and v1 over the tpr threads of each row; every thread of the row gets them.
// red: 2 x 32 floats. With tpr > 32 this crosses warps through `red` behind one barrier, so
// call it from every thread, and alternate between two `red` buffers on consecutive calls
// (a thread may reach the next call while others still read this one's).
__device__ __forceinline__ void gemv_row_sum(float& v0, float& v1, bool two, float* red) {
    const int tpr = blockDim.x;
    for (int o = (tpr < 32 ? tpr : 32) >> 1; o > 0; o >>= 1) {
        v0 += __shfl_xor_sync(0xffffffffu, v0, o);
        if (two) v1 += __shfl_xor_sync(0xffffffffu, v1, o);
    }
    if (tpr <= 32) return;
    const int wpr = tpr >> 5, row = threadIdx.y * wpr;
    if ((threadIdx.x & 31) == 0) {
        red[row + (threadIdx.x >> 5)] = v0;
        if (two) red[32 + row + (threadIdx.x >> 5)] = v1;
    }
    __syncthreads();
    v0 = 0.f;
    v1 = 0.f;
    for (int i = 0; i < wpr; ++i) {
        v0 += red[row + i];
        if (two) v1 += red[32 + row + i];
    }
}

template <int DT, int VEC, int CH, bool NORM, int MODE>
__device__ __forceinline__ void gemv_body(const u16* __restrict__ W, const float* __restrict__ x,
                                          const float* __restrict__ g, float eps,
                                          const float* __restrict__ bias, float* y, int n_units,
                                          int K, int ldy) {
    __shared__ float red[3][64];
    const int rpb = blockDim.y;
    const int t = blockIdx.y;
    const int nchunks = K / VEC;
    const int stride = gridDim.x * rpb;
    const int base0 = blockIdx.x * rpb;

    GemvRows<CH> A, B;
    {
        const int u = base0 + threadIdx.y;
        if (u < n_units) gemv_load<DT, VEC, CH, MODE>(W, u, n_units, K, nchunks, A);
        if (u + stride < n_units) gemv_load<DT, VEC, CH, MODE>(W, u + stride, n_units, K, nchunks, B);
    }
    pdl_wait();
    pdl_launch_next();

    // This thread's chunks of x' (zero past K), and the sum of squares of x over them. All
    // loads are issued before any use (indices past the end are clamped, then zeroed), so
    // the chunks cost one round trip, not CH.
    const float* xt = x + (size_t)t * K;
    float xr[CH][VEC], gr[CH][VEC];
#pragma unroll
    for (int j = 0; j < CH; ++j) {
        const int cc = min((int)threadIdx.x + j * (int)blockDim.x, nchunks - 1);
        if constexpr (VEC == 8) {
            const float4 v0 = *(const float4*)(xt + cc * 8), v1 = *(const float4*)(xt + cc * 8 + 4);
            xr[j][0] = v0.x; xr[j][1] = v0.y; xr[j][2] = v0.z; xr[j][3] = v0.w;
            xr[j][4] = v1.x; xr[j][5] = v1.y; xr[j][6] = v1.z; xr[j][7] = v1.w;
            if (NORM) {
                const float4 g0 = *(const float4*)(g + cc * 8), g1 = *(const float4*)(g + cc * 8 + 4);
                gr[j][0] = g0.x; gr[j][1] = g0.y; gr[j][2] = g0.z; gr[j][3] = g0.w;
                gr[j][4] = g1.x; gr[j][5] = g1.y; gr[j][6] = g1.z; gr[j][7] = g1.w;
            }
        } else {
            xr[j][0] = xt[cc];
            if (NORM) gr[j][0] = g[cc];
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < CH; ++j) {
        const bool in = threadIdx.x + j * blockDim.x < nchunks;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const float v = in ? xr[j][e] : 0.f;
            ss += v * v;
            xr[j][e] = NORM ? v * gr[j][e] : v;
        }
    }
    float scale = 1.f;
    if (NORM) {
        // Every row's threads together hold all of x, so each row reduces its own copy.
        float unused = 0.f;
        gemv_row_sum(ss, unused, false, red[2]);
        scale = rsqrtf(ss / (float)K + eps);
    }

    // One row unit: use buffer r (unit `base` + y), refill it with the unit two strides on,
    // reduce over the row's threads and write. Block-uniform, so the barrier inside is safe.
    auto unit_step = [&](GemvRows<CH>& r, int base, float* rd) {
        const int unit = base + threadIdx.y;
        float acc0 = 0.f, acc1 = 0.f;
        if (unit < n_units) gemv_dot<DT, VEC, CH, MODE>(r, xr, nchunks, acc0, acc1);
        if (unit + 2 * stride < n_units) gemv_load<DT, VEC, CH, MODE>(W, unit + 2 * stride, n_units, K, nchunks, r);
        gemv_row_sum(acc0, acc1, MODE == 2, rd);
        if (threadIdx.x == 0 && unit < n_units) {
            float* out = y + (size_t)t * ldy + unit;
            if (MODE == 0) *out = acc0 * scale + (bias ? bias[unit] : 0.f);
            if (MODE == 1) *out += acc0 * scale;
            if (MODE == 2) {
                const float gv = acc0 * scale, uv = acc1 * scale;
                *out = gv / (1.f + __expf(-gv)) * uv;
            }
        }
    };
    for (int base = base0; base < n_units;) {
        unit_step(A, base, red[0]);
        base += stride;
        if (base >= n_units) break;
        unit_step(B, base, red[1]);
        base += stride;
    }
}

#define GEMV(DT, VEC, CH, NORM, MODE)                                                             \
    extern "C" __global__ void __launch_bounds__(512) gemv_##DT##_##VEC##_##CH##_##NORM##_##MODE( \
        const u16* __restrict__ W, const float* __restrict__ x, const float* __restrict__ g,     \
        float eps, const float* __restrict__ bias, float* y, int n_units, int K, int ldy) {      \
        gemv_body<DT, VEC, CH, NORM, MODE>(W, x, g, eps, bias, y, n_units, K, ldy);              \
    }
#define GEMV_MODES(DT, VEC, CH) GEMV(DT, VEC, CH, 0, 0) GEMV(DT, VEC, CH, 1, 0) GEMV(DT, VEC, CH, 0, 1) GEMV(DT, VEC, CH, 1, 2)
#define GEMV_DT(DT)                                                                                                  \
    GEMV_MODES(DT, 8, 1) GEMV_MODES(DT, 8, 2) GEMV_MODES(DT, 8, 3) GEMV_MODES(DT, 8, 4) GEMV_MODES(DT, 8, 5)         \
    GEMV_MODES(DT, 8, 6) GEMV_MODES(DT, 8, 8) GEMV_MODES(DT, 1, 8)
GEMV_DT(0)
GEMV_DT(1)

// ---- Streamed GEMV (Hopper and later): the same products for one token row, with the weights
// brought into shared memory by bulk asynchronous copies (TMA) instead of by the threads.
//
// Why: the kernel above keeps only as many weight bytes in flight as its registers hold (two
// row units a thread). Here one producer thread queues whole tiles of contiguous rows (one copy
// instruction each) into a ring of `stages` tiles, so a block keeps ~90 KB in flight whatever
// its registers, and queues its first tiles before the dependency wait, while the kernel
// before it still runs.
//
// Block: nc = tpr * rpb consumer threads (thread c serves row c / tpr of each tile, chunks
// c % tpr + j * tpr, with x' of those chunks in registers as above), then one producer warp.
// A tile is rpb row units (for SwiGLU rpb gate rows, then rpb up rows at a fixed offset).
// Grid (blocks): block b owns the contiguous units [b * n / blocks, (b + 1) * n / blocks).
// Consumer warps never wait for each other: each takes a full stage (barrier `full`), adds
// its partial row sums into shared accumulators (one atomic per warp and row) and releases
// the stage (barrier `empty`, one arrival per warp); the producer refills a stage once every
// warp released it. Outputs are written once, after the last tile, by all consumers.
// Rows split over several warps (tpr > 32) add the warps' sums in the order they arrive, so
// their last bits may differ from run to run (the register kernel's order is fixed).
// Dynamic shared memory: stages tiles, then the block's accumulators (2 per unit for SwiGLU).
// Requires K % 8 == 0, W 16-byte aligned, stages <= 16, nc a multiple of 32.
// Adds the products of 8 weights (one 16-byte chunk) and x: even weights into `even`, odd
// weights into `odd` (two sums halve the chain of dependent adds).
template <int DT>
__device__ __forceinline__ void dot8(const uint4 w, const float (&x)[8], float& even, float& odd) {
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float2 p = unpack2<DT>(ws[e]);
        even += p.x * x[2 * e];
        odd += p.y * x[2 * e + 1];
    }
}

template <int DT, int CH, bool NORM, int MODE>
__device__ __forceinline__ void gemv_stream_body(const u16* __restrict__ W, const float* __restrict__ x,
                                                 const float* __restrict__ g, float eps,
                                                 const float* __restrict__ bias, float* y, int n_units, int K,
                                                 int tpr, int stages) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char tiles[];
    __shared__ __align__(8) u64 full[GEMV_MAX_STAGES], empty[GEMV_MAX_STAGES];
    __shared__ float red[32];
    const int tid = threadIdx.x, nc = blockDim.x - 32, rpb = nc / tpr;
    const int u0 = (int)((long long)n_units * blockIdx.x / gridDim.x);
    const int u1 = (int)((long long)n_units * (blockIdx.x + 1) / gridDim.x);
    const int nu = u1 - u0, ntiles = (nu + rpb - 1) / rpb;
    const int nchunks = K / 8;
    const u32 row_bytes = (u32)K * 2, half_bytes = (u32)rpb * row_bytes;
    const u32 stage_bytes = MODE == 2 ? 2 * half_bytes : half_bytes;
    float* acc = (float*)(tiles + (size_t)stages * stage_bytes);

    if (tid == nc) ring_init(full, empty, stages, nc / 32);
    __syncthreads();

    if (tid >= nc) {
        // Producer warp (one thread). Weights never depend on the previous kernel, so the
        // first tiles go out before the dependency wait.
        if (tid == nc) {
            const u64 policy = evict_first_policy();
            for (int i = 0; i < ntiles; ++i) {
                const int s = ring_acquire(i, stages, empty, stages);
                const int a = u0 + i * rpb, n = min(rpb, u1 - a);
                const u32 bytes = (u32)n * row_bytes, st = smem_addr(tiles) + (u32)s * stage_bytes;
                const u32 bar = smem_addr(&full[s]);
                ring_expect(&full[s], MODE == 2 ? 2 * bytes : bytes);
                bulk_copy(st, W + (size_t)a * K, bytes, bar, policy);
                if (MODE == 2) bulk_copy(st + half_bytes, W + (size_t)(a + n_units) * K, bytes, bar, policy);
            }
        }
        return;
    }

    pdl_wait();
    pdl_launch_next();
    const int tx = tid % tpr, ty = tid / tpr;
    // The residual (MODE 1) is read now, not after the last tile, so the end is stores only.
    for (int u = tid; u < nu; u += nc) {
        acc[u] = MODE == 1 ? y[u0 + u] : 0.f;
        if (MODE == 2) acc[nu + u] = 0.f;
    }

    float xr[CH][8];
#pragma unroll
    for (int j = 0; j < CH; ++j) {
        const int cc = min(tx + j * tpr, nchunks - 1);
        const float4 v0 = *(const float4*)(x + cc * 8), v1 = *(const float4*)(x + cc * 8 + 4);
        xr[j][0] = v0.x; xr[j][1] = v0.y; xr[j][2] = v0.z; xr[j][3] = v0.w;
        xr[j][4] = v1.x; xr[j][5] = v1.y; xr[j][6] = v1.z; xr[j][7] = v1.w;
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < CH; ++j) {
        const int cc = min(tx + j * tpr, nchunks - 1);
        const bool in = tx + j * tpr < nchunks;
        float gr[8];
        if (NORM) {
            const float4 g0 = *(const float4*)(g + cc * 8), g1 = *(const float4*)(g + cc * 8 + 4);
            gr[0] = g0.x; gr[1] = g0.y; gr[2] = g0.z; gr[3] = g0.w;
            gr[4] = g1.x; gr[5] = g1.y; gr[6] = g1.z; gr[7] = g1.w;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float v = in ? xr[j][e] : 0.f;
            ss += v * v;
            xr[j][e] = NORM ? v * gr[e] : v;
        }
    }
    // Consumers only (barrier 1): the accumulators are set, and the norm's sum of squares
    // (over the first row's threads, which hold all of x) is in `red`.
    const int width = tpr < 32 ? tpr : 32;
    float scale = 1.f;
    if (NORM) {
        for (int o = width >> 1; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (ty == 0 && (tid & 31) == 0) red[tid >> 5] = ss;
    }
    asm volatile("bar.sync 1, %0;" ::"r"(nc) : "memory");
    if (NORM) {
        float t = 0.f;
        for (int w = 0; w < (tpr + 31) / 32; ++w) t += red[w];
        scale = rsqrtf(t / (float)K + eps);
    }

    for (int i = 0; i < ntiles; ++i) {
        const int s = ring_wait_full(i, stages, full);
        const unsigned char* st = tiles + (size_t)s * stage_bytes + (size_t)ty * row_bytes;
        const int r = i * rpb + ty;
        // Two sums a row (even and odd weights) halve the chain of dependent adds.
        float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
        if (r < nu) {
#pragma unroll
            for (int j = 0; j < CH; ++j) {
                const int cc = tx + j * tpr;
                if (cc < nchunks) {
                    dot8<DT>(*(const uint4*)(st + cc * 16), xr[j], acc0, acc2);
                    if (MODE == 2) dot8<DT>(*(const uint4*)(st + half_bytes + cc * 16), xr[j], acc1, acc3);
                }
            }
        }
        acc0 += acc2;
        acc1 += acc3;
        // The stage is read: release it (one arrival per warp) before the reduction.
        ring_release(&empty[s]);
        for (int o = width >> 1; o > 0; o >>= 1) {
            acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
            if (MODE == 2) acc1 += __shfl_xor_sync(0xffffffffu, acc1, o);
        }
        if ((tx & 31) == 0 && r < nu) {
            atomicAdd(&acc[r], acc0);
            if (MODE == 2) atomicAdd(&acc[nu + r], acc1);
        }
    }
    asm volatile("bar.sync 1, %0;" ::"r"(nc) : "memory");
    for (int u = tid; u < nu; u += nc) {
        const float a = acc[u] * scale;
        if (MODE == 0) y[u0 + u] = a + (bias ? bias[u0 + u] : 0.f);
        if (MODE == 1) y[u0 + u] = acc[u];
        if (MODE == 2) {
            const float uv = acc[nu + u] * scale;
            y[u0 + u] = a / (1.f + __expf(-a)) * uv;
        }
    }
#endif
}

#define GEMV_STREAM(DT, CH, NORM, MODE)                                                                          \
    extern "C" __global__ void __launch_bounds__(544) gemv_stream_##DT##_##CH##_##NORM##_##MODE(                \
        const u16* __restrict__ W, const float* __restrict__ x, const float* __restrict__ g, float eps,          \
        const float* __restrict__ bias, float* y, int n_units, int K, int tpr, int stages) {         \
        gemv_stream_body<DT, CH, NORM, MODE>(W, x, g, eps, bias, y, n_units, K, tpr, stages);             \
    }
#define GEMV_STREAM_MODES(DT, CH) \
    GEMV_STREAM(DT, CH, 0, 0) GEMV_STREAM(DT, CH, 1, 0) GEMV_STREAM(DT, CH, 0, 1) GEMV_STREAM(DT, CH, 1, 2)
#define GEMV_STREAM_DT(DT)                                                                                 \
    GEMV_STREAM_MODES(DT, 1) GEMV_STREAM_MODES(DT, 2) GEMV_STREAM_MODES(DT, 3) GEMV_STREAM_MODES(DT, 4)   \
    GEMV_STREAM_MODES(DT, 5) GEMV_STREAM_MODES(DT, 6) GEMV_STREAM_MODES(DT, 8)
GEMV_STREAM_DT(0)
GEMV_STREAM_DT(1)
