// Fused output projection + cross-entropy, the device half (the host runs the GEMMs, cuBLAS, one
// vocabulary chunk at a time, so the full tokens × vocabulary logits never exist):
//   pass 1, per chunk: ce_chunk_stats folds the chunk's f32 logits into each row's running max and
//     sum of exp (online softmax) and picks up the target's logit;
//   the host turns (max, sum) into the log-sum-exp;
//   pass 2, per chunk: ce_chunk_grad writes dlogits = (softmax − onehot(target))·scale[row] in bf16
//     for the two gradient GEMMs (dh += dlogits·W_chunk, dW_chunk += dlogitsᵀ·h).
// Logits are f32 (cuBLAS writes them so) because a bf16 logit is off by up to 1/16 at |x| ~ 16.

// Launch: grid (rows), block (256).
extern "C" __global__ void ce_chunk_stats(const float* __restrict__ logits, int width, int c0,
                                          const u32* __restrict__ targets, float* __restrict__ row_max,
                                          float* __restrict__ row_sum, float* __restrict__ target_logit) {
    __shared__ float scratch[32];
    const float* x = logits + (u64)blockIdx.x * width;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < width; i += blockDim.x) m = fmaxf(m, x[i]);
    m = block_max(m, scratch);
    const float old_max = row_max[blockIdx.x];
    const float new_max = fmaxf(old_max, m);
    float s = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) s += expf(x[i] - new_max);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        // expf(-inf) = 0 on the first chunk, when old_max is still -inf.
        row_sum[blockIdx.x] = row_sum[blockIdx.x] * expf(old_max - new_max) + s;
        row_max[blockIdx.x] = new_max;
        const int t = (int)targets[blockIdx.x] - c0;
        if (t >= 0 && t < width) target_logit[blockIdx.x] = x[t];
    }
}

// Launch: grid (rows, ceil(width / 256)), block (256). Rows go on x: grid.y stops at 65535,
// and a GRPO step can weight more tokens than that.
extern "C" __global__ void ce_chunk_grad(const float* __restrict__ logits, int width, int c0,
                                         const u32* __restrict__ targets, const float* __restrict__ lse,
                                         const float* __restrict__ scale, bf16* __restrict__ dlogits) {
    const u64 row = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= width) return;
    const u64 at = row * width + i;
    const float p = expf(logits[at] - lse[row]);
    const float onehot = (int)targets[row] == c0 + i ? 1.0f : 0.0f;
    dlogits[at] = to_bf16((p - onehot) * scale[row]);
}

// dst[rows[r], :] = src[r, :] (f32 → bf16): the active rows' dh back into the full batch.
// Launch: grid (active rows), block (256).
extern "C" __global__ void ce_scatter_rows(const float* __restrict__ src, const u32* __restrict__ rows,
                                           bf16* __restrict__ dst, int cols) {
    const float* s = src + (u64)blockIdx.x * cols;
    bf16* d = dst + (u64)rows[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = to_bf16(s[i]);
}
