// CPU backend op benchmarks at the shapes of the default model, SmolLM2-135M (hidden 576, 9 heads,
// 3 KV heads, head_dim 64, FFN 1536, vocab 49152), for prefill lengths 512 and 2048 and decode at
// context 1024. Baselines measured in the same run: OpenBLAS sgemv for decode products, and the other
// BLAS threading mode for prefill products. Counters: GFLOP/s for compute-bound ops, GB/s for
// memory-bound ones (bytes of weights or KV read).
//
//   bench_cpu_ops --benchmark_counters_tabular=true --benchmark_out=bench/results/cpu_ops.json
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace swiftkv {
namespace {

constexpr int64_t kHidden = 576, kHeads = 9, kKvHeads = 3, kHeadDim = 64, kFfn = 1536, kVocab = 49152;
constexpr int64_t kBlock = 16;

// On a shared machine the fastest of many short repetitions is the stable number:
//   --benchmark_repetitions=20 --benchmark_min_time=0.05 --benchmark_report_aggregates_only=true
double min_of(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end()); }
double max_of(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()); }

Backend& backend(cpu::BlasThreading threading = cpu::BlasThreading::kPool) {
    static std::unique_ptr<Backend> pool_backend, blas_backend;
    auto& slot = threading == cpu::BlasThreading::kPool ? pool_backend : blas_backend;
    if (!slot) {
        CpuBackendOptions options;
        options.matmul.threading = threading;
        slot = make_cpu_backend(options);
    }
    // Creating a backend sets OpenBLAS's thread count for its mode; make sure the mode asked for is active.
    cpu::setup_openblas(threading, ThreadPool::global().size());
    return *slot;
}

std::vector<float> random_floats(size_t n, float lo = -1.0f, float hi = 1.0f, uint32_t seed = 1) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

struct Weights {
    std::vector<float> f32;
    std::vector<uint16_t> bf16;
    WeightMatrix matrix(DType dtype, int64_t rows, int64_t cols) const {
        return WeightMatrix{dtype, rows, cols, dtype == DType::BF16 ? static_cast<const void*>(bf16.data()) : f32.data()};
    }
};

Weights make_weights(int64_t rows, int64_t cols) {
    Weights w;
    w.f32 = random_floats(size_t(rows * cols), -0.05f, 0.05f, 7);
    w.bf16.resize(w.f32.size());
    for (size_t i = 0; i < w.f32.size(); ++i) w.bf16[i] = f32_to_bf16(w.f32[i]);
    return w;
}

// ---- matmul ------------------------------------------------------------------------------------------

// args: rows, out features, in features, dtype (0 f32, 1 bf16), threading (0 pool, 1 openblas)
void BM_Matmul(benchmark::State& state) {
    const int64_t rows = state.range(0), n = state.range(1), k = state.range(2);
    const DType dtype = state.range(3) ? DType::BF16 : DType::F32;
    const auto threading = state.range(4) ? cpu::BlasThreading::kOpenBlas : cpu::BlasThreading::kPool;
    Backend& b = backend(threading);
    const Weights w = make_weights(n, k);
    const auto x = random_floats(size_t(rows * k));
    std::vector<float> out(size_t(rows * n));
    const WeightMatrix wm = w.matrix(dtype, n, k);
    for (auto _ : state) {
        b.matmul(x.data(), rows, wm, out.data(), DType::F32);
        benchmark::DoNotOptimize(out.data());
    }
    const double flops = 2.0 * double(rows) * double(n) * double(k);
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    const double weight_bytes = double(n * k) * (dtype == DType::BF16 ? 2.0 : 4.0);
    state.counters["GB/s"] = benchmark::Counter(weight_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::string(dtype_name(dtype)) + (state.range(4) ? " openblas-threads" : " pool-threads"));
    backend(cpu::BlasThreading::kPool);
}

