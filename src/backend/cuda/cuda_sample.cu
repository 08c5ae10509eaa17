// Backend::sample on the GPU, no host sync (graph-capturable). The rules are those of the CPU backend
// (cpu_elementwise.cpp, "sample"), computed here in f32:
//
// Greedy when !(temperature > 0), when no logit is finite or when one is +inf: the argmax, NaN counting
// as -inf, the lowest index on ties.
//
// Sampling: token = argmax over the allowed tokens of (logit / temperature + g), g = -log(-log(u)) with
// u = noise_uniform(seed, offset, token) (sampling_noise.h, shared with the CPU backend), lowest index on
// exact ties. Only finite logits can be allowed. The allowed set is described by thresholds on the logit,
// found without sorting the vocabulary:
//   - top_k (0 < k < finite tokens): the k-th largest logit v_k; allowed: logit >= v_k (all tokens tied
//     with the k-th are kept, so the set can exceed k);
//   - top_p (< 1) over softmax(logit / temperature) renormalised on the top_k set: sorting that set by
//     probability, the boundary token is the first at which the cumulative probability reaches top_p;
//     allowed: logit >= its logit (tokens tied with it are kept; all tokens if rounding never reaches it);
//   - min_p (> 0): exp(z - z_max) >= min(min_p, 1), i.e. probability >= min_p * max probability.
// A top_k / top_p threshold is found by refinement over the 32-bit order-preserving key of the logit: each
// pass streams the row (from L2) and builds a 32-bin histogram of counts (top_k) or counts and unnormalised
// probability mass (top_p) over the current key interval; the bin holding the boundary becomes the next
// interval. Once that bin holds <= 4096 tokens they are gathered into shared memory, sorted (bitonic) and
// the boundary is found exactly; a bin of a single key value ends the search at once. Histograms are per
// thread (a private column of shared memory, no atomics) and reduced in a fixed order, so the result is
// deterministic: a pure function of the logits and the parameters. Masses are f32 (per-thread sums, then a
// fixed tree), so a top_p boundary within ~1e-6 relative of a token's cumulative mass may come out
// differently from the CPU backend's double-precision one. Cost: 2 streaming passes with no filters,
// typically 4-6 with top_k and/or top_p.
//
// Work layout: a row takes three phases, stats (argmax, key range; one streaming pass), plan (the
// thresholds; one block of 512 threads, 128 KiB of shared memory) and Gumbel (one streaming pass). With
// many rows one block per row does all three (sample_fused_kernel). With fewer rows than multiprocessors
// (and at most 256), the two streaming phases are split over up to 32 blocks per row, with partial results
// in the workspace; their reductions are integer max/min/sum, so the token does not depend on the split.
// In the Gumbel pass each thread keeps its best score and skips the logarithms of tokens whose u is too
// small to reach it (a bound evaluated with a wide margin), which never changes the winner.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_kernels.h"
#include "backend/sampling_noise.h"
#include "core/error.h"

namespace swiftkv::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 32;  // one warp lane per bin in the scan
constexpr int kCap = 4096; // candidates sorted in shared memory
// Per-thread histograms: counts (u32) and masses (f32), [kBins][kThreads] each. The candidate list aliases them.
constexpr size_t kDynamicSmem = size_t(kBins) * kThreads * (sizeof(uint32_t) + sizeof(float));
static_assert(size_t(kCap) * sizeof(uint32_t) <= kDynamicSmem);

struct SampleShared {
    unsigned long long red64[32];
    uint32_t red_a[32], red_b[32], red_c[32];
    uint32_t bin_cnt[kBins];
    float bin_mass[kBins];
    // Refinement state (written by one thread, read by all after a barrier).
    uint32_t lo, hi, cnt, count_above, ncand, count_ge, thr;
    float mass_above, target;
    int have_target;
    unsigned long long result;
};

