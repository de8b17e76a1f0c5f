// What a kernel boundary costs in a CUDA graph, and what a flag in global memory would cost
// instead. The decode step is ~140 dependent launches a token; on an H100 each one costs
// 1.5-3 us beyond its bytes (BENCHMARKS.md, session 18: Qwen3-0.6B q8_0), and the dependency
// wait is part of that. This probe measures it apart from the work.
//
// A chain of N kernels (G blocks of 256 threads each, one graph, replayed), each reading the
// previous kernel's output and writing its own (and reading 0, 16 or 32 KB a block beside it,
// from a buffer far larger than L2), linked three ways:
//   plain  stream order, no programmatic dependent launch (PDL);
//   pdl    as sleepy's kernels: griddepcontrol.wait, then launch_dependents, then the work;
//   flag   launch_dependents first, then each block spins (with acquire loads) on a counter
//          that every block of the previous kernel increments (release) once its output is
//          written: the next kernel's blocks wait for the data, not for the previous grid to
//          end and flush.
// Blocks take 1 KB of shared memory, or 160 KB (one block an SM, as sleepy's streamed
// GEMVs: the next kernel's block cannot start beside it).
// Printed per mode: microseconds a kernel (graph replay time / N), and from per-block clocks
// (%globaltimer, whose step is printed first) the median and mean over boundaries of (first
// block of kernel i+1 past its wait) - (last block of kernel i done with its output), and the
// median of (first block of kernel i+1 started) - the same.
//
//   nvcc -O2 -arch=sm_90 -o boundary scripts/probes/boundary.cu && ./boundary
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <vector>

#include "ck.cuh"

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// The smallest step of %globaltimer seen in a loop (its resolution bounds the gaps below).
__global__ void timer_step(unsigned long long* out) {
    unsigned long long best = ~0ull, prev = now_ns();
    for (int k = 0; k < 200000; ++k) {
        const unsigned long long t = now_ns();
        if (t != prev) {
            best = t - prev < best ? t - prev : best;
            prev = t;
        }
    }
    *out = best;
}

struct Args {
    const float* big;          // the streamed bytes (beside the chain's data)
    size_t big_floats_block;   // floats each block reads of it per kernel (0: none)
    float* data;               // [N + 1][G * 256]: kernel i reads row i, writes row i + 1
    unsigned* counters;        // [N]: blocks of kernel i done (flag mode)
    unsigned long long* t_in;  // [N][G]: a block past its wait
    unsigned long long* t_out; // [N][G]: a block's output written
    unsigned long long* t_start; // [N][G]: a block's start
};

template <int MODE>  // 0 plain, 1 pdl, 2 flag
__global__ void __launch_bounds__(256) link(Args a, int i) {
    extern __shared__ float dyn[];  // only taken (one block an SM when large), barely used
    const int G = gridDim.x, tid = threadIdx.x, b = blockIdx.x;
    if (MODE == 2) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (tid == 0) a.t_start[(size_t)i * G + b] = now_ns();
    dyn[tid] = (float)tid;
    __syncthreads();
    // Where the dependency is met: the start (plain), past the wait (pdl) or the flag (flag).
    if (MODE == 0 && tid == 0) a.t_in[(size_t)i * G + b] = now_ns();
    float s = 0.f;
    // The streamed bytes do not depend on the previous kernel: read them before the wait.
    if (a.big_floats_block) {
        const float4* p = (const float4*)(a.big + ((size_t)i * G + b) * a.big_floats_block);
        for (size_t k = tid; k < a.big_floats_block / 4; k += 256) {
            const float4 v = p[k];
            s += v.x + v.y + v.z + v.w;
        }
    }
    if (MODE == 1) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
    if (MODE == 2) {
        if (i > 0) {
            if (tid == 0) {
                unsigned v;
                // A short back-off: blocks of several kernels may be polling at once. A
                // flag that never comes traps (an error, not a hang).
                for (unsigned n = 0;; ++n) {
                    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a.counters + i - 1) : "memory");
                    if (v >= (unsigned)G) break;
                    if (n > (1u << 22)) __trap();
                    __nanosleep(32);
                }
            }
            __syncthreads();
        }
    }
    if (MODE != 0 && tid == 0) a.t_in[(size_t)i * G + b] = now_ns();
    // Every block reads a value another block of the previous kernel wrote.
    const size_t row = (size_t)G * 256;
    const float prev = a.data[(size_t)i * row + ((size_t)(b + 1) % G) * 256 + tid];
    a.data[(size_t)(i + 1) * row + (size_t)b * 256 + tid] = prev + dyn[255 - tid] + (s == 12345.f ? 1.f : 0.f);
    if (MODE == 2) __threadfence();
    __syncthreads();
    if (tid == 0) {
        a.t_out[(size_t)i * G + b] = now_ns();
        if (MODE == 2) {
            __threadfence();
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.counters + i) : "memory");
        }
    }
}

static void launch(int mode, int G, size_t smem, Args a, int i, cudaStream_t st) {
    cudaLaunchConfig_t c = {};
    c.gridDim = dim3(G);
    c.blockDim = dim3(256);
    c.dynamicSmemBytes = smem;
    c.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    c.attrs = at;
    c.numAttrs = mode == 0 || i == 0 ? 0 : 1;  // kernel 0 follows the counters' memset
    if (mode == 0) CK(cudaLaunchKernelEx(&c, link<0>, a, i));
    if (mode == 1) CK(cudaLaunchKernelEx(&c, link<1>, a, i));
    if (mode == 2) CK(cudaLaunchKernelEx(&c, link<2>, a, i));
}

