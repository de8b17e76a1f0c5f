// Does one persistent kernel a decode step beat a chain of launches? A probe of the design
// session 33's note named: Qwen3's decoder layer (QKV, attention, output projection, gate+up
// with SwiGLU, down) on Q8_0 weights in the GPU layout (quants and f16 scales in separate
// arrays), with int8 activations and dp4a as in kernels/gemv_quant.cu, at the real shapes of
// Qwen3-0.6B and Qwen3-4B. No output head, rope or norm weights: they are the same in every
// variant (the head is bound by its bytes alone, session 26).
//
// Every block has one producer warp that streams its share of each op's weights into a ring of
// shared-memory stages by bulk copies (TMA), and consumer warps that wait for the op's inputs,
// quantize them and take the tiles. The same kernel runs a range of ops:
//   chain      one launch an op, linked by PDL as sleepy's kernels are (wait, then launch the
//              next; the producer queues its first tiles before the wait);
//   layer      one launch a layer, the ops inside linked by a counter an op in global memory
//              (every block adds one, release, once its outputs are written; the next op's
//              consumers poll it with acquire loads);
//   persistent one launch a step: the producer runs ahead across ops and layers, bounded only
//              by its ring, so the weights of the next ops stream while this op waits;
//   nodep      persistent without the waits (wrong values): what the stream and the work cost
//              alone;
//   no ahead   persistent and chain with the producer held until its op's wait has passed (no
//              weights queued ahead of a dependency), to tell the run-ahead from the launches;
//   head links persistent, with each attention block waiting only for the blocks that wrote
//              its head's rows of QKV (a flag a block) instead of for the whole grid.
// Every variant does the same arithmetic a row (the same block, warp and lanes), so their
// outputs must be equal bit for bit; layer 0 alone is also checked against a CPU reference.
// For each variant with waits, the last replay's timeline is printed by op kind (see timeline()).
//
//   nvcc -O3 -arch=sm_90a -o persistent scripts/probes/persistent.cu && ./persistent [CONTEXT]
//
// It also builds on a machine without a GPU, with nvcc from the pip wheels nvidia-cuda-nvcc,
// nvidia-cuda-crt and nvidia-cuda-runtime at one version (13.5 worked; the 13.0 wheels beside a
// newer nvvm did not). Session 34 ran a first version of it, session 35 this one (BENCHMARKS.md):
// the counter links cost more than PDL and the run-ahead lost, so the design was dropped.
#ifndef __CUDACC_RTC__  // (NVRTC compiles the device part alone: nvrtc_regs.py-style checks)
#include <cuda_runtime.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ck.cuh"
#endif

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

#define NW 8                        // consumer warps
#define THREADS ((NW + 1) * 32)     // plus the producer warp (warp 0)
#define SLOT (24 * 1024)            // bytes a ring stage
#define MAXK 9728                   // longest row
#define D 128                       // head size
#define MAXCTX 1024
static_assert(NW * 32 == 256 && D == 128, "attention takes 16 x 16 threads");

enum Kind { QKV = 0, ATTN = 1, OPROJ = 2, GATEUP = 3, DOWN = 4 };

struct Op {
    int kind, units, K, layer;  // units: output rows (gate+up: pairs of rows)
    const signed char* q;       // quants [rows][K]
    const u16* s;               // f16 scales [rows][K / 32]
};

struct Model {
    int H, NQ, NKV, I, L, ctx, G, nops;
    const Op* ops;
    float *x, *qkv, *att, *act;
    u16 *kc, *vc;        // [L][NKV][ctx + 1][D] f16
    u32* counters;       // one an op, then [op][block] flags (MODE 3)
    u64* ts;             // [op][block][3]: released, inputs ready, outputs written (ns)
};

__device__ __forceinline__ u64 now_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"r"(NW * 32) : "memory"); }
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Rows and bytes of one unit; units a tile; the block's unit range; its tiles.
__host__ __device__ inline int rows_per_unit(const Op& o) { return o.kind == GATEUP ? 2 : 1; }
__host__ __device__ inline int unit_bytes(const Op& o) { return rows_per_unit(o) * (o.K + o.K / 16); }
__host__ __device__ inline int units_per_tile(const Op& o) { return SLOT / unit_bytes(o); }
__device__ inline void block_units(const Op& o, int b, int G, int& u0, int& u1) {
    u0 = (int)((long long)o.units * b / G);
    u1 = (int)((long long)o.units * (b + 1) / G);
}

// Waits until every block has finished op `o`.
__device__ void wait_counter(const u32* c, u32 target) {
    if (threadIdx.x == 32) {
        u32 v;
        for (long long n = 0;; ++n) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
            if (v >= target) break;
            if (n > (1ll << 24)) __trap();  // a counter that never comes: an error, not a hang
        }
    }
    consumers_sync();
}

