// Helpers shared by every kernel. The compile path (src/backend/cuda/compile.rs) puts this text
// in front of each kernel file before NVRTC sees it, so the kernels need no include path of ours,
// only the CUDA headers (cuda_bf16.h).
#include <cuda_bf16.h>

// NVRTC has no <cstdint>; these are the widths the Rust side passes.
typedef unsigned int u32;
typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

#define FULL_MASK 0xffffffffu
// NVRTC has no <cmath> macros either.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
// Round to nearest even, as half::bf16::from_f32 does on the host.
__device__ __forceinline__ bf16 to_bf16(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds 32 floats.
// The leading barrier lets callers reuse `scratch` for back-to-back reductions.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Maximum over the whole block; every thread gets the result. `scratch` holds 32 floats.
__device__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// Element offset, inside one layer's pool, of (slot, head): [block][head][pos_in_block][head_dim].
__device__ __forceinline__ u64 kv_slot_offset(u32 slot, int head, int num_kv_heads, int block_size,
                                              int head_dim) {
    const u64 block = slot / block_size, within = slot % block_size;
    return ((block * num_kv_heads + head) * block_size + within) * head_dim;
}
