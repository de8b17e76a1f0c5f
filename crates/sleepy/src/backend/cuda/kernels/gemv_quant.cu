// Decode GEMV over quantized weights (a register kernel, and a streamed one for Hopper
// below), and dequantization of weight rows (embedding lookup, prefill tiles for cuBLAS).
// Formats and layouts: quant_units.cu.
//
// gemvq_FMT_U_NORM_MODE: y[t, u] = epilogue(sum_k W[u, k] * x'[t, k]), W one segment of rows
// in layout FMT (regions r0..r3), x f32 [T, K] (row stride K), y f32 [T, ldy].
// Each block first quantizes its token row x[t] (RMS-normed and times g when NORM) into
// shared memory in the weight format's companion int8 format; every unit (GemvUnit) is then
// one 16-byte streaming load of quants plus its scales (two for Q4_K and Q5_K's pairs),
// dotted with dp4a.
// MODE 0: y = acc (+ bias[u]).  MODE 1: y += acc.  MODE 2: SwiGLU, unit u reads rows u (gate)
// and u + n_units (up): y = silu(gate) * up.
// Launch: block (tpr, rpb): tpr threads (power of two) share a row, rpb rows per block; each
// thread keeps U 16-byte units of quants per row in flight (U = 2, 4, or 8 without SwiGLU;
// U / 2 pairs for Q4_K and Q5_K). Grid (blocks, T);
// blocks stride over groups of rpb rows. Dynamic shared memory: 3 K / 2 + 256 bytes (the
// activations, then 64 floats for reductions).
// The U-unit batch `step` of row `unit` (and, for SwiGLU, row unit + n_units).
template <int FMT, int U, int MODE>
__device__ __forceinline__ void gemvq_load(const QPtr& w, int unit, int n_units, int nb, int nu, int step,
                                           GemvUnit<FMT> (&a)[U], GemvUnit<FMT> (&b)[U]) {
    if (unit >= n_units) return;
    const int tpr = blockDim.x;
#pragma unroll
    for (int i = 0; i < U; ++i) {
        const int cc = threadIdx.x + (step * U + i) * tpr;
        if (cc < nu) {
            a[i].load(w, (size_t)unit, nb, nu, cc);
            if (MODE == 2) b[i].load(w, (size_t)unit + n_units, nb, nu, cc);
        } else {
            // Defined values for the dot below, whose result is then discarded.
            a[i] = GemvUnit<FMT>{};
            if (MODE == 2) b[i] = GemvUnit<FMT>{};
        }
    }
}