void prefill_matmul_args(benchmark::internal::Benchmark* bm) {
    const int64_t shapes[][2] = {{3 * 576 / 9 * 5, kHidden} /*qkv 960*/, {kHidden, kHidden}, {2 * kFfn, kHidden},
                                 {kHidden, kFfn}, {1728, kHidden}};
    for (int64_t rows : {512, 2048})
        for (const auto& s : shapes)
            for (int64_t dtype : {0, 1})
                for (int64_t threading : {0, 1}) bm->Args({rows, s[0], s[1], dtype, threading});
}
BENCHMARK(BM_Matmul)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Apply(prefill_matmul_args)->Unit(benchmark::kMillisecond)->UseRealTime();

void decode_matmul_args(benchmark::internal::Benchmark* bm) {
    const int64_t shapes[][2] = {{960, kHidden}, {kHidden, kHidden}, {2 * kFfn, kHidden}, {kHidden, kFfn}, {kVocab, kHidden}};
    for (int64_t rows : {1, 4, 8})
        for (const auto& s : shapes)
            for (int64_t dtype : {0, 1}) bm->Args({rows, s[0], s[1], dtype, 0});
}
BENCHMARK(BM_Matmul)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Name("BM_MatmulDecode")->Apply(decode_matmul_args)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Our few-rows kernel against the BLAS path (sgemm; bf16 widened per panel), to place the thresholds.
// args: rows, out features, in features, dtype (0 f32, 1 bf16), path (0 BLAS, 1 our kernel)
void BM_MatmulSmallRows(benchmark::State& state) {
    const int64_t rows = state.range(0), n = state.range(1), k = state.range(2);
    const DType dtype = state.range(3) ? DType::BF16 : DType::F32;
    CpuBackendOptions options;
    options.matmul.max_rows_small_f32 = options.matmul.max_rows_small_bf16 = state.range(4) ? rows : 0;
    auto b = make_cpu_backend(options);
    const Weights w = make_weights(n, k);
    const auto x = random_floats(size_t(rows * k));
    std::vector<float> out(size_t(rows * n));
    const WeightMatrix wm = w.matrix(dtype, n, k);
    for (auto _ : state) {
        b->matmul(x.data(), rows, wm, out.data(), DType::F32);
        benchmark::DoNotOptimize(out.data());
    }
    state.counters["GB/s"] = benchmark::Counter(double(n * k) * (dtype == DType::BF16 ? 2e-9 : 4e-9),
                                                benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::string(dtype_name(dtype)) + (state.range(4) ? " own kernel" : " blas"));
}
BENCHMARK(BM_MatmulSmallRows)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)
    ->ArgsProduct({{2, 4, 8, 16, 32}, {3072}, {576}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

// Baseline for decode: OpenBLAS sgemv with its own threads (f32 weights).
void BM_SgemvBaseline(benchmark::State& state) {
    const int64_t n = state.range(0), k = state.range(1);
    backend(cpu::BlasThreading::kOpenBlas);
    const Weights w = make_weights(n, k);
    const auto x = random_floats(size_t(k));
    std::vector<float> out(static_cast<size_t>(n));
    for (auto _ : state) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, blasint(n), blasint(k), 1.0f, w.f32.data(), blasint(k), x.data(), 1,
                    0.0f, out.data(), 1);
        benchmark::DoNotOptimize(out.data());
    }
    state.counters["GB/s"] = benchmark::Counter(double(n * k) * 4e-9, benchmark::Counter::kIsIterationInvariantRate);
    backend(cpu::BlasThreading::kPool);
}
BENCHMARK(BM_SgemvBaseline)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Args({960, kHidden})->Args({2 * kFfn, kHidden})->Args({kHidden, kFfn})
    ->Args({kVocab, kHidden})->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- attention ---------------------------------------------------------------------------------------

// One sequence per entry: context length and query rows (the last rows of the context).
struct AttentionSetup {
    KvLayout layout;
    std::vector<float> k_cache, v_cache, q, out;
    std::vector<int32_t> query_start, seq_lens, block_tables;
    AttentionBatch batch;
    double flops = 0, kv_bytes = 0;