// Order-preserving map float -> uint32 (-0 and +0 map to the same key). NaN must be filtered out before.
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t u = __float_as_uint(f);
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Unnormalised probability exp(z - z_max), z = logit / temperature; exactly 1 at the maximum (also when
// z_max is infinite).
__device__ __forceinline__ float weight_of(float logit, float temperature, float zmax) {
    const float z = logit / temperature;
    return z == zmax ? 1.0f : expf(z - zmax);
}

// Calls f(index, value) for every element of row[0, n) assigned to this thread, in increasing index order
// per thread; 16-byte loads (8 in flight per thread) for the aligned body.
template <class F>
__device__ __forceinline__ void for_each(const float* __restrict__ row, int64_t n, F&& f) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
    int64_t head = 0;
    if (addr % 16 != 0) head = addr % 4 == 0 ? int64_t((16 - addr % 16) / 4) : n;
    if (head > n) head = n;
    for (int64_t i = threadIdx.x; i < head; i += kThreads) f(i, row[i]);
    const float4* v4 = reinterpret_cast<const float4*>(row + head);
    const int64_t nvec = (n - head) / 4;
    int64_t j = threadIdx.x;
    constexpr int kUnroll = 8;
    for (; j + (kUnroll - 1) * kThreads < nvec; j += kUnroll * kThreads) {
        float4 a[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) a[u] = __ldg(v4 + j + u * kThreads);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int64_t base = head + 4 * (j + u * kThreads);
            f(base, a[u].x);
            f(base + 1, a[u].y);
            f(base + 2, a[u].z);
            f(base + 3, a[u].w);
        }
    }
    for (; j < nvec; j += kThreads) {
        const float4 a = __ldg(v4 + j);
        const int64_t base = head + 4 * j;
        f(base, a.x);
        f(base + 1, a.y);
        f(base + 2, a.z);
        f(base + 3, a.w);
    }
    for (int64_t i = head + 4 * nvec + threadIdx.x; i < n; i += kThreads) f(i, row[i]);
}

// --- deterministic block reductions ------------------------------------------------------------------

__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long v, SampleShared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    if (lane == 0) sh.red64[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < kWarps ? sh.red64[lane] : 0ull;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
            v = w > v ? w : v;
        }
        if (lane == 0) sh.result = v;
    }
    __syncthreads();
    const unsigned long long r = sh.result;
    __syncthreads();
    return r;
}

// min of a, max of b, sum of c over the block.
__device__ __forceinline__ void block_min_max_sum(uint32_t& a, uint32_t& b, uint32_t& c, SampleShared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a = min(a, __shfl_xor_sync(0xffffffffu, a, o));
        b = max(b, __shfl_xor_sync(0xffffffffu, b, o));
        c += __shfl_xor_sync(0xffffffffu, c, o);
    }
    if (lane == 0) {
        sh.red_a[warp] = a;
        sh.red_b[warp] = b;
        sh.red_c[warp] = c;
    }
    __syncthreads();
    a = 0xffffffffu;
    b = 0u;
    c = 0u;
    for (int w = 0; w < kWarps; ++w) {
        a = min(a, sh.red_a[w]);
        b = max(b, sh.red_b[w]);
        c += sh.red_c[w];
    }
    __syncthreads();
}

__device__ __forceinline__ uint32_t block_sum_u32(uint32_t c, SampleShared& sh) {
    uint32_t a = 0xffffffffu, b = 0u;
    block_min_max_sum(a, b, c, sh);
    return c;
}