int main() {
    setvbuf(stdout, nullptr, _IONBF, 0);  // lines kept if a case hangs and is killed
    const int N = 100, REPLAYS = 20;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
    const int sms = prop.multiProcessorCount;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const size_t max_block_floats = 8192;  // 32 KB a block a kernel at most
    float *big, *data;
    unsigned* counters;
    unsigned long long *t_in, *t_out, *t_start;
    const int max_g = 2 * sms;
    CK(cudaMalloc(&big, (size_t)N * max_g * max_block_floats * 4));
    CK(cudaMemset(big, 0, (size_t)N * max_g * max_block_floats * 4));
    CK(cudaMalloc(&data, (size_t)(N + 1) * max_g * 256 * 4));
    CK(cudaMemset(data, 0, (size_t)(N + 1) * max_g * 256 * 4));
    CK(cudaMalloc(&counters, N * 4));
    CK(cudaMalloc(&t_in, (size_t)N * max_g * 8));
    CK(cudaMalloc(&t_out, (size_t)N * max_g * 8));
    CK(cudaMalloc(&t_start, (size_t)N * max_g * 8));
    CK(cudaDeviceSynchronize());
    timer_step<<<1, 1>>>(t_start);
    unsigned long long step_ns = 0;
    CK(cudaMemcpy(&step_ns, t_start, 8, cudaMemcpyDeviceToHost));
    printf("%%globaltimer step: %llu ns\n", step_ns);
    const char* names[3] = {"plain", "pdl", "flag"};
    const size_t big_smem = 160 * 1024;  // one block an SM, as sleepy's streamed GEMVs
    CK(cudaFuncSetAttribute(link<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)big_smem));
    CK(cudaFuncSetAttribute(link<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)big_smem));
    CK(cudaFuncSetAttribute(link<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)big_smem));
    // Gaps (us) from the last block of kernel i done to the first block of kernel i + 1 past
    // its wait ("wait") and started at all ("start"; negative: it started before i ended).
    printf("%-6s %5s %8s %9s %10s %10s %10s %10s\n", "mode", "G", "smem KB", "KB/block", "us/kernel", "wait p50", "wait mean", "start p50");
    const int cases[3][2] = {{sms, 1024}, {2 * sms, 1024}, {sms, (int)big_smem}};
    for (const auto& cs : cases) {
        const int G = cs[0];
        const size_t smem = (size_t)cs[1];
        for (size_t floats : {(size_t)0, (size_t)4096, max_block_floats}) {
            for (int mode = 0; mode < 3; ++mode) {
                Args a = {big, floats, data, counters, t_in, t_out, t_start};
                cudaGraph_t g;
                CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
                CK(cudaMemsetAsync(counters, 0, N * 4, st));
                for (int i = 0; i < N; ++i) launch(mode, G, smem, a, i, st);
                CK(cudaStreamEndCapture(st, &g));
                cudaGraphExec_t ge;
                CK(cudaGraphInstantiate(&ge, g, 0));
                CK(cudaGraphLaunch(ge, st));  // warm-up
                CK(cudaStreamSynchronize(st));
                cudaEvent_t e0, e1;
                CK(cudaEventCreate(&e0));
                CK(cudaEventCreate(&e1));
                CK(cudaEventRecord(e0, st));
                for (int r = 0; r < REPLAYS; ++r) CK(cudaGraphLaunch(ge, st));
                CK(cudaEventRecord(e1, st));
                CK(cudaStreamSynchronize(st));
                float ms = 0.f;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                // The last replay's clocks.
                std::vector<unsigned long long> tin((size_t)N * G), tout((size_t)N * G), tst((size_t)N * G);
                CK(cudaMemcpy(tin.data(), t_in, tin.size() * 8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(tout.data(), t_out, tout.size() * 8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(tst.data(), t_start, tst.size() * 8, cudaMemcpyDeviceToHost));
                std::vector<double> waits, starts;
                double sum = 0.0;
                for (int i = 0; i + 1 < N; ++i) {
                    const unsigned long long last_out = *std::max_element(tout.begin() + (size_t)i * G, tout.begin() + (size_t)(i + 1) * G);
                    const unsigned long long first_in = *std::min_element(tin.begin() + (size_t)(i + 1) * G, tin.begin() + (size_t)(i + 2) * G);
                    const unsigned long long first_st = *std::min_element(tst.begin() + (size_t)(i + 1) * G, tst.begin() + (size_t)(i + 2) * G);
                    waits.push_back(((double)first_in - (double)last_out) / 1000.0);
                    starts.push_back(((double)first_st - (double)last_out) / 1000.0);
                    sum += waits.back();
                }
                std::sort(waits.begin(), waits.end());
                std::sort(starts.begin(), starts.end());
                printf("%-6s %5d %8zu %9zu %10.2f %10.2f %10.2f %10.2f\n", names[mode], G, smem / 1024, floats * 4 / 1024, 1000.0 * ms / REPLAYS / N,
                       waits[waits.size() / 2], sum / waits.size(), starts[starts.size() / 2]);
                CK(cudaGraphExecDestroy(ge));
                CK(cudaGraphDestroy(g));
                CK(cudaEventDestroy(e0));
                CK(cudaEventDestroy(e1));
            }
        }
    }
    return 0;
}