// MODE 3: wait for the blocks of op `qo` (QKV) whose rows hold query head h's q and its
// group's k and v; one consumer thread a block polls that block's flag.
__device__ void wait_head(const Model& m, int qo, int h, int G) {
    const Op q = m.ops[qo];
    const int kvh = h / (m.NQ / m.NKV), t = threadIdx.x - 32;
    const int lo[3] = {h * D, (m.NQ + kvh) * D, (m.NQ + m.NKV + kvh) * D};
    for (int bb = t; bb < G; bb += NW * 32) {
        int u0, u1;
        block_units(q, bb, G, u0, u1);
        bool need = false;
        for (int r = 0; r < 3; ++r) need |= u0 < lo[r] + D && u1 > lo[r];
        if (!need) continue;
        const u32* f = m.counters + (size_t)m.nops + (size_t)qo * G + bb;
        u32 v;
        for (long long n = 0;; ++n) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(f) : "memory");
            if (v) break;
            if (n > (1ll << 24)) __trap();
        }
    }
    consumers_sync();
}

// The op's input, RMS-normed (QKV, gate+up) and quantized to int8 in blocks of 32 values.
// Thread t holds values t + 256 i, so a warp's values of one i are one block of 32: all of
// them are loaded at once (one round trip to L2), then normed and quantized in registers.
#define MAXI ((MAXK + NW * 32 - 1) / (NW * 32))
__device__ void load_acts(const Model& m, const Op& o, signed char* aq, float* as, float* red) {
    const float* in = o.kind == OPROJ ? m.att : o.kind == DOWN ? m.act : m.x;
    const bool norm = o.kind == QKV || o.kind == GATEUP;
    const int K = o.K, t = threadIdx.x - 32, lane = t & 31, w = t >> 5;
    float v[MAXI];
#pragma unroll
    for (int i = 0; i < MAXI; ++i) v[i] = i * NW * 32 + t < K ? __ldcg(in + i * NW * 32 + t) : 0.f;
    float scale = 1.f;
    if (norm) {
        float ss = 0.f;
#pragma unroll
        for (int i = 0; i < MAXI; ++i) ss += v[i] * v[i];
        ss = warp_sum(ss);
        if (lane == 0) red[w] = ss;
        consumers_sync();
        float tot = 0.f;
        for (int i = 0; i < NW; ++i) tot += red[i];
        scale = rsqrtf(tot / K + 1e-6f);
    }
#pragma unroll
    for (int i = 0; i < MAXI; ++i) {
        if (i * NW * 32 < K) {
            const float x = v[i] * scale;
            const float amax = warp_max(fabsf(x));
            const float inv = amax > 0.f ? 127.f / amax : 0.f;
            aq[i * NW * 32 + t] = (signed char)__float2int_rn(x * inv);
            if (lane == 0) as[i * NW + w] = amax / 127.f;
        }
    }
    consumers_sync();
}

// One row's dot product with the activations: a warp, 16 bytes a lane a step.
__device__ __forceinline__ float row_dot(const signed char* wq, const u16* ws, const signed char* aq, const float* as, int K) {
    const int lane = threadIdx.x & 31;
    float acc = 0.f;
    for (int c = lane; c < K / 16; c += 32) {
        const int4 w = *(const int4*)(wq + 16 * c);
        const int4 a = *(const int4*)(aq + 16 * c);
        int d = __dp4a(w.x, a.x, 0);
        d = __dp4a(w.y, a.y, d);
        d = __dp4a(w.z, a.z, d);
        d = __dp4a(w.w, a.w, d);
        acc += (float)d * (h2f(ws[c >> 1]) * as[c >> 1]);
    }
    return warp_sum(acc);
}

// Decode attention of one query head against ctx cached positions and the new one. Scores:
// 16 lanes a position (8 dimensions, 16 bytes each), 16 positions a round over the block;
// values: 16 groups of positions x 16 groups of 8 dimensions, then the groups summed. Each
// thread issues the loads of 4 rounds before it uses them.
__device__ __forceinline__ void h8(uint4 r, float* f) {
    const u32 u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        f[2 * j] = h2f((u16)(u[j] & 0xffff));
        f[2 * j + 1] = h2f((u16)(u[j] >> 16));
    }
}
// Four rounds of one thread's cached rows (16 bytes at dimension group g), from position p0.
__device__ __forceinline__ void load_rounds(const u16* cache, int p0, int pg, int g, int ctx, uint4* r) {
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const int p = p0 + u * 16 + pg;
        r[u] = p < ctx ? __ldcg((const uint4*)(cache + (size_t)p * D + g * 8)) : make_uint4(0, 0, 0, 0);
    }
}

