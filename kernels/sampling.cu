// Next-token selection on the GPU, one block per sequence (row of logits); the engine's step
// (Backend::select_tokens, src/backend/cuda/sampling.rs) runs repetition_penalty (if any row
// uses it), sample, then token_logprob, and downloads only ids, log-probs and non-finite flags.
//
// repetition_penalty: an f32 copy of each penalized row with transformers' rule applied to the
//   row's distinct history tokens (x < 0 ? x * p : x / p, the host's f32 arithmetic); the raw
//   bf16 logits stay untouched for the log-probs.
// sample: a forced token is kept; temperature 0 is the argmax (first index of the maximum,
//   torch.argmax's tie rule, as engine/sampling.rs); otherwise temperature, then
//   top-k, top-p and min-p over the scaled logits, then a draw, exactly the rules of
//   engine::sampling::sample_with_draw, with the draw u in [0, 1) a counter-based hash of
//   (seed, step) (engine::sampling::counter_uniform computes the same bits on the host), so a run
//   is reproducible and needs no RNG state on the device.
// token_logprob: per row the first non-finite (NaN or Inf) index, the log-sum-exp of the raw logits (f32 exps summed
//   in f64, as the host sums in f64) and log softmax at the chosen token.
//
// Selection without sorting: each logit gets a 64-bit key, larger = earlier in the host's order
// (scaled logit descending, then index ascending), so keys are distinct even where bf16 logits
// tie. Every "the first n in sorted order" question becomes "the largest key threshold T whose
// count/mass of keys >= T passes a test", found by binary search over the 64-bit key space,
// each step a block-wide pass over the row. That is ~64 passes per question; a radix select
// would need ~8 (future work, docs/kernels.md).
//
// Launch: sample, token_logprob: grid (rows), block (1024); repetition_penalty: grid
// (penalized rows), block (256).

#define SAMPLE_THREADS 1024
#define PENALTY_THREADS 256
#define NO_ROW 0xffffffffu  // "none" in the u32 per-row parameters (forced token, penalized row)

