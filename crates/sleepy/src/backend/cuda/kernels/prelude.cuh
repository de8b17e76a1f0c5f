// Helpers every kernel uses: 16-bit float conversions (by hand, so no CUDA header is needed
// at run time), streaming loads, warp and block reductions, and the Programmatic Dependent
// Launch hooks. This file is compiled first, in front of the other .cu sources, as one
// NVRTC program. Weight and cache formats: DT 0 = bf16, DT 1 = f16.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}

template <int DT> __device__ __forceinline__ float to_f32(u16 h) { return DT == 0 ? bf16_to_f32(h) : f16_to_f32(h); }
template <int DT> __device__ __forceinline__ u16 from_f32(float f) { return DT == 0 ? f32_to_bf16(f) : f32_to_f16(f); }

// The two 16-bit values packed in a 32-bit word, low half first.
template <int DT> __device__ __forceinline__ float2 unpack2(u32 w) {
    if (DT == 0) return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    return make_float2(f16_to_f32((u16)(w & 0xffffu)), f16_to_f32((u16)(w >> 16)));
}

// 16 bytes of weights that are read once: skip L1 so it keeps the activations.
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Programmatic Dependent Launch: a kernel launched with the PDL attribute may start while
// the previous one finishes; everything before pdl_wait() must not read what that kernel
// writes (weights only), and nothing may be written before it. Without the attribute both
// are no-ops. Every kernel calls pdl_wait(), so completion stays transitive along the stream.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_next() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Barriers for block_sum_of and quantize_acts: the whole block, or only its first n threads
// (whole warps, named barrier 1) where other warps of the block do something else.
struct SyncAll {
    __device__ __forceinline__ void operator()() const { __syncthreads(); }
};
struct SyncFirst {
    int n;
    __device__ __forceinline__ void operator()() const { asm volatile("bar.sync 1, %0;" ::"r"(n) : "memory"); }
};

// Sum over threads 0 .. nthreads - 1 (whole warps, at most 1024), thread `tid` giving v (a
// float, or a double); `red` holds one T a warp. Every one of them gets the result. Contains
// barriers (`sync`): call from all of them. `first`: red is not in use before (the kernel's
// first reduction), so the barrier that guards its earlier use is left out.
template <class T, class Sync>
__device__ __forceinline__ T block_sum_of(T v, T* red, int tid, int nthreads, Sync sync, bool first = false) {
    const int lane = tid & 31, warp = tid >> 5, nwarps = (nthreads + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (!first) sync();
    if (lane == 0) red[warp] = v;
    sync();
    T s = 0;
    for (int i = 0; i < nwarps; ++i) s += red[i];
    return s;
}

// Sum over the whole block (any size up to 1024).
__device__ __forceinline__ float block_sum(float v, float* red) {
    return block_sum_of(v, red, threadIdx.x + threadIdx.y * blockDim.x, blockDim.x * blockDim.y, SyncAll{});
}

// ---- Hopper pipelines (sm_90+): mbarriers and bulk asynchronous copies (TMA), for the
// streamed GEMVs (gemv.cu, gemv_quant.cu).
#define GEMV_MAX_STAGES 16

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Wait for phase `parity` of a barrier. (Polling with test_wait instead measured the same.)
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#if __CUDA_ARCH__ >= 900
    u32 done;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
#endif
}

// Queue `bytes` (a multiple of 16) from global `src` into shared `dst`; completion is
// counted on the barrier `bar` (whose expected byte count the caller raised).
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar, u64 policy) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
                 :: "r"(dst), "l"(src), "r"(bytes), "r"(bar), "l"(policy) : "memory");
#endif
}

// Set up the ring's barriers (one thread): `full[s]` completes when stage s's copies landed
// (one arrival, the producer's, plus the bytes), `empty[s]` when its `consumers` arrivals
// (one per consumer warp) released it.
__device__ __forceinline__ void ring_init(u64* full, u64* empty, int stages, int consumers) {
#if __CUDA_ARCH__ >= 900
    for (int s = 0; s < stages; ++s) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&full[s])) : "memory");
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(&empty[s])), "r"(consumers) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// The producer's turn at tile i (of a ring of `stages`): the stage to fill, once every
// consumer warp released it. The first `early` tiles (at most `stages`) go out before the
// dependency wait (weights never depend on the previous kernel); the next kernel may launch
// only after it.
__device__ __forceinline__ int ring_acquire(int i, int stages, u64* empty, int early) {
    const int s = i % stages;
    if (i == early) {
        pdl_wait();
        pdl_launch_next();
    }
    if (i >= stages) mbar_wait(smem_addr(&empty[s]), (u32)(i / stages - 1) & 1u);
    return s;
}

// A consumer's turn at tile i: its stage, once the copies landed.
__device__ __forceinline__ int ring_wait_full(int i, int stages, u64* full) {
    const int s = i % stages;
    mbar_wait(smem_addr(&full[s]), (u32)(i / stages) & 1u);
    return s;
}

// The producer's arrival on a stage's `full` barrier, announcing `bytes` of copies.
__device__ __forceinline__ void ring_expect(u64* bar, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}

// One consumer warp's release of a stage (lane 0 arrives once the warp is done with it).
__device__ __forceinline__ void ring_release(u64* bar) {
#if __CUDA_ARCH__ >= 900
    __syncwarp();
    if ((threadIdx.x & 31) == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// A policy for weights, which are read once: let them leave L2 first, ahead of activations.
__device__ __forceinline__ u64 evict_first_policy() {
    u64 policy = 0;
#if __CUDA_ARCH__ >= 900
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
#endif
    return policy;
}