__device__ void attention(const Model& m, const Op& o, int h, float* sc) {
    const int t = threadIdx.x - 32, n = m.ctx + 1;
    const int kvh = h / (m.NQ / m.NKV);
    const float* q = m.qkv + h * D;
    const float* kn = m.qkv + m.NQ * D + kvh * D;
    const float* vn = m.qkv + (m.NQ + m.NKV) * D + kvh * D;
    const size_t base = ((size_t)o.layer * m.NKV + kvh) * n * D;
    u16* kc = m.kc + base;
    u16* vc = m.vc + base;
    const int g = t & 15, pg = t >> 4;  // dimension group (8 dims), position group
    float qv[8];
    for (int j = 0; j < 8; ++j) qv[j] = __ldcg(q + g * 8 + j);
    const float scale = rsqrtf((float)D);
    for (int p0 = 0; p0 < n; p0 += 64) {
        uint4 r[4];
        load_rounds(kc, p0, pg, g, m.ctx, r);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int p = p0 + u * 16 + pg;
            float k[8];
            if (p == m.ctx) {
                for (int j = 0; j < 8; ++j) k[j] = __ldcg(kn + g * 8 + j);
            } else {
                h8(r[u], k);
            }
            float s = 0.f;
            for (int j = 0; j < 8; ++j) s += qv[j] * k[j];
            for (int off = 8; off; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            if (g == 0 && p < n) sc[p] = s * scale;
        }
    }
    consumers_sync();
    const int lane = t & 31;
    float mx = -1e30f;
    for (int p = lane; p < n; p += 32) mx = fmaxf(mx, sc[p]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (int p = lane; p < n; p += 32) sum += __expf(sc[p] - mx);
    sum = warp_sum(sum);
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int p0 = 0; p0 < n; p0 += 64) {
        uint4 r[4];
        load_rounds(vc, p0, pg, g, m.ctx, r);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int p = p0 + u * 16 + pg;
            if (p >= n) continue;
            float v[8];
            if (p == m.ctx) {
                for (int j = 0; j < 8; ++j) v[j] = __ldcg(vn + g * 8 + j);
            } else {
                h8(r[u], v);
            }
            const float e = __expf(sc[p] - mx);
            for (int j = 0; j < 8; ++j) acc[j] += e * v[j];
        }
    }
    float* part = sc + MAXCTX + 1;  // [16 position groups][D]
    for (int j = 0; j < 8; ++j) part[pg * D + g * 8 + j] = acc[j];
    consumers_sync();
    if (t < D) {
        float a = 0.f;
        for (int i = 0; i < 16; ++i) a += part[i * D + t];
        m.att[h * D + t] = a / sum;
        // The first query head of a group appends the new key and value to the cache.
        if (h % (m.NQ / m.NKV) == 0) {
            kc[(size_t)m.ctx * D + t] = f2h(__ldcg(kn + t));
            vc[(size_t)m.ctx * D + t] = f2h(__ldcg(vn + t));
        }
    }
}

