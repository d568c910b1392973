// Next-token selection on the GPU, one block per sequence (row of logits).
//
// argmax: the first index of the maximum (torch.argmax's tie rule, as engine/sampling.rs).
// sample: temperature, then top-k, top-p and min-p over the scaled logits, then a draw, exactly
//   the rules of engine::sampling::sample_with_draw, with the draw u in [0, 1) a counter-based
//   hash of (seed, step) (engine::sampling::counter_uniform computes the same bits on the host),
//   so a run is reproducible and needs no RNG state on the device.
//
// Selection without sorting: each logit gets a 64-bit key, larger = earlier in the host's order
// (scaled logit descending, then index ascending), so keys are distinct even where bf16 logits
// tie. Every "the first n in sorted order" question becomes "the largest key threshold T whose
// count/mass of keys >= T passes a test", found by binary search over the 64-bit key space,
// each step a block-wide pass over the row. That is ~64 passes per question; a radix select
// would need ~8 (future work, docs/kernels.md).
//
// Launch (both): grid (rows), block (1024). Repetition penalty is not applied here: the engine
// applies it to the logits first when it is used.

#define SAMPLE_THREADS 1024

__device__ __forceinline__ u64 order_key(float v, u32 idx) {
    u32 b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // float order as unsigned order
    return ((u64)b << 32) | (u64)(~idx);
}

// Largest u64 over the block; every thread gets it. `scratch` holds 32 values.
__device__ u64 block_max_u64(u64 v, u64* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        const u64 other = __shfl_xor_sync(FULL_MASK, v, o);
        v = other > v ? other : v;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) v = scratch[w] > v ? scratch[w] : v;
    return v;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
argmax(const bf16* __restrict__ logits, u32* __restrict__ out, int vocab) {
    __shared__ u64 scratch[32];
    const bf16* x = logits + (u64)blockIdx.x * vocab;
    u64 best = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const u64 key = order_key(to_f32(x[i]), (u32)i);
        best = key > best ? key : best;
    }
    best = block_max_u64(best, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = ~(u32)(best & 0xffffffffu);
}

// splitmix64 finaliser of (seed, step): a counter-based stream, u = top 24 bits / 2^24.
__device__ __forceinline__ float counter_uniform(u64 seed, u64 step) {
    u64 z = seed + (step + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

struct Row {
    const bf16* x;
    int vocab;
    float inv_t, max_s, total;
    u64 key_floor;  // top-k cut: keys below are out
};

__device__ __forceinline__ float scaled(const Row& r, int i) { return to_f32(r.x[i]) * r.inv_t; }

// Count (as_mass = false) or probability mass (true) of the keys >= t that also pass the
// top-k floor and min-p floor `p_floor`.
__device__ float mass_ge(const Row& r, u64 t, bool as_mass, float p_floor, float* scratch) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < r.vocab; i += blockDim.x) {
        const float s = scaled(r, i);
        const u64 key = order_key(s, (u32)i);
        if (key < t || key < r.key_floor) continue;
        if (!as_mass) {
            acc += 1.0f;  // counts stay exact in f32 up to 2^24 > any vocabulary
        } else {
            const float pr = expf(s - r.max_s) / r.total;
            if (pr >= p_floor) acc += pr;
        }
    }
    return block_sum(acc, scratch);
}

// Largest T in [lo, hi] with f(T) >= target (f non-increasing in T); lo if none.
template <typename F>
__device__ u64 search_largest(u64 lo, u64 hi, float target, F f) {
    while (lo < hi) {
        const u64 mid = lo + (hi - lo + 1) / 2;
        if (f(mid) >= target) lo = mid; else hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample(const bf16* __restrict__ logits, const float* __restrict__ temperature,
       const u32* __restrict__ top_k, const float* __restrict__ top_p, const float* __restrict__ min_p,
       const u64* __restrict__ seed, const u64* __restrict__ step, u32* __restrict__ out, int vocab) {
    __shared__ float scratch[32];
    __shared__ u64 scratch64[32];
    const int b = blockIdx.x;
    Row r;
    r.x = logits + (u64)b * vocab;
    r.vocab = vocab;
    r.inv_t = 1.0f / temperature[b];  // the host multiplies by 1/T too: same rounding
    r.key_floor = 0;
    r.total = 1.0f;

    // The maximum scaled logit and the largest key.
    float mx = -INFINITY;
    u64 kmax = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float s = scaled(r, i);
        mx = fmaxf(mx, s);
        const u64 key = order_key(s, (u32)i);
        kmax = key > kmax ? key : kmax;
    }
    kmax = block_max_u64(kmax, scratch64);
    r.max_s = block_max(mx, scratch);

    // top-k: the k-th largest key is the largest T with count(keys >= T) >= k.
    const u32 k = top_k[b];
    if (k > 0 && k < (u32)vocab)
        r.key_floor = search_largest(0, kmax, (float)k,
                                     [&](u64 t) { return mass_ge(r, t, false, 0.0f, scratch); });

    // Normaliser over the top-k candidates.
    float tot = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float s = scaled(r, i);
        if (order_key(s, (u32)i) >= r.key_floor) tot += expf(s - r.max_s);
    }
    r.total = block_sum(tot, scratch);

    // top-p: the shortest prefix whose mass reaches top_p (the largest T with mass >= top_p).
    if (top_p[b] < 1.0f) {
        const u64 t = search_largest(r.key_floor, kmax, top_p[b],
                                     [&](u64 t) { return mass_ge(r, t, true, 0.0f, scratch); });
        r.key_floor = t > r.key_floor ? t : r.key_floor;
    }
    // min-p: probabilities fall with the key, so a probability floor keeps a key prefix; the
    // top token (probability 1 / total) always passes since min_p <= 1.
    const float p_floor = min_p[b] > 0.0f ? min_p[b] * (1.0f / r.total) : 0.0f;

    // The draw: the first token (in key order) whose cumulative kept mass exceeds u * mass.
    const float mass = mass_ge(r, 0, true, p_floor, scratch);
    const float target = counter_uniform(seed[b], step[b]) * mass;
    // f(T) = kept mass of keys >= T; we want the largest T with f(T) > target. A strict test
    // as ">= nextafter(target)" keeps the one search helper.
    const auto kept_ge = [&](u64 t) { return mass_ge(r, t, true, p_floor, scratch); };
    const float strict = nextafterf(target, INFINITY);
    u64 t = search_largest(r.key_floor, kmax, strict, kept_ge);
    if (kept_ge(t) < strict) {
        // Rounding left target at or above the whole mass: the host then takes the last kept
        // token, i.e. the smallest kept key (stored negated to reuse the max reduction).
        u64 neg_min = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const float s = scaled(r, i);
            const u64 key = order_key(s, (u32)i);
            if (key >= r.key_floor && expf(s - r.max_s) / r.total >= p_floor) neg_min = max(neg_min, ~key);
        }
        t = ~block_max_u64(neg_min, scratch64);
    }
    if (threadIdx.x == 0) out[b] = ~(u32)(t & 0xffffffffu);
}
