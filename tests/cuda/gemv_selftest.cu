// Standalone self-test and micro-benchmark of swiftkv::cuda::gemv (no GTest); run on the GPU machine.
// Build: ninja gemv_selftest (CMake target). Run: gemv_selftest [--no-perf]
//
// Correctness: host-generated random bf16 x and W, output poisoned (0xFF bytes = NaN) with a poisoned
// canary tail past rows*N; every output element must be written (finite) and the canary untouched; a
// sample of outputs (~512 columns per row plus the first/last) is compared with a double-precision host
// reference by relative Frobenius error <= 1e-2, for bf16 and f32 outputs.
// Performance (bf16 out; lm_head also f32): median of 50 cudaEvent-timed launches after 10 warm-ups,
// rotating over 3 weight buffers so W comes from HBM, in GB/s of N*K*2 + rows*K*2 + rows*N*outbytes; the
// same GEMM through cuBLASLt (default heuristic) for comparison; a 2 GiB device-to-device cudaMemcpy
// (read + write bytes) as the bandwidth ceiling. Exit status non-zero on any failure.

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_gemv.h"

using swiftkv::cuda::bf16;

namespace {

#define CK(call)                                                                                          \
    do {                                                                                                  \
        const cudaError_t e_ = (call);                                                                    \
        if (e_ != cudaSuccess) {                                                                          \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));    \
            std::exit(2);                                                                                 \
        }                                                                                                 \
    } while (0)
#define CKB(call)                                                                                         \
    do {                                                                                                  \
        const cublasStatus_t s_ = (call);                                                                 \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                \
            std::fprintf(stderr, "%s:%d: %s: cublas status %d\n", __FILE__, __LINE__, #call, int(s_));    \
            std::exit(2);                                                                                 \
        }                                                                                                 \
    } while (0)

uint64_t g_state = 0x9E3779B97F4A7C15ull;
inline uint64_t next_u64() {  // splitmix64
    uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// Uniform in [-1, 1) as bf16 bits (exactly representable: 8 significant bits).
inline uint16_t rand_bf16_bits() {
    const float f = float(int32_t(next_u64() >> 40) - (1 << 23)) / float(1 << 23);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return uint16_t(u >> 16);
}
inline double bf16_bits_to_double(uint16_t b) {
    const uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

struct Shape {
    const char* name;
    int64_t N, K;
};

struct Ctx {
    std::vector<uint16_t> hw;  // host W (max N*K), prefix used per shape
    bf16* dw[3] = {};          // 3 device copies (L2 rotation)
    bf16* dx = nullptr;        // [8, maxK]
    std::vector<uint16_t> hx;
    void* dout = nullptr;  // rows*N*4 + canary
    size_t out_bytes = 0;
    cublasLtHandle_t lt = nullptr;
    void* ws = nullptr;
    size_t ws_bytes = 64ull << 20;
    cudaStream_t stream = nullptr;
    int failures = 0;
};

constexpr size_t kCanaryBytes = 4096;

bool check(Ctx& c, const Shape& s, int64_t rows, bool out_f32) {
    const size_t ob = out_f32 ? 4 : 2;
    const size_t bytes = size_t(rows * s.N) * ob;
    CK(cudaMemsetAsync(c.dout, 0xFF, bytes + kCanaryBytes, c.stream));
    swiftkv::cuda::gemv(c.dx, rows, c.dw[0], s.N, s.K, c.dout, out_f32, c.stream);
    CK(cudaStreamSynchronize(c.stream));
    std::vector<unsigned char> h(bytes + kCanaryBytes);
    CK(cudaMemcpy(h.data(), c.dout, h.size(), cudaMemcpyDeviceToHost));
    auto get = [&](int64_t r, int64_t n) -> double {
        const size_t i = size_t(r * s.N + n);
        if (out_f32) {
            float f;
            std::memcpy(&f, h.data() + i * 4, 4);
            return f;
        }
        uint16_t b;
        std::memcpy(&b, h.data() + i * 2, 2);
        return bf16_bits_to_double(b);
    };
    bool ok = true;
    int64_t unwritten = 0;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t n = 0; n < s.N; ++n)
            if (!std::isfinite(get(r, n))) ++unwritten;
    bool canary_ok = true;
    for (size_t i = bytes; i < h.size(); ++i) canary_ok &= h[i] == 0xFF;
    // Sampled reference.
    double err2 = 0, ref2 = 0;
    const int64_t samples = std::min<int64_t>(s.N, 512);
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < samples; ++j) {
            const int64_t n = j == 0 ? 0 : j == 1 ? s.N - 1 : int64_t(next_u64() % uint64_t(s.N));
            const uint16_t* wr = c.hw.data() + n * s.K;
            const uint16_t* xr = c.hx.data() + r * s.K;
            double ref = 0;
            for (int64_t k = 0; k < s.K; ++k) ref += bf16_bits_to_double(wr[k]) * bf16_bits_to_double(xr[k]);
            const double got = get(r, n);
            err2 += (got - ref) * (got - ref);
            ref2 += ref * ref;
        }
    }
    const double rel = std::sqrt(err2 / std::max(ref2, 1e-300));
    if (unwritten != 0 || !canary_ok || !(rel <= 1e-2)) ok = false;
    std::printf("  check %-8s N=%6lld K=%6lld rows=%lld out=%s: rel_err=%.3e unwritten=%lld canary=%s %s\n", s.name,
                (long long)s.N, (long long)s.K, (long long)rows, out_f32 ? "f32 " : "bf16", rel,
                (long long)unwritten, canary_ok ? "ok" : "OVERWRITTEN", ok ? "PASS" : "FAIL");
    if (!ok) ++c.failures;
    return ok;
}