template <int FMT, int U0, bool NORM, int MODE>
__device__ __forceinline__ void gemvq_body(const QPtr& w, const float* __restrict__ x, const float* __restrict__ g,
                                           float eps, const float* __restrict__ bias, float* y, int n_units, int K,
                                           int ldy) {
    extern __shared__ uint4 qsmem[];
    u8* sm = (u8*)qsmem;
    Acts a;
    a.q = (signed char*)sm;
    a.qhi = a.q + K / 2;
    a.d32 = (float*)(sm + K);
    a.s32 = a.d32 + K / 32;
    a.s16 = (int*)(a.s32 + K / 32);
    float* red = (float*)(a.s16 + K / 16);
    const int tpr = blockDim.x, rpb = blockDim.y;
    const int tid = threadIdx.y * tpr + threadIdx.x;
    const int nthreads = tpr * rpb;
    const int t = blockIdx.y;
    // U0 counts 16-byte units of quants; a GEMV unit may span two (GemvUnit).
    constexpr int U = U0 / GemvUnit<FMT>::SPAN;
    const int nu = gemv_units<FMT>(K);           // units per row
    const int nb = FMT >= 5 ? K / 256 : K / 32;  // blocks per row
    const int steps = (nu + tpr * U - 1) / (tpr * U);

    // Weights never depend on the previous kernel: load this thread's first batch into
    // registers and warm L2 with the rest of the block's first rows while that kernel drains.
    int base = blockIdx.x * rpb;
    GemvUnit<FMT> ua[U], ub[U];
    gemvq_load<FMT, U, MODE>(w, base + threadIdx.y, n_units, nb, nu, 0, ua, ub);
    {
        const int n = min(rpb, n_units - base);
        if (n > 0) {
            const size_t row_bytes = (size_t)(FMT == 0 ? K : K / 2);  // of quants
            const u8* wb = w.r0 + (size_t)base * row_bytes;
            const size_t bytes = (size_t)n * row_bytes;
            for (size_t off = (size_t)tid * 128; off < bytes; off += (size_t)nthreads * 128) {
                prefetch_l2(wb + off);
                if (MODE == 2) prefetch_l2(wb + (size_t)n_units * row_bytes + off);
            }
        }
    }
    pdl_wait();
    pdl_launch_next();

    // The fused-norm launches (QKV, gate+up) take the one-chunk path where it applies.
    quantize_acts<FMT, NORM, NORM>(x + (size_t)t * K, g, eps, K, a, red, tid, nthreads, SyncAll{});

    // Every thread walks the same (group, step) sequence, so the barriers below are uniform.
    float acc0 = 0.f, acc1 = 0.f;
    for (int step = 0; base < n_units;) {
        const int unit = base + threadIdx.y;
        if (unit < n_units) {
            // Straight-line: every unit's activation loads can issue before the first product
            // (a unit past the row dots at a clamped index and adds nothing).
#pragma unroll
            for (int i = 0; i < U; ++i) {
                const int cc = threadIdx.x + (step * U + i) * tpr;
                const float p0 = ua[i].dot(min(cc, nu - 1), a);
                acc0 += cc < nu ? p0 : 0.f;
                if (MODE == 2) {
                    const float p1 = ub[i].dot(min(cc, nu - 1), a);
                    acc1 += cc < nu ? p1 : 0.f;
                }
            }
        }
        if (++step < steps) {
            gemvq_load<FMT, U, MODE>(w, unit, n_units, nb, nu, step, ua, ub);
            continue;
        }
        // Row group done: reduce over the tpr threads of each row (shuffles inside a warp,
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
            if (MODE == 0) *out = acc0 + (bias ? bias[unit] : 0.f);
            if (MODE == 1) *out += acc0;
            if (MODE == 2) *out = acc0 / (1.f + __expf(-acc0)) * acc1;
        }
        acc0 = 0.f;
        acc1 = 0.f;
        step = 0;
        base += gridDim.x * rpb;
        if (base < n_units) gemvq_load<FMT, U, MODE>(w, base + threadIdx.y, n_units, nb, nu, 0, ua, ub);
    }
}

#define GEMVQ(FMT, U, NORM, MODE)                                                                   \
    extern "C" __global__ void gemvq_##FMT##_##U##_##NORM##_##MODE(                                \
        const u8* r0, const u8* r1, const u8* r2, const u8* r3, const float* __restrict__ x,        \
        const float* __restrict__ g, float eps, const float* __restrict__ bias, float* y,          \
        int n_units, int K, int ldy) {                                                             \
        const QPtr w = {r0, r1, r2, r3};                                                           \
        gemvq_body<FMT, U, NORM, MODE>(w, x, g, eps, bias, y, n_units, K, ldy);                    \
    }
#define GEMVQ_MODES(FMT, U) GEMVQ(FMT, U, 0, 0) GEMVQ(FMT, U, 1, 0) GEMVQ(FMT, U, 0, 1) GEMVQ(FMT, U, 1, 2)
// Eight units in flight only without SwiGLU (two rows of eight would spill registers).
#define GEMVQ_FMT(FMT) GEMVQ_MODES(FMT, 2) GEMVQ_MODES(FMT, 4) GEMVQ(FMT, 8, 0, 0) GEMVQ(FMT, 8, 1, 0) GEMVQ(FMT, 8, 0, 1)
GEMVQ_FMT(0)
GEMVQ_FMT(1)
GEMVQ_FMT(2)
GEMVQ_FMT(3)
GEMVQ_FMT(4)
GEMVQ_FMT(5)
GEMVQ_FMT(6)
GEMVQ_FMT(7)

