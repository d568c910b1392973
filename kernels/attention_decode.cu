// Paged decode attention, split-KV ("flash-decoding"), GQA-aware, written for memory-level
// parallelism: 16-byte loads and several KV positions in flight per lane.
//
// Each query row attends causally to positions 0..=row_pos[row] of its sequence, read through
// the sequence's block table. One block handles one (row, KV head, split): the split is a run of
// `pages_per_split` KV blocks, and all `group` = num_heads / num_kv_heads query heads of the GQA
// group are handled together, so each K/V row is read from memory once per group, not once per
// query head. Splitting the KV range over blocks keeps the GPU busy when there are few rows.
//
// Phase 1 (attention_decode_g{1,2,4,8}): grid (rows, num_kv_heads, splits), block 128 = 4 warps.
//   Template G = register capacity for the group (the host picks the smallest of 1/2/4/8 that
//   holds num_heads / num_kv_heads; heads g >= group are skipped at run time), so a model with
//   group 2 does not carry the registers of group 8.
//
//   Lanes: a half-warp (16 lanes) owns one KV position. Lane sl = lane & 15 handles head_dim
//   elements d0 = 8·sl .. d0+7 of q (per head, f32, pre-scaled by scale·log2 e, read from
//   shared memory), of K and of V:
//   one 16-byte load (uint4 = 8 bf16) of K and one of V per position. 16 lanes × 8 = 128 =
//   the largest head_dim. The dot product is summed over the 16 lanes with __shfl_xor_sync at
//   offsets 8, 4, 2, 1: none of them flips bit 4 of the lane id, so the two half-warps (two
//   different positions) never mix, and every lane of a half ends with the same bits (each
//   butterfly step adds the same two numbers on both partners).
//   head_dim < 128 (64 in the fixtures, 13, 72, ...) masks the lanes with d0 >= head_dim (they
//   load nothing and hold zeros) instead of packing two positions into 8 lanes: every Qwen3
//   size has head_dim 128, and one lane layout keeps a single shuffle pattern and index math.
//
//   Slots: half-warp h of warp w is slot 2w + h (8 slots per CTA). A loop step covers
//   DEC_STEP = 8 · DEC_U = 32 positions: slot s takes positions base + s + 8u, u < DEC_U = 4,
//   and issues all 4 K and 4 V loads before it uses any of them. For a fixed u the two halves
//   of a warp read adjacent positions, so a warp's load instruction covers 512 contiguous bytes
//   when both positions are in one page. The block-table entries of the next step are read
//   right after this step's loads are issued, so the table read is off the critical path.
//   Steps are CTA-uniform (every lane runs each step; positions >= pos_end are masked), which
//   the full-warp shuffles need.
//
//   Softmax: per (slot, head) an online softmax in base 2, updated once per step for the
//   slot's 4 positions (one max, one rescale of the accumulator). At the end the two slots of
//   a warp merge through __shfl_xor_sync(16), the four warps through shared memory as before,
//   and the block writes its unnormalised partial output, its max m (converted back to natural
//   log units, m·ln 2, which is what the reduce expects) and its sum l. A split, warp or slot
//   that saw no position keeps m = -inf, l = 0 and contributes nothing; the reduce skips
//   splits with m = -inf.
//
// Bytes in flight (the point of this layout). Per lane and step: 4 positions × (16 B K + 16 B V)
// = 128 B; per warp 32 × 128 B = 4 KiB (8 positions × 512 B); per CTA (4 warps) 16 KiB.
// The previous kernel (2-byte loads, one position per warp at a time) had 512 B per warp.
// Residency per SM: batch-1 eager decode gets about 2 × SM count CTAs (decode_splits), i.e.
// 2 CTAs = 8 warps per SM -> 32 KiB in flight (was 4 KiB); graph buckets and larger batches
// launch more CTAs than fit, so residency is set by registers (see docs/kernels.md).
// Need: latency × bandwidth per SM. H200: 4.8 TB/s / 132 SMs = 36 B/ns per SM, × ~600-800 ns
// loaded DRAM latency = 22-29 KiB; H100 SXM: 3.35 TB/s / 132 = 25 B/ns × ~700 ns = ~18 KiB.
// (A warp has its loads in flight only between issue and first use; other warps' math overlaps.)
//
// Loads: 16-byte vector loads need 16-byte aligned row starts: head_dim % 8 == 0 (K/V rows
// start at multiples of head_dim elements, q rows too) and 16-byte aligned base pointers,
// checked in the kernel. Otherwise the same 8-element lane slice is read element by element,
// each guarded by d < head_dim, into the same packed register layout.
//
// Phase 2 (attention_decode_reduce): grid (rows, num_heads), block (128); merges the splits.
//
// Limits (checked on the host): head_dim <= 128 (Qwen3 uses 128), group <= 8.