// Sorts keys[0, npad) descending (npad a power of two), all threads taking part.
__device__ void bitonic_sort_desc(uint32_t* keys, int npad) {
    for (int k = 2; k <= npad; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < npad; i += kThreads) {
                const int ixj = i ^ j;
                if (ixj > i) {
                    const uint32_t a = keys[i], b = keys[ixj];
                    const bool swap = (i & k) == 0 ? a < b : a > b;
                    if (swap) {
                        keys[i] = b;
                        keys[ixj] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
}

struct Threshold {
    uint32_t key;       // allowed: key >= this
    uint32_t count_ge;  // number of valid tokens with key >= this
};

// Finds the boundary key among valid tokens with keys in [lo, hi] (count_in of them), walking down from the
// largest key. kMass false: the largest key t with #(key >= t) >= k (k-th largest value). kMass true: the
// largest key t with mass(key >= t) >= frac * mass(all in [lo, hi]), mass = weight_of.
template <bool kMass>
__device__ Threshold find_threshold(const float* __restrict__ row, int64_t vocab, uint32_t lo, uint32_t hi,
                                    uint32_t count_in, uint32_t k, float frac, float temperature, float zmax,
                                    uint32_t* hcnt, float* hmass, uint32_t* cand, SampleShared& sh) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    uint32_t cnt = count_in, count_above = 0;
    float mass_above = 0.0f, target = 0.0f;
    bool have_target = false;

    // Histogram refinement until the boundary interval is a single key or fits the candidate list.
    while (cnt > uint32_t(kCap) && lo != hi) {
        // 32 bins of 2^shift keys each: bin b holds keys [lo + b * 2^shift, lo + (b + 1) * 2^shift).
        const uint32_t range = hi - lo;
        int shift = 0;
        while ((range >> shift) >= uint32_t(kBins)) ++shift;
        __syncthreads();  // the previous use of the shared arrays is over
#pragma unroll
        for (int b = 0; b < kBins; ++b) {
            hcnt[b * kThreads + tid] = 0;
            if constexpr (kMass) hmass[b * kThreads + tid] = 0.0f;
        }
        for_each(row, vocab, [&](int64_t, float v) {
            if (!isfinite(v)) return;
            const uint32_t key = order_key(v);
            if (key < lo || key > hi) return;
            const uint32_t b = (key - lo) >> shift;
            hcnt[b * kThreads + tid] += 1;
            if constexpr (kMass) hmass[b * kThreads + tid] += weight_of(v, temperature, zmax);
        });
        __syncthreads();
        for (int b = warp; b < kBins; b += kWarps) {
            uint32_t c = 0;
            float s = 0.0f;
            for (int t = lane; t < kThreads; t += 32) {
                c += hcnt[b * kThreads + t];
                if constexpr (kMass) s += hmass[b * kThreads + t];
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                c += __shfl_xor_sync(0xffffffffu, c, o);
                if constexpr (kMass) s += __shfl_xor_sync(0xffffffffu, s, o);
            }
            if (lane == 0) {
                sh.bin_cnt[b] = c;
                sh.bin_mass[b] = s;
            }
        }
        __syncthreads();
        if (warp == 0) {
            // Lane = bin. Inclusive sums from the top bin down to this one, and exclusive (bins above).
            const uint32_t c = sh.bin_cnt[lane];
            const float s = kMass ? sh.bin_mass[lane] : 0.0f;
            uint32_t csum = c;
            float ssum = s;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const uint32_t c2 = __shfl_down_sync(0xffffffffu, csum, o);
                const float s2 = __shfl_down_sync(0xffffffffu, ssum, o);
                if (lane + o < 32) {
                    csum += c2;
                    ssum += s2;
                }
            }
            uint32_t cex = __shfl_down_sync(0xffffffffu, csum, 1);
            float sex = __shfl_down_sync(0xffffffffu, ssum, 1);
            if (lane == 31) {
                cex = 0;
                sex = 0.0f;
            }
            if (kMass && !have_target) {
                // The first pass covers the whole interval (nothing above it): its total is the mass.
                target = frac * __shfl_sync(0xffffffffu, ssum, 0);
                have_target = true;
            }
            const bool reach = c > 0 && (kMass ? mass_above + ssum >= target : count_above + csum >= k);
            const unsigned ball = __ballot_sync(0xffffffffu, reach);
            // Rounding can leave a mass target unreached: then the lowest non-empty bin.
            const int bin = ball ? 31 - __clz(ball) : __ffs(__ballot_sync(0xffffffffu, c > 0)) - 1;
            if (lane == bin) {
                sh.count_above = count_above + cex;
                sh.mass_above = mass_above + sex;
                sh.cnt = c;
                const uint32_t new_lo = lo + (uint32_t(bin) << shift);
                const uint64_t new_hi = uint64_t(new_lo) + ((uint64_t(1) << shift) - 1);
                sh.lo = new_lo;
                sh.hi = new_hi < uint64_t(hi) ? uint32_t(new_hi) : hi;
                sh.target = target;
            }
        }
        __syncthreads();
        lo = sh.lo;
        hi = sh.hi;
        cnt = sh.cnt;
        count_above = sh.count_above;
        mass_above = sh.mass_above;
        target = sh.target;
        have_target = kMass;
    }
    if (lo == hi) return Threshold{lo, count_above + cnt};

    // Gather the interval's keys (order of arrival varies; the sort makes the sequence deterministic).
    __syncthreads();
    if (tid == 0) sh.ncand = 0;
    __syncthreads();
    for_each(row, vocab, [&](int64_t, float v) {
        if (!isfinite(v)) return;
        const uint32_t key = order_key(v);
        if (key < lo || key > hi) return;
        const uint32_t pos = atomicAdd(&sh.ncand, 1u);
        if (pos < uint32_t(kCap)) cand[pos] = key;
    });
    __syncthreads();
    const int n = int(min(sh.ncand, uint32_t(kCap)));
    if (n == 0) return Threshold{lo, count_above};  // cannot happen: the interval holds cnt >= 1 tokens
    int npad = 1;
    while (npad < n) npad <<= 1;
    for (int i = n + tid; i < npad; i += kThreads) cand[i] = 0u;  // below every valid key
    __syncthreads();
    bitonic_sort_desc(cand, npad);

    if (warp == 0) {
        int pick = n - 1;
        if constexpr (kMass) {
            if (!have_target) {
                float total = 0.0f;
                for (int c0 = 0; c0 < n; c0 += 32) {
                    float w = c0 + lane < n ? weight_of(key_value(cand[c0 + lane]), temperature, zmax) : 0.0f;
#pragma unroll
                    for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
                    total += w;
                }
                target = frac * total;
            }
            float running = mass_above;
            for (int c0 = 0; c0 < n; c0 += 32) {
                float w = c0 + lane < n ? weight_of(key_value(cand[c0 + lane]), temperature, zmax) : 0.0f;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const float w2 = __shfl_up_sync(0xffffffffu, w, o);
                    if (lane >= o) w += w2;
                }
                const unsigned ball = __ballot_sync(0xffffffffu, c0 + lane < n && running + w >= target);
                if (ball) {
                    pick = c0 + __ffs(ball) - 1;
                    break;
                }
                running += __shfl_sync(0xffffffffu, w, 31);
            }
        } else {
            pick = int(k - count_above) - 1;
            pick = max(0, min(pick, n - 1));
        }
        if (lane == 0) sh.thr = cand[pick];
    }
    __syncthreads();
    const uint32_t thr = sh.thr;
    uint32_t ge = 0;
    for (int i = tid; i < n; i += kThreads) ge += cand[i] >= thr ? 1u : 0u;
    ge = block_sum_u32(ge, sh);
    return Threshold{thr, count_above + ge};
}

