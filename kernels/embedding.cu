// Embedding gather: out[r, :] = table[ids[r], :].
// Launch: grid (rows), block (256). Ids are checked against the vocabulary on the host first,
// so the kernel does no bounds check of its own.
extern "C" __global__ void embedding_gather(const bf16* __restrict__ table, const u32* __restrict__ ids,
                                            bf16* __restrict__ out, int hidden) {
    const bf16* src = table + (u64)ids[blockIdx.x] * hidden;
    bf16* dst = out + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}
