// Tensor-core path of decode attention (MMA: from the switch at four heads a block, attn.rs):
// a warp's share of a chunk's cached positions, for attn_decode_body in decode_attention.cu,
// which also holds the kernels (attn_decode_mma_*).
//
// Why: at long contexts the scalar loop (decode_attention.cu) runs at about a quarter of the
// memory bandwidth, bound by issue (scores by 8 lanes and shuffles, unpacking, a rescale each
// batch). Here each
// warp takes 16 cached positions at a time: S = Q K^T and O += P V by mma.m16n8k16 (bf16 in,
// f32 accumulate), the block's query heads as rows 0..HB-1 of the 16 (the rest zero).
// Q is split into bf16 high and low parts (two MMAs), so scores keep about 16 bits of Q; P
// too, so the weights keep about 16 bits; the cache is bf16 already.
// Fragments (PTX ISA, mma.m16n8k16 .bf16): lane = 4 g + t; A a0 = (row g, k 2t..2t+1),
// a1 = row g + 8, a2 = (row g, k 2t+8..2t+9), a3 = row g + 8; B b0 = (k 2t..2t+1, col g),
// b1 = k + 8; C c0..c1 = (row g, cols 2t..2t+1), c2..c3 = row g + 8.
// Each lane loads 16 bytes of a K or V row (8 dims), so the reduction index of S is permuted
// within each span of 32 dims the same way in Q's fragments and K's: of span sp, step st
// (two per span), k 2t..2t+1 is dim sp*32 + 8t + 4st and k 2t+8.. is dim sp*32 + 8t + 4st + 2.
// V comes transposed by movmatrix from the same 16-byte loads, word w (of 4) of span sp
// making n-tile (sp, w), whose column 2t + e is dim sp*32 + 8t + 2w + e.
__device__ __forceinline__ u32 bf16x2_rn(float lo, float hi) {
    u32 d;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#else
    d = 0u;  // unreachable: the MMA kernels exist from sm_80 (decode_attention.cu)
#endif
    return d;
}
// x as bf16 high parts h and the rest r, each pair packed: x ~= h + r to about 16 bits.
__device__ __forceinline__ void bf16x2_split(float lo, float hi, u32& h, u32& r) {
    h = bf16x2_rn(lo, hi);
    const float2 hv = unpack2<0>(h);
    r = bf16x2_rn(lo - hv.x, hi - hv.y);
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], u32 a0, u32 a2, u32 b0, u32 b1) {
    // Rows 8..15 of A are zero (at most 8 query heads a block): a1 = a3 = 0.
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ u32 movmatrix_t(u32 x) {
    u32 y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}
__device__ __forceinline__ u32 word(const uint4& v, int w) { return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w; }

// A warp's tile of 16 cached positions from `base`: this lane's 16 bytes of each span of the
// K and V rows base + g (n-tile 0 of S; k rows 0..7 of P V) and base + 8 + g. Rows past the
// cache's end are zero (their scores are masked, and P V must not meet stale NaNs there).
// kb, vb: the cache at the chunk's first position and this KV head; kvd: a position's stride.
template <int D>
struct MmaTile {
    uint4 k0[D / 32], k1[D / 32], v0[D / 32], v1[D / 32];
};
// K or V (KV: 0 or 1) of the tile; mma_load_tile both.
template <int D, int KV>
__device__ __forceinline__ void mma_load_half(MmaTile<D>& tl, const u16* b, int kvd, int ncache, int base, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const bool r0 = base + g < ncache, r1 = base + 8 + g < ncache;
    const size_t o0 = (size_t)(base + g) * kvd + 8 * t, o1 = o0 + (size_t)8 * kvd;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int sp = 0; sp < D / 32; ++sp) {
        const uint4 x0 = r0 ? *(const uint4*)(b + o0 + sp * 32) : zero;
        const uint4 x1 = r1 ? *(const uint4*)(b + o1 + sp * 32) : zero;
        if constexpr (KV == 0) {
            tl.k0[sp] = x0;
            tl.k1[sp] = x1;
        } else {
            tl.v0[sp] = x0;
            tl.v1[sp] = x1;
        }
    }
}
template <int D>
__device__ __forceinline__ void mma_load_tile(MmaTile<D>& tl, const u16* kb, const u16* vb, int kvd, int ncache, int base, int lane) {
    mma_load_half<D, 0>(tl, kb, kvd, ncache, base, lane);
    mma_load_half<D, 1>(tl, vb, kvd, ncache, base, lane);
}