// --- the three phases of a row ---------------------------------------------------------------------------

// Argmax (NaN counting as -inf, lowest index on ties) and the key range and count of the finite logits.
struct RowStats {
    unsigned long long top;  // (order_key, 0xffffffff - index) of the argmax: larger is better
    uint32_t kmin, kmax, nfinite, pad;
};

__device__ __forceinline__ unsigned long long pack(uint32_t key, int64_t index) {
    return (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(index));
}
__device__ __forceinline__ int32_t unpack_index(unsigned long long packed) {
    return int32_t(0xffffffffu - uint32_t(packed));
}

// Stats of row[begin, end), reduced over the block (valid in every thread).
__device__ RowStats row_stats(const float* __restrict__ row, int64_t begin, int64_t end, SampleShared& sh) {
    unsigned long long top = 0ull;
    uint32_t kmin = 0xffffffffu, kmax = 0u, nfinite = 0u;
    for_each(row + begin, end - begin, [&](int64_t j, float v) {
        const uint32_t key = order_key(isnan(v) ? -INFINITY : v);
        const unsigned long long packed = pack(key, begin + j);
        top = packed > top ? packed : top;
        if (!isfinite(v)) return;
        kmin = min(kmin, key);
        kmax = max(kmax, key);
        ++nfinite;
    });
    top = block_max_u64(top, sh);
    block_min_max_sum(kmin, kmax, nfinite, sh);
    return RowStats{top, kmin, kmax, nfinite, 0u};
}

// What the final pass needs: greedy_token >= 0 is already the answer; otherwise tokens with key >= thr
// (and weight >= min_p when min_p > 0) are allowed.
struct RowPlan {
    uint32_t thr;
    int32_t greedy_token;
    float zmax, min_p;
    unsigned long long top;
};