// MODE 0: ops [op0, op1) linked by counters, the first waiting on PDL; MODE 1: no waits;
// MODE 2: as 0, but the producer queues an op's tiles only once its consumers are past the
// op's wait (no weights ahead of the dependency); MODE 3: as 0, but attention waits only for
// the blocks that wrote its head's rows of QKV (a flag a block), not for all of them.
template <int MODE>
__global__ void __launch_bounds__(THREADS, 2) step(Model m, int op0, int op1, int stages) {
    extern __shared__ __align__(128) unsigned char smem[];
    u64* full = (u64*)smem;
    u64* empty = full + 16;
    signed char* aq = (signed char*)(smem + 256);
    float* as = (float*)(smem + 256 + MAXK);
    float* red = as + MAXK / 32;                          // NW floats; attention's scores after
    unsigned char* ring = smem + 256 + MAXK + MAXK / 8 + 4 * (NW + MAXCTX + 1 + 16 * D);
    ring = (unsigned char*)(((size_t)ring + 127) & ~(size_t)127);
    const int b = blockIdx.x, G = gridDim.x;
    volatile int* cur = (volatile int*)(smem + 2 * 16 * 8 - 4);  // MODE 2: the consumers' op
    if (threadIdx.x == 0) {
        *cur = op0 - 1;
        for (int s = 0; s < stages; ++s) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&full[s])) : "memory");
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(&empty[s])), "r"(NW) : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        // The producer: every tile of every op in order, as soon as a stage is free.
        if (threadIdx.x != 0) return;
        u64 policy;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
        int i = 0;
        for (int oi = op0; oi < op1; ++oi) {
            const Op o = m.ops[oi];
            if (o.kind == ATTN) continue;
            if (MODE == 2)
                while (*cur < oi) {
                }
            int u0, u1;
            block_units(o, b, G, u0, u1);
            const int upt = units_per_tile(o), rpu = rows_per_unit(o);
            for (int u = u0; u < u1; u += upt, ++i) {
                const int s = i % stages;
                if (i >= stages) mbar_wait(smem_addr(&empty[s]), (u32)(i / stages - 1) & 1u);
                const int rows = min(upt, u1 - u) * rpu, r0 = u * rpu;
                const u32 qb = (u32)rows * o.K, sb = (u32)rows * (o.K / 16);
                const u32 bar = smem_addr(&full[s]), dst = smem_addr(ring + (size_t)s * SLOT);
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(qb + sb) : "memory");
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
                             :: "r"(dst), "l"(o.q + (size_t)r0 * o.K), "r"(qb), "r"(bar), "l"(policy) : "memory");
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
                             :: "r"(dst + qb), "l"(o.s + (size_t)r0 * (o.K / 32)), "r"(sb), "r"(bar), "l"(policy) : "memory");
            }
        }
        return;
    }
    // The consumers.
    const int w = (threadIdx.x >> 5) - 1;
    int i = 0;
    for (int oi = op0; oi < op1; ++oi) {
        const Op o = m.ops[oi];
        if (MODE != 1) {
            if (oi == op0) {
                asm volatile("griddepcontrol.wait;" ::: "memory");
                asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
            } else if (MODE == 3 && o.kind == ATTN) {
                if (b < m.NQ) wait_head(m, oi - 1, b, G);
            } else {
                wait_counter(m.counters + oi - 1, (u32)G);
            }
        }
        u64* ts = m.ts + ((size_t)oi * G + b) * 3;
        if (threadIdx.x == 32) {
            ts[0] = now_ns();
            if (MODE == 2) *cur = oi;
        }
        if (o.kind == ATTN) {
            if (threadIdx.x == 32) ts[1] = now_ns();
            if (b < m.NQ) attention(m, o, b, red + NW);
        } else {
            load_acts(m, o, aq, as, red);
            if (threadIdx.x == 32) ts[1] = now_ns();
            int u0, u1;
            block_units(o, b, G, u0, u1);
            const int upt = units_per_tile(o), rpu = rows_per_unit(o), K = o.K;
            for (int u = u0; u < u1; u += upt, ++i) {
                const int s = i % stages;
                mbar_wait(smem_addr(&full[s]), (u32)(i / stages) & 1u);
                const int n = min(upt, u1 - u), rows = n * rpu;
                const signed char* tq = (const signed char*)(ring + (size_t)s * SLOT);
                const u16* tsc = (const u16*)(tq + (size_t)rows * K);
                for (int j = w; j < n; j += NW) {
                    if (o.kind == GATEUP) {
                        const float g = row_dot(tq + (size_t)(2 * j) * K, tsc + (size_t)(2 * j) * (K / 32), aq, as, K);
                        const float up = row_dot(tq + (size_t)(2 * j + 1) * K, tsc + (size_t)(2 * j + 1) * (K / 32), aq, as, K);
                        if ((threadIdx.x & 31) == 0) m.act[u + j] = g / (1.f + __expf(-g)) * up;
                    } else {
                        const float v = row_dot(tq + (size_t)j * K, tsc + (size_t)j * (K / 32), aq, as, K);
                        if ((threadIdx.x & 31) == 0) {
                            if (o.kind == QKV) m.qkv[u + j] = v;
                            else m.x[u + j] = __ldcg(m.x + u + j) + v;
                        }
                    }
                }
                __syncwarp();
                if ((threadIdx.x & 31) == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(&empty[s])) : "memory");
            }
        }
        // Outputs written: announce them (as cooperative groups' grid sync does).
        consumers_sync();
        if (threadIdx.x == 32) ts[2] = now_ns();
        if (MODE != 1 && threadIdx.x == 32 && oi + 1 < op1) {
            __threadfence();
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(m.counters + oi) : "memory");
            if (MODE == 3 && o.kind == QKV)
                asm volatile("st.release.gpu.global.u32 [%0], 1;" ::"l"(m.counters + m.nops + (size_t)oi * G + b) : "memory");
        }
    }
}

__device__ __forceinline__ u32 hash(u64 i, u32 seed) {
    u64 z = i * 0x9e3779b97f4a7c15ull + seed * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (u32)(z ^ (z >> 31));
}
__global__ void fill_q(signed char* p, size_t n, u32 seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (signed char)((int)(hash(i, seed) % 255u) - 127);
}
// f16 values uniform in [lo, hi).
__global__ void fill_h(u16* p, size_t n, u32 seed, float lo, float hi) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = f2h(lo + (hi - lo) * (hash(i, seed) >> 8) * (1.f / 16777216.f));
}

