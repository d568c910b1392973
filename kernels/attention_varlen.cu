// Training attention over packed sequences (contiguous q [T, H·d], k and v [T, KV·d], bf16),
// causal within each sequence, GQA; forward and flash-attention-2 style backward side by side.
// The forward saves only each (row, head)'s log-sum-exp L of the scaled scores; the backward
// recomputes P = exp(S·scale − L) tile by tile instead of storing the T×T matrix:
//   D_i = dO_i·O_i,  dP = dO·Vᵀ,  dS = P∘(dP − D)·scale,  dQ = dS·K,  dK = dSᵀ·Q,  dV = Pᵀ·dO.
// The backward is two kernels, each the sole owner of what it writes (dQ rows; dK/dV rows), so
// there are no atomics and a training step is reproducible bit for bit; the price is computing
// S and dP twice. CUDA-core version (f32 FMA from shared memory), written for correctness first;
// the tensor-core form is future work (docs/kernels.md).
//
// Limits (checked on the host): head_dim even and <= 128. A lane owns output elements
// lane + 32·e, e < 4.

#define VA_ROWS 16   // query rows per forward / dQ tile (4 warps × 4 rows)
#define VA_KV 32     // keys per shared K/V tile in the forward / dQ kernels
#define VA_KEYS 16   // keys per dK/dV tile (4 warps × 4 keys)
#define VA_QT 32     // query rows per shared Q/dO tile in the dK/dV kernel (one per lane)
#define VA_MAX_D 128
#define VA_DPL (VA_MAX_D / 32)
#define VA_PAD (VA_MAX_D + 2)  // +2 bf16: lane j reading row j hits bank (j·65 + c) mod 32

// Σ_d a[d]·b[d] of two bf16 rows in shared memory (4-byte aligned, head_dim even).
__device__ __forceinline__ float dot_bf16(const bf16* a, const bf16* b, int head_dim) {
    float s = 0.0f;
    for (int d = 0; d < head_dim; d += 2) {
        const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(a + d));
        const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(b + d));
        s = fmaf(x.x, y.x, s);
        s = fmaf(x.y, y.y, s);
    }
    return s;
}

__device__ __forceinline__ float dot_f32_bf16(const float* a, const bf16* b, int head_dim) {
    float s = 0.0f;
    for (int d = 0; d < head_dim; d += 2) {
        const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(b + d));
        s = fmaf(a[d], y.x, s);
        s = fmaf(a[d + 1], y.y, s);
    }
    return s;
}

// Rows [r0, r0 + n) of head `head` of a [T, heads·d] tensor into shared rows of `stride`
// elements (bf16), zero-filling rows past n so masked lanes read finite values.
__device__ void load_rows_bf16(bf16* dst, int stride, const bf16* src, int r0, int n, int rows_cap,
                               int heads, int head, int head_dim) {
    for (int e = threadIdx.x; e < rows_cap * head_dim; e += blockDim.x) {
        const int r = e / head_dim, c = e % head_dim;
        dst[r * stride + c] =
            r < n ? src[((u64)(r0 + r) * heads + head) * head_dim + c] : __float2bfloat16_rn(0.0f);
    }
}

__device__ void load_rows_f32(float* dst, const bf16* src, int r0, int n, int heads, int head,
                              int head_dim) {
    for (int e = threadIdx.x; e < VA_ROWS * head_dim; e += blockDim.x) {
        const int r = e / head_dim, c = e % head_dim;
        dst[r * VA_MAX_D + c] = r < n ? to_f32(src[((u64)(r0 + r) * heads + head) * head_dim + c]) : 0.0f;
    }
}

