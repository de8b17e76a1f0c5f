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

// Sum over the whole block (any size up to 1024); `red` holds 32 floats. Every thread
// gets the result. Contains barriers: call from all threads.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = (threadIdx.x + threadIdx.y * blockDim.x) & 31;
    const int warp = (threadIdx.x + threadIdx.y * blockDim.x) >> 5;
    const int nwarps = (blockDim.x * blockDim.y + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.f;
    for (int i = 0; i < nwarps; ++i) s += red[i];
    return s;
}
