// SwiGLU: y = silu(gate) * up = gate / (1 + exp(-gate)) * up, in f32, rounded once to bf16.
// Launch: grid (ceil(n / 256)), block (256). Purely memory-bound; expf (not __expf) keeps it
// within an ulp of the CPU reference, and costs nothing next to the loads.
extern "C" __global__ void swiglu(const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                  bf16* __restrict__ y, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = to_f32(gate[i]);
        y[i] = to_bf16(g / (1.0f + expf(-g)) * to_f32(up[i]));
    }
}

// Backward: with s = sigmoid(g), y = g·s·u, so
//   dgate = dy·u·s·(1 + g·(1 − s)),   dup = dy·g·s.
// Launch: grid (ceil(n / 256)), block (256).
extern "C" __global__ void swiglu_backward(const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                           const bf16* __restrict__ dy, bf16* __restrict__ dgate,
                                           bf16* __restrict__ dup, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dy[i]);
        const float s = 1.0f / (1.0f + expf(-g));
        dgate[i] = to_bf16(d * u * s * (1.0f + g * (1.0f - s)));
        dup[i] = to_bf16(d * g * s);
    }
}
