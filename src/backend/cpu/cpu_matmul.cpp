// Matrix products of the CPU backend (out = x W^T with W [out features, in features] row-major), and
// the OpenBLAS setup they rely on.
//
// - Few rows (decode): our own kernel (cpu_gemv.cpp, compiled per instruction set), parallel over output
//   features, reading W exactly once. It is memory-bound; bf16 weights are widened to f32 in registers
//   (a shift), so activations stay exact f32.
// - Many rows (prefill): OpenBLAS sgemm. bf16 weights are widened panel by panel into a per-thread f32
//   buffer that stays in L2, then multiplied by sgemm.
//
// OpenBLAS 0.3.21 does not know recent Xeons (e.g. family 6 model 207) and silently falls back to its
// generic "Prescott" SSE3 kernels, 5x slower than its AVX-512 ones; setup_openblas() re-runs its kernel
// selection with the right family when that happens.
#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_simd.h"
#include "backend/cpu/cpu_vector_kernels.h"

namespace swiftkv::cpu {

namespace {

// Picks better OpenBLAS kernels where its CPU detection gave up. Leaves an explicit OPENBLAS_CORETYPE
// alone. Uses the dynamic-arch entry points by name, so a non-dynamic OpenBLAS build is simply left as is.
void fix_openblas_core() {
#if defined(__x86_64__) || defined(__i386__)
    if (std::getenv("OPENBLAS_CORETYPE")) return;
    const char* core = openblas_get_corename();
    if (!core || std::strcmp(core, "Prescott") != 0) return;
    __builtin_cpu_init();
    const char* better = nullptr;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        better = __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        better = "Haswell";
    if (!better) return;
    using Fn = void (*)();
    const auto quit = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
    const auto init = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
    if (!quit || !init) return;
    setenv("OPENBLAS_CORETYPE", better, 1);
    quit();
    init();
    unsetenv("OPENBLAS_CORETYPE");
#endif
}

// Below this many multiply-adds a product runs on the calling thread alone.
constexpr int64_t kParallelMacs = 1 << 16;

// ---- few rows: our kernel (cpu_gemv.cpp, per instruction set) --------------------------------------

// Weight rows per outer block: each block is read from memory once and then re-read from cache by
// every group of 8 rows of x.
constexpr int64_t kWeightBlock = 24;

// Output features split over the pool in contiguous, block-aligned ranges; rows in groups of up to 8.
void matmul_small_rows(const float* x, int64_t rows, const WeightMatrix& w, float* out, ThreadPool& pool,
                       const VectorKernels& vk) {
    const int64_t n_dim = w.rows, k_dim = w.cols;
    const bool bf16 = w.dtype == DType::BF16;
    auto run = [&](int64_t n_begin, int64_t n_end) {
        for (int64_t n0 = n_begin; n0 < n_end; n0 += kWeightBlock) {
            const int64_t n1 = std::min(n_end, n0 + kWeightBlock);
            for (int64_t r0 = 0; r0 < rows; r0 += 8) {
                const int64_t r = std::min<int64_t>(8, rows - r0);
                if (bf16)
                    vk.small_rows_bf16(x + r0 * k_dim, r, k_dim, static_cast<const uint16_t*>(w.data), n0, n1,
                                       out + r0 * n_dim, n_dim);
                else
                    vk.small_rows_f32(x + r0 * k_dim, r, k_dim, static_cast<const float*>(w.data), n0, n1,
                                      out + r0 * n_dim, n_dim);
            }
        }
    };
    if (pool.size() == 1 || rows * n_dim * k_dim < kParallelMacs) {
        run(0, n_dim);
        return;
    }
    const int64_t blocks = ceil_div(n_dim, kWeightBlock);
    pool.parallel_for(blocks, [&](int64_t begin, int64_t end, int) {
        run(begin * kWeightBlock, std::min(n_dim, end * kWeightBlock));
    });
}

// ---- many rows: sgemm --------------------------------------------------------------------------------

void sgemm_xwt(const float* x, int64_t rows, const float* w, int64_t n, int64_t k_dim, float* out, int64_t ldo) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(rows), blasint(n), blasint(k_dim), 1.0f, x,
                blasint(k_dim), w, blasint(k_dim), 0.0f, out, blasint(ldo));
}

// Bf16 weight rows widened per sgemm call: about 4 MiB of f32. Each call re-packs all of x (4.7 MB for
// 2048 x 576), so panels are made large; sgemm packs the panel into L2-sized blocks itself.
int64_t bf16_panel_rows(int64_t k_dim) {
    return std::max<int64_t>(16, (int64_t(1) << 20) / k_dim / 16 * 16);
}

