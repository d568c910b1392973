// Paged prefill attention on tensor cores: causal, GQA, chunked prefill against cached blocks,
// flash-attention-2 style forward (online softmax, P kept in registers for P·V).
//
// Work item ("tile"): up to PF_M / HP consecutive query rows of one sequence, for HP query heads
// of one GQA group (HP divides the group size; the host picks it). The rows sit at positions
// pos0 .. pos0 + nrows - 1 of the sequence (earlier positions are already cached: chunked
// prefill), so the tile reads keys 0 .. pos0 + nrows - 1 through the block table, PF_N at a
// time, into shared memory. The HP heads share their KV head, so packing them into the M
// dimension of the MMA reads each K/V tile once for all of them, and a tile holding few rows
// (a decode row in a mixed batch, the end of a chunk) still fills HP times more of the MMA.
//
// M row m of the CTA (0 .. PF_M-1) is (query row r = m / HP, head head0 + m % HP). Its position
// pos0 + r grows with m; rows past nrows are padding: Q is zero there and they take the tile's
// last position, so they never see an empty softmax, and are not written.
//
// Launch: grid (tiles, num_heads / HP), block 128 = 4 warps; warp w owns M rows 16w .. 16w+15.
// tiles[t] = {first flattened row, nrows, pos0, offset of the sequence's block table}.
// Per KV tile: S = Q·Kᵀ (m16n8k16, bf16 in, f32 accumulate), causal mask, online softmax in
// f32 (exp2 with the scale folded in), P rounded to bf16 straight into A fragments, O += P·V.
// K(t+1) is fetched with cp.async while P·V(t) runs, V(t) while Q·Kᵀ(t) runs.
//
// Head dimension: D = 64 or 128 at compile time (attention_prefill_d64 / _d128); head_dim is
// any value up to D at run time, the columns past it are zero-filled in shared memory. 16-byte
// cp.async needs head_dim % 8 == 0 (row starts 16-byte aligned); otherwise the loads go element
// by element.
//
// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix
// Fragments for mma.m16n8k16 with floating point type"); g = lane >> 2, t = lane & 3, each
// 32-bit register holds two bf16, the lower column/row index in the low half:
//   A (16x16, row-major), 4 regs: a[0] = (row g,   cols 2t, 2t+1)   a[1] = (row g+8, cols 2t, 2t+1)
//                                 a[2] = (row g,   cols 2t+8, 2t+9) a[3] = (row g+8, cols 2t+8, 2t+9)
//   B (16x8, "col": k x n),  2 regs: b[0] = (k 2t, 2t+1; n g)  b[1] = (k 2t+8, 2t+9; n g)
//   C/D (16x8 f32),          4 regs: c[0], c[1] = (row g, cols 2t, 2t+1)
//                                    c[2], c[3] = (row g+8, cols 2t, 2t+1)
// ldmatrix.m8n8.x4: lanes 8i .. 8i+7 give the row addresses of matrix i (8 rows x 16 bytes);
// lane gets register i = matrix i's (row g, cols 2t, 2t+1), or with .trans its (rows 2t, 2t+1;
// col g). Hence:
//   Q (A operand, smem [m][d]): matrices (rows 0-7, d 0-7), (rows 8-15, d 0-7), (rows 0-7, d 8-15),
//     (rows 8-15, d 8-15) are a[0..3].
//   K (B operand of S = Q·Kᵀ: k = d, n = key; smem [key][d], i.e. each key row is a B column):
//     matrices (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7), (keys 8-15, d 8-15)
//     are b[0], b[1] of key n-tile 0 and b[0], b[1] of key n-tile 1.
//   V (B operand of O = P·V: k = key, n = d; smem [key][d], so .trans): matrices (keys 0-7,
//     d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 8-15) are b[0], b[1] of
//     d n-tile 0 and b[0], b[1] of d n-tile 1.
//   P (A operand of P·V over keys 16s .. 16s+15) is the S accumulators of key n-tiles 2s and
//     2s+1: a[0] = pack(S[2s].c0, c1), a[1] = pack(S[2s].c2, c3), a[2] = pack(S[2s+1].c0, c1),
//     a[3] = pack(S[2s+1].c2, c3). No shared-memory round trip.
// Shared-memory rows are padded by 8 bf16 (16 bytes): a row stride of 144 or 272 bytes moves
// each of the 8 rows of an ldmatrix by 4 banks, so the 8 x 16-byte reads hit 32 distinct banks.

