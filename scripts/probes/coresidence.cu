// Does the next kernel's block start on an SM while the previous kernel's block still runs
// there? A question the decode step's speed turns on (BENCHMARKS.md, session 12): sleepy's
// kernels launch their successor early (programmatic dependent launch), and a block of the
// successor that fits beside the running one can queue its weight copies before the
// dependency wait.
//
// Kernel A: one block an SM, `smem_a` bytes of dynamic shared memory, spins `spin_us`, then
// exits; it triggers its dependents at once (as sleepy's kernels do after their wait).
// Kernel B: `blocks_b` blocks, `smem_b` bytes; each block notes its SM and start time before
// its dependency wait. Printed per case: how many B blocks started on an SM before the A
// block there ended (beside it), how many SMs took two or more B blocks before the last A
// block ended (doubled up), and the same with both kernels asking for the largest
// shared-memory carveout.
//
//   nvcc -O2 -arch=sm_90 -o coresidence scripts/probes/coresidence.cu && ./coresidence
#include <cstdio>
#include <cuda_runtime.h>
#include <vector>
#include <algorithm>

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned smid() {
    unsigned s;
    asm volatile("mov.u32 %0, %smid;" : "=r"(s));
    return s;
}

__global__ void kernel_a(unsigned long long spin_ns, unsigned long long* a_end, unsigned* a_sm) {
    extern __shared__ unsigned char sm_a[];
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    const unsigned long long t0 = now_ns();
    sm_a[threadIdx.x] = 1;
    while (now_ns() - t0 < spin_ns) {
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        a_end[blockIdx.x] = now_ns();
        a_sm[blockIdx.x] = smid();
    }
}

__global__ void kernel_b(unsigned long long* b_start, unsigned* b_sm, int regs_pad) {
    extern __shared__ unsigned char sm_b[];
    if (threadIdx.x == 0) {
        b_start[blockIdx.x] = now_ns();
        b_sm[blockIdx.x] = smid();
    }
    sm_b[threadIdx.x] = 2;
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (regs_pad < 0) b_sm[0] = sm_b[threadIdx.x];
}

struct Case {
    const char* what;
    int smem_a, smem_b, threads_a, threads_b, blocks_b;
};

int main() {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    int optin = 0;
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    printf("%d SMs, %d KB shared memory a block at most\n", sms, optin / 1024);
    cudaFuncSetAttribute(kernel_a, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    cudaFuncSetAttribute(kernel_b, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    const Case cases[] = {
        {"down 143 KB then QKV 94 KB (do not fit together)", 143 << 10, 94 << 10, 544, 288, sms},
        {"down 143 KB then QKV 71 KB (fit together)", 143 << 10, 71 << 10, 544, 288, sms},
        {"gate+up 184 KB then down 143 KB", 184 << 10, 143 << 10, 544, 544, sms},
        {"O register kernel 6 KB then gate+up 184 KB", 6 << 10, 184 << 10, 256, 544, sms},
        {"small 12 KB then small 12 KB (4 an SM fit)", 12 << 10, 12 << 10, 128, 128, sms},
        {"down 143 KB then 71 KB x 2 blocks an SM", 143 << 10, 71 << 10, 544, 288, 2 * sms},
    };
    unsigned long long *a_end, *b_start;
    unsigned *b_sm, *a_sm;
    cudaMalloc(&a_end, sizeof(unsigned long long) * sms);
    cudaMalloc(&a_sm, sizeof(unsigned) * sms);
    cudaMalloc(&b_start, sizeof(unsigned long long) * 4 * sms);
    cudaMalloc(&b_sm, sizeof(unsigned) * 4 * sms);
    cudaStream_t st;
    cudaStreamCreate(&st);
    for (int carve = 0; carve < 2; ++carve) {
        int pref = carve ? 100 : -1;
        cudaFuncSetAttribute(kernel_a, cudaFuncAttributePreferredSharedMemoryCarveout, pref);
        cudaFuncSetAttribute(kernel_b, cudaFuncAttributePreferredSharedMemoryCarveout, pref);
        for (const Case& c : cases) {
            int beside = 0, doubled = 0;
            for (int rep = 0; rep < 3; ++rep) {
                cudaLaunchConfig_t ca = {};
                ca.gridDim = dim3(sms);
                ca.blockDim = dim3(c.threads_a);
                ca.dynamicSmemBytes = c.smem_a;
                ca.stream = st;
                cudaLaunchAttribute attr[1];
                attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr[0].val.programmaticStreamSerializationAllowed = 1;
                ca.attrs = attr;
                ca.numAttrs = 1;
                cudaLaunchKernelEx(&ca, kernel_a, 20000ull, a_end, a_sm);
                cudaLaunchConfig_t cb = ca;
                cb.gridDim = dim3(c.blocks_b);
                cb.blockDim = dim3(c.threads_b);
                cb.dynamicSmemBytes = c.smem_b;
                cudaLaunchKernelEx(&cb, kernel_b, b_start, b_sm, 0);
                if (cudaStreamSynchronize(st) != cudaSuccess) {
                    printf("launch failed: %s\n", cudaGetErrorString(cudaGetLastError()));
                    return 1;
                }
                std::vector<unsigned long long> ae(sms), bs(c.blocks_b);
                std::vector<unsigned> bsm(c.blocks_b), asm_(sms);
                cudaMemcpy(ae.data(), a_end, 8 * sms, cudaMemcpyDeviceToHost);
                cudaMemcpy(asm_.data(), a_sm, 4 * sms, cudaMemcpyDeviceToHost);
                cudaMemcpy(bs.data(), b_start, 8 * c.blocks_b, cudaMemcpyDeviceToHost);
                cudaMemcpy(bsm.data(), b_sm, 4 * c.blocks_b, cudaMemcpyDeviceToHost);
                const unsigned long long last_a = *std::max_element(ae.begin(), ae.end());
                // The end of the (last) A block on each SM.
                std::vector<unsigned long long> a_end_on(1024, 0);
                for (int i = 0; i < sms; ++i) a_end_on[asm_[i] & 1023] = std::max(a_end_on[asm_[i] & 1023], ae[i]);
                std::vector<int> per_sm(1024, 0);
                beside = 0;
                for (int i = 0; i < c.blocks_b; ++i) {
                    const unsigned s = bsm[i] & 1023;
                    if (bs[i] < a_end_on[s]) ++beside;
                    if (bs[i] < last_a) per_sm[s]++;
                }
                doubled = 0;
                for (int n : per_sm) doubled += n >= 2;
            }
            // The last of three runs (the first load the kernels and settle the clocks).
            printf("%-48s carveout %-7s: %3d of %3d B blocks began beside an A block; %3d SMs took 2+ B blocks before A ended\n",
                   c.what, carve ? "max" : "default", beside, c.blocks_b, doubled);
        }
    }
    return 0;
}