#define DEC_WARPS 4
#define DEC_LPP 16                           // lanes per KV position (a half-warp)
#define DEC_EPL 8                            // head_dim elements per lane: one 16-byte load
#define DEC_D (DEC_LPP * DEC_EPL)            // 128, the largest head_dim
#define DEC_SLOTS (DEC_WARPS * 32 / DEC_LPP) // 8 positions per CTA side by side
#define DEC_U 4                              // positions per slot loaded before any is used
#define DEC_STEP (DEC_SLOTS * DEC_U)         // 32 positions per CTA per loop step
#define DEC_LOG2E 1.4426950408889634f
#define DEC_LN2 0.6931471805599453f

// Eight bf16 of a row, elements d0 .. d0+7, packed two per u32 (lower index in the low half);
// zeros past head_dim. `vec`: the 16-byte load is aligned and head_dim % 8 == 0.
__device__ __forceinline__ uint4 dec_load8(const bf16* __restrict__ rowp, int d0, int head_dim,
                                           bool vec) {
    if (d0 >= head_dim) return make_uint4(0u, 0u, 0u, 0u);
    if (vec) return __ldg(reinterpret_cast<const uint4*>(rowp + d0));
    const unsigned short* r = reinterpret_cast<const unsigned short*>(rowp);
    u32 w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int d = d0 + 2 * j;
        const u32 lo = d < head_dim ? (u32)r[d] : 0u;
        const u32 hi = d + 1 < head_dim ? (u32)r[d + 1] : 0u;
        w[j] = lo | (hi << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// bf16 -> f32 is a 16-bit shift: element 2j is the low half of word j, 2j+1 the high half.
__device__ __forceinline__ void dec_unpack8(const uint4 r, float* f) {
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        f[2 * j] = __uint_as_float(w[j] << 16);
        f[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
}

template <int G>
__device__ __forceinline__ void decode_split(const bf16* __restrict__ q,
                                             const bf16* __restrict__ k_cache,
                                             const bf16* __restrict__ v_cache, u64 layer_off,
                                             const u32* __restrict__ row_pos,
                                             const u32* __restrict__ row_table,
                                             const u32* __restrict__ block_tables,
                                             float* __restrict__ part_o,
                                             float* __restrict__ part_ml, int num_heads,
                                             int num_kv_heads, int head_dim, int block_size,
                                             int pages_per_split, float scale) {
    __shared__ float sm_m[DEC_WARPS][G];
    __shared__ float sm_l[DEC_WARPS][G];
    __shared__ __align__(16) float sm_o[DEC_WARPS][G][DEC_D];
    __shared__ float4 sm_q[G][2][DEC_LPP];

    const int row = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slot = warp * 2 + (lane >> 4);  // the half-warp's KV slot, 0 .. DEC_SLOTS-1
    const int d0 = (lane & 15) * DEC_EPL;     // this lane's first head_dim element
    const int group = num_heads / num_kv_heads;  // <= G (host)
    const u32* table = block_tables + row_table[row];
    const int ctx = (int)row_pos[row] + 1;
    const int pos_begin = split * pages_per_split * block_size;
    const int pos_end = min(ctx, (split + 1) * pages_per_split * block_size);
    const bool vec = (head_dim & 7) == 0 &&
                     ((reinterpret_cast<size_t>(q) | reinterpret_cast<size_t>(k_cache) |
                       reinterpret_cast<size_t>(v_cache)) & 15) == 0;
    const float qscale = scale * DEC_LOG2E;  // scores in base 2: exp2f below

    // q of the group, pre-scaled, in shared memory (4 KiB at G = 8): in registers it would take
    // 8·G floats per lane, and at G = 8 the kernel then spills. Lane sl's 8 elements of head g
    // are the float4s sm_q[g][0][sl] and sm_q[g][1][sl]: 16 lanes read 256 contiguous bytes
    // per LDS.128, no bank conflicts (the other half-warp reads the same words: a broadcast).
    for (int g = warp; g < G; g += DEC_WARPS) {
        if (lane < DEC_LPP) {
            const uint4 raw =
                g < group ? dec_load8(q + ((u64)row * num_heads + kvh * group + g) * head_dim,
                                      d0, head_dim, vec)
                          : make_uint4(0u, 0u, 0u, 0u);
            float f[DEC_EPL];
            dec_unpack8(raw, f);
#pragma unroll
            for (int j = 0; j < 2; ++j)
                sm_q[g][j][lane] = make_float4(f[4 * j] * qscale, f[4 * j + 1] * qscale,
                                               f[4 * j + 2] * qscale, f[4 * j + 3] * qscale);
        }
    }
    // Accumulators and running max / sum per head; loops over g are unrolled with constant
    // bounds so the arrays stay in registers, and `g >= group` ends them (group is CTA-uniform).
    float acc[G][DEC_EPL], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < DEC_EPL; ++i) acc[g][i] = 0.0f;
    }
    __syncthreads();

    // Pages of this slot's positions in the first step (0 for masked positions, never read).
    u32 page[DEC_U];
#pragma unroll
    for (int u = 0; u < DEC_U; ++u) {
        const int p = pos_begin + slot + DEC_SLOTS * u;
        page[u] = p < pos_end ? table[p / block_size] : 0u;
    }

    for (int base = pos_begin; base < pos_end; base += DEC_STEP) {
        // 1. Issue every load of the step: DEC_U positions' K and V rows, 16 B each per lane.
        uint4 kr[DEC_U], vr[DEC_U];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            const int p = base + slot + DEC_SLOTS * u;
            if (p < pos_end) {
                const u64 off =
                    layer_off +
                    (((u64)page[u] * num_kv_heads + kvh) * block_size + p % block_size) * head_dim;
                kr[u] = dec_load8(k_cache + off, d0, head_dim, vec);
                vr[u] = dec_load8(v_cache + off, d0, head_dim, vec);
            } else {
                kr[u] = make_uint4(0u, 0u, 0u, 0u);
                vr[u] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        // 2. The next step's pages, read while this step's K/V are on their way.
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            const int p = base + DEC_STEP + slot + DEC_SLOTS * u;
            page[u] = p < pos_end ? table[p / block_size] : 0u;
        }
        // 3. Partial dot products of this lane's 8 elements, per (head, position).
        float kf[DEC_U][DEC_EPL];
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) dec_unpack8(kr[u], kf[u]);
        float s[G][DEC_U];
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (g >= group) break;
            const float4 qa = sm_q[g][0][lane & 15], qb = sm_q[g][1][lane & 15];
            const float qf[DEC_EPL] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
            for (int u = 0; u < DEC_U; ++u) {
                float t = 0.0f;
#pragma unroll
                for (int i = 0; i < DEC_EPL; ++i) t = fmaf(qf[i], kf[u][i], t);
                s[g][u] = t;
            }
        }
        // 4. Sum over the 16 lanes of each position (offsets < 16: the halves stay apart).
#pragma unroll
        for (int o = DEC_LPP / 2; o > 0; o >>= 1) {
#pragma unroll
            for (int g = 0; g < G; ++g) {
                if (g >= group) break;
#pragma unroll
                for (int u = 0; u < DEC_U; ++u) s[g][u] += __shfl_xor_sync(FULL_MASK, s[g][u], o);
            }
        }
        // 5. Online softmax per head over the slot's DEC_U positions (masked ones: -inf).
        float pr[G][DEC_U];
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (g >= group) break;
            float mx = m[g];
#pragma unroll
            for (int u = 0; u < DEC_U; ++u) {
                if (base + slot + DEC_SLOTS * u >= pos_end) s[g][u] = -INFINITY;
                mx = fmaxf(mx, s[g][u]);
            }
            // mx = -inf only while the slot has seen no position: exp2(-inf - 0) = 0 keeps
            // l and acc at 0 without a NaN from -inf - -inf.
            const float ref = mx == -INFINITY ? 0.0f : mx;
            const float corr = exp2f(m[g] - ref);
            float sum = 0.0f;
#pragma unroll
            for (int u = 0; u < DEC_U; ++u) {
                pr[g][u] = exp2f(s[g][u] - ref);
                sum += pr[g][u];
            }
            l[g] = l[g] * corr + sum;
#pragma unroll
            for (int i = 0; i < DEC_EPL; ++i) acc[g][i] *= corr;
            m[g] = mx;
        }
        // 6. acc += p · V, one position at a time (its 8 floats live only here).