// Forward. tiles[t] = {first row, rows (<= VA_ROWS), first row of the sequence}.
// Launch: grid (tiles, num_heads), block (128); warp w owns tile rows 4w .. 4w + 3.
extern "C" __global__ void __launch_bounds__(128)
attention_varlen_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                     const u32* __restrict__ tiles, bf16* __restrict__ out, float* __restrict__ lse,
                     int num_heads, int num_kv_heads, int head_dim, float scale) {
    __shared__ float q_s[VA_ROWS * VA_MAX_D];
    __shared__ __align__(16) bf16 k_s[VA_KV * VA_PAD];
    __shared__ __align__(16) bf16 v_s[VA_KV * VA_PAD];
    const u32* tile = tiles + 3 * blockIdx.x;
    const int row0 = tile[0], nrows = tile[1], seq0 = tile[2];
    const int head = blockIdx.y, kvh = head / (num_heads / num_kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_rows_f32(q_s, q, row0, nrows, num_heads, head, head_dim);

    float m[4], l[4], acc[4][VA_DPL];
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        #pragma unroll
        for (int e = 0; e < VA_DPL; ++e) acc[r][e] = 0.0f;
    }
    const int kv_end = row0 + nrows;
    for (int j0 = seq0; j0 < kv_end; j0 += VA_KV) {
        const int nk = min(VA_KV, kv_end - j0);
        __syncthreads();  // the previous tile's readers are done
        load_rows_bf16(k_s, VA_PAD, k, j0, nk, VA_KV, num_kv_heads, kvh, head_dim);
        load_rows_bf16(v_s, VA_PAD, v, j0, nk, VA_KV, num_kv_heads, kvh, head_dim);
        __syncthreads();
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int tr = warp * 4 + r, row = row0 + tr;
            if (tr >= nrows) continue;
            const int key = j0 + lane;
            // The first tile starts at the sequence's first key, which every row sees, so m is
            // finite after it and fully masked later tiles add exp(-inf) = 0.
            const float s = (lane < nk && key <= row)
                                ? dot_f32_bf16(q_s + tr * VA_MAX_D, k_s + lane * VA_PAD, head_dim) * scale
                                : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(s));
            const float p = expf(s - m_new), corr = expf(m[r] - m_new);
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = m_new;
            #pragma unroll
            for (int e = 0; e < VA_DPL; ++e) acc[r][e] *= corr;
            for (int j = 0; j < nk; ++j) {
                const float pj = __shfl_sync(FULL_MASK, p, j);
                #pragma unroll
                for (int e = 0; e < VA_DPL; ++e) {
                    const int d = lane + 32 * e;
                    if (d < head_dim) acc[r][e] = fmaf(pj, to_f32(v_s[j * VA_PAD + d]), acc[r][e]);
                }
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int tr = warp * 4 + r, row = row0 + tr;
        if (tr >= nrows) continue;
        const float inv = 1.0f / l[r];
        #pragma unroll
        for (int e = 0; e < VA_DPL; ++e) {
            const int d = lane + 32 * e;
            if (d < head_dim) out[((u64)row * num_heads + head) * head_dim + d] = to_bf16(acc[r][e] * inv);
        }
        if (lane == 0) lse[(u64)row * num_heads + head] = m[r] + logf(l[r]);
    }
}

// D[row, head] = dO·O over head_dim. Launch: grid (rows, num_heads), block (32).
extern "C" __global__ void attention_varlen_row_dot(const bf16* __restrict__ d_out, const bf16* __restrict__ out,
                                                    float* __restrict__ dot, int num_heads, int head_dim) {
    const u64 off = ((u64)blockIdx.x * num_heads + blockIdx.y) * head_dim;
    float s = 0.0f;
    for (int d = threadIdx.x; d < head_dim; d += 32) s += to_f32(d_out[off + d]) * to_f32(out[off + d]);
    s = warp_sum(s);
    if (threadIdx.x == 0) dot[(u64)blockIdx.x * num_heads + blockIdx.y] = s;
}