#ifndef __CUDACC_RTC__
// ---- host
static float h2f_host(u16 h) {
    const u32 s = (h >> 15) & 1, e = (h >> 10) & 31, f = h & 1023;
    float v = e == 0 ? std::ldexp((float)f, -24) : std::ldexp((float)(f | 1024), (int)e - 25);
    return s ? -v : v;
}

struct HostOp {
    Op op;
    std::vector<signed char> q;
    std::vector<u16> s;
};

static void quantize_ref(const std::vector<float>& v, float scale, std::vector<signed char>& q, std::vector<float>& s) {
    const int K = (int)v.size();
    q.assign(K, 0);
    s.assign(K / 32, 0.f);
    for (int b = 0; b < K / 32; ++b) {
        float amax = 0.f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[b * 32 + j] * scale));
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        for (int j = 0; j < 32; ++j) q[b * 32 + j] = (signed char)std::nearbyint(v[b * 32 + j] * scale * inv);
        s[b] = amax / 127.f;
    }
}
static float dot_ref(const HostOp& o, int row, const std::vector<signed char>& aq, const std::vector<float>& as) {
    const int K = o.op.K;
    double acc = 0.0;
    for (int b = 0; b < K / 32; ++b) {
        int d = 0;
        for (int j = 0; j < 32; ++j) d += (int)o.q[(size_t)row * K + b * 32 + j] * aq[b * 32 + j];
        acc += (double)d * h2f_host(o.s[(size_t)row * (K / 32) + b]) * as[b];
    }
    return (float)acc;
}
static void norm_ref(const std::vector<float>& x, float& scale) {
    double ss = 0;
    for (float v : x) ss += (double)v * v;
    scale = (float)(1.0 / std::sqrt(ss / x.size() + 1e-6));
}

// The last replay's clocks, medians over the layers by op kind (us): the gap from the
// previous op's last block done to this op's first block released; a block's inputs (released
// to its activations ready; median over blocks); its work (ready to outputs written; median,
// and the slowest block); the op's span (first release to last block done). Attention is
// read over its NQ blocks alone.
static void timeline(const Model& m, int nops, int G, const char* name) {
    std::vector<u64> ts((size_t)nops * G * 3);
    CK(cudaMemcpy(ts.data(), m.ts, ts.size() * 8, cudaMemcpyDeviceToHost));
    auto at = [&](int o, int b, int k) { return (double)ts[((size_t)o * G + b) * 3 + k]; };
    auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v.empty() ? 0.0 : v[v.size() / 2]; };
    const char* kinds[5] = {"qkv", "attention", "o-proj", "gate+up", "down"};
    printf("    %s, us: %-9s %7s %7s %7s %7s %7s\n", name, "op", "gap", "inputs", "work", "slowest", "span");
    for (int k = 0; k < 5; ++k) {
        std::vector<double> gap, inp, work, slow, span;
        for (int o = k; o < nops; o += 5) {
            double first = 1e300, last = 0, prev_last = 0, wmax = 0;
            std::vector<double> in_b, w_b;
            // Attention: its blocks only (the others pass it at once, without a wait).
            for (int b = 0; b < (k == ATTN ? m.NQ : G); ++b) {
                first = std::min(first, at(o, b, 0));
                last = std::max(last, at(o, b, 2));
                in_b.push_back(at(o, b, 1) - at(o, b, 0));
                w_b.push_back(at(o, b, 2) - at(o, b, 1));
                wmax = std::max(wmax, at(o, b, 2) - at(o, b, 1));
            }
            for (int b = 0; b < G && o > 0; ++b) prev_last = std::max(prev_last, at(o - 1, b, 2));
            if (o > 0) gap.push_back((first - prev_last) * 1e-3);
            inp.push_back(med(in_b) * 1e-3);
            work.push_back(med(w_b) * 1e-3);
            slow.push_back(wmax * 1e-3);
            span.push_back((last - first) * 1e-3);
        }
        printf("    %*s %-9s %7.2f %7.2f %7.2f %7.2f %7.2f\n", (int)strlen(name) + 5, "", kinds[k], med(gap), med(inp), med(work), med(slow), med(span));
    }
}