// Output features [n_begin, n_end) with bf16 weights, single BLAS thread.
void bf16_gemm_range(const float* x, int64_t rows, const WeightMatrix& w, int64_t n_begin, int64_t n_end, float* out,
                     const VectorKernels& vk) {
    thread_local ScratchBuffer panel;
    const int64_t k_dim = w.cols, panel_rows = bf16_panel_rows(k_dim);
    float* buf = panel.get(size_t(panel_rows * k_dim));
    const uint16_t* wdata = static_cast<const uint16_t*>(w.data);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += panel_rows) {
        const int64_t nr = std::min(panel_rows, n_end - n0);
        vk.widen_bf16(wdata + n0 * k_dim, nr * k_dim, buf);
        sgemm_xwt(x, rows, buf, nr, k_dim, out + n0, w.rows);
    }
}

// Splits a rows x n product over the pool: along n (each thread packs all of x) or along rows (each
// packs all of W), whichever duplicates less. fn(row_begin, row_end, n_begin, n_end).
template <class F>
void split_product(ThreadPool& pool, int64_t rows, int64_t n_dim, bool allow_row_split, F&& fn) {
    const int64_t threads = pool.size();
    if (threads == 1) {
        fn(0, rows, 0, n_dim);
        return;
    }
    if (allow_row_split && rows > n_dim) {
        const int64_t units = ceil_div(rows, 16);
        const int64_t parts = std::min(threads, units);
        pool.parallel_for(parts, [&](int64_t part, int64_t, int) {
            const int64_t b = units * part / parts * 16, e = std::min(rows, units * (part + 1) / parts * 16);
            if (b < e) fn(b, e, 0, n_dim);
        });
    } else {
        const int64_t units = ceil_div(n_dim, 16);
        const int64_t parts = std::min(threads, units);
        pool.parallel_for(parts, [&](int64_t part, int64_t, int) {
            const int64_t b = units * part / parts * 16, e = std::min(n_dim, units * (part + 1) / parts * 16);
            if (b < e) fn(0, rows, b, e);
        });
    }
}

void matmul_large_rows(const float* x, int64_t rows, const WeightMatrix& w, float* out, ThreadPool& pool,
                       BlasThreading threading, const VectorKernels& vk) {
    const int64_t n_dim = w.rows, k_dim = w.cols;
    const bool small = rows * n_dim * k_dim < kParallelMacs;
    if (w.dtype == DType::F32) {
        const float* wf = static_cast<const float*>(w.data);
        if (threading == BlasThreading::kOpenBlas || small) {
            sgemm_xwt(x, rows, wf, n_dim, k_dim, out, n_dim);
            return;
        }
        split_product(pool, rows, n_dim, true, [&](int64_t rb, int64_t re, int64_t nb, int64_t ne) {
            sgemm_xwt(x + rb * k_dim, re - rb, wf + nb * k_dim, ne - nb, k_dim, out + rb * n_dim + nb, n_dim);
        });
        return;
    }
    // BF16.
    if (small) {
        bf16_gemm_range(x, rows, w, 0, n_dim, out, vk);
        return;
    }
    if (threading == BlasThreading::kPool) {
        split_product(pool, rows, n_dim, false, [&](int64_t, int64_t, int64_t nb, int64_t ne) {
            bf16_gemm_range(x, rows, w, nb, ne, out, vk);
        });
        return;
    }
    // OpenBLAS threads: widen a large panel on the pool, then one multi-threaded sgemm per panel.
    thread_local ScratchBuffer panel;
    const int64_t panel_rows = std::max<int64_t>(64, (int64_t(1) << 21) / k_dim / 16 * 16);  // 8 MiB
    float* buf = panel.get(size_t(std::min(panel_rows, n_dim) * k_dim));
    const uint16_t* wdata = static_cast<const uint16_t*>(w.data);
    for (int64_t n0 = 0; n0 < n_dim; n0 += panel_rows) {
        const int64_t nr = std::min(panel_rows, n_dim - n0);
        pool.parallel_for(nr, [&](int64_t b, int64_t e, int) {
            vk.widen_bf16(wdata + (n0 + b) * k_dim, (e - b) * k_dim, buf + b * k_dim);
        });
        sgemm_xwt(x, rows, buf, nr, k_dim, out + n0, n_dim);
    }
}

}  // namespace

void setup_openblas(BlasThreading mode, int num_threads) {
    static std::once_flag core_once;
    std::call_once(core_once, fix_openblas_core);
    openblas_set_num_threads(mode == BlasThreading::kPool ? 1 : std::max(1, num_threads));
}

const char* openblas_core_name() { return openblas_get_corename(); }

void matmul(const float* x, int64_t rows, const WeightMatrix& w, float* out, ThreadPool& pool,
            const MatmulOptions& options, const VectorKernels& vk) {
    if (rows <= 0 || w.rows <= 0) return;
    if (w.cols == 0) {
        std::memset(out, 0, size_t(rows * w.rows) * sizeof(float));
        return;
    }
    const int64_t max_small = w.dtype == DType::BF16 ? options.max_rows_small_bf16 : options.max_rows_small_f32;
    if (rows <= max_small) matmul_small_rows(x, rows, w, out, pool, vk);
    else matmul_large_rows(x, rows, w, out, pool, options.threading, vk);
}

}  // namespace swiftkv::cpu
