// Quantized weight formats on the GPU: how one 16-byte unit of quants is loaded, dotted with
// int8 activations and dequantized. Used by gemv_quant.cu (decode GEMV, embedding rows and
// prefill weight tiles). backend/cuda/quant/emul.rs mirrors this file line by line on the CPU;
// its tests check the index math against the CPU reference, so change both together.
//
// Weight layout (written by backend/cuda/quant/layout.rs): each GGML block is split into up to
// four regions R0..R3; a region is an array over all blocks of the matrix in row-major block
// order (block index = row * nb + j, nb blocks per row), so every field is aligned:
//   FMT 0 Q8_0: R0 qs[32]   R1 d f16
//   FMT 1 Q4_0: R0 qs[16]   R1 d f16
//   FMT 2 Q4_1: R0 qs[16]   R1 (d, m) f16 x2
//   FMT 3 Q5_0: R0 qs[16]   R1 d f16            R2 qh u32
//   FMT 4 Q5_1: R0 qs[16]   R1 (d, m) f16 x2    R2 qh u32
//   FMT 5 Q4_K: R0 qs[128]  R1 d, dmin, scales (16 B, the 12 scale bytes rearranged: QK45)
//   FMT 6 Q5_K: R0 qs[128]  R1 as Q4_K                   R2 qh[32]
//   (Q4_K and Q5_K's R0 units are in a row's even-odd order: k45_pos)
//   FMT 7 Q6_K: R0 ql[128]  R1 qh[64]           R2 scales i8[16]   R3 d f16
// A unit is 16 bytes of R0; a row is units 0 .. NU-1 (NU = K/16 for Q8_0, K/32 otherwise) and
// unit cc of row r is at R0 + 16 * (r * NU + cc), or for Q4_K and Q5_K at
// R0 + 16 * (r * NU + k45_pos(cc, NU)). A unit holds one group of 16 values (Q8_0)
// or two, "lo" and "hi" (low and high nibbles), at the value offsets unit_lo / unit_hi.
//
// Activations (shared memory, filled by quantize_acts in the companion format of the weight
// format, as quant::prepare_acts does on the CPU): q int8 [K]; d32 [K/32] the scale of each
// 32 values; s32 [K/32] the f16-rounded d * sum of the 32 quants (Q8_1 only); s16 [K/16] the
// integer sum of each 16 quants. For the K-quants (Q8_K activations) they are in unit order
// instead (act_slot): the 16 values unit cc dots with its lo group at q[16 cc], those of its
// hi group at qhi[16 cc] (qhi = q + K/2; for Q4_K and Q5_K at 16 k45_pos(cc, K / 32), as their
// weights), and in place of s16 (and d32) an 8-byte record per
// unit, ((uint2*)s16)[cc]: the int16 sums of the lo and hi groups, then the f32 scale. So a
// unit reads its activations with three conflict-free loads at addresses linear in cc (for a
// Q4_K / Q5_K pair, linear in pc within each half, and one 16-byte load of both records).

typedef unsigned char u8;

struct QPtr {
    const u8* r0;
    const u8* r1;
    const u8* r2;
    const u8* r3;
};

struct Acts {
    signed char* q;
    signed char* qhi;
    float* d32;
    float* s32;
    int* s16;
};

