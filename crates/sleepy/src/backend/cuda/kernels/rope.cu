// Per-head RMSNorm (Qwen3's Q/K norm) and rotary embedding for prefill (decode folds its
// own, table-driven version into kernels/decode_attention.cu).
//
// head: D f32 values of one head, in shared memory, worked on by the `n` threads whose
// index `i` runs 0..n. norm_w: D weights or null (no norm). inv_freq: rope_dims/2
// frequencies. style 0: pairs (2j, 2j+1); style 1 (neox): pairs (j, j + rope_dims/2).
// `scale` multiplies the result (1/sqrt(D) for queries). Contains barriers on `bar`:
// bar == 0 syncs the block, bar == 1 the warp (then n must be 32 and i the lane).
__device__ __forceinline__ void norm_rope_head(float* head, int D, const float* norm_w, float eps,
                                               const float* inv_freq, int rope_dims, int style,
                                               int pos, float scale, int i, int n, int bar, float* red) {
    if (norm_w) {
        float ss = 0.f;
        for (int d = i; d < D; d += n) ss += head[d] * head[d];
        if (bar == 1) ss = warp_sum(ss);
        else ss = block_sum(ss, red);
        const float r = rsqrtf(ss / (float)D + eps);
        for (int d = i; d < D; d += n) head[d] = head[d] * r * norm_w[d];
    }
    if (bar == 1) __syncwarp(); else __syncthreads();
    const int half = rope_dims / 2;
    for (int j = i; j < half; j += n) {
        const int a = style == 0 ? 2 * j : j;
        const int b = style == 0 ? 2 * j + 1 : j + half;
        float s, c;
        sincosf((float)pos * inv_freq[j], &s, &c);
        const float x0 = head[a], x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
    if (bar == 1) __syncwarp(); else __syncthreads();
    if (scale != 1.f)
        for (int d = i; d < D; d += n) head[d] *= scale;
    if (bar == 1) __syncwarp(); else __syncthreads();
}

// Prefill: in place on qkv [T, (H + 2 KVH) * D]: Q/K norm (when qn, kn are given) and rope
// at position pos0 + t for the H query and KVH key heads; V is untouched.
// Grid (H + KVH, T), block 64 threads; dynamic shared memory D + 32 floats.
extern "C" __global__ void rope_qk(float* qkv, int H, int KVH, int D, const float* qn, const float* kn,
                                   float eps, const float* inv_freq, int rope_dims, int style, int pos0) {
    extern __shared__ float rope_sm[];
    float* head = rope_sm;
    float* red = rope_sm + D;
    pdl_wait();
    pdl_launch_next();
    const int h = blockIdx.x, t = blockIdx.y;
    float* p = qkv + (size_t)t * (H + 2 * KVH) * D + (size_t)h * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) head[d] = p[d];
    __syncthreads();
    const float* w = h < H ? qn : kn;
    norm_rope_head(head, D, w, eps, inv_freq, rope_dims, style, pos0 + t, 1.f, threadIdx.x, blockDim.x, 0, red);
    for (int d = threadIdx.x; d < D; d += blockDim.x) p[d] = head[d];
}

// Prefill: K and V of tokens t (already roped) into the bf16 cache at positions pos0 + t.
// kc, vc: this layer's [max_seq, KVH * D]. Grid (T), block 256.
extern "C" __global__ void kv_store(const float* qkv, u16* kc, u16* vc, int H, int KVH, int D, int pos0) {
    pdl_wait();
    pdl_launch_next();
    const int t = blockIdx.x, kvd = KVH * D;
    const float* row = qkv + (size_t)t * (H + 2 * KVH) * D + (size_t)H * D;
    u16* kd = kc + (size_t)(pos0 + t) * kvd;
    u16* vd = vc + (size_t)(pos0 + t) * kvd;
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        kd[i] = f32_to_bf16(row[i]);
        vd[i] = f32_to_bf16(row[kvd + i]);
    }
}
