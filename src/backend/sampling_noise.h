// The random numbers behind Backend::sample, shared by every backend so that a draw is a pure function
// of (seed, offset, token id) and the logits: sampling is Gumbel-max over the allowed tokens,
// token = argmax_i (logit_i / temperature + g(seed, offset, i)), with g a standard Gumbel variate from a
// counter-based hash. The CPU and CUDA backends thus pick the same token from the same logits (up to
// f32 rounding of the sums), independent of thread counts or reduction order.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SKV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SKV_HOST_DEVICE inline
#endif

namespace swiftkv {

// splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
SKV_HOST_DEVICE uint64_t noise_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Uniform in (0, 1): 23 random bits plus a half step, exact in f32, never 0 or 1 (max 1 - 2^-24).
SKV_HOST_DEVICE float noise_uniform(uint64_t seed, uint64_t offset, uint64_t index) {
    const uint64_t h = noise_mix64(noise_mix64(seed ^ noise_mix64(offset)) + index);
    return (float(uint32_t(h >> 41)) + 0.5f) * (1.0f / 8388608.0f);
}

}  // namespace swiftkv