// Four weight bytes (signed, or unsigned 0..255 with U) times four activation bytes, plus c.
template <bool U = false> __device__ __forceinline__ int dp4a(u32 a, int b, int c) {
    int d;
    if (U) asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    else asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Sum over 16 values of weight bytes (4 per word, value order) times activation bytes.
template <bool U = false> __device__ __forceinline__ int dot16(u32 w0, u32 w1, u32 w2, u32 w3, const signed char* a) {
    const int4 v = *(const int4*)a;
    return dp4a<U>(w3, v.w, dp4a<U>(w2, v.z, dp4a<U>(w1, v.y, dp4a<U>(w0, v.x, 0))));
}

// a.lo * b.byte0 + a.hi * b.byte1 + c (LO) or with bytes 2 and 3 (!LO): a holds two int16.
template <bool LO> __device__ __forceinline__ int dp2a(u32 a, u32 b, int c) {
    int d;
    if (LO) asm("dp2a.lo.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    else asm("dp2a.hi.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

__device__ __forceinline__ float f16r(float f) { return f16_to_f32(f32_to_f16(f)); }

// Bits 0..3 of b to bit 4 of bytes 0..3 (the 5th bit of four 5-bit quants): the multiply
// puts copies of b 7 bits apart, so bit i lands on bit 8 i.
__device__ __forceinline__ u32 spread4(u32 b) { return (((b & 0xFu) * 0x00204081u) & 0x01010101u) << 4; }

__device__ __forceinline__ float lo_f16(u32 w) { return f16_to_f32((u16)(w & 0xffffu)); }
__device__ __forceinline__ float hi_f16(u32 w) { return f16_to_f32((u16)(w >> 16)); }

// Byte i (0..3) of w as an unsigned / signed value.
__device__ __forceinline__ int ubyte(u32 w, int i) { return (int)((w >> (8 * i)) & 0xffu); }
__device__ __forceinline__ int sbyte(u32 w, int i) { return (int)(signed char)((w >> (8 * i)) & 0xffu); }

template <int FMT> struct QUnit;

// A unit's 16 bytes of quants: from global memory, read once (SH false), or from a stage in
// shared memory (SH true: the streamed kernel). The other fields are plain loads either way.
template <bool SH> __device__ __forceinline__ uint4 ld_quants(const u8* p) {
    if (SH) return *(const uint4*)p;
    return ld_stream16(p);
}

// ---- Q8_0: a unit is half a block, 16 values.
template <> struct QUnit<0> {
    uint4 q;
    float d;
    template <bool SH = false>
    __device__ __forceinline__ void load(const QPtr& w, size_t row, int nb, int nu, int cc) {
        q = ld_quants<SH>(w.r0 + 16 * (row * nu + cc));
        d = f16_to_f32(((const u16*)w.r1)[row * nb + (cc >> 1)]);
    }
    __device__ __forceinline__ float dot(int cc, const Acts& a) const {
        const int v = 16 * cc;
        return d * a.d32[v >> 5] * (float)dot16(q.x, q.y, q.z, q.w, a.q + v);
    }
    __device__ __forceinline__ void values(int cc, float* lo, float* hi, int& vlo, int& vhi) const {
        vlo = 16 * cc;
        vhi = -1;
        const u32 ws[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 16; ++i) lo[i] = __fmul_rn((float)sbyte(ws[i >> 2], i & 3), d);
    }
};

// ---- Q4_0 .. Q5_1: a unit is one block of 32: value j < 16 in the low nibble of byte j,
// value 16 + j in its high nibble; Q5 formats take bit j of qh as the 5th bit of value j.
template <int FMT> struct QLegacy {
    uint4 q;
    u32 dm;  // d (low half), m (high half, Q4_1 / Q5_1)
    u32 qh;
    static constexpr bool AFFINE = FMT == 2 || FMT == 4;
    static constexpr bool FIVE = FMT == 3 || FMT == 4;
    template <bool SH = false>
    __device__ __forceinline__ void load(const QPtr& w, size_t row, int nb, int nu, int cc) {
        const size_t b = row * nb + cc;
        q = ld_quants<SH>(w.r0 + 16 * b);
        dm = AFFINE ? ((const u32*)w.r1)[b] : (u32)((const u16*)w.r1)[b];
        qh = FIVE ? ((const u32*)w.r2)[b] : 0u;
    }
    // The quants of word i (values 4i..4i+3) of the lo group and of the hi group.
    __device__ __forceinline__ u32 lo_word(u32 qw, int i) const {
        u32 r = qw & 0x0F0F0F0Fu;
        if (FIVE) r |= spread4(qh >> (4 * i));
        return r;
    }
    __device__ __forceinline__ u32 hi_word(u32 qw, int i) const {
        u32 r = (qw >> 4) & 0x0F0F0F0Fu;
        if (FIVE) r |= spread4(qh >> (16 + 4 * i));
        return r;
    }
    __device__ __forceinline__ float dot(int cc, const Acts& a) const {
        const int v = 32 * cc;
        const int lo = dot16(lo_word(q.x, 0), lo_word(q.y, 1), lo_word(q.z, 2), lo_word(q.w, 3), a.q + v);
        const int hi = dot16(hi_word(q.x, 0), hi_word(q.y, 1), hi_word(q.z, 2), hi_word(q.w, 3), a.q + v + 16);
        const float d = lo_f16(dm), da = a.d32[cc];
        if (AFFINE) return d * da * (float)(lo + hi) + hi_f16(dm) * a.s32[cc];
        const int off = FIVE ? 16 : 8;
        return d * da * (float)(lo + hi - off * (a.s16[2 * cc] + a.s16[2 * cc + 1]));
    }
    __device__ __forceinline__ void values(int cc, float* lo, float* hi, int& vlo, int& vhi) const {
        vlo = 32 * cc;
        vhi = 32 * cc + 16;
        const u32 ws[4] = {q.x, q.y, q.z, q.w};
        const float d = lo_f16(dm), m = hi_f16(dm);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 l = lo_word(ws[i], i), h = hi_word(ws[i], i);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (AFFINE) {
                    lo[4 * i + j] = __fadd_rn(__fmul_rn((float)ubyte(l, j), d), m);
                    hi[4 * i + j] = __fadd_rn(__fmul_rn((float)ubyte(h, j), d), m);
                } else {
                    const int off = FIVE ? 16 : 8;
                    lo[4 * i + j] = __fmul_rn((float)(ubyte(l, j) - off), d);
                    hi[4 * i + j] = __fmul_rn((float)(ubyte(h, j) - off), d);
                }
            }
        }
    }
};
template <> struct QUnit<1> : QLegacy<1> {};
template <> struct QUnit<2> : QLegacy<2> {};
template <> struct QUnit<3> : QLegacy<3> {};
template <> struct QUnit<4> : QLegacy<4> {};

// ---- Q4_K / Q5_K: unit cc is bytes 16 w of super-block sb's 128 (w = cc % 8): chunk
// c = w / 2 of 64 values, offset l0 = 16 (w % 2); low nibbles are values 64c + l0 + j of
// sub-block 2c, high nibbles 64c + 32 + l0 + j of sub-block 2c + 1. Q5_K: bit 2c (2c + 1)
// of qh[l0 + j] is the 5th bit of the low (high) value.
// The 12 scale bytes hold the 6-bit scales s0..s7 and mins m0..m7 of the 8 sub-blocks. At
// upload (layout.rs) they are rearranged so that chunk c's four, [s 2c, s 2c+1, m 2c, m 2c+1],
// come out as the bytes of one word in a few operations: their low nibbles are the bytes of
// meta.y (chunks 0 and 1) or meta.z (2 and 3), chunk c & 1 in the high nibbles; their top two
// bits are bits 2c, 2c + 1 of the bytes of meta.w.
// Where unit cc of a Q4_K / Q5_K row of nu units sits in R0 and in the activations (layout.rs
// writes it so): the row's even units first, then its odd ones. A GEMV pair's two units
// (2 pc and 2 pc + 1, QK45Pair) are then 16 bytes at pc in each half, so a warp's loads of
// either half are contiguous (pairs of adjacent units took two passes of the shared-memory
// banks a load, and were slower: BENCHMARKS.md, session 25).
__device__ __forceinline__ int k45_pos(int cc, int nu) { return (cc & 1) * (nu >> 1) + (cc >> 1); }

template <int FMT> struct QK45 {
    uint4 q;
    uint4 meta;
    uint4 qh;
    static constexpr bool FIVE = FMT == 6;
    template <bool SH = false>
    __device__ __forceinline__ void load(const QPtr& w, size_t row, int nb, int nu, int cc) {
        const size_t sb = row * nb + (cc >> 3);
        q = ld_quants<SH>(w.r0 + 16 * (row * nu + k45_pos(cc, nu)));
        meta = *(const uint4*)(w.r1 + 16 * sb);
        if (FIVE) qh = *(const uint4*)(w.r2 + 32 * sb + 16 * (cc & 1));
    }
    // Bytes [s0, s1, m0, m1]: scale and min of sub-blocks 2c and 2c + 1.
    __device__ __forceinline__ static u32 scale_word(const uint4& meta, int c) {
        const u32 lo = ((c < 2 ? meta.y : meta.z) >> (4 * (c & 1))) & 0x0F0F0F0Fu;
        return lo | (((meta.w >> (2 * c)) & 0x03030303u) << 4);
    }
    __device__ __forceinline__ static u32 lo_word(u32 qw, u32 hw, int c) {
        u32 r = qw & 0x0F0F0F0Fu;
        if (FIVE) r |= ((hw >> (2 * c)) & 0x01010101u) << 4;
        return r;
    }
    __device__ __forceinline__ static u32 hi_word(u32 qw, u32 hw, int c) {
        u32 r = (qw >> 4) & 0x0F0F0F0Fu;
        if (FIVE) r |= ((hw >> (2 * c + 1)) & 0x01010101u) << 4;
        return r;
    }
    __device__ __forceinline__ static int vlo_of(int cc) { return 256 * (cc >> 3) + 64 * ((cc & 7) >> 1) + 16 * (cc & 1); }
    __device__ __forceinline__ void values(int cc, float* lo, float* hi, int& vlo, int& vhi) const {
        const int c = (cc & 7) >> 1;
        vlo = vlo_of(cc);
        vhi = vlo + 32;
        const u32 sm = scale_word(meta, c);
        const float d = lo_f16(meta.x), dmin = hi_f16(meta.x);
        const float d0 = __fmul_rn(d, (float)ubyte(sm, 0)), d1 = __fmul_rn(d, (float)ubyte(sm, 1));
        const float n0 = __fmul_rn(dmin, (float)ubyte(sm, 2)), n1 = __fmul_rn(dmin, (float)ubyte(sm, 3));
        const u32 ws[4] = {q.x, q.y, q.z, q.w};
        const u32 hs[4] = {FIVE ? qh.x : 0u, FIVE ? qh.y : 0u, FIVE ? qh.z : 0u, FIVE ? qh.w : 0u};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 l = lo_word(ws[i], hs[i], c), h = hi_word(ws[i], hs[i], c);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                lo[4 * i + j] = __fsub_rn(__fmul_rn(d0, (float)ubyte(l, j)), n0);
                hi[4 * i + j] = __fsub_rn(__fmul_rn(d1, (float)ubyte(h, j)), n1);
            }
        }
    }
};
template <> struct QUnit<5> : QK45<5> {};
template <> struct QUnit<6> : QK45<6> {};

