// Embedding gather: out[r, :] = table[ids[r], :].
// Launch: grid (rows), block (256). Ids are checked against the vocabulary on the host first,
// so the kernel does no bounds check of its own.
extern "C" __global__ void embedding_gather(const bf16* __restrict__ table, const u32* __restrict__ ids,
                                            bf16* __restrict__ out, int hidden) {
    const bf16* src = table + (u64)ids[blockIdx.x] * hidden;
    bf16* dst = out + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

// Backward: scatter-add of the rows of dy into the f32 gradient of the table, without atomics so
// it is reproducible: the host groups the rows by token id (`rows_by_id` lists row indices sorted
// by id, stable; segment s spans seg_start[s] .. seg_start[s + 1] and belongs to id seg_id[s]),
// and one block sums one id's rows in order.
// Launch: grid (distinct ids), block (256).
extern "C" __global__ void embedding_backward(const bf16* __restrict__ dy, const u32* __restrict__ rows_by_id,
                                              const u32* __restrict__ seg_start,
                                              const u32* __restrict__ seg_id, float* __restrict__ dw,
                                              int hidden) {
    const u32 s0 = seg_start[blockIdx.x], s1 = seg_start[blockIdx.x + 1];
    float* dst = dw + (u64)seg_id[blockIdx.x] * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float acc = 0.0f;
        for (u32 s = s0; s < s1; ++s) acc += to_f32(dy[(u64)rows_by_id[s] * hidden + i]);
        dst[i] += acc;
    }
}