__device__ RowPlan plan_row(const float* __restrict__ row, int64_t vocab, const SampleParams& p, const RowStats& st,
                            uint32_t* hcnt, float* hmass, SampleShared& sh) {
    RowPlan plan{};
    plan.top = st.top;
    plan.greedy_token = -1;
    // Greedy, and also when no logit is finite or one is +inf (no distribution to draw from).
    if (!(p.temperature > 0.0f) || st.nfinite == 0 || uint32_t(st.top >> 32) == order_key(INFINITY)) {
        plan.greedy_token = unpack_index(st.top);
        return plan;
    }
    const float temperature = p.temperature;
    plan.zmax = key_value(st.kmax) / temperature;
    uint32_t thr = st.kmin, count_allowed = st.nfinite;
    if (p.top_k > 0 && uint32_t(p.top_k) < st.nfinite) {
        const Threshold t = find_threshold<false>(row, vocab, st.kmin, st.kmax, st.nfinite, uint32_t(p.top_k), 0.0f,
                                                  temperature, plan.zmax, hcnt, hmass, hcnt, sh);
        thr = t.key;
        count_allowed = t.count_ge;
    }
    if (p.top_p < 1.0f && thr != st.kmax) {
        thr = find_threshold<true>(row, vocab, thr, st.kmax, count_allowed, 0u, p.top_p, temperature, plan.zmax, hcnt,
                                   hmass, hcnt, sh)
                  .key;
    }
    plan.thr = thr;
    plan.min_p = p.min_p > 0.0f ? fminf(p.min_p, 1.0f) : 0.0f;
    return plan;
}

// u = noise_uniform(seed, offset, index), with the per-(seed, offset) part hoisted: noise_uniform is
// mix64(mix64(seed ^ mix64(offset)) + index) mapped to (h24 + 0.5) / 2^24 (sampling_noise.h).
__device__ __forceinline__ float uniform_of(uint64_t noise_base, int64_t index) {
    const uint64_t h = noise_mix64(noise_base + uint64_t(index));
    return (float(uint32_t(h >> 40)) + 0.5f) * (1.0f / 16777216.0f);
}

// Gumbel-max over the allowed tokens of row[begin, end), reduced over the block: the packed (score key,
// index) of the winner. Each thread starts from the row's argmax token (always allowed, and the likely
// winner's neighbourhood), and skips the exact logarithms of a token whose u is too small for its g to
// reach the thread's best score: g = -log(-log u) is increasing in u, so g < need iff
// u < exp(-exp(-need)); that bound is evaluated with fast exponentials on a lowered `need` and with a
// margin far beyond their error, so only tokens that cannot win are skipped (u == 1, g = +inf, never is).
__device__ unsigned long long row_gumbel(const float* __restrict__ row, int64_t begin, int64_t end,
                                         const SampleParams& p, const RowPlan& plan, SampleShared& sh) {
    const float temperature = p.temperature;
    const uint64_t noise_base = noise_mix64(p.seed ^ noise_mix64(p.offset));
    const int32_t top_index = unpack_index(plan.top);
    float best_score = key_value(uint32_t(plan.top >> 32)) / temperature +
                       -logf(-logf(uniform_of(noise_base, top_index)));
    unsigned long long best = pack(order_key(best_score), top_index);
    const uint32_t thr = plan.thr;
    const float min_p = plan.min_p, zmax = plan.zmax;
    for_each(row + begin, end - begin, [&](int64_t j, float v) {
        if (!isfinite(v) || order_key(v) < thr) return;
        if (min_p > 0.0f && !(weight_of(v, temperature, zmax) >= min_p)) return;
        const int64_t i = begin + j;
        const float z = v / temperature;
        const float u = uniform_of(noise_base, i);
        if (u != 1.0f) {
            const float need = best_score - z - (0.01f + 1e-5f * (fabsf(best_score) + fabsf(z)));
            if (need > -2.5f && u < __expf(-__expf(-need)) * (1.0f - 1e-4f) - 1e-6f) return;
        }
        const float score = z + -logf(-logf(u));
        if (isnan(score)) return;
        const unsigned long long packed = pack(order_key(score), i);
        if (packed > best) {
            best = packed;
            best_score = score;
        }
    });
    return block_max_u64(best, sh);
}

// --- kernels ---------------------------------------------------------------------------------------------