// ---- Q4_K / Q5_K in the decode GEMVs: a pair of units, 2c and 2c + 1 of a super-block (bytes
// 32c .. 32c + 31 of its 128: the 64 values of sub-blocks 2c and 2c + 1). The two share chunk
// c's scale word, the super-block's d and dmin and the activations' scale, so those are taken
// once for 64 values, and each sub-block's 32 products go to one integer sum. Pair pc of a row
// (np = K / 64 of them) is super-block pc / 4, chunk c = pc % 4, units 2 pc and 2 pc + 1.
template <int FMT> struct QK45Pair {
    using Q = QK45<FMT>;
    static constexpr bool FIVE = FMT == 6;
    uint4 q0, q1;
    uint4 meta;
    uint4 h0, h1;
    template <bool SH = false>
    __device__ __forceinline__ void load(const QPtr& w, size_t row, int nb, int np, int pc) {
        const size_t sb = row * nb + (pc >> 2);
        const u8* p = w.r0 + 16 * (2 * row * np + pc);  // k45_pos: even units, then odd
        q0 = ld_quants<SH>(p);
        q1 = ld_quants<SH>(p + 16 * np);
        meta = *(const uint4*)(w.r1 + 16 * sb);
        if (FIVE) {
            h0 = *(const uint4*)(w.r2 + 32 * sb);
            h1 = *(const uint4*)(w.r2 + 32 * sb + 16);
        }
    }
    __device__ __forceinline__ float dot(int pc, const Acts& a) const {
        const int c = pc & 3;
        // The units' activations, as their quants: at 16 pc in the even and the odd half
        // (which starts K / 4 bytes on: half of qhi - q).
        const int odd = (int)(a.qhi - a.q) >> 1;
        const signed char* alo = a.q + 16 * pc;
        const signed char* ahi = a.qhi + 16 * pc;
        // Two chains a group, added: half the dependent steps of one chain of eight.
        int lo, hi;
        if (FIVE) {
            lo = dot16(Q::lo_word(q0.x, h0.x, c), Q::lo_word(q0.y, h0.y, c), Q::lo_word(q0.z, h0.z, c), Q::lo_word(q0.w, h0.w, c), alo) +
                 dot16(Q::lo_word(q1.x, h1.x, c), Q::lo_word(q1.y, h1.y, c), Q::lo_word(q1.z, h1.z, c), Q::lo_word(q1.w, h1.w, c), alo + odd);
            hi = dot16(Q::hi_word(q0.x, h0.x, c), Q::hi_word(q0.y, h0.y, c), Q::hi_word(q0.z, h0.z, c), Q::hi_word(q0.w, h0.w, c), ahi) +
                 dot16(Q::hi_word(q1.x, h1.x, c), Q::hi_word(q1.y, h1.y, c), Q::hi_word(q1.z, h1.z, c), Q::hi_word(q1.w, h1.w, c), ahi + odd);
        } else {
            constexpr u32 L = 0x0F0F0F0Fu, H = 0xF0F0F0F0u;
            lo = dot16(q0.x & L, q0.y & L, q0.z & L, q0.w & L, alo) + dot16(q1.x & L, q1.y & L, q1.z & L, q1.w & L, alo + odd);
            // High nibbles in place (16 times the value): the sum is an exact multiple of 16.
            hi = (dot16<true>(q0.x & H, q0.y & H, q0.z & H, q0.w & H, ahi) + dot16<true>(q1.x & H, q1.y & H, q1.z & H, q1.w & H, ahi + odd)) >> 4;
        }
        const u32 sm = Q::scale_word(meta, c);
        // Both units' records (int16 sums of the lo and hi groups, then the scale): the sums
        // of 32 values of sub-blocks 2c and 2c + 1 are theirs added, so the mins weigh each.
        const uint4 rec = ((const uint4*)a.s16)[pc];
        // |lo|, |hi| over 32 values may pass int16 (dp2a's operands), so these are products.
        const int sc = lo * (int)(sm & 0xffu) + hi * (int)((sm >> 8) & 0xffu);
        const int mn = dp2a<false>(rec.z, sm, dp2a<false>(rec.x, sm, 0));
        const float da = __uint_as_float(rec.y);
        const float dx = lo_f16(meta.x) * da, dmin = hi_f16(meta.x) * da;
        return dx * (float)sc - dmin * (float)mn;
    }
};

