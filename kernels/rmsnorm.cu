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