__device__ __forceinline__ u64 order_key(float v, u32 idx) {
    if (v == 0.0f) v = 0.0f;  // -0 ties +0, as on the host, so the lower index wins
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

// splitmix64 finaliser of (seed, step): a counter-based stream, u = top 24 bits / 2^24.
__device__ __forceinline__ float counter_uniform(u64 seed, u64 step) {
    u64 z = seed + (step + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// Sum over the block in a fixed order; every thread gets it. `scratch` holds 32 values.
__device__ double block_sum_f64(double v, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += scratch[w];
    return s;
}

extern "C" __global__ void __launch_bounds__(PENALTY_THREADS)
repetition_penalty(const bf16* __restrict__ logits, float* __restrict__ out,
                   const u32* __restrict__ src_row, const u32* __restrict__ offsets,
                   const u32* __restrict__ ids, const float* __restrict__ penalty, int vocab) {
    const int j = blockIdx.x;
    const bf16* x = logits + (u64)src_row[j] * vocab;
    float* y = out + (u64)j * vocab;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) y[i] = to_f32(x[i]);
    // The copy is complete (and visible to the block) before the penalty overwrites entries.
    __syncthreads();
    const float p = penalty[j];
    // ids are distinct within a row (deduplicated on the host) and < vocab.
    for (u32 k = offsets[j] + threadIdx.x; k < offsets[j + 1]; k += blockDim.x) {
        const u32 t = ids[k];
        const float v = to_f32(x[t]);
        y[t] = v < 0.0f ? v * p : v / p;
    }
}

struct Row {
    const bf16* x;    // raw logits
    const float* xf;  // the penalized f32 copy of this row, or null
    int vocab;
    float inv_t, max_s, total;
    u64 key_floor;  // top-k cut: keys below are out
};

__device__ __forceinline__ float logit(const Row& r, int i) {
    return r.xf ? r.xf[i] : to_f32(r.x[i]);
}
__device__ __forceinline__ float scaled(const Row& r, int i) { return logit(r, i) * r.inv_t; }

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
        // hi − (hi − lo) / 2 is the upper midpoint without lo + hi + 1, which wraps at
        // hi = 2^64 − 1 (a NaN logit at token 0 has that key) and would never terminate.
        const u64 mid = hi - (hi - lo) / 2;
        if (f(mid) >= target) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Per row b: fparams[3b..] = temperature (0 = greedy), top_p, min_p; uparams[3b..] = top_k,
// forced token or NO_ROW, index of the row's penalized copy in `penalized` or NO_ROW;
// counters[2b..] = seed, step.
// minBlocks 1 stated: with the bound alone ptxas picked 32 registers and spilled 4 B.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS, 1)
sample(const bf16* __restrict__ logits, const float* __restrict__ penalized,
       const float* __restrict__ fparams, const u32* __restrict__ uparams,
       const u64* __restrict__ counters, u32* __restrict__ out, int vocab) {
    __shared__ float scratch[32];
    __shared__ u64 scratch64[32];
    const int b = blockIdx.x;
    const u32 forced = uparams[3 * b + 1];
    if (forced != NO_ROW) {  // uniform over the block: no barrier is skipped by some threads only
        if (threadIdx.x == 0) out[b] = forced;
        return;
    }
    const u32 pen = uparams[3 * b + 2];
    const float temperature = fparams[3 * b], top_p = fparams[3 * b + 1], min_p = fparams[3 * b + 2];
    const bool greedy = temperature == 0.0f;
    Row r;
    r.x = logits + (u64)b * vocab;
    r.xf = pen != NO_ROW ? penalized + (u64)pen * vocab : nullptr;
    r.vocab = vocab;
    r.inv_t = greedy ? 1.0f : 1.0f / temperature;  // the host multiplies by 1/T too: same rounding
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
    if (greedy) {  // the largest key is the first index of the maximum
        if (threadIdx.x == 0) out[b] = ~(u32)(kmax & 0xffffffffu);
        return;
    }
    r.max_s = block_max(mx, scratch);

    // top-k: the k-th largest key is the largest T with count(keys >= T) >= k.
    const u32 k = uparams[3 * b];
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
    if (top_p < 1.0f) {
        const u64 t = search_largest(r.key_floor, kmax, top_p,
                                     [&](u64 t) { return mass_ge(r, t, true, 0.0f, scratch); });
        r.key_floor = t > r.key_floor ? t : r.key_floor;
    }
    // min-p: probabilities fall with the key, so a probability floor keeps a key prefix; the
    // top token (probability 1 / total) always passes since min_p <= 1.
    const float p_floor = min_p > 0.0f ? min_p * (1.0f / r.total) : 0.0f;

    // The draw: the first token (in key order) whose cumulative kept mass exceeds u * mass.
    const float mass = mass_ge(r, 0, true, p_floor, scratch);
    const float target = counter_uniform(counters[2 * b], counters[2 * b + 1]) * mass;
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

// result[3b..] = chosen token, log-prob (f32 bits), first NaN/Inf index or NO_ROW; lse[b] = the
// row's log-sum-exp (kept on the device).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
token_logprob(const bf16* __restrict__ logits, const u32* __restrict__ tokens,
              float* __restrict__ lse, u32* __restrict__ result, int vocab) {
    __shared__ float scratch[32];
    __shared__ u64 scratch64[32];
    __shared__ double scratchd[32];
    const int b = blockIdx.x;
    const bf16* x = logits + (u64)b * vocab;
    float mx = -INFINITY;
    u64 nan_key = 0;  // vocab - i of the first NaN or Inf: larger = earlier; 0 = none
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = to_f32(x[i]);
        if (!isfinite(v)) {
            const u64 key = (u64)(vocab - i);
            nan_key = key > nan_key ? key : nan_key;
        } else {
            mx = fmaxf(mx, v);
        }
    }
    mx = block_max(mx, scratch);
    nan_key = block_max_u64(nan_key, scratch64);
    double acc = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) acc += (double)expf(to_f32(x[i]) - mx);
    acc = block_sum_f64(acc, scratchd);
    if (threadIdx.x == 0) {
        const double log_sum = log(acc);
        const u32 tok = tokens[b];
        lse[b] = (float)((double)mx + log_sum);
        result[3 * b] = tok;
        result[3 * b + 1] = __float_as_uint((float)((double)to_f32(x[tok]) - (double)mx - log_sum));
        result[3 * b + 2] = nan_key ? (u32)((u64)vocab - nan_key) : NO_ROW;
    }
}
