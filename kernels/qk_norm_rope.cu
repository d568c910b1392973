// Qwen3's attention input transform, one (row, head) per block:
//   q and k heads: per-head RMSNorm (weights shared by all heads) then RoPE in the rotate-half
//   convention: the pair (x[i], x[i + d/2]) rotates by position * inv_freq[i].
//   With a cache given, k is not written back: the rotated key goes straight to its slot in the
//   paged K pool and v to the V pool (docs/kv-layout.md), saving a round trip of k through memory.
//
// Launch: grid (rows, num_heads + num_kv_heads [+ num_kv_heads for v when caching]), block (64).
// blockIdx.y < num_heads is a q head, then the k heads, then the v heads.
// inv_freq comes from the host (src/model/rope.rs) so the angles are the CPU's to the bit;
// sincosf (not __sincosf) because angles reach tens of thousands of radians at long positions.

__device__ void norm_rope_head(const bf16* src, bf16* dst, const bf16* w, const float* inv_freq,
                               float pos, int head_dim, float eps, float* scratch) {
    const int half = head_dim / 2;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        const float v = to_f32(src[i]);
        ss += v * v;
    }
    // The barrier inside block_sum also orders every read of src before any in-place write.
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)head_dim + eps);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float a = to_f32(src[i]) * inv * to_f32(w[i]);
        const float b = to_f32(src[i + half]) * inv * to_f32(w[i + half]);
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        dst[i] = to_bf16(a * c - b * s);
        dst[i + half] = to_bf16(b * c + a * s);
    }
}

// Slot that is not written (src/backend/decode_graph.rs SKIP_SLOT): padding rows.
#define KV_SKIP_SLOT 0xFFFFFFFFu

// k_cache/v_cache null: q and k are transformed in place (the unfused Backend::qk_norm_rope).
// Otherwise q in place, k and v into the layer's pools at `slots` (layer_off = layer * layer_elems).
extern "C" __global__ void qk_norm_rope(bf16* __restrict__ q, bf16* __restrict__ k, const bf16* __restrict__ v,
                                        const bf16* __restrict__ q_w, const bf16* __restrict__ k_w,
                                        const u32* __restrict__ positions, const float* __restrict__ inv_freq,
                                        const u32* __restrict__ slots, bf16* __restrict__ k_cache,
                                        bf16* __restrict__ v_cache, u64 layer_off, int num_heads,
                                        int num_kv_heads, int head_dim, int block_size, float eps) {
    __shared__ float scratch[32];
    const u64 row = blockIdx.x;
    const int head = blockIdx.y;
    const float pos = (float)positions[row];
    if (head < num_heads) {
        bf16* x = q + (row * num_heads + head) * head_dim;
        norm_rope_head(x, x, q_w, inv_freq, pos, head_dim, eps, scratch);
        return;
    }
    const int kvh = (head - num_heads) % num_kv_heads;
    const bf16* ksrc = k + (row * num_kv_heads + kvh) * head_dim;
    if (k_cache == nullptr) {
        norm_rope_head(ksrc, (bf16*)ksrc, k_w, inv_freq, pos, head_dim, eps, scratch);
        return;
    }
    // A padding row of a CUDA-graph decode step (slot KV_SKIP_SLOT) writes nothing; the whole
    // block takes this branch, so no thread is left waiting at a barrier.
    if (slots[row] == KV_SKIP_SLOT) return;
    const u64 dst = layer_off + kv_slot_offset(slots[row], kvh, num_kv_heads, block_size, head_dim);
    if (head < num_heads + num_kv_heads) {
        norm_rope_head(ksrc, k_cache + dst, k_w, inv_freq, pos, head_dim, eps, scratch);
    } else {
        const bf16* vsrc = v + (row * num_kv_heads + kvh) * head_dim;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) v_cache[dst + i] = vsrc[i];
    }
}

// Stores each row's k and v heads at its slot (the unfused Backend::write_kv).
// Launch: grid (rows, num_kv_heads), block (64).
extern "C" __global__ void write_kv(const bf16* __restrict__ k, const bf16* __restrict__ v,
                                    const u32* __restrict__ slots, bf16* __restrict__ k_cache,
                                    bf16* __restrict__ v_cache, u64 layer_off, int num_kv_heads,
                                    int head_dim, int block_size) {
    const u64 row = blockIdx.x;
    const int kvh = blockIdx.y;
    if (slots[row] == KV_SKIP_SLOT) return;
    const u64 src = (row * num_kv_heads + kvh) * head_dim;
    const u64 dst = layer_off + kv_slot_offset(slots[row], kvh, num_kv_heads, block_size, head_dim);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        k_cache[dst + i] = k[src + i];
        v_cache[dst + i] = v[src + i];
    }
}

// ---- backward ----
// Per (row, head) of q or k, from the projection's output x (before the transform) and the
// gradient g at the transform's output, in place of g:
//   RoPE is a rotation, so dn = rotation of g by the opposite angle:
//     dn[i] = g[i]·cos + g[i+h]·sin,  dn[i+h] = g[i+h]·cos − g[i]·sin   (h = head_dim / 2)
//   then the RMSNorm backward: dx = r·(w·dn − x̂·mean(x̂·w·dn)), dw += dn·x̂.
// dw goes to this block's row of `partials` ([gridDim.x, head_dim]), summed in order by
// colsum_accumulate (rmsnorm.cu) so the result is reproducible.
// Launch: grid (min(rows * heads, 1024)), block (64); thread t owns the pair (t, t + h), so
// head_dim <= 128 (checked on the host).
extern "C" __global__ void __launch_bounds__(64)
qk_norm_rope_backward(const bf16* __restrict__ pre, bf16* __restrict__ grad, const bf16* __restrict__ w,
                      const u32* __restrict__ positions, const float* __restrict__ inv_freq,
                      float* __restrict__ partials, int rows, int heads, int head_dim, float eps) {
    __shared__ float scratch[32];
    const int half = head_dim / 2, i = threadIdx.x;
    const bool owner = i < half;
    const float wa = owner ? to_f32(w[i]) : 0.0f, wb = owner ? to_f32(w[i + half]) : 0.0f;
    float dwa = 0.0f, dwb = 0.0f;
    const u64 items = (u64)rows * heads;
    for (u64 item = blockIdx.x; item < items; item += gridDim.x) {
        const u64 off = item * head_dim;
        float xa = 0.0f, xb = 0.0f, dna = 0.0f, dnb = 0.0f;
        if (owner) {
            xa = to_f32(pre[off + i]);
            xb = to_f32(pre[off + i + half]);
            float s, c;
            sincosf((float)positions[item / heads] * inv_freq[i], &s, &c);
            const float ga = to_f32(grad[off + i]), gb = to_f32(grad[off + i + half]);
            dna = ga * c + gb * s;
            dnb = gb * c - ga * s;
        }
        const float ss = block_sum(xa * xa + xb * xb, scratch);
        const float dot = block_sum(xa * wa * dna + xb * wb * dnb, scratch);
        const float inv = 1.0f / sqrtf(ss / (float)head_dim + eps);
        const float mean_dot = inv * dot / (float)head_dim;
        if (owner) {
            const float xha = xa * inv, xhb = xb * inv;
            grad[off + i] = to_bf16(inv * (wa * dna - xha * mean_dot));
            grad[off + i + half] = to_bf16(inv * (wb * dnb - xhb * mean_dot));
            dwa += dna * xha;
            dwb += dnb * xhb;
        }
    }
    if (owner) {
        partials[(u64)blockIdx.x * head_dim + i] = dwa;
        partials[(u64)blockIdx.x * head_dim + i + half] = dwb;
    }
}