// ---- Streamed quantized GEMV (Hopper and later): gemv.cu's streamed design over this layout.
// One token row. A tile is rpb rows; a region stores rows contiguously (row-major block
// order), so a tile is one bulk copy a region (rounded up to 16 bytes: regions are padded,
// layout.rs), and SwiGLU tiles hold the up rows' regions after the gate rows'. Block b owns
// rows [gs G b / blocks, gs G (b + 1) / blocks) (G groups of gs rows, gs as in the body), in
// tiles of rpb rows from its first. The host keeps every copy 16-byte aligned: 8 and rpb times
// each region's row bytes, and for SwiGLU n_units times them, are multiples of 16.
// Block: nc = tpr * rpb consumer threads (at most 512), then one producer warp. The consumers quantize x into
// shared memory as gemvq_body does (while the first tiles are in flight), then thread c dots
// units c % tpr + j tpr of row c / tpr of each tile, read from the stage (SwiGLU over K-quants:
// of the list of the row's gate units, then its up units). Each warp's row sums
// go to slots of their own (tpr / 32 a row when tpr > 32), added in a fixed order at the end:
// outputs do not depend on timing.
// Dynamic shared memory: activations (3 K / 2 bytes, rounded up to 128), the stages, then the
// slots (for each row of the block's share, tpr / 32 or 1; SwiGLU twice).

// Bytes of region r per GGML block of format FMT (layout.rs, QFmt::regions); 0: no region.
template <int FMT> __device__ __forceinline__ constexpr int qregion_len(int r) {
    constexpr int len[8][4] = {{32, 2, 0, 0},   {16, 2, 0, 0},  {16, 4, 0, 0},   {16, 2, 4, 0},
                               {16, 4, 4, 0},   {128, 16, 0, 0}, {128, 16, 32, 0}, {128, 64, 16, 2}};
    return len[FMT][r];
}

