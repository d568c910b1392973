// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, with the statistic in f32 (as transformers and the
// CPU reference compute it), and the pre-norm residual seam fused in: residual += delta, then
// y = rms_norm(residual). Fusing saves one full read and write of the residual stream per norm.
//
// Launch (both): grid (rows), block (256). One block per row: a row (hidden <= a few thousand)
// is a few KB, read twice; the second read hits L1/L2.

// The row's 1/rms, reduced over the block.
__device__ float row_inv_rms(const bf16* x, int cols, float eps, float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_f32(x[i]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    // 1/sqrtf rather than rsqrtf: matches the CPU's 1.0 / (ms + eps).sqrt() to the last ulp.
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

__device__ void norm_row(const bf16* x, const bf16* w, bf16* y, int cols, float inv) {
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        y[i] = to_bf16(to_f32(x[i]) * inv * to_f32(w[i]));
}

extern "C" __global__ void rms_norm(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                    bf16* __restrict__ y, int cols, float eps) {
    __shared__ float scratch[32];
    const u64 off = (u64)blockIdx.x * cols;
    const float inv = row_inv_rms(x + off, cols, eps, scratch);
    norm_row(x + off, w, y + off, cols, inv);
}

// residual += delta (stored back in bf16, which is what the next layer reads), then y = norm.
// Each thread normalises the very elements it wrote, so no barrier is needed between the add
// and the norm's second pass; block_sum's barriers order the first pass.
extern "C" __global__ void add_rms_norm(bf16* __restrict__ residual, const bf16* __restrict__ delta,
                                        const bf16* __restrict__ w, bf16* __restrict__ y, int cols,
                                        float eps) {
    __shared__ float scratch[32];
    const u64 off = (u64)blockIdx.x * cols;
    bf16* r = residual + off;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const bf16 s = to_bf16(to_f32(r[i]) + to_f32(delta[off + i]));
        r[i] = s;
        const float v = to_f32(s);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
    norm_row(r, w, y + off, cols, inv);
}

// residual += delta, elementwise. Launch: grid (ceil(n / 256)), block (256).
extern "C" __global__ void add_assign(bf16* __restrict__ residual, const bf16* __restrict__ delta, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) residual[i] = to_bf16(to_f32(residual[i]) + to_f32(delta[i]));
}

// ---- backward ----
// With r = 1/sqrt(mean(x^2) + eps) and x̂ = x·r (y = x̂·w):
//   dx = r·(w·dy − x̂·mean(x̂·w·dy)),   dw = Σ_rows dy·x̂.
// dw is summed without atomics, so a step is reproducible bit for bit: block b sums the rows
// b, b + gridDim.x, … into its own row of `partials` ([gridDim.x, cols] f32), and
// colsum_accumulate adds those rows into dw in block order.
// Launch: grid (min(rows, 256)), block (256), dynamic shared memory cols * 4 bytes.
extern "C" __global__ void rms_norm_backward(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                             const bf16* __restrict__ dy, bf16* __restrict__ dx,
                                             float* __restrict__ partials, int rows, int cols,
                                             float eps) {
    extern __shared__ float dw_s[];
    __shared__ float scratch[32];
    // Each thread only ever touches its own columns of dw_s: no barrier around it.
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dw_s[i] = 0.0f;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const u64 off = (u64)r * cols;
        float ss = 0.0f, dot = 0.0f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const float v = to_f32(x[off + i]);
            ss += v * v;
            dot += v * to_f32(w[i]) * to_f32(dy[off + i]);
        }
        ss = block_sum(ss, scratch);
        dot = block_sum(dot, scratch);
        const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
        const float mean_dot = inv * dot / (float)cols;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const float xh = to_f32(x[off + i]) * inv, g = to_f32(dy[off + i]);
            dx[off + i] = to_bf16(inv * (to_f32(w[i]) * g - xh * mean_dot));
            dw_s[i] += g * xh;
        }
    }
    for (int i = threadIdx.x; i < cols; i += blockDim.x) partials[(u64)blockIdx.x * cols + i] = dw_s[i];
}

// dw[c] += Σ_b partials[b, c], b in order. Launch: grid (ceil(cols / 256)), block (256).
extern "C" __global__ void colsum_accumulate(const float* __restrict__ partials, int parts, int cols,
                                             float* __restrict__ dw) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int b = 0; b < parts; ++b) s += partials[(u64)b * cols + c];
    dw[c] += s;
}