// The decode GEMVs' unit of each format: QUnit, or for Q4_K and Q5_K the pair above. SPAN:
// 16-byte units of quants it covers; PER_SB: GEMV units a super-block (K-quants).
template <int FMT> struct GemvUnit : QUnit<FMT> {
    static constexpr int SPAN = 1;
    static constexpr int PER_SB = 8;
};
template <> struct GemvUnit<5> : QK45Pair<5> {
    static constexpr int SPAN = 2;
    static constexpr int PER_SB = 4;
};
template <> struct GemvUnit<6> : QK45Pair<6> {
    static constexpr int SPAN = 2;
    static constexpr int PER_SB = 4;
};
// GEMV units of a row of K values.
template <int FMT> __device__ __forceinline__ int gemv_units(int K) {
    return (FMT == 0 ? K / 16 : K / 32) / GemvUnit<FMT>::SPAN;
}

// ---- Q6_K: unit cc is bytes 16 w of super-block sb's ql (w = cc % 8): half h = w / 4,
// j = w % 4. Low nibbles are values 128h + 16j + i, high nibbles those + 64; their top two
// bits are in qh[32h + 16 (j % 2) + i] at bit s (low) and s + 4 (high), s = 2 when j >= 2.
// Value v of the super-block has scale v / 16 and is d * scale * (q - 32).
template <> struct QUnit<7> {
    uint4 q;
    uint4 qh;
    uint4 sc;
    float d;
    template <bool SH = false>
    __device__ __forceinline__ void load(const QPtr& w, size_t row, int nb, int nu, int cc) {
        const size_t sb = row * nb + (cc >> 3);
        const int wi = cc & 7;
        q = ld_quants<SH>(w.r0 + 16 * (row * nu + cc));
        qh = *(const uint4*)(w.r1 + 64 * sb + 32 * (wi >> 2) + 16 * (wi & 1));
        sc = *(const uint4*)(w.r2 + 16 * sb);
        d = f16_to_f32(((const u16*)w.r3)[sb]);
    }
    __device__ __forceinline__ static u32 lo_word(u32 qw, u32 hw, int s) {
        return (qw & 0x0F0F0F0Fu) | (((hw >> s) & 0x03030303u) << 4);
    }
    __device__ __forceinline__ static u32 hi_word(u32 qw, u32 hw, int s) {
        return ((qw >> 4) & 0x0F0F0F0Fu) | (((hw >> (s + 4)) & 0x03030303u) << 4);
    }
    __device__ __forceinline__ static int vlo_of(int cc) { return 256 * (cc >> 3) + 128 * ((cc & 7) >> 2) + 16 * (cc & 3); }
    // Scales of the lo group (8h + j) and the hi group (8h + j + 4).
    __device__ __forceinline__ void scales(int cc, int& slo, int& shi) const {
        const int h = (cc & 7) >> 2, j = cc & 3;
        slo = sbyte(h ? sc.z : sc.x, j);
        shi = sbyte(h ? sc.w : sc.y, j);
    }
    __device__ __forceinline__ float dot(int cc, const Acts& a) const {
        const int s = (cc & 3) >= 2 ? 2 : 0;
        const int lo = dot16(lo_word(q.x, qh.x, s), lo_word(q.y, qh.y, s), lo_word(q.z, qh.z, s), lo_word(q.w, qh.w, s), a.q + 16 * cc);
        const int hi = dot16(hi_word(q.x, qh.x, s), hi_word(q.y, qh.y, s), hi_word(q.z, qh.z, s), hi_word(q.w, qh.w, s), a.qhi + 16 * cc);
        const uint2 rec = ((const uint2*)a.s16)[cc];  // int16 sums of the lo and hi groups, scale
        const int slo_sum = (int)(short)(rec.x & 0xffffu), shi_sum = (int)rec.x >> 16;
        int slo, shi;
        scales(cc, slo, shi);
        const float dx = d * __uint_as_float(rec.y);
        return dx * (float)(slo * (lo - 32 * slo_sum) + shi * (hi - 32 * shi_sum));
    }
    __device__ __forceinline__ void values(int cc, float* lo, float* hi, int& vlo, int& vhi) const {
        const int s = (cc & 3) >= 2 ? 2 : 0;
        vlo = vlo_of(cc);
        vhi = vlo + 64;
        int slo, shi;
        scales(cc, slo, shi);
        const float dl = __fmul_rn(d, (float)slo), dh = __fmul_rn(d, (float)shi);
        const u32 ws[4] = {q.x, q.y, q.z, q.w};
        const u32 hs[4] = {qh.x, qh.y, qh.z, qh.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 l = lo_word(ws[i], hs[i], s), h = hi_word(ws[i], hs[i], s);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                lo[4 * i + j] = __fmul_rn(dl, (float)(ubyte(l, j) - 32));
                hi[4 * i + j] = __fmul_rn(dh, (float)(ubyte(h, j) - 32));
            }
        }
    }
};