struct SmemViews {
    uint32_t* hcnt;
    float* hmass;
};
__device__ __forceinline__ SmemViews smem_views(unsigned char* smem) {
    return SmemViews{reinterpret_cast<uint32_t*>(smem),
                     reinterpret_cast<float*>(smem + size_t(kBins) * kThreads * sizeof(uint32_t))};
}

// One block per row does everything (many rows: the grid fills the GPU anyway).
__global__ void __launch_bounds__(kThreads, 1) sample_fused_kernel(const float* __restrict__ logits, int64_t rows,
                                                                   int64_t vocab,
                                                                   const SampleParams* __restrict__ params,
                                                                   int32_t* __restrict__ tokens) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ SampleShared sh;
    const SmemViews views = smem_views(smem);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* row = logits + r * vocab;
        const SampleParams p = params[r];
        const RowStats st = row_stats(row, 0, vocab, sh);
        const RowPlan plan = plan_row(row, vocab, p, st, views.hcnt, views.hmass, sh);
        if (plan.greedy_token >= 0) {
            if (threadIdx.x == 0) tokens[r] = plan.greedy_token;
            continue;
        }
        const unsigned long long best = row_gumbel(row, 0, vocab, p, plan, sh);
        if (threadIdx.x == 0) tokens[r] = unpack_index(best);
    }
}

// Few rows: the streaming passes are split over `splits` blocks per row (grid (splits, rows)), with the
// threshold search in between on one block per row. Partial results go to the workspace; all reductions
// are max/min/sum of integers, so the result does not depend on the split.
struct SplitWorkspace {
    RowStats* stats;           // [rows][splits]
    RowPlan* plans;            // [rows]
    unsigned long long* best;  // [rows][splits]
};

__device__ __forceinline__ void chunk_of(int64_t vocab, int64_t splits, int64_t c, int64_t& begin, int64_t& end) {
    const int64_t chunk = (vocab + splits - 1) / splits;
    const int64_t rounded = (chunk + 3) / 4 * 4;
    begin = min(vocab, c * rounded);
    end = min(vocab, begin + rounded);
}

__global__ void __launch_bounds__(kThreads) sample_stats_kernel(const float* __restrict__ logits, int64_t vocab,
                                                                int64_t splits, SplitWorkspace ws) {
    __shared__ SampleShared sh;
    const int64_t r = blockIdx.y, c = blockIdx.x;
    int64_t begin, end;
    chunk_of(vocab, splits, c, begin, end);
    const RowStats st = row_stats(logits + r * vocab, begin, end, sh);
    if (threadIdx.x == 0) ws.stats[r * splits + c] = st;
}

__global__ void __launch_bounds__(kThreads, 1) sample_plan_kernel(const float* __restrict__ logits, int64_t rows,
                                                                  int64_t vocab, const SampleParams* __restrict__ params,
                                                                  int64_t splits, SplitWorkspace ws) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ SampleShared sh;
    __shared__ RowStats total;
    const SmemViews views = smem_views(smem);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        __syncthreads();
        if (threadIdx.x == 0) {
            RowStats t{0ull, 0xffffffffu, 0u, 0u, 0u};
            for (int64_t c = 0; c < splits; ++c) {
                const RowStats s = ws.stats[r * splits + c];
                t.top = s.top > t.top ? s.top : t.top;
                t.kmin = min(t.kmin, s.kmin);
                t.kmax = max(t.kmax, s.kmax);
                t.nfinite += s.nfinite;
            }
            total = t;
        }
        __syncthreads();
        const RowStats st = total;
        const RowPlan plan = plan_row(logits + r * vocab, vocab, params[r], st, views.hcnt, views.hmass, sh);
        if (threadIdx.x == 0) ws.plans[r] = plan;
    }
}

__global__ void __launch_bounds__(kThreads) sample_gumbel_kernel(const float* __restrict__ logits, int64_t vocab,
                                                                 const SampleParams* __restrict__ params,
                                                                 int64_t splits, SplitWorkspace ws) {
    __shared__ SampleShared sh;
    const int64_t r = blockIdx.y, c = blockIdx.x;
    const RowPlan plan = ws.plans[r];
    if (plan.greedy_token >= 0) return;
    int64_t begin, end;
    chunk_of(vocab, splits, c, begin, end);
    const unsigned long long best = row_gumbel(logits + r * vocab, begin, end, params[r], plan, sh);
    if (threadIdx.x == 0) ws.best[r * splits + c] = best;
}