#define PF_WARPS 4
#define PF_M 64  // M rows per CTA: 4 warps x 16
#define PF_N 64  // keys per KV tile
#define PF_PAD 8

__device__ __forceinline__ u32 smem_u32(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1 (the tile is read from shared memory only).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {
    const u64 gsrc = static_cast<u64>(__cvta_generic_to_global(src));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gsrc) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// d += a · b for one 16x8x16 tile (fragments as in the header comment).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to bf16, `lo` in the low half (the lower column of an A fragment). Adds
// the rounded values to `sum`, so the softmax denominator sums exactly the weights P·V uses.
__device__ __forceinline__ u32 pack_p(float lo, float hi, float& sum) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    sum += __low2float(v) + __high2float(v);
    return *reinterpret_cast<const u32*>(&v);
}

// Stages `rows` rows of D columns into `dst` (row stride D + PF_PAD): row j comes from src(j)
// (nullptr: a row of zeros), columns past head_dim are zero. All 128 threads take part; the
// caller commits the cp.async group, waits and syncs before reading.
template <int D, typename Src>
__device__ __forceinline__ void stage_rows(bf16* dst, int rows, int head_dim, bool vec, Src src) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    for (int e = threadIdx.x; e < rows * CHUNKS; e += PF_WARPS * 32) {
        const int j = e / CHUNKS, d0 = (e % CHUNKS) * 8;
        bf16* to = dst + j * (D + PF_PAD) + d0;
        const bf16* from = src(j);
        if (from != nullptr && d0 < head_dim) {
            if (vec) {
                cp_async16(smem_u32(to), from + d0);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i)
                    to[i] = d0 + i < head_dim ? from[d0 + i] : to_bf16(0.0f);
            }
        } else {
            *reinterpret_cast<uint4*>(to) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

template <int D>
__device__ __forceinline__ void prefill_tile(const bf16* __restrict__ q,
                                             const bf16* __restrict__ k_cache,
                                             const bf16* __restrict__ v_cache, u64 layer_off,
                                             const u32* __restrict__ tiles,
                                             const u32* __restrict__ block_tables,
                                             bf16* __restrict__ out, int num_heads,
                                             int num_kv_heads, int head_dim, int block_size,
                                             int heads_per_cta, float scale) {
    static_assert(PF_M == PF_N, "Q is staged through the K buffer");
    static_assert(D % 16 == 0 && PF_N % 16 == 0, "MMA k-steps of 16");
    __shared__ __align__(16) bf16 k_s[PF_N * (D + PF_PAD)];
    __shared__ __align__(16) bf16 v_s[PF_N * (D + PF_PAD)];

    const u32* tile = tiles + 4 * blockIdx.x;
    const int row0 = tile[0], nrows = tile[1], pos0 = tile[2];
    const u32* table = block_tables + tile[3];
    const int hp = heads_per_cta;
    const int head0 = blockIdx.y * hp;
    const int kvh = head0 / (num_heads / num_kv_heads);
    const int kv_end = pos0 + nrows;  // keys 0 .. kv_end - 1
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const bool vec = (head_dim & 7) == 0;
    const float sl2 = scale * 1.4426950408889634f;  // scores to log2 units

    // Position of M row m; padding rows take the last one (see the header).
    auto qpos = [&](int m) {
        const int r = m / hp;
        return r < nrows ? pos0 + r : kv_end - 1;
    };
    const int m_lo = warp * 16 + g, m_hi = m_lo + 8;  // this thread's two accumulator rows
    const int qpos_lo = qpos(m_lo), qpos_hi = qpos(m_hi);
    // qpos grows with m, so the warp's first and last rows bound its positions. A warp of
    // padding rows only (a short tile) computes nothing, but still loads and syncs.
    const int warp_first = qpos(warp * 16), warp_last = qpos(warp * 16 + 15);
    const bool warp_busy = (warp * 16) / hp < nrows;

    // Q tile through k_s into A fragments, kept in registers for the whole KV loop.
    stage_rows<D>(k_s, PF_M, head_dim, vec, [&](int m) -> const bf16* {
        const int r = m / hp;
        if (r >= nrows) return nullptr;
        return q + ((u64)(row0 + r) * num_heads + head0 + m % hp) * head_dim;
    });
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    u32 qf[D / 16][4];
    {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c = (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            ldmatrix_x4(qf[kk], smem_u32(&k_s[r * (D + PF_PAD) + kk * 16 + c]));
    }
    __syncthreads();  // every warp holds its Q before K overwrites the buffer

    auto kv_row = [&](const bf16* cache, int t0) {
        return [=](int j) -> const bf16* {
            const int p = t0 + j;
            if (p >= kv_end) return nullptr;
            const u64 page = table[p / block_size];
            const u64 slot = (page * num_kv_heads + kvh) * block_size + p % block_size;
            return cache + layer_off + slot * head_dim;
        };
    };

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

    // ldmatrix lane offsets (header comment): K tiles pair keys in the row index, V tiles pair
    // keys in the row index too but d halves in the column.
    const int k_row = (lane & 7) + (lane >> 4) * 8, k_col = ((lane >> 3) & 1) * 8;
    const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_col = (lane >> 4) * 8;

    stage_rows<D>(k_s, PF_N, head_dim, vec, kv_row(k_cache, 0));
    cp_async_commit();

    for (int t0 = 0; t0 < kv_end; t0 += PF_N) {
        cp_async_wait_all();
        __syncthreads();  // K(t0) visible; every warp is done with V(t0 - PF_N)
        stage_rows<D>(v_s, PF_N, head_dim, vec, kv_row(v_cache, t0));
        cp_async_commit();

        // Keys past every row of the warp: nothing to do for this tile (warp-uniform).
        const bool active = warp_busy && t0 <= warp_last;
        u32 pf[PF_N / 16][4];
        if (active) {
            float s[PF_N / 8][4];
#pragma unroll
            for (int n = 0; n < PF_N / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
                for (int np = 0; np < PF_N / 16; ++np) {
                    u32 b[4];
                    const int at = (np * 16 + k_row) * (D + PF_PAD) + kk * 16 + k_col;
                    ldmatrix_x4(b, smem_u32(&k_s[at]));
                    mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
                    mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
                }
            }
            // Causal mask, only where some key of the tile lies past some row of the warp.
            if (t0 + PF_N - 1 > warp_first) {
#pragma unroll
                for (int n = 0; n < PF_N / 8; ++n) {
                    const int key = t0 + n * 8 + 2 * t;
                    if (key > qpos_lo) s[n][0] = -INFINITY;
                    if (key + 1 > qpos_lo) s[n][1] = -INFINITY;
                    if (key > qpos_hi) s[n][2] = -INFINITY;
                    if (key + 1 > qpos_hi) s[n][3] = -INFINITY;
                }
            }
            // Online softmax; a row lives in the 4 lanes of a quad (same g).
            float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
            for (int n = 0; n < PF_N / 8; ++n) {
                mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
                mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
            }
            float base[2], corr[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 1));
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 2));
                // A row with no valid key so far (cannot happen: key 0 is in every row's first
                // tile) would give inf - inf; the guard keeps it at exp2(-inf) = 0 instead.
                base[i] = mx[i] == -INFINITY ? 0.0f : mx[i] * sl2;
                corr[i] = exp2f(m_run[i] * sl2 - base[i]);
                m_run[i] = mx[i];
                l_run[i] *= corr[i];
            }
#pragma unroll
            for (int n = 0; n < PF_N / 8; ++n) {
                s[n][0] = exp2f(fmaf(s[n][0], sl2, -base[0]));
                s[n][1] = exp2f(fmaf(s[n][1], sl2, -base[0]));
                s[n][2] = exp2f(fmaf(s[n][2], sl2, -base[1]));
                s[n][3] = exp2f(fmaf(s[n][3], sl2, -base[1]));
            }
#pragma unroll
            for (int ks = 0; ks < PF_N / 16; ++ks) {
                pf[ks][0] = pack_p(s[2 * ks][0], s[2 * ks][1], l_run[0]);
                pf[ks][1] = pack_p(s[2 * ks][2], s[2 * ks][3], l_run[1]);
                pf[ks][2] = pack_p(s[2 * ks + 1][0], s[2 * ks + 1][1], l_run[0]);
                pf[ks][3] = pack_p(s[2 * ks + 1][2], s[2 * ks + 1][3], l_run[1]);
            }
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                o[n][0] *= corr[0];
                o[n][1] *= corr[0];
                o[n][2] *= corr[1];
                o[n][3] *= corr[1];
            }
        }

        cp_async_wait_all();
        __syncthreads();  // V(t0) visible; every warp is done with K(t0)
        if (t0 + PF_N < kv_end) {
            stage_rows<D>(k_s, PF_N, head_dim, vec, kv_row(k_cache, t0 + PF_N));
            cp_async_commit();
        }

        if (active) {
#pragma unroll
            for (int ks = 0; ks < PF_N / 16; ++ks) {
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    u32 b[4];
                    const int at = (ks * 16 + v_row) * (D + PF_PAD) + dp * 16 + v_col;
                    ldmatrix_x4_trans(b, smem_u32(&v_s[at]));
                    mma_bf16(o[2 * dp], pf[ks], b[0], b[1]);
                    mma_bf16(o[2 * dp + 1], pf[ks], b[2], b[3]);
                }
            }
        }
    }

    // Each lane summed its own columns; the row's denominator is the quad's sum.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l_run[i] += __shfl_xor_sync(FULL_MASK, l_run[i], 1);
        l_run[i] += __shfl_xor_sync(FULL_MASK, l_run[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int m = i == 0 ? m_lo : m_hi;
        const int r = m / hp;
        if (r >= nrows) continue;
        const float inv = 1.0f / l_run[i];
        bf16* dst = out + ((u64)(row0 + r) * num_heads + head0 + m % hp) * head_dim;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int d = n * 8 + 2 * t;
            const float x = o[n][2 * i] * inv, y = o[n][2 * i + 1] * inv;
            if ((head_dim & 1) == 0) {
                // d even and head_dim even: d < head_dim implies d + 1 < head_dim, and the
                // pair starts on a 4-byte boundary.
                if (d < head_dim)
                    *reinterpret_cast<__nv_bfloat162*>(dst + d) = __floats2bfloat162_rn(x, y);
            } else {
                if (d < head_dim) dst[d] = to_bf16(x);
                if (d + 1 < head_dim) dst[d + 1] = to_bf16(y);
            }
        }
    }
}

// The two entry points (the host picks by head_dim); same arguments, D differs.
extern "C" __global__ void __launch_bounds__(PF_WARPS * 32)
attention_prefill_d64(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                      const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ tiles,
                      const u32* __restrict__ block_tables, bf16* __restrict__ out, int num_heads,
                      int num_kv_heads, int head_dim, int block_size, int heads_per_cta,
                      float scale) {
    prefill_tile<64>(q, k_cache, v_cache, layer_off, tiles, block_tables, out, num_heads,
                     num_kv_heads, head_dim, block_size, heads_per_cta, scale);
}

extern "C" __global__ void __launch_bounds__(PF_WARPS * 32)
attention_prefill_d128(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                       const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ tiles,
                       const u32* __restrict__ block_tables, bf16* __restrict__ out, int num_heads,
                       int num_kv_heads, int head_dim, int block_size, int heads_per_cta,
                       float scale) {
    prefill_tile<128>(q, k_cache, v_cache, layer_off, tiles, block_tables, out, num_heads,
                      num_kv_heads, head_dim, block_size, heads_per_cta, scale);
}