template <int FMT, bool NORM, int MODE>
__device__ __forceinline__ void gemvq_stream_body(const QPtr& w, const float* __restrict__ x, const float* __restrict__ g,
                                                  float eps, const float* __restrict__ bias, float* y, int n_units,
                                                  int K, int tpr, int stages) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char qtiles[];
    __shared__ __align__(8) u64 full[GEMV_MAX_STAGES], empty[GEMV_MAX_STAGES];
    __shared__ __align__(8) float red[32];  // quantize_acts: a double a consumer warp (16)
    const int tid = threadIdx.x, nc = blockDim.x - 32, rpb = nc / tpr;
    const int nu = gemv_units<FMT>(K);
    const int nb = FMT >= 5 ? K / 256 : K / 32;
    // Each region's row bytes and its offset in a stage (the gate rows' half for SwiGLU).
    u32 rb[4], off[4], half_bytes = 0;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        rb[r] = (u32)nb * qregion_len<FMT>(r);
        off[r] = half_bytes;
        half_bytes += ((u32)rpb * rb[r] + 15u) & ~15u;
    }
    // The block's rows: an even share of the groups of gs rows, in tiles of rpb rows from its
    // first, the last one short (whole tiles would leave some blocks a tile more than others:
    // a third more for Qwen3-4B's gate+up). gs is 8 (the host checks that it aligns), or for
    // the K-quants the fewest rows (1, 2, 4 or 8) whose bytes in every region keep a copy
    // 16-byte aligned: their launches are bound by the consumers, whose work then evens out
    // (Qwen3-4B's down projection: blocks of 19 or 20 rows, not 16 or 24). Q8_0's are bound by
    // the copies, and there the finer split was slower (BENCHMARKS.md, session 23).
    int gs = FMT >= 5 ? 1 : 8;
    while (gs < 8 && ((gs * rb[0]) | (gs * rb[1]) | (gs * rb[2]) | (gs * rb[3])) % 16u != 0) gs *= 2;
    const int groups = (n_units + gs - 1) / gs;
    const int g0 = (int)((long long)groups * blockIdx.x / gridDim.x);
    const int g1 = (int)((long long)groups * (blockIdx.x + 1) / gridDim.x);
    const int u0 = gs * g0, nrows = min(gs * g1, n_units) - u0, ntiles = (nrows + rpb - 1) / rpb;
    const u32 stage_bytes = MODE == 2 ? 2 * half_bytes : half_bytes;
    unsigned char* ring = qtiles + ((3 * K / 2 + 127) & ~127);
    const int wpr = tpr > 32 ? tpr / 32 : 1;
    const int share = (groups + gridDim.x - 1) / gridDim.x * gs * wpr;
    float* slots = (float*)(ring + (size_t)stages * stage_bytes);

    if (tid == nc) ring_init(full, empty, stages, nc / 32);
    __syncthreads();

    if (tid >= nc) {
        // Producer warp (one thread): the first tiles go out before the dependency wait.
        if (tid == nc) {
            const u64 policy = evict_first_policy();
            const u8* reg[4] = {w.r0, w.r1, w.r2, w.r3};
            for (int i = 0; i < ntiles; ++i) {
                // Tiles queued before the dependency wait: every stage for the K-quants (their
                // launches are bound by the consumers, so the early data is used), one for the
                // others (bound by the copies, which would slow the previous launch's tail).
                const int s = ring_acquire(i, stages, empty, FMT >= 5 ? stages : 1);
                const int a = u0 + i * rpb, n = min(rpb, u0 + nrows - a);
                u32 bytes[4], total = 0;
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    bytes[r] = ((u32)n * rb[r] + 15u) & ~15u;
                    total += bytes[r];
                }
                ring_expect(&full[s], MODE == 2 ? 2 * total : total);
                const u32 st = smem_addr(ring) + (u32)s * stage_bytes, bar = smem_addr(&full[s]);
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    if (rb[r] == 0) continue;
                    bulk_copy(st + off[r], reg[r] + (size_t)a * rb[r], bytes[r], bar, policy);
                    if (MODE == 2) bulk_copy(st + half_bytes + off[r], reg[r] + (size_t)(a + n_units) * rb[r], bytes[r], bar, policy);
                }
            }
        }
        return;
    }

    pdl_wait();
    pdl_launch_next();
    Acts acts;
    acts.q = (signed char*)qtiles;
    acts.qhi = acts.q + K / 2;
    acts.d32 = (float*)(qtiles + K);
    acts.s32 = acts.d32 + K / 32;
    acts.s16 = (int*)(acts.s32 + K / 32);
    // Ends with a barrier of the consumers: the activations are ready for all of them.
    quantize_acts<FMT, NORM, false, true>(x, g, eps, K, acts, red, tid, nc, SyncFirst{nc});

    const int tx = tid % tpr, ty = tid / tpr;
    const int width = tpr < 32 ? tpr : 32;
    for (int i = 0; i < ntiles; ++i) {
        const int s = ring_wait_full(i, stages, full);
        const unsigned char* st = ring + (size_t)s * stage_bytes;
        // This thread's row of the stage (loads below then take row 0: no per-unit row math).
        const QPtr gate = {st + off[0] + ty * rb[0], st + off[1] + ty * rb[1], st + off[2] + ty * rb[2], st + off[3] + ty * rb[3]};
        const QPtr up = {gate.r0 + half_bytes, gate.r1 + half_bytes, gate.r2 + half_bytes, gate.r3 + half_bytes};
        const int r = i * rpb + ty;
        float acc0 = 0.f, acc1 = 0.f;
        if (MODE == 2 && FMT >= 5 && r < nrows) {
            // SwiGLU over K-quant pairs: the gate row's units and then the up row's are one list
            // of 2 nu, spread over the row's threads (Qwen3-4B: 80 pairs over 32 threads in
            // three steps, where two steps of a gate and an up pair each left 24 of 32 threads
            // idle in the second). nu is a multiple of the units a super-block, so a thread's
            // units keep their place in it (tx's low bits) in either half.
            constexpr int LP = GemvUnit<FMT>::PER_SB == 4 ? 2 : 3, UN = 4 / GemvUnit<FMT>::SPAN;
            const int lo = tx & ((1 << LP) - 1), half_sb = nu >> LP;
            // Unit j of the batch at cc: its half (up?) and its place in that row.
            const auto at = [&](int cc, int j, bool& upper) {
                const int sb = (cc >> LP) + j * (tpr >> LP);
                upper = sb >= half_sb;
                return (upper ? sb - half_sb : sb) << LP | lo;
            };
            // The row's pointers rebuilt from an offset, not `upper ? up : gate`: choosing
            // between the two structs moves them to the stack (nvrtc_regs.py, sm_90: Q4_K's frame
            // 40 -> 64 bytes, session 30's review).
            const auto row = [&](bool upper) {
                const u32 o = upper ? half_bytes : 0u;
                return QPtr{gate.r0 + o, gate.r1 + o, gate.r2 + o, gate.r3 + o};
            };
            int cc = tx;
            for (; cc + (UN - 1) * tpr < 2 * nu; cc += UN * tpr) {
                GemvUnit<FMT> ua[UN];
                bool up_[UN];
                int pc[UN];
#pragma unroll
                for (int j = 0; j < UN; ++j) {
                    pc[j] = at(cc, j, up_[j]);
                    ua[j].template load<true>(row(up_[j]), 0, nb, nu, pc[j]);
                }
#pragma unroll
                for (int j = 0; j < UN; ++j) {
                    const float p = ua[j].dot(pc[j], acts);
                    acc0 += up_[j] ? 0.f : p;
                    acc1 += up_[j] ? p : 0.f;
                }
            }
            for (; cc < 2 * nu; cc += tpr) {
                bool upper;
                const int p0 = at(cc, 0, upper);
                GemvUnit<FMT> ua;
                ua.template load<true>(row(upper), 0, nb, nu, p0);
                const float p = ua.dot(p0, acts);
                acc0 += upper ? 0.f : p;
                acc1 += upper ? p : 0.f;
            }
        } else if (r < nrows) {
            // UN units a batch, straight-line so that all their loads issue before the first
            // product; then the last units one at a time (the same order of additions).
            // K-quants stream with tpr a multiple of 8 (the host's plan): a thread's units then
            // share their place in the super-block (cc % P = tx % P, P GEMV units a
            // super-block), and writing them as (super-block, place) lets the compiler see
            // that and hoist what depends on it. UN counts 16-byte units of quants.
            constexpr int UN = (MODE == 2 ? 2 : 4) / GemvUnit<FMT>::SPAN, LP = GemvUnit<FMT>::PER_SB == 4 ? 2 : 3;
            const auto unit = [&](int cc, int j) {
                return FMT >= 5 ? ((cc >> LP) + j * (tpr >> LP)) << LP | (tx & ((1 << LP) - 1)) : cc + j * tpr;
            };
            int cc = tx;
            for (; cc + (UN - 1) * tpr < nu; cc += UN * tpr) {
                GemvUnit<FMT> ua[UN], ub[UN];
#pragma unroll
                for (int j = 0; j < UN; ++j) {
                    ua[j].template load<true>(gate, 0, nb, nu, unit(cc, j));
                    if (MODE == 2) ub[j].template load<true>(up, 0, nb, nu, unit(cc, j));
                }
#pragma unroll
                for (int j = 0; j < UN; ++j) {
                    acc0 += ua[j].dot(unit(cc, j), acts);
                    if (MODE == 2) acc1 += ub[j].dot(unit(cc, j), acts);
                }
            }
            for (; cc < nu; cc += tpr) {
                GemvUnit<FMT> ua, ub;
                ua.template load<true>(gate, 0, nb, nu, cc);
                if (MODE == 2) ub.template load<true>(up, 0, nb, nu, cc);
                acc0 += ua.dot(cc, acts);
                if (MODE == 2) acc1 += ub.dot(cc, acts);
            }
        }
        ring_release(&empty[s]);
        for (int o = width >> 1; o > 0; o >>= 1) {
            acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
            if (MODE == 2) acc1 += __shfl_xor_sync(0xffffffffu, acc1, o);
        }
        if ((tx & 31) == 0 && r < nrows) {
            slots[r * wpr + (tx >> 5)] = acc0;
            if (MODE == 2) slots[share + r * wpr + (tx >> 5)] = acc1;
        }
    }
    asm volatile("bar.sync 1, %0;" ::"r"(nc) : "memory");
    for (int u = tid; u < nrows; u += nc) {
        float a0 = 0.f, a1 = 0.f;
        for (int j = 0; j < wpr; ++j) {
            a0 += slots[u * wpr + j];
            if (MODE == 2) a1 += slots[share + u * wpr + j];
        }
        float* out = y + u0 + u;
        if (MODE == 0) *out = a0 + (bias ? bias[u0 + u] : 0.f);
        if (MODE == 1) *out += a0;
        if (MODE == 2) *out = a0 / (1.f + __expf(-a0)) * a1;
    }