// One warp's share of the cached positions [0, ncache) of a chunk (tiles of 16 from 16 warp,
// strided by 64), as slot `warp` of the block's merge: its running max, sum and accumulators
// per head (sm_m, sm_l [slot * HB + g], sm_acc [(slot * HB + g) * D + d]). qs: the block's
// HB query heads, normed, roped and scaled. tl: the warp's first tile, loaded (before the
// dependency wait: earlier steps wrote it).
template <int D, int HB>
__device__ __forceinline__ void attn_mma_slot(const float* qs, MmaTile<D>& tl, const u16* kb, const u16* vb, int kvd, int ncache,
                                              int warp, int lane, float* sm_m, float* sm_l, float* sm_acc) {
    constexpr int SP = D / 32;
    static_assert(HB <= 8, "query heads a block fill rows 0..7");
    const int g = lane >> 2, t = lane & 3;
    u32 qh[SP][2][2], ql[SP][2][2];
#pragma unroll
    for (int sp = 0; sp < SP; ++sp)
#pragma unroll
        for (int st = 0; st < 2; ++st)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int d = sp * 32 + 8 * t + 4 * st + 2 * h;
                const float x0 = g < HB ? qs[g * D + d] : 0.f, x1 = g < HB ? qs[g * D + d + 1] : 0.f;
                bf16x2_split(x0, x1, qh[sp][st][h], ql[sp][st][h]);
            }
    float o[SP][4][4];
#pragma unroll
    for (int sp = 0; sp < SP; ++sp)
#pragma unroll
        for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[sp][w][e] = 0.f;
    float m = NEG_INF, l = 0.f;
    for (int base = warp * 16; base < ncache; base += 64) {
        // The next tile's K is loaded once this one's scores are taken, its V once this one's
        // P V is done, into the registers just freed (as the scalar loop does).
        const int next = base + 64;
        const uint4 (&k0)[SP] = tl.k0, (&k1)[SP] = tl.k1, (&v0)[SP] = tl.v0, (&v1)[SP] = tl.v1;
        float s0[4] = {0.f, 0.f, 0.f, 0.f}, s1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int st = 0; st < 2; ++st) {
                const u32 b00 = word(k0[sp], 2 * st), b01 = word(k0[sp], 2 * st + 1);
                const u32 b10 = word(k1[sp], 2 * st), b11 = word(k1[sp], 2 * st + 1);
                mma_bf16(s0, qh[sp][st][0], qh[sp][st][1], b00, b01);
                mma_bf16(s0, ql[sp][st][0], ql[sp][st][1], b00, b01);
                mma_bf16(s1, qh[sp][st][0], qh[sp][st][1], b10, b11);
                mma_bf16(s1, ql[sp][st][0], ql[sp][st][1], b10, b11);
            }
        if (next < ncache) mma_load_half<D, 0>(tl, kb, kvd, ncache, next, lane);
        // Row g's scores: positions base + 2t, +1 (tile 0) and base + 8 + 2t, +1 (tile 1).
        float s[4] = {s0[0], s0[1], s1[0], s1[1]};
        const int pj[4] = {base + 2 * t, base + 2 * t + 1, base + 8 + 2 * t, base + 9 + 2 * t};
        float mx = NEG_INF;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (pj[i] >= ncache) s[i] = NEG_INF;
            mx = fmaxf(mx, s[i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Position base is in the cache, so mx is finite.
        const float mn = fmaxf(m, mx), corr = __expf(m - mn);
        float p[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) p[i] = __expf(s[i] - mn);
        // This lane's share of the sum; the quad's shares add up after the loop.
        l = l * corr + (p[0] + p[1]) + (p[2] + p[3]);
        m = mn;
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                o[sp][w][0] *= corr;
                o[sp][w][1] *= corr;
            }
        u32 ph0, pl0, ph2, pl2;
        bf16x2_split(p[0], p[1], ph0, pl0);
        bf16x2_split(p[2], p[3], ph2, pl2);
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const u32 b0 = movmatrix_t(word(v0[sp], w)), b1 = movmatrix_t(word(v1[sp], w));
                mma_bf16(o[sp][w], ph0, ph2, b0, b1);
                mma_bf16(o[sp][w], pl0, pl2, b0, b1);
            }
        if (next < ncache) mma_load_half<D, 1>(tl, vb, kvd, ncache, next, lane);
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (g < HB) {
        if (t == 0) {
            sm_m[warp * HB + g] = m;
            sm_l[warp * HB + g] = l;
        }
        float* a = sm_acc + (size_t)(warp * HB + g) * D;
#pragma unroll
        for (int sp = 0; sp < SP; ++sp)
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                a[sp * 32 + 8 * t + 2 * w] = o[sp][w][0];
                a[sp * 32 + 8 * t + 2 * w + 1] = o[sp][w][1];
            }
    }
}