// dQ. Same tiles and launch as the forward. For a row i and key j (lane j of a K/V tile):
// p = exp(q·k·scale − L_i), ds = p·(dO_i·v_j − D_i)·scale, dQ_i += ds·k_j.
extern "C" __global__ void __launch_bounds__(128)
attention_varlen_bwd_dq(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                        const bf16* __restrict__ d_out, const float* __restrict__ lse,
                        const float* __restrict__ row_dot, const u32* __restrict__ tiles,
                        bf16* __restrict__ dq, int num_heads, int num_kv_heads, int head_dim, float scale) {
    __shared__ float q_s[VA_ROWS * VA_MAX_D];
    __shared__ float do_s[VA_ROWS * VA_MAX_D];
    __shared__ __align__(16) bf16 k_s[VA_KV * VA_PAD];
    __shared__ __align__(16) bf16 v_s[VA_KV * VA_PAD];
    const u32* tile = tiles + 3 * blockIdx.x;
    const int row0 = tile[0], nrows = tile[1], seq0 = tile[2];
    const int head = blockIdx.y, kvh = head / (num_heads / num_kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_rows_f32(q_s, q, row0, nrows, num_heads, head, head_dim);
    load_rows_f32(do_s, d_out, row0, nrows, num_heads, head, head_dim);

    float acc[4][VA_DPL], row_l[4], row_d[4];
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int tr = warp * 4 + r;
        const u64 at = (u64)(row0 + tr) * num_heads + head;
        row_l[r] = tr < nrows ? lse[at] : 0.0f;
        row_d[r] = tr < nrows ? row_dot[at] : 0.0f;
        #pragma unroll
        for (int e = 0; e < VA_DPL; ++e) acc[r][e] = 0.0f;
    }
    const int kv_end = row0 + nrows;
    for (int j0 = seq0; j0 < kv_end; j0 += VA_KV) {
        const int nk = min(VA_KV, kv_end - j0);
        __syncthreads();
        load_rows_bf16(k_s, VA_PAD, k, j0, nk, VA_KV, num_kv_heads, kvh, head_dim);
        load_rows_bf16(v_s, VA_PAD, v, j0, nk, VA_KV, num_kv_heads, kvh, head_dim);
        __syncthreads();
        #pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int tr = warp * 4 + r, row = row0 + tr;
            if (tr >= nrows) continue;
            float ds = 0.0f;
            if (lane < nk && j0 + lane <= row) {
                const float s = dot_f32_bf16(q_s + tr * VA_MAX_D, k_s + lane * VA_PAD, head_dim);
                const float p = expf(s * scale - row_l[r]);
                const float dp = dot_f32_bf16(do_s + tr * VA_MAX_D, v_s + lane * VA_PAD, head_dim);
                ds = p * (dp - row_d[r]) * scale;
            }
            for (int j = 0; j < nk; ++j) {
                const float dsj = __shfl_sync(FULL_MASK, ds, j);
                #pragma unroll
                for (int e = 0; e < VA_DPL; ++e) {
                    const int d = lane + 32 * e;
                    if (d < head_dim) acc[r][e] = fmaf(dsj, to_f32(k_s[j * VA_PAD + d]), acc[r][e]);
                }
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int tr = warp * 4 + r, row = row0 + tr;
        if (tr >= nrows) continue;
        #pragma unroll
        for (int e = 0; e < VA_DPL; ++e) {
            const int d = lane + 32 * e;
            if (d < head_dim) dq[((u64)row * num_heads + head) * head_dim + d] = to_bf16(acc[r][e]);
        }
    }
}

// dK and dV. key_tiles[t] = {first key row, keys (<= VA_KEYS), end row of the sequence}; the rows
// that see these keys are first key .. end − 1 (causal). Every query head of the KV head's group
// contributes, so the sum over the group happens here, in registers.
// Launch: grid (key tiles, num_kv_heads), block (128); warp w owns keys 4w .. 4w + 3 of the tile,
// and lane i takes query row i of each 32-row Q/dO tile. The "2 blocks per SM" bound is there
// because without it ptxas 13.0 settles on 64 registers for the NVRTC PTX and spills the
// 32 accumulators; with it, it takes 84 and spills nothing (the CI check enforces this).
extern "C" __global__ void __launch_bounds__(128, 2)
attention_varlen_bwd_dkdv(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                          const bf16* __restrict__ d_out, const float* __restrict__ lse,
                          const float* __restrict__ row_dot, const u32* __restrict__ key_tiles,
                          bf16* __restrict__ dk, bf16* __restrict__ dv, int num_heads, int num_kv_heads,
                          int head_dim, float scale) {
    __shared__ __align__(16) bf16 q_s[VA_QT * VA_PAD];
    __shared__ __align__(16) bf16 do_s[VA_QT * VA_PAD];
    __shared__ __align__(16) bf16 k_s[VA_KEYS * VA_MAX_D];
    __shared__ __align__(16) bf16 v_s[VA_KEYS * VA_MAX_D];
    __shared__ float l_s[VA_QT], d_s[VA_QT];
    const u32* tile = key_tiles + 3 * blockIdx.x;
    const int key0 = tile[0], nkeys = tile[1], seq_end = tile[2];
    const int kvh = blockIdx.y, group = num_heads / num_kv_heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_rows_bf16(k_s, VA_MAX_D, k, key0, nkeys, VA_KEYS, num_kv_heads, kvh, head_dim);
    load_rows_bf16(v_s, VA_MAX_D, v, key0, nkeys, VA_KEYS, num_kv_heads, kvh, head_dim);

    float dk_acc[4][VA_DPL], dv_acc[4][VA_DPL];
    #pragma unroll
    for (int c = 0; c < 4; ++c)
        #pragma unroll
        for (int e = 0; e < VA_DPL; ++e) dk_acc[c][e] = dv_acc[c][e] = 0.0f;

    for (int hq = 0; hq < group; ++hq) {
        const int head = kvh * group + hq;
        for (int i0 = key0; i0 < seq_end; i0 += VA_QT) {
            const int nq = min(VA_QT, seq_end - i0);
            __syncthreads();  // the previous tile's readers (and the K/V load) are done
            load_rows_bf16(q_s, VA_PAD, q, i0, nq, VA_QT, num_heads, head, head_dim);
            load_rows_bf16(do_s, VA_PAD, d_out, i0, nq, VA_QT, num_heads, head, head_dim);
            if (threadIdx.x < VA_QT) {
                const bool ok = (int)threadIdx.x < nq;
                const u64 at = (u64)(i0 + threadIdx.x) * num_heads + head;
                l_s[threadIdx.x] = ok ? lse[at] : 0.0f;
                d_s[threadIdx.x] = ok ? row_dot[at] : 0.0f;
            }
            __syncthreads();
            const int row = i0 + lane;
            #pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int kc = warp * 4 + c, key = key0 + kc;
                if (kc >= nkeys) continue;
                float p = 0.0f, ds = 0.0f;
                if (lane < nq && row >= key) {
                    const float s = dot_bf16(q_s + lane * VA_PAD, k_s + kc * VA_MAX_D, head_dim);
                    p = expf(s * scale - l_s[lane]);
                    const float dp = dot_bf16(do_s + lane * VA_PAD, v_s + kc * VA_MAX_D, head_dim);
                    ds = p * (dp - d_s[lane]) * scale;
                }
                for (int i = 0; i < nq; ++i) {
                    const float pi = __shfl_sync(FULL_MASK, p, i);
                    const float dsi = __shfl_sync(FULL_MASK, ds, i);
                    #pragma unroll
                    for (int e = 0; e < VA_DPL; ++e) {
                        const int d = lane + 32 * e;
                        if (d < head_dim) {
                            dv_acc[c][e] = fmaf(pi, to_f32(do_s[i * VA_PAD + d]), dv_acc[c][e]);
                            dk_acc[c][e] = fmaf(dsi, to_f32(q_s[i * VA_PAD + d]), dk_acc[c][e]);
                        }
                    }
                }
            }
        }
    }
    #pragma unroll
    for (int c = 0; c < 4; ++c) {
        const int kc = warp * 4 + c;
        if (kc >= nkeys) continue;
        const u64 off = ((u64)(key0 + kc) * num_kv_heads + kvh) * head_dim;
        #pragma unroll
        for (int e = 0; e < VA_DPL; ++e) {
            const int d = lane + 32 * e;
            if (d < head_dim) {
                dk[off + d] = to_bf16(dk_acc[c][e]);
                dv[off + d] = to_bf16(dv_acc[c][e]);
            }
        }
    }
}