struct Config {
    const char* name;
    int H, NQ, NKV, I, L;
};

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IONBF, 0);
    const int ctx = argc > 1 ? atoi(argv[1]) : 64;  // tg128's mean context
    if (ctx < 1 || ctx > MAXCTX - 1) { printf("context 1..%d\n", MAXCTX - 1); return 1; }
    const int replays = 30;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int G = prop.multiProcessorCount;
    printf("%s, %d SMs, context %d\n", prop.name, G, ctx);
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const Config cfgs[2] = {{"qwen3-0.6b q8_0", 1024, 16, 8, 3072, 28}, {"qwen3-4b q8_0", 2560, 32, 8, 9728, 36}};
    const size_t act_bytes = 256 + MAXK + MAXK / 8 + 4 * (NW + MAXCTX + 1 + 16 * D) + 128;
    void (*const kernels[4])(Model, int, int, int) = {step<0>, step<1>, step<2>, step<3>};  // by MODE
    for (auto k : kernels) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(act_bytes + 8 * SLOT)));
    // The counters' waits need every block of a launch on the GPU at once (one an SM).
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, step<0>, THREADS, act_bytes + 8 * SLOT));
    if (per_sm < 1) { printf("a block does not fit an SM\n"); return 1; }
    printf("\n%-16s %-22s %10s %10s %9s %8s\n", "model", "variant", "us/step", "us/layer", "TB/s", "check");
    std::vector<std::string> summary;  // the table again, last (the timelines come between)
    for (const Config& c : cfgs) {
        if (c.NQ > G) { printf("attention needs a block a query head\n"); return 1; }
        const int R = (c.NQ + 2 * c.NKV) * D;
        // The ops and their weights, in one buffer per layer op.
        std::vector<Op> ops;
        size_t wbytes = 0;
        std::vector<std::pair<signed char*, u16*>> bufs;
        for (int l = 0; l < c.L; ++l) {
            const int shapes[5][3] = {{QKV, R, c.H}, {ATTN, 0, 0}, {OPROJ, c.H, c.NQ * D}, {GATEUP, c.I, c.H}, {DOWN, c.H, c.I}};
            for (auto& sh : shapes) {
                Op o = {sh[0], sh[1], sh[2], l, nullptr, nullptr};
                if (o.kind != ATTN) {
                    const size_t rows = (size_t)o.units * rows_per_unit(o);
                    signed char* q;
                    u16* s;
                    CK(cudaMalloc(&q, rows * o.K));
                    CK(cudaMalloc(&s, rows * (o.K / 32) * 2));
                    fill_q<<<1024, 256>>>(q, rows * o.K, (u32)ops.size() * 2 + 1);
                    const float s0 = 1.f / (73.f * std::sqrt((float)o.K));
                    fill_h<<<256, 256>>>(s, rows * (o.K / 32), (u32)ops.size() * 2 + 2, 0.5f * s0, 1.5f * s0);
                    o.q = q;
                    o.s = s;
                    wbytes += rows * o.K + rows * (o.K / 32) * 2;
                    bufs.push_back({q, s});
                }
                ops.push_back(o);
            }
        }
        const int nops = (int)ops.size();
        Model m = {c.H, c.NQ, c.NKV, c.I, c.L, ctx, G, nops, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
        Op* dops;
        CK(cudaMalloc(&dops, nops * sizeof(Op)));
        CK(cudaMemcpy(dops, ops.data(), nops * sizeof(Op), cudaMemcpyHostToDevice));
        m.ops = dops;
        CK(cudaMalloc(&m.x, c.H * 4));
        CK(cudaMalloc(&m.qkv, R * 4));
        CK(cudaMalloc(&m.att, c.NQ * D * 4));
        CK(cudaMalloc(&m.act, c.I * 4));
        const size_t cache = (size_t)c.L * c.NKV * (ctx + 1) * D;
        CK(cudaMalloc(&m.kc, cache * 2));
        CK(cudaMalloc(&m.vc, cache * 2));
        fill_h<<<256, 256>>>(m.kc, cache, 7777, -1.f, 1.f);
        fill_h<<<256, 256>>>(m.vc, cache, 7778, -1.f, 1.f);
        const size_t cbytes = (size_t)nops * (1 + G) * 4;  // counters and MODE 3's flags
        CK(cudaMalloc(&m.counters, cbytes));
        CK(cudaMalloc(&m.ts, (size_t)nops * G * 3 * 8));
        float* x0;
        CK(cudaMalloc(&x0, c.H * 4));
        {
            std::vector<float> hx(c.H);
            for (int k = 0; k < c.H; ++k) hx[k] = std::sin(0.37f * k) + 0.1f * std::cos(1.3f * k);
            CK(cudaMemcpy(x0, hx.data(), c.H * 4, cudaMemcpyHostToDevice));
        }
        CK(cudaDeviceSynchronize());

        // Every op's tile must fit a stage.
        for (const Op& o : ops)
            if (o.kind != ATTN && units_per_tile(o) < 1) { printf("a unit of %d bytes does not fit a stage\n", unit_bytes(o)); return 1; }

        struct Variant { const char* name; int per_launch, stages, mode; };
        const Variant vs[] = {
            {"chain, 8 stages", 1, 8, 0},
            {"chain, 3 stages", 1, 3, 0},  // two blocks fit an SM
            {"layer, 8 stages", 5, 8, 0},
            {"persistent, 8 stages", nops, 8, 0},
            {"persistent, 3 stages", nops, 3, 0},
            {"nodep, 8 stages", nops, 8, 1},
            {"persistent, no ahead", nops, 8, 2},
            {"chain, no ahead", 1, 8, 2},
            {"persistent, head links", nops, 8, 3},
        };
        // One layer alone from x0 (one launch), for the CPU reference's tight check.
        std::vector<float> x1(c.H);
        CK(cudaMemsetAsync(m.counters, 0, cbytes, st));
        CK(cudaMemcpyAsync(m.x, x0, c.H * 4, cudaMemcpyDeviceToDevice, st));
        step<0><<<G, THREADS, act_bytes + 8 * SLOT, st>>>(m, 0, 5, 8);
        CK(cudaMemcpyAsync(x1.data(), m.x, c.H * 4, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
        CK(cudaGetLastError());
        std::vector<float> ref_x;
        for (const Variant& v : vs) {
            const size_t smem = act_bytes + (size_t)v.stages * SLOT;
            auto record = [&](cudaStream_t s) {
                CK(cudaMemsetAsync(m.counters, 0, cbytes, s));
                for (int o0 = 0; o0 < nops; o0 += v.per_launch) {
                    cudaLaunchConfig_t lc = {};
                    lc.gridDim = dim3(G);
                    lc.blockDim = dim3(THREADS);
                    lc.dynamicSmemBytes = smem;
                    lc.stream = s;
                    cudaLaunchAttribute at[1];
                    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                    at[0].val.programmaticStreamSerializationAllowed = 1;
                    lc.attrs = at;
                    lc.numAttrs = o0 == 0 ? 0 : 1;
                    const int o1 = std::min(nops, o0 + v.per_launch);
                    CK(cudaLaunchKernelEx(&lc, kernels[v.mode], m, o0, o1, v.stages));
                }
            };
            cudaGraph_t g;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            record(st);
            CK(cudaStreamEndCapture(st, &g));
            cudaGraphExec_t ge;
            CK(cudaGraphInstantiate(&ge, g, 0));
            // One step from x0: the values to check.
            CK(cudaMemcpyAsync(m.x, x0, c.H * 4, cudaMemcpyDeviceToDevice, st));
            CK(cudaGraphLaunch(ge, st));
            std::vector<float> hx(c.H);
            CK(cudaMemcpyAsync(hx.data(), m.x, c.H * 4, cudaMemcpyDeviceToHost, st));
            CK(cudaStreamSynchronize(st));
            CK(cudaGetLastError());
            char check[32] = "-";
            if (v.mode != 1) {
                if (ref_x.empty()) {
                    ref_x = hx;
                    snprintf(check, sizeof check, "first");
                } else {
                    snprintf(check, sizeof check, "%s", memcmp(hx.data(), ref_x.data(), c.H * 4) == 0 ? "equal" : "DIFFERS");
                }
            }
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            for (int r = 0; r < 3; ++r) CK(cudaGraphLaunch(ge, st));
            CK(cudaEventRecord(e0, st));
            for (int r = 0; r < replays; ++r) CK(cudaGraphLaunch(ge, st));
            CK(cudaEventRecord(e1, st));
            CK(cudaStreamSynchronize(st));
            float ms = 0.f;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = 1000.0 * ms / replays;
            char line[160];
            snprintf(line, sizeof line, "%-16s %-22s %10.1f %10.2f %9.3f %8s", c.name, v.name, us, us / c.L, wbytes / us * 1e-6, check);
            printf("%s\n", line);
            summary.push_back(line);
            if (v.mode != 1) timeline(m, nops, G, v.name);
            CK(cudaEventDestroy(e0));
            CK(cudaEventDestroy(e1));
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
        }

        // The CPU reference of one step from x0, against the chain's values.
        if (c.L <= 28) {
            std::vector<HostOp> hops(nops);
            for (int i = 0; i < nops; ++i) {
                hops[i].op = ops[i];
                if (ops[i].kind == ATTN) continue;
                const size_t rows = (size_t)ops[i].units * rows_per_unit(ops[i]);
                hops[i].q.resize(rows * ops[i].K);
                hops[i].s.resize(rows * (ops[i].K / 32));
                CK(cudaMemcpy(hops[i].q.data(), ops[i].q, hops[i].q.size(), cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(hops[i].s.data(), ops[i].s, hops[i].s.size() * 2, cudaMemcpyDeviceToHost));
            }
            // Steps write only the cache's last position, which attention takes from qkv.
            std::vector<u16> kc(cache), vc(cache);
            CK(cudaMemcpy(kc.data(), m.kc, cache * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(vc.data(), m.vc, cache * 2, cudaMemcpyDeviceToHost));
            std::vector<float> x(c.H), qkv(R), att(c.NQ * D), act(c.I);
            CK(cudaMemcpy(x.data(), x0, c.H * 4, cudaMemcpyDeviceToHost));
            std::vector<signed char> aq;
            std::vector<float> as;
            auto rel_err = [&](const std::vector<float>& a, const std::vector<float>& b) {
                double num = 0, den = 0;
                for (int k = 0; k < c.H; ++k) {
                    num += (double)(a[k] - b[k]) * (a[k] - b[k]);
                    den += (double)a[k] * a[k];
                }
                return std::sqrt(num / den);
            };
            for (const HostOp& o : hops) {
                if (&o == &hops[5]) {
                    const double rel = rel_err(x, x1);
                            char line[160];
                    snprintf(line, sizeof line, "%-16s CPU reference, layer 0 alone: relative error %.2e %s", c.name, rel, rel < 1e-3 ? "ok" : "FAILED");
                    printf("%s\n", line);
                    summary.push_back(line);
                }
                float scale = 1.f;
                switch (o.op.kind) {
                case QKV:
                    norm_ref(x, scale);
                    quantize_ref(x, scale, aq, as);
                    for (int r = 0; r < R; ++r) qkv[r] = dot_ref(o, r, aq, as);
                    break;
                case ATTN:
                    for (int h = 0; h < c.NQ; ++h) {
                        const int kvh = h / (c.NQ / c.NKV), n = ctx + 1;
                        const size_t base = ((size_t)o.op.layer * c.NKV + kvh) * n * D;
                        auto kat = [&](int p, int d) { return p == ctx ? qkv[c.NQ * D + kvh * D + d] : h2f_host(kc[base + (size_t)p * D + d]); };
                        auto vat = [&](int p, int d) { return p == ctx ? qkv[(c.NQ + c.NKV) * D + kvh * D + d] : h2f_host(vc[base + (size_t)p * D + d]); };
                        std::vector<double> sc(n);
                        double mx = -1e300, sum = 0;
                        for (int p = 0; p < n; ++p) {
                            double s = 0;
                            for (int d = 0; d < D; ++d) s += (double)qkv[h * D + d] * kat(p, d);
                            sc[p] = s / std::sqrt((double)D);
                            mx = std::max(mx, sc[p]);
                        }
                        for (int p = 0; p < n; ++p) sum += std::exp(sc[p] - mx);
                        for (int d = 0; d < D; ++d) {
                            double a = 0;
                            for (int p = 0; p < n; ++p) a += std::exp(sc[p] - mx) * vat(p, d);
                            att[h * D + d] = (float)(a / sum);
                        }
                    }
                    break;
                case OPROJ:
                    quantize_ref(att, 1.f, aq, as);
                    for (int r = 0; r < c.H; ++r) x[r] += dot_ref(o, r, aq, as);
                    break;
                case GATEUP:
                    norm_ref(x, scale);
                    quantize_ref(x, scale, aq, as);
                    for (int j = 0; j < c.I; ++j) {
                        const float gg = dot_ref(o, 2 * j, aq, as), up = dot_ref(o, 2 * j + 1, aq, as);
                        act[j] = gg / (1.f + std::exp(-gg)) * up;
                    }
                    break;
                case DOWN:
                    quantize_ref(act, 1.f, aq, as);
                    for (int r = 0; r < c.H; ++r) x[r] += dot_ref(o, r, aq, as);
                    break;
                }
            }
            // Over all layers, int8 roundings that fall the other way (the GPU's rsqrtf) add up:
            // shown, not checked.
            printf("%-16s CPU reference, the whole step (chain): relative error %.2e\n", c.name, rel_err(x, ref_x));
        }
        for (auto& p : bufs) {
            CK(cudaFree(p.first));
            CK(cudaFree(p.second));
        }
        CK(cudaFree(dops));
        CK(cudaFree(m.x));
        CK(cudaFree(m.qkv));
        CK(cudaFree(m.att));
        CK(cudaFree(m.act));
        CK(cudaFree(m.kc));
        CK(cudaFree(m.vc));
        CK(cudaFree(m.counters));
        CK(cudaFree(m.ts));
        CK(cudaFree(x0));
    }
    printf("\n%-16s %-22s %10s %10s %9s %8s\n", "model", "variant", "us/step", "us/layer", "TB/s", "check");
    for (const std::string& l : summary) printf("%s\n", l.c_str());
    return 0;
}
#endif