// Values 8 i .. 8 i + 7 of the row (zeros past nchunks chunks), RMS-normed and times g when
// NORM, in the CPU's order (x * scale * g).
template <bool NORM>
__device__ __forceinline__ void load_chunk(const float* __restrict__ x, const float* __restrict__ g, float scale, int i,
                                           int nchunks, float (&v)[8]) {
    if (i >= nchunks) {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = 0.f;
        return;
    }
    const float4 a0 = ((const float4*)x)[2 * i], a1 = ((const float4*)x)[2 * i + 1];
    v[0] = a0.x; v[1] = a0.y; v[2] = a0.z; v[3] = a0.w;
    v[4] = a1.x; v[5] = a1.y; v[6] = a1.z; v[7] = a1.w;
    if (NORM) {
        const float4 g0 = ((const float4*)g)[2 * i], g1 = ((const float4*)g)[2 * i + 1];
        const float gs[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = v[j] * scale * gs[j];
    }
}

// The activation format each weight format is dotted with (see quant::prepare_acts).
template <int FMT> struct ActOf { static constexpr int value = FMT >= 5 ? 2 : (FMT == 2 || FMT == 4) ? 1 : 0; };

// Where chunk i (values 8i .. 8i + 7) of the activations goes in q (x) and the s16 slot of
// its 16 values (y): value order, or for the K-quants unit order (see Acts above).
template <int FMT> __device__ __forceinline__ int2 act_slot(int i, int K) {
    if (FMT < 5) return make_int2(8 * i, i >> 1);
    const int sb = i >> 5, r = (8 * i) & 255;
    // Q6_K: unit w = 4 (r / 128) + (r / 16) % 4, its hi group 64 values on; Q4_K / Q5_K:
    // unit w = 2 (r / 64) + (r / 16) % 2, its hi group 32 values on.
    const int p = FMT == 7 ? (r >> 6) & 1 : (r >> 5) & 1;
    const int cc = 8 * sb + (FMT == 7 ? 4 * (r >> 7) + ((r >> 4) & 3) : 2 * (r >> 6) + ((r >> 4) & 1));
    return make_int2(p * (K / 2) + 16 * (FMT == 7 ? cc : k45_pos(cc, K / 32)) + (r & 15), 2 * cc + p);
}

// Chunk i (values v) into the shared activations. Every lane of the warp calls it (the
// shuffles combine 4 lanes into a 32-block, or the warp into a 256-block for ACT 2).
template <int FMT>
__device__ __forceinline__ void quantize_chunk(const float (&v)[8], int i, int nchunks, int K, int lane, const Acts& a) {
    constexpr int ACT = ActOf<FMT>::value;
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    if (ACT == 2) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 8));
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 16));
    }
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    float d;
    if (ACT == 2) d = amax != 0.f ? 1.f / id : 0.f;
    else d = f16r(amax / 127.f);
    int sum = 0;
    u32 p0 = 0, p1 = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int q = __float2int_rn(v[j] * id);
        sum += q;
        if (j < 4) p0 |= ((u32)q & 0xffu) << (8 * j);
        else p1 |= ((u32)q & 0xffu) << (8 * (j - 4));
    }
    const int s16 = sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    const int s32 = s16 + __shfl_xor_sync(0xffffffffu, s16, 2);
    if (i < nchunks) {
        const int2 at = act_slot<FMT>(i, K);
        *(uint2*)(a.q + at.x) = make_uint2(p0, p1);
        if ((lane & 1) == 0) {
            if (ACT == 2) {
                // The unit's record: int16 sums of its lo and hi groups, then the scale
                // (written for both groups: the same value).
                ((short*)a.s16)[4 * (at.y >> 1) + (at.y & 1)] = (short)s16;
                ((float*)a.s16)[2 * (at.y >> 1) + 1] = d;
            } else {
                a.s16[at.y] = s16;
            }
        }
        if ((lane & 3) == 0 && ACT != 2) {
            a.d32[i >> 2] = d;
            if (ACT == 1) a.s32[i >> 2] = f16r(amax / 127.f * (float)s32);
        }
    }
}