__global__ void sample_finish_kernel(int64_t rows, int64_t splits, SplitWorkspace ws, int32_t* __restrict__ tokens) {
    const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const RowPlan plan = ws.plans[r];
    if (plan.greedy_token >= 0) {
        tokens[r] = plan.greedy_token;
        return;
    }
    unsigned long long best = 0ull;
    for (int64_t c = 0; c < splits; ++c) best = max(best, ws.best[r * splits + c]);
    tokens[r] = unpack_index(best);
}

// Splitting applies to at most this many rows (the workspace is sized for it) and this many blocks a row.
constexpr int64_t kMaxSplitRows = 256;
constexpr int64_t kMaxSplits = 32;
constexpr int64_t kMinChunk = 4096;

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

void layout_workspace(void* base, int64_t rows, SplitWorkspace& ws) {
    auto* p = static_cast<unsigned char*>(base);
    ws.stats = reinterpret_cast<RowStats*>(p);
    p += align_up(size_t(rows * kMaxSplits) * sizeof(RowStats));
    ws.plans = reinterpret_cast<RowPlan*>(p);
    p += align_up(size_t(rows) * sizeof(RowPlan));
    ws.best = reinterpret_cast<unsigned long long*>(p);
}

int multiprocessors() {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
        cudaGetLastError();
        return 1;
    }
    return std::max(sms, 1);
}

void reserve_smem(const void* kernel, const char* name) {
    // Not stream-ordered; allowed (and cheap) while a graph is being captured.
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kDynamicSmem));
    if (err != cudaSuccess) {
        cudaGetLastError();
        SKV_THROW("sample: cannot give {} {} bytes of shared memory per block: {}", name, kDynamicSmem,
                  cudaGetErrorString(err));
    }
}

}  // namespace

size_t sample_workspace_bytes(int64_t rows, int64_t) {
    if (rows <= 0 || rows > kMaxSplitRows) return 0;
    return align_up(size_t(rows * kMaxSplits) * sizeof(RowStats)) + align_up(size_t(rows) * sizeof(RowPlan)) +
           align_up(size_t(rows * kMaxSplits) * sizeof(unsigned long long));
}

void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params, int32_t* tokens,
            void* workspace, cudaStream_t stream) {
    if (rows <= 0) return;
    SKV_CHECK(vocab > 0 && vocab < (int64_t(1) << 31), "sample: vocabulary of {} tokens is out of range", vocab);
    const int64_t sms = multiprocessors();
    int64_t splits = 1;
    if (workspace && rows <= kMaxSplitRows && rows < sms)
        splits = std::min({kMaxSplits, (vocab + kMinChunk - 1) / kMinChunk, (2 * sms + rows - 1) / rows});
    if (splits < 2) {
        reserve_smem(reinterpret_cast<const void*>(sample_fused_kernel), "sample_fused_kernel");
        const unsigned grid = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
        sample_fused_kernel<<<grid, kThreads, kDynamicSmem, stream>>>(logits, rows, vocab, params, tokens);
        check_launch("sample");
        return;
    }
    SplitWorkspace ws{};
    layout_workspace(workspace, rows, ws);
    const dim3 split_grid{unsigned(splits), unsigned(rows), 1u};
    sample_stats_kernel<<<split_grid, kThreads, 0, stream>>>(logits, vocab, splits, ws);
    check_launch("sample (stats)");
    reserve_smem(reinterpret_cast<const void*>(sample_plan_kernel), "sample_plan_kernel");
    sample_plan_kernel<<<unsigned(rows), kThreads, kDynamicSmem, stream>>>(logits, rows, vocab, params, splits, ws);
    check_launch("sample (plan)");
    sample_gumbel_kernel<<<split_grid, kThreads, 0, stream>>>(logits, vocab, params, splits, ws);
    check_launch("sample (gumbel)");
    sample_finish_kernel<<<unsigned((rows + 127) / 128), 128, 0, stream>>>(rows, splits, ws, tokens);
    check_launch("sample (finish)");
}

}  // namespace swiftkv::cuda