#pragma unroll
        for (int u = 0; u < DEC_U; ++u) {
            float vf[DEC_EPL];
            dec_unpack8(vr[u], vf);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                if (g >= group) break;
#pragma unroll
                for (int i = 0; i < DEC_EPL; ++i) acc[g][i] = fmaf(pr[g][u], vf[i], acc[g][i]);
            }
        }
    }

    // Merge the warp's two slots (lane L and L ^ 16 hold the same elements of the two slots).
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float mo = __shfl_xor_sync(FULL_MASK, m[g], 16);
        const float lo = __shfl_xor_sync(FULL_MASK, l[g], 16);
        const float mx = fmaxf(m[g], mo);
        const float ref = mx == -INFINITY ? 0.0f : mx;
        const float a = exp2f(m[g] - ref), b = exp2f(mo - ref);
        l[g] = l[g] * a + lo * b;
#pragma unroll
        for (int i = 0; i < DEC_EPL; ++i)
            acc[g][i] = acc[g][i] * a + __shfl_xor_sync(FULL_MASK, acc[g][i], 16) * b;
        m[g] = mx;
    }
    if (lane < 16) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (lane == 0) {
                sm_m[warp][g] = m[g];
                sm_l[warp][g] = l[g];
            }
            float4* dst = reinterpret_cast<float4*>(&sm_o[warp][g][d0]);
            dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
        }
    }
    __syncthreads();

    // Merge the warps: warp w writes heads w, w + 4, ... A warp that saw no position has m = -inf
    // and contributes nothing; a split with no position at all writes m = -inf, l = 0.
    for (int g = warp; g < group; g += DEC_WARPS) {
        float mx = -INFINITY;
        for (int w = 0; w < DEC_WARPS; ++w) mx = fmaxf(mx, sm_m[w][g]);
        float wsum[DEC_WARPS];
        float lsum = 0.0f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            wsum[w] = sm_m[w][g] == -INFINITY ? 0.0f : exp2f(sm_m[w][g] - mx);
            lsum += sm_l[w][g] * wsum[w];
        }
        const u64 head = (u64)row * num_heads + kvh * group + g;
        float* o = part_o + (head * splits + split) * head_dim;
        for (int d = lane; d < head_dim; d += 32) {
            float v = 0.0f;
            for (int w = 0; w < DEC_WARPS; ++w) v += sm_o[w][g][d] * wsum[w];
            o[d] = v;
        }
        if (lane == 0) {
            part_ml[(head * splits + split) * 2] = mx * DEC_LN2;  // natural log units; -inf stays
            part_ml[(head * splits + split) * 2 + 1] = lsum;
        }
    }
}