template <class F>
float median_time_us(Ctx& c, F&& launch) {
    constexpr int kWarm = 10, kIters = 50;
    for (int i = 0; i < kWarm; ++i) launch(i % 3);
    std::vector<cudaEvent_t> ev(kIters + 1);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    CK(cudaEventRecord(ev[0], c.stream));
    for (int i = 0; i < kIters; ++i) {
        launch((i + kWarm) % 3);
        CK(cudaEventRecord(ev[i + 1], c.stream));
    }
    CK(cudaStreamSynchronize(c.stream));
    std::vector<float> t(kIters);
    for (int i = 0; i < kIters; ++i) CK(cudaEventElapsedTime(&t[i], ev[i], ev[i + 1]));
    for (auto& e : ev) CK(cudaEventDestroy(e));
    std::nth_element(t.begin(), t.begin() + kIters / 2, t.end());
    return t[kIters / 2] * 1000.0f;
}

void bench(Ctx& c, const Shape& s, int64_t rows, bool out_f32) {
    const size_t ob = out_f32 ? 4 : 2;
    const double bytes = double(s.N * s.K * 2 + rows * s.K * 2) + double(rows * s.N) * double(ob);
    const float us = median_time_us(c, [&](int b) {
        swiftkv::cuda::gemv(c.dx, rows, c.dw[b], s.N, s.K, c.dout, out_f32, c.stream);
    });
    // cuBLASLt, same GEMM.
    cublasLtMatmulDesc_t op;
    CKB(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CKB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    cublasLtMatrixLayout_t la, lb, lc;
    CKB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, uint64_t(s.K), uint64_t(s.N), s.K));
    CKB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, uint64_t(s.K), uint64_t(rows), s.K));
    CKB(cublasLtMatrixLayoutCreate(&lc, out_f32 ? CUDA_R_32F : CUDA_R_16BF, uint64_t(s.N), uint64_t(rows), s.N));
    cublasLtMatmulPreference_t pref;
    CKB(cublasLtMatmulPreferenceCreate(&pref));
    CKB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c.ws_bytes,
                                             sizeof(c.ws_bytes)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c.lt, op, la, lb, lc, lc, pref, 1, &res, &found);
    float lt_us = -1;
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
        const float alpha = 1.0f, beta = 0.0f;
        lt_us = median_time_us(c, [&](int b) {
            CKB(cublasLtMatmul(c.lt, op, &alpha, c.dw[b], la, c.dx, lb, &beta, c.dout, lc, c.dout, lc, &res.algo,
                               c.ws, c.ws_bytes, c.stream));
        });
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
    std::printf("  perf  %-8s N=%6lld K=%6lld rows=%lld out=%s: gemv %8.2f us %7.1f GB/s | cublasLt %8.2f us %7.1f GB/s"
                " | speedup %.2fx\n",
                s.name, (long long)s.N, (long long)s.K, (long long)rows, out_f32 ? "f32 " : "bf16", us,
                bytes / us * 1e-3, lt_us, lt_us > 0 ? bytes / lt_us * 1e-3 : 0.0, lt_us > 0 ? lt_us / us : 0.0);
}

}  // namespace