#endif
}

// Two blocks an SM (shapes of two blocks an SM, and the next kernel's block beside one): at
// most 56 registers a thread. Without the 2, the f64 norm sum took some variants to 69; with
// it ptxas spills 12-64 bytes in some, outside the unit loop (sm_90 SASS).
#define GEMVQ_STREAM(FMT, NORM, MODE)                                                                   \
    extern "C" __global__ void __launch_bounds__(544, 2) gemvq_stream_##FMT##_##NORM##_##MODE(            \
        const u8* r0, const u8* r1, const u8* r2, const u8* r3, const float* __restrict__ x,            \
        const float* __restrict__ g, float eps, const float* __restrict__ bias, float* y, int n_units, \
        int K, int tpr, int stages) {                                                                   \
        const QPtr w = {r0, r1, r2, r3};                                                                \
        gemvq_stream_body<FMT, NORM, MODE>(w, x, g, eps, bias, y, n_units, K, tpr, stages);            \
    }
#define GEMVQ_STREAM_FMT(FMT) \
    GEMVQ_STREAM(FMT, 0, 0) GEMVQ_STREAM(FMT, 1, 0) GEMVQ_STREAM(FMT, 0, 1) GEMVQ_STREAM(FMT, 1, 2)
GEMVQ_STREAM_FMT(0)
GEMVQ_STREAM_FMT(1)
GEMVQ_STREAM_FMT(2)
GEMVQ_STREAM_FMT(3)
GEMVQ_STREAM_FMT(4)
GEMVQ_STREAM_FMT(5)
GEMVQ_STREAM_FMT(6)
GEMVQ_STREAM_FMT(7)