// Entry points, one per register capacity G (the host picks one: decode_kernel in
// src/backend/cuda/attention.rs); spelled out so each name is greppable.
extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32)
attention_decode_g1(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                    const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ row_pos,
                    const u32* __restrict__ row_table, const u32* __restrict__ block_tables,
                    float* __restrict__ part_o, float* __restrict__ part_ml, int num_heads,
                    int num_kv_heads, int head_dim, int block_size, int pages_per_split,
                    float scale) {
    decode_split<1>(q, k_cache, v_cache, layer_off, row_pos, row_table, block_tables, part_o,
                    part_ml, num_heads, num_kv_heads, head_dim, block_size, pages_per_split,
                    scale);
}

extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32)
attention_decode_g2(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                    const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ row_pos,
                    const u32* __restrict__ row_table, const u32* __restrict__ block_tables,
                    float* __restrict__ part_o, float* __restrict__ part_ml, int num_heads,
                    int num_kv_heads, int head_dim, int block_size, int pages_per_split,
                    float scale) {
    decode_split<2>(q, k_cache, v_cache, layer_off, row_pos, row_table, block_tables, part_o,
                    part_ml, num_heads, num_kv_heads, head_dim, block_size, pages_per_split,
                    scale);
}

extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32)
attention_decode_g4(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                    const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ row_pos,
                    const u32* __restrict__ row_table, const u32* __restrict__ block_tables,
                    float* __restrict__ part_o, float* __restrict__ part_ml, int num_heads,
                    int num_kv_heads, int head_dim, int block_size, int pages_per_split,
                    float scale) {
    decode_split<4>(q, k_cache, v_cache, layer_off, row_pos, row_table, block_tables, part_o,
                    part_ml, num_heads, num_kv_heads, head_dim, block_size, pages_per_split,
                    scale);
}

extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32)
attention_decode_g8(const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                    const bf16* __restrict__ v_cache, u64 layer_off, const u32* __restrict__ row_pos,
                    const u32* __restrict__ row_table, const u32* __restrict__ block_tables,
                    float* __restrict__ part_o, float* __restrict__ part_ml, int num_heads,
                    int num_kv_heads, int head_dim, int block_size, int pages_per_split,
                    float scale) {
    decode_split<8>(q, k_cache, v_cache, layer_off, row_pos, row_table, block_tables, part_o,
                    part_ml, num_heads, num_kv_heads, head_dim, block_size, pages_per_split,
                    scale);
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