    AttentionSetup(int64_t num_seqs, int64_t context, int64_t queries) {
        const int64_t blocks_per_seq = (context + kBlock - 1) / kBlock;
        layout = KvLayout{num_seqs * blocks_per_seq, kBlock, kKvHeads, kHeadDim};
        k_cache = random_floats(size_t(layout.num_blocks * layout.block_elems()), -1, 1, 3);
        v_cache = random_floats(k_cache.size(), -1, 1, 4);
        std::vector<int32_t> perm(static_cast<size_t>(layout.num_blocks));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
        query_start.push_back(0);
        for (int64_t s = 0; s < num_seqs; ++s) {
            for (int64_t i = 0; i < blocks_per_seq; ++i) block_tables.push_back(perm[size_t(s * blocks_per_seq + i)]);
            seq_lens.push_back(int32_t(context));
            query_start.push_back(query_start.back() + int32_t(queries));
            for (int64_t i = 0; i < queries; ++i) flops += 4.0 * double(context - queries + i + 1) * kHeads * kHeadDim;
            kv_bytes += 2.0 * double(context * kKvHeads * kHeadDim) * 4.0;
        }
        const int64_t rows = num_seqs * queries, stride = (kHeads + 2 * kKvHeads) * kHeadDim;
        q = random_floats(size_t(rows * stride), -1, 1, 6);
        out.resize(size_t(rows * kHeads * kHeadDim));
        batch = AttentionBatch{num_seqs, rows, query_start.data(), seq_lens.data(), block_tables.data(), blocks_per_seq, context};
    }
    void run(Backend& b) {
        b.attention(q.data(), (kHeads + 2 * kKvHeads) * kHeadDim, batch, layout, k_cache.data(), v_cache.data(), kHeads,
                    0.125f, out.data());
    }
};