// dequant_FMT_OUT: out row r (0 .. R-1) = weight row (ids ? ids[r] : row0 + r), dequantized,
// as f32 (OUT 0, the embedding lookup) or bf16 (OUT 1, a prefill tile for cuBLAS). out is
// [R, K] row-major. Grid (R, ceil(nu / 128)), block 128: one thread per 16-byte unit.
template <int FMT, int OUT>
__device__ __forceinline__ void dequant_body(const QPtr& w, const u32* ids, int row0, int K, void* out) {
    pdl_wait();
    pdl_launch_next();
    const int nu = FMT == 0 ? K / 16 : K / 32;
    const int nb = FMT >= 5 ? K / 256 : K / 32;
    const int cc = blockIdx.y * 128 + threadIdx.x;
    if (cc >= nu) return;
    const size_t r = blockIdx.x;
    const size_t row = ids ? (size_t)ids[r] : (size_t)row0 + r;
    QUnit<FMT> u;
    u.load(w, row, nb, nu, cc);
    float lo[16], hi[16];
    int vlo, vhi;
    u.values(cc, lo, hi, vlo, vhi);
    if (OUT == 0) {
        float4* o = (float4*)((float*)out + r * K + vlo);
#pragma unroll
        for (int i = 0; i < 4; ++i) o[i] = make_float4(lo[4 * i], lo[4 * i + 1], lo[4 * i + 2], lo[4 * i + 3]);
        if (vhi >= 0) {
            o = (float4*)((float*)out + r * K + vhi);
#pragma unroll
            for (int i = 0; i < 4; ++i) o[i] = make_float4(hi[4 * i], hi[4 * i + 1], hi[4 * i + 2], hi[4 * i + 3]);
        }
    } else {
        u32 p[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) p[i] = (u32)f32_to_bf16(lo[2 * i]) | ((u32)f32_to_bf16(lo[2 * i + 1]) << 16);
        uint4* o = (uint4*)((u16*)out + r * K + vlo);
        o[0] = make_uint4(p[0], p[1], p[2], p[3]);
        o[1] = make_uint4(p[4], p[5], p[6], p[7]);
        if (vhi >= 0) {
#pragma unroll
            for (int i = 0; i < 8; ++i) p[i] = (u32)f32_to_bf16(hi[2 * i]) | ((u32)f32_to_bf16(hi[2 * i + 1]) << 16);
            o = (uint4*)((u16*)out + r * K + vhi);
            o[0] = make_uint4(p[0], p[1], p[2], p[3]);
            o[1] = make_uint4(p[4], p[5], p[6], p[7]);
        }
    }
}

#define DEQUANT(FMT, OUT)                                                                           \
    extern "C" __global__ void dequant_##FMT##_##OUT(const u8* r0, const u8* r1, const u8* r2,      \
                                                     const u8* r3, const u32* ids, int row0, int K, \
                                                     void* out) {                                   \
        const QPtr w = {r0, r1, r2, r3};                                                            \
        dequant_body<FMT, OUT>(w, ids, row0, K, out);                                               \
    }
#define DEQUANT_FMT(FMT) DEQUANT(FMT, 0) DEQUANT(FMT, 1)
DEQUANT_FMT(0)
DEQUANT_FMT(1)
DEQUANT_FMT(2)
DEQUANT_FMT(3)
DEQUANT_FMT(4)
DEQUANT_FMT(5)
DEQUANT_FMT(6)
DEQUANT_FMT(7)
