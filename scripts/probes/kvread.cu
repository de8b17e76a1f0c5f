// How fast can one layer's K/V be read at depth 4096, as decode attention must read it?
// On an H100, Qwen3-4B's decode attention at depth 4096 (8 KV heads of 128 dims, 4,097
// positions, 16.8 MB a layer) takes 17 us alone (Nsight Compute), 1 TB/s, and 13.9 us a layer
// inside the decode graph (BENCHMARKS.md, session 24). This probe reads the same bytes with
// no arithmetic, to tell the access pattern's cost from the kernel's:
//   layout pos  the cache as sleepy keeps it: [position][KV head][dim], so a head's row is
//               256 bytes every 2 KB
//   layout head [KV head][position][dim]: a head's rows contiguous
// Grid: KV heads x chunks (blocks of `threads`), each block its head's positions of one chunk;
// 16 lanes a row (16 bytes each), `unroll` rows a thread in flight for K and for V. 36 layers
// (a buffer far larger than L2), launched back to back; printed: us a launch and TB/s.
//
//   nvcc -O3 -arch=sm_90 -o kvread scripts/probes/kvread.cu && ./kvread
#include <cuda_runtime.h>
#include <cstdio>
#include <initializer_list>

#include "ck.cuh"

constexpr int KVH = 8, D = 128, LAYERS = 36, MAXSEQ = 4160, NPOS = 4097;
constexpr size_t LAYER_ELEMS = (size_t)MAXSEQ * KVH * D;

template <int U, bool HEAD_MAJOR>
__global__ void kvread(const uint4* __restrict__ k, const uint4* __restrict__ v, int chunk, unsigned* out) {
    const int h = blockIdx.x, c = blockIdx.y;
    const int p0 = c * chunk, p1 = min(p0 + chunk, NPOS);
    const int sub = threadIdx.x & 15, rows = blockDim.x / 16;
    unsigned acc = 0;
    for (int p = p0 + threadIdx.x / 16; p < p1; p += rows * U) {
        uint4 a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int q = p + u * rows;
            const size_t row = HEAD_MAJOR ? (size_t)h * MAXSEQ + q : (size_t)q * KVH + h;
            if (q < p1) {
                a[u] = k[row * (D / 8) + sub];
                b[u] = v[row * (D / 8) + sub];
            } else {
                a[u] = b[u] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) acc ^= a[u].x ^ a[u].w ^ b[u].y ^ b[u].z;
    }
    if (acc == 0x12345678u) out[0] = acc;  // keeps the loads
}

template <int U, bool HM>
void run(const char* layout, int threads, int chunks, const uint4* k, const uint4* v, unsigned* out) {
    const int chunk = ((NPOS + chunks - 1) / chunks + 31) & ~31;
    const int nc = (NPOS + chunk - 1) / chunk;
    auto launch = [&](int l) {
        kvread<U, HM><<<dim3(KVH, nc), threads>>>(k + (size_t)l * LAYER_ELEMS / 8, v + (size_t)l * LAYER_ELEMS / 8, chunk, out);
    };
    for (int l = 0; l < LAYERS; ++l) launch(l);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int reps = 5;
    CK(cudaEventRecord(e0));
    for (int r = 0; r < reps; ++r)
        for (int l = 0; l < LAYERS; ++l) launch(l);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = 1e3 * ms / (reps * LAYERS);
    const double bytes = 2.0 * NPOS * KVH * D * 2;
    printf("layout %-4s threads %3d unroll %d chunks %3d (blocks %4d): %6.2f us a layer, %.2f TB/s\n", layout, threads, U, nc,
           nc * KVH, us, bytes / us / 1e6);
}

int main() {
    uint4 *k, *v;
    unsigned* out;
    const size_t bytes = LAYERS * LAYER_ELEMS * 2;
    CK(cudaMalloc(&k, bytes));
    CK(cudaMalloc(&v, bytes));
    CK(cudaMalloc(&out, 4));
    CK(cudaMemset(k, 1, bytes));
    CK(cudaMemset(v, 2, bytes));
    for (int chunks : {17, 33, 66}) {
        for (int threads : {128, 256}) {
            run<1, false>("pos", threads, chunks, k, v, out);
            run<2, false>("pos", threads, chunks, k, v, out);
            run<4, false>("pos", threads, chunks, k, v, out);
            run<1, true>("head", threads, chunks, k, v, out);
            run<4, true>("head", threads, chunks, k, v, out);
        }
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
