// AdamW on f32 master weights, fused with the bf16 copy the forward reads: one pass over
// (master, grad, m, v) that writes (master, m, v, param). Decoupled weight decay (Loshchilov &
// Hutter), as torch.optim.AdamW and the CPU reference (src/backend/cpu/train.rs):
//   g = grad·grad_scale;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   p −= lr·((m / bc1) / (sqrt(v / bc2) + eps) + wd·p),   bc_i = 1 − β_i^step (from the host).
// Launch: grid (ceil(n / 256)), block (256).
extern "C" __global__ void adamw(float* __restrict__ master, bf16* __restrict__ param,
                                 const float* __restrict__ grad, float* __restrict__ m,
                                 float* __restrict__ v, u64 n, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, float grad_scale, float bc1,
                                 float bc2) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = master[i];
    p -= lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + weight_decay * p);
    master[i] = p;
    param[i] = to_bf16(p);
}

// Σ g² of a gradient, in f64: block b sums the grid-strided elements it owns into partials[b];
// the host adds the partials in order (reproducible, and exact enough for global-norm clipping).
// Launch: grid (256), block (256).
extern "C" __global__ void sq_norm_partials(const float* __restrict__ g, u64 n, double* __restrict__ partials) {
    __shared__ double sums[256];
    double acc = 0.0;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        acc += (double)g[i] * (double)g[i];
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sums[threadIdx.x] += sums[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = sums[0];
}