int main(int argc, char** argv) {
    bool perf = true;
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "--no-perf") == 0) perf = false;

    int dev = 0;
    CK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, dev));
    std::printf("device: %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

    const std::vector<Shape> shapes = {
        {"qkv", 6144, 4096},    {"o", 4096, 4096},       {"gate_up", 28672, 4096}, {"down", 4096, 14336},
        {"lm_head", 128256, 4096}, {"s_qkv", 960, 576},  {"s_gateup", 3072, 576},  {"s_down", 576, 1536},
        {"s_head", 49152, 576}, {"s_1728", 1728, 576},   {"odd", 1001, 584},       {"tiny", 3, 8},
        {"odd2", 37, 4104},
    };
    int64_t max_nk = 0, max_k = 0, max_n = 0;
    for (const auto& s : shapes) {
        max_nk = std::max(max_nk, s.N * s.K);
        max_k = std::max(max_k, s.K);
        max_n = std::max(max_n, s.N);
    }
    Ctx c;
    CK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
    c.hw.resize(size_t(max_nk));
    for (auto& v : c.hw) v = rand_bf16_bits();
    c.hx.resize(size_t(8 * max_k));
    for (auto& v : c.hx) v = rand_bf16_bits();
    for (auto& p : c.dw) CK(cudaMalloc(&p, size_t(max_nk) * 2));
    CK(cudaMemcpy(c.dw[0], c.hw.data(), size_t(max_nk) * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(c.dw[1], c.dw[0], size_t(max_nk) * 2, cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(c.dw[2], c.dw[0], size_t(max_nk) * 2, cudaMemcpyDeviceToDevice));
    CK(cudaMalloc(&c.dx, size_t(8 * max_k) * 2));
    c.out_bytes = size_t(8 * max_n) * 4 + kCanaryBytes;
    CK(cudaMalloc(&c.dout, c.out_bytes));
    CK(cudaMalloc(&c.ws, c.ws_bytes));
    CKB(cublasLtCreate(&c.lt));

    std::printf("correctness:\n");
    for (const auto& s : shapes) {
        // x [rows, K] with row stride K: re-upload the first rows*K values for this K.
        CK(cudaMemcpy(c.dx, c.hx.data(), size_t(8 * s.K) * 2, cudaMemcpyHostToDevice));
        for (int64_t rows = 1; rows <= swiftkv::cuda::kGemvMaxRows; ++rows) {
            if (!swiftkv::cuda::gemv_supported(rows, s.N, s.K)) {
                std::printf("  %s rows=%lld unsupported: FAIL\n", s.name, (long long)rows);
                ++c.failures;
                continue;
            }
            check(c, s, rows, false);
            check(c, s, rows, true);
        }
    }

    if (perf) {
        std::printf("performance (median of 50, 3 rotating weight buffers):\n");
        // Ceiling: 2 GiB device-to-device copy.
        {
            const size_t n = 2ull << 30;
            void *a = nullptr, *b = nullptr;
            CK(cudaMalloc(&a, n));
            CK(cudaMalloc(&b, n));
            CK(cudaMemset(a, 1, n));
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            std::vector<float> t;
            for (int i = 0; i < 7; ++i) {
                CK(cudaEventRecord(e0, c.stream));
                CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, c.stream));
                CK(cudaEventRecord(e1, c.stream));
                CK(cudaEventSynchronize(e1));
                float ms = 0;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (i >= 2) t.push_back(ms);
            }
            std::sort(t.begin(), t.end());
            const float ms = t[t.size() / 2];
            std::printf("  memcpy d2d 2 GiB: %.3f ms, %.1f GB/s (read+write)\n", ms, 2.0 * double(n) / ms * 1e-6);
            CK(cudaEventDestroy(e0));
            CK(cudaEventDestroy(e1));
            CK(cudaFree(a));
            CK(cudaFree(b));
        }
        for (const auto& s : shapes) {
            if (s.N * s.K < 1000000) continue;  // correctness-only shapes
            CK(cudaMemcpy(c.dx, c.hx.data(), size_t(8 * s.K) * 2, cudaMemcpyHostToDevice));
            for (int64_t rows : {1, 2, 4, 8}) {
                bench(c, s, rows, false);
                if (std::strcmp(s.name, "lm_head") == 0 || std::strcmp(s.name, "s_head") == 0) bench(c, s, rows, true);
            }
        }
    }

    cublasLtDestroy(c.lt);
    for (auto& p : c.dw) CK(cudaFree(p));
    CK(cudaFree(c.dx));
    CK(cudaFree(c.dout));
    CK(cudaFree(c.ws));
    CK(cudaStreamDestroy(c.stream));
    if (c.failures) {
        std::printf("FAILED: %d check(s)\n", c.failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