// args: sequences, context, query rows per sequence
void BM_Attention(benchmark::State& state) {
    AttentionSetup setup(state.range(0), state.range(1), state.range(2));
    Backend& b = backend();
    for (auto _ : state) {
        setup.run(b);
        benchmark::DoNotOptimize(setup.out.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(setup.flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["KV GB/s"] = benchmark::Counter(setup.kv_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)
    ->Args({1, 512, 512})      // prefill 512
    ->Args({1, 2048, 2048})    // prefill 2048
    ->Args({1, 2048, 256})     // chunked prefill: last 256 rows of 2048
    ->Args({1, 1024, 1})       // decode, batch 1
    ->Args({8, 1024, 1})       // decode, batch 8
    ->Args({1, 8192, 1})       // decode, long context
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- fused elementwise ops at prefill 2048 -----------------------------------------------------------

void BM_RmsNorm(benchmark::State& state) {
    const int64_t rows = state.range(0);
    const auto x = random_floats(size_t(rows * kHidden)), w = random_floats(size_t(kHidden));
    std::vector<float> out(x.size());
    Backend& b = backend();
    for (auto _ : state) b.rmsnorm(x.data(), w.data(), out.data(), rows, kHidden, 1e-5f);
    state.counters["GB/s"] = benchmark::Counter(2.0 * double(x.size()) * 4e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_RmsNorm)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Arg(1)->Arg(2048)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_AddRmsNorm(benchmark::State& state) {
    const int64_t rows = state.range(0);
    auto h = random_floats(size_t(rows * kHidden));
    const auto d = random_floats(h.size(), -1e-3f, 1e-3f), w = random_floats(size_t(kHidden));
    std::vector<float> out(h.size());
    Backend& b = backend();
    for (auto _ : state) b.add_rmsnorm(h.data(), d.data(), w.data(), out.data(), rows, kHidden, 1e-5f);
    state.counters["GB/s"] = benchmark::Counter(4.0 * double(h.size()) * 4e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_AddRmsNorm)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Arg(1)->Arg(2048)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_Rope(benchmark::State& state) {
    const int64_t rows = state.range(0), stride = (kHeads + 2 * kKvHeads) * kHeadDim;
    auto x = random_floats(size_t(rows * stride));
    std::vector<float> inv_freq(kHeadDim / 2);
    for (int64_t i = 0; i < kHeadDim / 2; ++i) inv_freq[size_t(i)] = float(std::pow(100000.0, -2.0 * double(i) / kHeadDim));
    std::vector<int32_t> pos(static_cast<size_t>(rows));
    std::iota(pos.begin(), pos.end(), 0);
    Backend& b = backend();
    for (auto _ : state) b.rope(x.data(), rows, stride, kHeads + kKvHeads, kHeadDim, pos.data(), inv_freq.data());
    state.counters["GB/s"] = benchmark::Counter(2.0 * double(rows * (kHeads + kKvHeads) * kHeadDim) * 4e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Rope)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Arg(1)->Arg(2048)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_SiluMul(benchmark::State& state) {
    const int64_t rows = state.range(0);
    const auto gu = random_floats(size_t(rows * 2 * kFfn), -6, 6);
    std::vector<float> out(size_t(rows * kFfn));
    Backend& b = backend();
    for (auto _ : state) b.silu_mul(gu.data(), out.data(), rows, kFfn);
    state.counters["GB/s"] = benchmark::Counter(3.0 * double(out.size()) * 4e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_SiluMul)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Arg(1)->Arg(2048)->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- sampling over the vocabulary (decode) -------------------------------------------------------------

// args: rows, mode (0 greedy, 1 temperature only, 2 top_k 50, 3 top_p 0.9, 4 min_p 0.05)
void BM_Sample(benchmark::State& state) {
    const int64_t rows = state.range(0), mode = state.range(1);
    const auto logits = random_floats(size_t(rows * kVocab), -8, 8, 9);
    std::vector<SampleParams> params(static_cast<size_t>(rows));
    for (size_t r = 0; r < params.size(); ++r) {
        params[r].temperature = mode == 0 ? 0.0f : 0.8f;
        params[r].top_k = mode == 2 ? 50 : 0;
        params[r].top_p = mode == 3 ? 0.9f : 1.0f;
        params[r].min_p = mode == 4 ? 0.05f : 0.0f;
        params[r].seed = r;
    }
    std::vector<int32_t> tokens(static_cast<size_t>(rows));
    Backend& b = backend();
    uint64_t offset = 0;
    for (auto _ : state) {
        for (auto& p : params) p.offset = offset;
        ++offset;
        b.sample(logits.data(), rows, kVocab, params.data(), tokens.data());
        benchmark::DoNotOptimize(tokens.data());
    }
    static const char* const kModes[] = {"greedy", "temperature", "top_k 50", "top_p 0.9", "min_p 0.05"};
    state.SetLabel(kModes[mode]);
}
BENCHMARK(BM_Sample)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)
    ->ArgsProduct({{1, 8}, {0, 1, 2, 3, 4}})->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- one whole decoder layer of prefill, to see where time goes --------------------------------------

// args: tokens, dtype (0 f32, 1 bf16), BLAS threading (0 pool, 1 OpenBLAS threads)
void BM_LayerPrefill(benchmark::State& state) {
    const int64_t t = state.range(0);
    const DType dtype = state.range(1) ? DType::BF16 : DType::F32;
    Backend& b = backend(state.range(2) ? cpu::BlasThreading::kOpenBlas : cpu::BlasThreading::kPool);
    const int64_t qkv = (kHeads + 2 * kKvHeads) * kHeadDim;
    const Weights w_qkv = make_weights(qkv, kHidden), w_o = make_weights(kHidden, kHidden),
                  w_gu = make_weights(2 * kFfn, kHidden), w_down = make_weights(kHidden, kFfn);
    const auto norm_w = random_floats(size_t(kHidden), 0.9f, 1.1f);
    auto h = random_floats(size_t(t * kHidden));
    std::vector<float> x(h.size()), qkv_out(size_t(t * qkv)), attn(size_t(t * kHeads * kHeadDim)), o(h.size()),
        gu(size_t(t * 2 * kFfn)), act(size_t(t * kFfn)), down(h.size());
    std::vector<float> inv_freq(kHeadDim / 2);
    for (int64_t i = 0; i < kHeadDim / 2; ++i) inv_freq[size_t(i)] = float(std::pow(100000.0, -2.0 * double(i) / kHeadDim));
    AttentionSetup cache(1, t, t);
    std::vector<int32_t> pos(static_cast<size_t>(t)), slots(static_cast<size_t>(t));
    std::iota(pos.begin(), pos.end(), 0);
    for (int64_t i = 0; i < t; ++i) slots[size_t(i)] = cache.block_tables[size_t(i / kBlock)] * kBlock + int32_t(i % kBlock);
    for (auto _ : state) {
        b.rmsnorm(h.data(), norm_w.data(), x.data(), t, kHidden, 1e-5f);
        b.matmul(x.data(), t, w_qkv.matrix(dtype, qkv, kHidden), qkv_out.data(), DType::F32);
        b.rope(qkv_out.data(), t, qkv, kHeads + kKvHeads, kHeadDim, pos.data(), inv_freq.data());
        b.kv_write(qkv_out.data() + kHeads * kHeadDim, qkv_out.data() + (kHeads + kKvHeads) * kHeadDim, t, qkv,
                   slots.data(), cache.layout, cache.k_cache.data(), cache.v_cache.data());
        b.attention(qkv_out.data(), qkv, cache.batch, cache.layout, cache.k_cache.data(), cache.v_cache.data(), kHeads,
                    0.125f, attn.data());
        b.matmul(attn.data(), t, w_o.matrix(dtype, kHidden, kHidden), o.data(), DType::F32);
        b.add_rmsnorm(h.data(), o.data(), norm_w.data(), x.data(), t, kHidden, 1e-5f);
        b.matmul(x.data(), t, w_gu.matrix(dtype, 2 * kFfn, kHidden), gu.data(), DType::F32);
        b.silu_mul(gu.data(), act.data(), t, kFfn);
        b.matmul(act.data(), t, w_down.matrix(dtype, kHidden, kFfn), down.data(), DType::F32);
        b.add_rmsnorm(h.data(), down.data(), norm_w.data(), x.data(), t, kHidden, 1e-5f);
    }
    const double flops = 2.0 * double(t) * double(kHidden * qkv + kHidden * kHidden + kHidden * 2 * kFfn + kFfn * kHidden) +
                         cache.flops;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["tok/s/layer"] = benchmark::Counter(double(t), benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::string(dtype_name(dtype)) + (state.range(2) ? " openblas-threads" : " pool-threads"));
    backend(cpu::BlasThreading::kPool);
}
BENCHMARK(BM_LayerPrefill)->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of)->Args({512, 0, 0})->Args({512, 0, 1})->Args({2048, 0, 0})->Args({2048, 0, 1})
    ->Args({512, 1, 0})->Args({2048, 1, 0})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace swiftkv

int main(int argc, char** argv) {
    // --threads=N sizes the pool (default: all cores); single-thread CPU time shows kernel efficiency even
    // on a busy machine.
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--threads=", 10) == 0) {
            swiftkv::ThreadPool::set_global_threads(std::atoi(argv[i] + 10));
            for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
            --argc;
            break;
        }
    }
    benchmark::Initialize(&argc, argv);
    benchmark::AddCustomContext("threads", std::to_string(swiftkv::ThreadPool::global().size()));
    swiftkv::backend();
    benchmark::AddCustomContext("openblas_core", swiftkv::cpu_backend_blas_core());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
