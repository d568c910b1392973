// Paged decode attention, split-KV ("flash-decoding"), GQA-aware.
//
// Each query row attends causally to positions 0..=row_pos[row] of its sequence, read through
// the sequence's block table. One block handles one (row, KV head, split): the split is a run of
// `pages_per_split` KV blocks, and all G = num_heads / num_kv_heads query heads of the group are
// handled together, so each K/V row is read from memory once per group, not once per query head.
// Splitting the KV range over blocks keeps the GPU busy when there are few rows (batch-1 decode).
//
// Phase 1 (attention_decode): grid (rows, num_kv_heads, splits), block (128 = 4 warps).
//   Warps take positions round-robin; within a warp a lane holds head_dim/32 elements of q, k, v,
//   and the dot product is a warp reduction. Online softmax per (warp, head); at the end the four
//   warps merge in shared memory and the block writes an unnormalised partial output plus its
//   running max m and sum l.
// Phase 2 (attention_decode_reduce): grid (rows, num_heads), block (128); merges the splits.
//
// Limits (checked on the host): head_dim <= 128 (Qwen3 uses 128), G <= 8.

#define DEC_WARPS 4
#define DEC_DPL 4     // elements of head_dim per lane: 4 * 32 = 128
#define DEC_MAX_G 8

extern "C" __global__ void __launch_bounds__(128)
attention_decode(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                 const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ row_pos,
                 const u32* __restrict__ row_table, const u32* __restrict__ block_tables,
                 float* __restrict__ part_o, float* __restrict__ part_ml, int num_heads,
                 int num_kv_heads, int head_dim, int block_size, int pages_per_split, float scale) {
    __shared__ float sm_m[DEC_WARPS][DEC_MAX_G];
    __shared__ float sm_l[DEC_WARPS][DEC_MAX_G];
    __shared__ float sm_o[DEC_WARPS][DEC_MAX_G][DEC_DPL * 32];

    const int row = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int G = num_heads / num_kv_heads;
    const u32* table = block_tables + row_table[row];
    const int ctx = (int)row_pos[row] + 1;
    const int pos_begin = split * pages_per_split * block_size;
    const int pos_end = min(ctx, (split + 1) * pages_per_split * block_size);

    // q of the group, pre-scaled, in registers. Loops over g and i are unrolled with constant
    // bounds so the arrays stay in registers; `g < G` / `d < head_dim` guard the tails.
    float qv[DEC_MAX_G][DEC_DPL], acc[DEC_MAX_G][DEC_DPL], m[DEC_MAX_G], l[DEC_MAX_G];
#pragma unroll
    for (int g = 0; g < DEC_MAX_G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < DEC_DPL; ++i) {
            const int d = lane + 32 * i;
            const bool ok = g < G && d < head_dim;
            qv[g][i] = ok ? to_f32(q[((u64)row * num_heads + kvh * G + g) * head_dim + d]) * scale : 0.0f;
            acc[g][i] = 0.0f;
        }
    }

    for (int p = pos_begin + warp; p < pos_end; p += DEC_WARPS) {
        const u64 page = table[p / block_size];
        const u64 off = layer_off + ((page * num_kv_heads + kvh) * block_size + p % block_size) * head_dim;
        float kk[DEC_DPL], vv[DEC_DPL];
#pragma unroll
        for (int i = 0; i < DEC_DPL; ++i) {
            const int d = lane + 32 * i;
            kk[i] = d < head_dim ? to_f32(k_cache[off + d]) : 0.0f;
            vv[i] = d < head_dim ? to_f32(v_cache[off + d]) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < DEC_MAX_G; ++g) {
            if (g >= G) break;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < DEC_DPL; ++i) s += qv[g][i] * kk[i];
            s = warp_sum(s);
            const float m_new = fmaxf(m[g], s);
            const float corr = expf(m[g] - m_new);  // m = -inf at first: exp(-inf) = 0
            const float pr = expf(s - m_new);
            l[g] = l[g] * corr + pr;
#pragma unroll
            for (int i = 0; i < DEC_DPL; ++i) acc[g][i] = acc[g][i] * corr + pr * vv[i];
            m[g] = m_new;
        }
    }

#pragma unroll
    for (int g = 0; g < DEC_MAX_G; ++g) {
        if (lane == 0) {
            sm_m[warp][g] = m[g];
            sm_l[warp][g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < DEC_DPL; ++i) sm_o[warp][g][lane + 32 * i] = acc[g][i];
    }
    __syncthreads();

    // Merge the warps: warp w writes heads w, w + 4, ... A warp that saw no position has m = -inf
    // and contributes nothing; a split with no position at all writes m = -inf, l = 0.
    for (int g = warp; g < G; g += DEC_WARPS) {
        float mx = -INFINITY;
        for (int w = 0; w < DEC_WARPS; ++w) mx = fmaxf(mx, sm_m[w][g]);
        float wsum[DEC_WARPS];
        float lsum = 0.0f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            wsum[w] = sm_m[w][g] == -INFINITY ? 0.0f : expf(sm_m[w][g] - mx);
            lsum += sm_l[w][g] * wsum[w];
        }
        const u64 head = (u64)row * num_heads + kvh * G + g;
        float* o = part_o + (head * splits + split) * head_dim;
        for (int d = lane; d < head_dim; d += 32) {
            float v = 0.0f;
            for (int w = 0; w < DEC_WARPS; ++w) v += sm_o[w][g][d] * wsum[w];
            o[d] = v;
        }
        if (lane == 0) {
            part_ml[(head * splits + split) * 2] = mx;
            part_ml[(head * splits + split) * 2 + 1] = lsum;
        }
    }
}

// out[row, head, :] = sum_s o_s * exp(m_s - M) / sum_s l_s * exp(m_s - M), M = max_s m_s.
extern "C" __global__ void attention_decode_reduce(const float* __restrict__ part_o,
                                                   const float* __restrict__ part_ml,
                                                   bf16* __restrict__ out, int num_heads,
                                                   int head_dim, int splits) {
    const u64 head = (u64)blockIdx.x * num_heads + blockIdx.y;
    const float* ml = part_ml + head * splits * 2;
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
    float denom = 0.0f;
    for (int s = 0; s < splits; ++s)
        if (ml[2 * s] != -INFINITY) denom += ml[2 * s + 1] * expf(ml[2 * s] - mx);
    const float inv = 1.0f / denom;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s)
            if (ml[2 * s] != -INFINITY) v += part_o[(head * splits + s) * head_dim + d] * expf(ml[2 * s] - mx);
        out[head * head_dim + d] = to_bf16(v * inv);
    }
}
