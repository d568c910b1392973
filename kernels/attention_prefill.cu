// Paged prefill attention: causal, GQA, chunked prefill against cached blocks, flash-style
// online softmax. CUDA-core version (FMA on f32), written for correctness first; a tensor-core
// (mma.sync bf16) version is future work (docs/kernels.md).
//
// Work item ("tile"): up to PF_ROWS consecutive query rows of one sequence, for one query head.
// The rows sit at positions pos0 .. pos0 + nrows - 1 of the sequence (earlier positions are
// already cached: chunked prefill), so the tile reads keys 0 .. pos0 + nrows - 1 through the
// block table, PF_KV positions at a time, into shared memory, where all its rows reuse them.
//
// Launch: grid (tiles, num_heads), block (128 = 4 warps); each warp owns PF_ROWS / 4 rows.
// tiles[t] = {first flattened row, nrows, pos0, offset of the sequence's block table}.
// For a score, lane j takes key j of the KV tile (the K rows are padded by one word so the 32
// lanes hit 32 different banks); for the output, lane owns head_dim elements lane + 32 i and the
// probabilities are broadcast by shuffles.
// Limits (checked on the host): head_dim <= 128.

#define PF_ROWS 16
#define PF_WARPS 4
#define PF_KV 32
#define PF_MAX_D 128
#define PF_DPL (PF_MAX_D / 32)

extern "C" __global__ void __launch_bounds__(128)
attention_prefill(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                  const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ tiles,
                  const u32* __restrict__ block_tables, bf16* __restrict__ out, int num_heads,
                  int num_kv_heads, int head_dim, int block_size, float scale) {
    __shared__ float q_s[PF_ROWS][PF_MAX_D];
    __shared__ bf16 k_s[PF_KV][PF_MAX_D + 2];  // +2 bf16 = one 4-byte bank of padding per row
    __shared__ bf16 v_s[PF_KV][PF_MAX_D];

    const u32* tile = tiles + 4 * blockIdx.x;
    const int row0 = tile[0], nrows = tile[1], pos0 = tile[2];
    const u32* table = block_tables + tile[3];
    const int head = blockIdx.y, kvh = head / (num_heads / num_kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kv_end = pos0 + nrows;  // keys 0 .. kv_end - 1

    for (int e = threadIdx.x; e < PF_ROWS * PF_MAX_D; e += blockDim.x) {
        const int r = e / PF_MAX_D, d = e % PF_MAX_D;
        q_s[r][d] = (r < nrows && d < head_dim)
                        ? to_f32(q[((u64)(row0 + r) * num_heads + head) * head_dim + d]) * scale
                        : 0.0f;
    }

    constexpr int ROWS_PER_WARP = PF_ROWS / PF_WARPS;
    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][PF_DPL];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < PF_DPL; ++i) acc[r][i] = 0.0f;
    }

    for (int t0 = 0; t0 < kv_end; t0 += PF_KV) {
        __syncthreads();  // the previous tile's readers are done (and q_s is written, first time)
        for (int e = threadIdx.x; e < PF_KV * head_dim; e += blockDim.x) {
            const int j = e / head_dim, d = e % head_dim, p = t0 + j;
            bf16 kv = to_bf16(0.0f), vv = to_bf16(0.0f);
            if (p < kv_end) {
                const u64 page = table[p / block_size];
                const u64 off = layer_off + ((page * num_kv_heads + kvh) * block_size + p % block_size) * head_dim + d;
                kv = k_cache[off];
                vv = v_cache[off];
            }
            k_s[j][d] = kv;
            v_s[j][d] = vv;
        }
        __syncthreads();

#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const int row = warp * ROWS_PER_WARP + r;
            const int qpos = pos0 + row;
            // Rows past nrows, and rows whose position precedes the whole KV tile, skip it
            // (warp-uniform branch).
            if (row >= nrows || qpos < t0) continue;
            const int p = t0 + lane;
            float s = 0.0f;
            for (int d = 0; d < head_dim; ++d) s += q_s[row][d] * to_f32(k_s[lane][d]);
            const bool valid = p <= qpos;  // causal (and p < kv_end follows)
            s = valid ? s : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(s));  // finite: key t0 <= qpos is valid
            const float corr = expf(m[r] - m_new);
            const float pr = valid ? expf(s - m_new) : 0.0f;
            l[r] = l[r] * corr + warp_sum(pr);
#pragma unroll
            for (int i = 0; i < PF_DPL; ++i) acc[r][i] *= corr;
            for (int j = 0; j < PF_KV; ++j) {
                const float pj = __shfl_sync(FULL_MASK, pr, j);
#pragma unroll
                for (int i = 0; i < PF_DPL; ++i) {
                    const int d = lane + 32 * i;
                    if (d < head_dim) acc[r][i] += pj * to_f32(v_s[j][d]);
                }
            }
            m[r] = m_new;
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int row = warp * ROWS_PER_WARP + r;
        if (row >= nrows) continue;
        const float inv = 1.0f / l[r];
        bf16* o = out + ((u64)(row0 + row) * num_heads + head) * head_dim;
#pragma unroll
        for (int i = 0; i < PF_DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) o[d] = to_bf16(acc[r][i] * inv);
        }
    }
}