// The RMS norm's scale from this thread's share `ss` of the sum of squares, as the CPU's
// rmsnorm_row takes it: squares rounded to f32, summed in f64, the mean rounded to f32. The
// order of the f64 sum then (almost) never changes the mean, so the normed activations, and
// their int8 quants, are the CPU's. red: room for one double a warp (`first`: not in use
// before, the kernel's first reduction). Contains barriers.
template <class Sync>
__device__ __forceinline__ float rms_scale(double ss, float* red, int tid, int nthreads, int K, float eps, Sync sync,
                                           bool first = false) {
    const double sum = block_sum_of(ss, (double*)red, tid, nthreads, sync, first);
    const float mean = (float)(sum / (double)K);
    return 1.f / sqrtf(mean + eps);
}

// quantize_acts for rows of at most one chunk a thread, as the kernel's first use of `red`:
// one chunk's registers (no second's), the norm's f64 sum in two chains, one barrier less.
// On an H200 (BENCHMARKS.md, session 11) Qwen3-0.6B q8_0 went 0.504 -> 0.498 ms a token with
// it; in the streamed kernels the same path was slower (session 10), so they keep the general one.
template <int FMT, bool NORM, class Sync>
__device__ __forceinline__ void quantize_acts_one(const float* __restrict__ x, const float* __restrict__ g, float eps,
                                                  int K, const Acts& a, float* red, int tid, int nthreads, Sync sync) {
    const int lane = tid & 31, nchunks = K / 8, i = tid;
    float v[8];
    load_chunk<false>(x, g, 1.f, i, nchunks, v);
    if (NORM) {
        float gv[8];
        load_chunk<false>(g, g, 1.f, i, nchunks, gv);
        // The order moves only the last bits of the f64 sum, which the mean's rounding to f32
        // (almost) never sees.
        double s0 = 0.0, s1 = 0.0;
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            s0 += (double)(v[j] * v[j]);
            s1 += (double)(v[j + 1] * v[j + 1]);
        }
        const float scale = rms_scale(s0 + s1, red, tid, nthreads, K, eps, sync, true);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = v[j] * scale * gv[j];
    }
    quantize_chunk<FMT>(v, i, nchunks, K, lane, a);
    sync();
}

// Quantize the row x [K] into the block's shared activations in the companion format of
// weight format FMT (ActOf: 0 Q8_0, per 32 values, scale rounded to f16; 1 Q8_1, Q8_0 plus
// the f16-rounded d * sum of each 32; 2 Q8_K, per 256 values, f32 scale, in unit order),
// matching quant::prepare_acts bit for bit. With NORM, x is RMS-normed with the CPU's scale
// (rms_scale) and multiplied by g first, in the CPU's order (x * scale * g). Each thread takes
// 8 consecutive values, so 4 lanes share a 32-block and a warp a 256-block. K % 32 == 0
// (% 256 for ACT 2). Threads tid = 0 .. nthreads - 1 (whole warps) take part; it contains
// barriers (`sync`), so each of them calls it. ONE: rows of one chunk a thread take
// quantize_acts_one (then `red` must be unused before). THREE: rows of three chunks a thread
// without the norm take them in one round (the streamed kernels: in the register kernels the
// third chunk's registers cost occupancy).
template <int FMT, bool NORM, bool ONE = false, bool THREE = false, class Sync>
__device__ __forceinline__ void quantize_acts(const float* __restrict__ x, const float* __restrict__ g, float eps, int K,
                                              const Acts& a, float* red, int tid, int nthreads, Sync sync) {
    const int lane = tid & 31;
    const int nchunks = K / 8;
    if (ONE && nchunks <= nthreads) return quantize_acts_one<FMT, NORM>(x, g, eps, K, a, red, tid, nthreads, sync);
    if (nchunks <= 2 * nthreads) {
        // At most two chunks a thread (every decode GEMV's K): x is read once, into registers,
        // and the norm's sum is taken from them, so only one load of x waits on L2.
        const int base = tid - lane, i0 = base + lane, i1 = base + nthreads + lane;
        float v0[8], v1[8], g0[8], g1[8];
        load_chunk<false>(x, g, 1.f, i0, nchunks, v0);
        load_chunk<false>(x, g, 1.f, i1, nchunks, v1);
        if (NORM) {
            // g with x, so that the sum's barriers do not hold up a second load.
            load_chunk<false>(g, g, 1.f, i0, nchunks, g0);
            load_chunk<false>(g, g, 1.f, i1, nchunks, g1);
            double ss = 0.0;
#pragma unroll
            for (int j = 0; j < 8; ++j) ss += (double)(v0[j] * v0[j]) + (double)(v1[j] * v1[j]);
            const float scale = rms_scale(ss, red, tid, nthreads, K, eps, sync);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                v0[j] = v0[j] * scale * g0[j];
                v1[j] = v1[j] * scale * g1[j];
            }
        }
        quantize_chunk<FMT>(v0, i0, nchunks, K, lane, a);
        if (base + nthreads < nchunks) quantize_chunk<FMT>(v1, i1, nchunks, K, lane, a);
        sync();
        return;
    }
    if (THREE && !NORM && nchunks <= 3 * nthreads) {
        // Three chunks a thread, all requested before any is used (Qwen3-4B's down projection:
        // K = 9728 over 512 consumers), where the rounds below would wait on L2 twice.
        const int base = tid - lane;
        float v0[8], v1[8], v2[8];
        load_chunk<false>(x, g, 1.f, base + lane, nchunks, v0);
        load_chunk<false>(x, g, 1.f, base + nthreads + lane, nchunks, v1);
        load_chunk<false>(x, g, 1.f, base + 2 * nthreads + lane, nchunks, v2);
        quantize_chunk<FMT>(v0, base + lane, nchunks, K, lane, a);
        if (base + nthreads < nchunks) quantize_chunk<FMT>(v1, base + nthreads + lane, nchunks, K, lane, a);
        if (base + 2 * nthreads < nchunks) quantize_chunk<FMT>(v2, base + 2 * nthreads + lane, nchunks, K, lane, a);
        sync();
        return;
    }
    float scale = 1.f;
    if (NORM) {
        double ss = 0.0;
#pragma unroll 4
        for (int i = tid; i < K / 4; i += nthreads) {
            const float4 v = ((const float4*)x)[i];
            ss += (double)(v.x * v.x) + (double)(v.y * v.y) + (double)(v.z * v.z) + (double)(v.w * v.w);
        }
        scale = rms_scale(ss, red, tid, nthreads, K, eps, sync);
    }
    // Two chunks a thread a round, both requested before either is used: x was just written
    // by the previous kernel, so each round waits on L2. The bound is the same for the whole
    // warp (base = this warp's first chunk), so the shuffles always have all 32 lanes.
    for (int base = tid - lane; base < nchunks; base += 2 * nthreads) {
        float v0[8], v1[8];
        load_chunk<NORM>(x, g, scale, base + lane, nchunks, v0);
        load_chunk<NORM>(x, g, scale, base + nthreads + lane, nchunks, v1);
        quantize_chunk<FMT>(v0, base + lane, nchunks, K, lane, a);
        if (base + nthreads < nchunks) quantize_chunk<FMT>(v1, base + nthreads + lane, nchunks, K, lane, a);
    }
    sync();
}
