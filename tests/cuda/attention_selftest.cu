// Standalone self-test and micro-benchmark of swiftkv::cuda::attention (no GTest).
//
// Build (from the repository root; at most 2 parallel jobs on the shared build machine):
//   mkdir -p build && nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a \
//     -gencode=arch=compute_80,code=sm_80 --expt-relaxed-constexpr -DSKV_SELFTEST_DEFINE_CHECK_LAUNCH \
//     -I src -I /usr/include tests/cuda/attention_selftest.cu src/backend/cuda/cuda_attention.cu \
//     -o build/attention_selftest -lfmt -lpthread
//   (When linking together with cuda_elementwise.cu, which defines check_launch -- e.g. the CMake target
//   attention_selftest in tests/cuda/CMakeLists.txt, linked against swiftkv_backend -- leave out
//   -DSKV_SELFTEST_DEFINE_CHECK_LAUNCH.)
// Run: build/attention_selftest [--no-perf] [--perf-only] [--quick]   (--quick: a small subset, e.g. for
//   compute-sanitizer --tool memcheck / racecheck)
//
// Correctness: random bf16 q and paged K/V caches (random, non-contiguous block tables; unused cache
// slots, the tail of every last block and the unused block-table entries are poisoned with NaN / -1 so
// any out-of-range read shows), compared with a double-precision CPU reference (bottom-right causal
// mask, GQA) by ||out - ref|| / ||ref|| per case; threshold 2e-2, NaN fails; the output is poisoned
// (bf16 NaN) before every run so unwritten elements fail. Every case runs for block sizes 16 and 32,
// max_query_len hint exact and 0, and kernel modes auto / no-decode-kernel / simple. A CUDA-graph case
// records with one set of device lengths and replays with another set within the same bounds.
// Performance: causal prefill 8192 tokens (32 heads, 8 KV heads, head_dim 128, block 16) in TFLOP/s,
// and decode batch 1/8/32/128 at context 1024 in GB/s of K/V read (median of 20 runs, cudaEvent; the
// decode runs rotate over 8 block-table sets in a 512 MiB cache so K/V come from HBM, not L2).
// Exit status non-zero on any failure.

// See src/backend/cuda/cuda_attention.cu: fmt 9 under nvcc needs these.
#if !defined(FMT_CONSTEVAL)
#define FMT_CONSTEVAL
#endif
#if !defined(FMT_USE_CONSTEXPR)
#define FMT_USE_CONSTEXPR 1
#endif

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_kernels.h"
#include "core/error.h"

namespace swiftkv::cuda {
namespace detail {
void set_attention_mode_for_testing(int mode);
void set_attention_prefill_variant_for_testing(int variant);
}
#ifdef SKV_SELFTEST_DEFINE_CHECK_LAUNCH
void check_launch(const char* what) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) SKV_THROW("CUDA launch of {} failed: {}", what, cudaGetErrorString(err));
}
#endif
}  // namespace swiftkv::cuda

using swiftkv::AttentionBatch;
using swiftkv::KvLayout;
using bf16 = __nv_bfloat16;

#define CK(call)                                                                                      \
    do {                                                                                              \
        cudaError_t err_ = (call);                                                                    \
        if (err_ != cudaSuccess) {                                                                    \
            std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(err_), __FILE__, \
                         __LINE__, #call);                                                            \
            std::exit(2);                                                                             \
        }                                                                                             \
    } while (0)

namespace {

constexpr double kThreshold = 2e-2;
int g_failures = 0;
int g_cases = 0;

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x1234567ull) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    float uniform(float a) { return (float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * a; }
    int below(int n) { return int(next() % uint64_t(n)); }
};

bf16 nan_bf16() {
    uint16_t bits = 0x7FC0;
    bf16 v;
    std::memcpy(&v, &bits, 2);
    return v;
}
bf16 poison_bf16() {
    uint16_t bits = 0xFFFF;  // a NaN
    bf16 v;
    std::memcpy(&v, &bits, 2);
    return v;
}

struct Config {
    int hd, nh, nkv;
};
struct SeqSpec {
    int q_len, ctx;
};

// One logical problem: q, per-sequence K/V, and the double reference.
struct Problem {
    Config cfg;
    std::vector<SeqSpec> seqs;
    int rows = 0;
    int64_t q_stride = 0;
    float scale = 0;
    std::vector<int32_t> query_start;
    std::vector<bf16> q;                  // [rows][q_stride]
    std::vector<std::vector<bf16>> k, v;  // per sequence [ctx][nkv][hd]
    std::vector<double> ref;              // [rows][nh*hd]
};

template <class F>
void parallel_for(int64_t n, F&& f) {
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), n));
    std::vector<std::thread> pool;
    for (int64_t t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (int64_t i = t; i < n; i += threads) f(i);
        });
    for (auto& th : pool) th.join();
}

// Reference for the (row, head) pairs selected by `want` (all when empty).
void compute_reference(Problem& p, const std::vector<int>& only_rows = {}) {
    const int hd = p.cfg.hd, nh = p.cfg.nh, nkv = p.cfg.nkv, group = nh / nkv;
    p.ref.assign(size_t(p.rows) * nh * hd, 0.0);
    std::vector<int> rows_list = only_rows;
    if (rows_list.empty()) {
        rows_list.resize(size_t(p.rows));
        std::iota(rows_list.begin(), rows_list.end(), 0);
    }
    std::vector<int> row_seq(size_t(p.rows));
    for (size_t s = 0; s < p.seqs.size(); ++s)
        for (int r = p.query_start[s]; r < p.query_start[s + 1]; ++r) row_seq[size_t(r)] = int(s);
    const int64_t tasks = int64_t(rows_list.size()) * nh;
    parallel_for(tasks, [&](int64_t t) {
        const int r = rows_list[size_t(t / nh)], h = int(t % nh);
        const int s = row_seq[size_t(r)];
        const SeqSpec sp = p.seqs[size_t(s)];
        const int i = r - p.query_start[size_t(s)];
        const int limit = sp.ctx - sp.q_len + i;
        const int kvh = h / group;
        std::vector<double> qd(static_cast<size_t>(hd)), sc(static_cast<size_t>(limit) + 1);
        for (int d = 0; d < hd; ++d) qd[size_t(d)] = __bfloat162float(p.q[size_t(r) * p.q_stride + size_t(h) * hd + d]);
        const bf16* K = p.k[size_t(s)].data();
        const bf16* V = p.v[size_t(s)].data();
        double mx = -1e300;
        for (int key = 0; key <= limit; ++key) {
            const bf16* kr = K + (size_t(key) * nkv + kvh) * hd;
            double dot = 0;
            for (int d = 0; d < hd; ++d) dot += qd[size_t(d)] * double(__bfloat162float(kr[d]));
            sc[size_t(key)] = dot * double(p.scale);
            mx = std::max(mx, sc[size_t(key)]);
        }
        double sum = 0;
        for (int key = 0; key <= limit; ++key) {
            sc[size_t(key)] = std::exp(sc[size_t(key)] - mx);
            sum += sc[size_t(key)];
        }
        std::vector<double> acc(static_cast<size_t>(hd), 0.0);
        for (int key = 0; key <= limit; ++key) {
            const bf16* vr = V + (size_t(key) * nkv + kvh) * hd;
            const double w = sc[size_t(key)] / sum;
            for (int d = 0; d < hd; ++d) acc[size_t(d)] += w * double(__bfloat162float(vr[d]));
        }
        double* dst = p.ref.data() + size_t(r) * nh * hd + size_t(h) * hd;
        for (int d = 0; d < hd; ++d) dst[d] = acc[size_t(d)];
    });
}

Problem make_problem(Config cfg, std::vector<SeqSpec> seqs, uint64_t seed, float q_amp, bool reference = true) {
    Problem p;
    p.cfg = cfg;
    p.seqs = std::move(seqs);
    p.query_start.push_back(0);
    for (auto& s : p.seqs) p.query_start.push_back(p.query_start.back() + s.q_len);
    p.rows = p.query_start.back();
    p.q_stride = int64_t(cfg.nh + 2 * cfg.nkv) * cfg.hd;  // fused QKV-like rows; the K/V part is NaN
    p.scale = float(1.0 / std::sqrt(double(cfg.hd)));
    Rng rng(seed);
    p.q.assign(size_t(p.rows) * p.q_stride, nan_bf16());
    for (int r = 0; r < p.rows; ++r)
        for (int64_t e = 0; e < int64_t(cfg.nh) * cfg.hd; ++e)
            p.q[size_t(r) * p.q_stride + e] = __float2bfloat16(rng.uniform(q_amp));
    for (auto& s : p.seqs) {
        std::vector<bf16> k(size_t(s.ctx) * cfg.nkv * cfg.hd), v(k.size());
        for (auto& x : k) x = __float2bfloat16(rng.uniform(1.0f));
        for (auto& x : v) x = __float2bfloat16(rng.uniform(1.0f));
        p.k.push_back(std::move(k));
        p.v.push_back(std::move(v));
    }
    if (reference) compute_reference(p);
    return p;
}

// Device-side copy of a problem for one block size.
struct DeviceProblem {
    int bs = 0, num_blocks = 0, max_blocks = 0;
    bf16 *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
    int32_t *qs = nullptr, *lens = nullptr, *bt = nullptr;
    std::vector<int32_t> h_bt;
    size_t out_elems = 0;
    void release() {
        for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)qs, (void*)lens, (void*)bt})
            if (ptr) CK(cudaFree(ptr));
        *this = DeviceProblem{};
    }
};

DeviceProblem upload(const Problem& p, int bs, uint64_t seed) {
    DeviceProblem d;
    d.bs = bs;
    const int hd = p.cfg.hd, nkv = p.cfg.nkv;
    int used = 0;
    for (auto& s : p.seqs) {
        used += (s.ctx + bs - 1) / bs;
        d.max_blocks = std::max(d.max_blocks, (s.ctx + bs - 1) / bs);
    }
    d.max_blocks += 2;
    d.num_blocks = used + 5;
    std::vector<int32_t> perm(size_t(d.num_blocks));
    std::iota(perm.begin(), perm.end(), 0);
    Rng rng(seed);
    for (int i = d.num_blocks - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(i + 1))]);
    const size_t block_elems = size_t(nkv) * bs * hd;
    std::vector<bf16> kc(size_t(d.num_blocks) * block_elems, nan_bf16()), vc(kc.size(), nan_bf16());
    d.h_bt.assign(p.seqs.size() * size_t(d.max_blocks), -1);
    int next = 0;
    for (size_t s = 0; s < p.seqs.size(); ++s) {
        const int ctx = p.seqs[s].ctx;
        for (int b = 0; b < (ctx + bs - 1) / bs; ++b) d.h_bt[s * size_t(d.max_blocks) + size_t(b)] = perm[size_t(next++)];
        for (int pos = 0; pos < ctx; ++pos) {
            const int blk = d.h_bt[s * size_t(d.max_blocks) + size_t(pos / bs)];
            for (int h = 0; h < nkv; ++h) {
                const size_t dst = size_t(blk) * block_elems + (size_t(h) * bs + size_t(pos % bs)) * hd;
                const size_t src = (size_t(pos) * nkv + h) * hd;
                std::memcpy(&kc[dst], &p.k[s][src], size_t(hd) * sizeof(bf16));
                std::memcpy(&vc[dst], &p.v[s][src], size_t(hd) * sizeof(bf16));
            }
        }
    }
    std::vector<int32_t> lens;
    for (auto& s : p.seqs) lens.push_back(s.ctx);
    d.out_elems = std::max<size_t>(1, size_t(p.rows) * p.cfg.nh * hd);
    CK(cudaMalloc(&d.q, std::max<size_t>(1, p.q.size()) * sizeof(bf16)));
    CK(cudaMalloc(&d.k, kc.size() * sizeof(bf16)));
    CK(cudaMalloc(&d.v, vc.size() * sizeof(bf16)));
    CK(cudaMalloc(&d.out, d.out_elems * sizeof(bf16)));
    CK(cudaMalloc(&d.qs, p.query_start.size() * sizeof(int32_t)));
    CK(cudaMalloc(&d.lens, std::max<size_t>(1, lens.size()) * sizeof(int32_t)));
    CK(cudaMalloc(&d.bt, std::max<size_t>(1, d.h_bt.size()) * sizeof(int32_t)));
    if (!p.q.empty()) CK(cudaMemcpy(d.q, p.q.data(), p.q.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.k, kc.data(), kc.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.v, vc.data(), vc.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.qs, p.query_start.data(), p.query_start.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    if (!lens.empty()) CK(cudaMemcpy(d.lens, lens.data(), lens.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    if (!d.h_bt.empty())
        CK(cudaMemcpy(d.bt, d.h_bt.data(), d.h_bt.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    return d;
}

struct Workspace {
    void* ptr = nullptr;
    size_t bytes = 0;
    void ensure(size_t need) {
        if (need <= bytes) return;
        if (ptr) CK(cudaFree(ptr));
        CK(cudaMalloc(&ptr, need));
        bytes = need;
    }
} g_ws;

AttentionBatch make_batch(const Problem& p, const DeviceProblem& d, bool exact_hint, int64_t max_seq_len_override = 0) {
    AttentionBatch b;
    b.num_seqs = int64_t(p.seqs.size());
    b.query_start = d.qs;
    b.seq_lens = d.lens;
    b.block_tables = d.bt;
    b.max_blocks_per_seq = d.max_blocks;
    int mx_q = 0, mx_ctx = 0;
    for (auto& s : p.seqs) {
        mx_q = std::max(mx_q, s.q_len);
        mx_ctx = std::max(mx_ctx, s.ctx);
    }
    b.max_seq_len = max_seq_len_override > 0 ? max_seq_len_override : (exact_hint ? mx_ctx : d.max_blocks * d.bs);
    b.max_query_len = exact_hint ? mx_q : 0;
    return b;
}

KvLayout make_layout(const Problem& p, const DeviceProblem& d) {
    KvLayout l;
    l.num_blocks = d.num_blocks;
    l.block_size = d.bs;
    l.n_kv_heads = p.cfg.nkv;
    l.head_dim = p.cfg.hd;
    return l;
}

// Downloads out and compares against p.ref (rows in `rows_only` when given).
bool compare(const Problem& p, const DeviceProblem& d, const std::string& label, const std::vector<int>& rows_only = {}) {
    const int width = p.cfg.nh * p.cfg.hd;
    std::vector<bf16> out(size_t(p.rows) * width);
    if (!out.empty()) CK(cudaMemcpy(out.data(), d.out, out.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<int> rows = rows_only;
    if (rows.empty()) {
        rows.resize(size_t(p.rows));
        std::iota(rows.begin(), rows.end(), 0);
    }
    double num = 0, den = 0, worst_row_err = 0;
    int worst_row = -1;
    int64_t bad = 0;
    for (int r : rows) {
        double rn = 0, rd = 0;
        for (int e = 0; e < width; ++e) {
            const float g = __bfloat162float(out[size_t(r) * width + e]);
            const double ref = p.ref[size_t(r) * width + e];
            if (!std::isfinite(g)) {
                ++bad;
                continue;
            }
            rn += (g - ref) * (g - ref);
            rd += ref * ref;
        }
        num += rn;
        den += rd;
        const double re = rd > 0 ? std::sqrt(rn / rd) : std::sqrt(rn);
        if (re > worst_row_err) {
            worst_row_err = re;
            worst_row = r;
        }
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    const bool ok = bad == 0 && rel <= kThreshold && std::isfinite(rel);
    ++g_cases;
    if (!ok) ++g_failures;
    std::printf("%-4s %-78s rel %.3e  worst row %d (%.2e)%s\n", ok ? "PASS" : "FAIL", label.c_str(), rel, worst_row,
                worst_row_err, bad ? fmt::format("  {} NaN/unwritten", bad).c_str() : "");
    return ok;
}

bool run_attention(const Problem& p, const DeviceProblem& d, const AttentionBatch& b, cudaStream_t stream,
                   std::string* err) {
    const KvLayout layout = make_layout(p, d);
    try {
        const size_t ws = swiftkv::cuda::attention_workspace_bytes(p.rows, b, layout, p.cfg.nh);
        g_ws.ensure(ws);
        swiftkv::cuda::attention(d.q, p.q_stride, p.rows, b, layout, d.k, d.v, p.cfg.nh, p.scale, d.out, g_ws.ptr,
                                 stream);
        const cudaError_t e = cudaStreamSynchronize(stream);
        if (e != cudaSuccess) {
            *err = cudaGetErrorString(e);
            return false;
        }
    } catch (const std::exception& e) {
        *err = e.what();
        return false;
    }
    return true;
}

void poison(const DeviceProblem& d) {
    std::vector<bf16> host(d.out_elems, poison_bf16());
    CK(cudaMemcpy(d.out, host.data(), host.size() * sizeof(bf16), cudaMemcpyHostToDevice));
}

std::string describe(const Problem& p) {
    std::string s = fmt::format("hd{} h{}/{} q/ctx[", p.cfg.hd, p.cfg.nh, p.cfg.nkv);
    for (size_t i = 0; i < p.seqs.size(); ++i) s += fmt::format("{}{}/{}", i ? " " : "", p.seqs[i].q_len, p.seqs[i].ctx);
    return s + "]";
}

void run_problem(const Problem& p, const std::vector<int>& modes, uint64_t seed) {
    for (int bs : {16, 32}) {
        DeviceProblem d = upload(p, bs, seed + uint64_t(bs));
        for (int exact = 1; exact >= 0; --exact) {
            for (int mode : modes) {
                swiftkv::cuda::detail::set_attention_mode_for_testing(mode);
                poison(d);
                const AttentionBatch b = make_batch(p, d, exact != 0);
                std::string err;
                const std::string label = fmt::format("{} bs{} hint{} {}", describe(p), bs, exact ? "=exact" : "=0",
                                                      mode == 0 ? "auto" : mode == 1 ? "simple" : "nodecode");
                if (!run_attention(p, d, b, nullptr, &err)) {
                    ++g_cases;
                    ++g_failures;
                    std::printf("FAIL %-78s error: %s\n", label.c_str(), err.c_str());
                    if (err.find("illegal") != std::string::npos || err.find("misaligned") != std::string::npos) {
                        std::printf("sticky CUDA error; aborting\n");
                        std::exit(1);
                    }
                    continue;
                }
                compare(p, d, label);
            }
        }
        d.release();
    }
    swiftkv::cuda::detail::set_attention_mode_for_testing(-1);
}

// Records the call in a CUDA graph with one set of device lengths, replays with another set within the
// same host bounds (rows, num_seqs, max_seq_len, max_query_len), and checks the replay.
// B is checked; A (recording-time lengths) must have the same rows and num_seqs, every A context <= the
// B context of the same sequence (so B's block tables cover it) and q <= context; max_q / max_seq bound both.
void graph_case(Config cfg, const std::vector<SeqSpec>& a, const std::vector<SeqSpec>& b, int max_q, int max_seq,
                uint64_t seed) {
    Problem pb = make_problem(cfg, b, seed, 3.0f, true);
    DeviceProblem d = upload(pb, 16, seed + 7);
    const KvLayout layout = make_layout(pb, d);
    AttentionBatch batch = make_batch(pb, d, false, max_seq);
    batch.max_query_len = max_q;
    std::vector<int32_t> qs_a = {0}, lens_a, lens_b;
    for (auto& s : a) {
        qs_a.push_back(qs_a.back() + s.q_len);
        lens_a.push_back(s.ctx);
    }
    for (auto& s : b) lens_b.push_back(s.ctx);
    for (int mode : {0, 2}) {
        swiftkv::cuda::detail::set_attention_mode_for_testing(mode);
        CK(cudaMemcpy(d.qs, qs_a.data(), qs_a.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d.lens, lens_a.data(), lens_a.size() * 4, cudaMemcpyHostToDevice));
        cudaStream_t stream;
        CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        const size_t ws = swiftkv::cuda::attention_workspace_bytes(pb.rows, batch, layout, cfg.nh);
        g_ws.ensure(ws);
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        std::string err;
        try {
            swiftkv::cuda::attention(d.q, pb.q_stride, pb.rows, batch, layout, d.k, d.v, cfg.nh, pb.scale, d.out,
                                     g_ws.ptr, stream);
        } catch (const std::exception& e) {
            err = e.what();
        }
        CK(cudaStreamEndCapture(stream, &graph));
        const std::string label = fmt::format("graph replay {} max_q {} (recorded w/ other lengths) {}",
                                              describe(pb), max_q, mode == 0 ? "auto" : "nodecode");
        if (!err.empty()) {
            ++g_cases;
            ++g_failures;
            std::printf("FAIL %-78s error: %s\n", label.c_str(), err.c_str());
            continue;
        }
        CK(cudaGraphInstantiate(&exec, graph, 0));
        CK(cudaGraphLaunch(exec, stream));  // run with a's lengths (not checked)
        CK(cudaStreamSynchronize(stream));
        CK(cudaMemcpy(d.qs, pb.query_start.data(), pb.query_start.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d.lens, lens_b.data(), lens_b.size() * 4, cudaMemcpyHostToDevice));
        poison(d);
        CK(cudaGraphLaunch(exec, stream));
        CK(cudaStreamSynchronize(stream));
        compare(pb, d, label);
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
        CK(cudaStreamDestroy(stream));
    }
    swiftkv::cuda::detail::set_attention_mode_for_testing(-1);
    d.release();
}

float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

void perf_prefill(const Config cfg) {
    const int T = 8192, bs = 16;
    Problem p = make_problem(cfg, {{T, T}}, 4242, 3.0f, false);
    p.q_stride = int64_t(cfg.nh) * cfg.hd;  // plain q rows for the benchmark
    {
        std::vector<bf16> q2(size_t(T) * p.q_stride);
        Rng rng(99);
        for (auto& x : q2) x = __float2bfloat16(rng.uniform(3.0f));
        p.q = std::move(q2);
    }
    // Reference on a sample of rows (including the first and the last).
    std::vector<int> sample = {0, 1, 63, 64, 127, 128, 1000, 4095, 4096, 6000, 8000, T - 65, T - 64, T - 2, T - 1};
    compute_reference(p, sample);
    DeviceProblem d = upload(p, bs, 17);
    const AttentionBatch b = make_batch(p, d, true);
    std::string err;
    poison(d);
    if (!run_attention(p, d, b, nullptr, &err)) {
        ++g_cases;
        ++g_failures;
        std::printf("FAIL prefill 8192 error: %s\n", err.c_str());
        d.release();
        return;
    }
    compare(p, d, fmt::format("prefill {} (sampled rows)", describe(p)), sample);
    const KvLayout layout = make_layout(p, d);
    const size_t ws = swiftkv::cuda::attention_workspace_bytes(p.rows, b, layout, cfg.nh);
    g_ws.ensure(ws);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const char* vnames[] = {"4 warps x 16 rows, BM 64", "4 warps x 32 rows, BM 128"};
    for (int variant : {-1, 0, 1}) {
        swiftkv::cuda::detail::set_attention_prefill_variant_for_testing(variant);
        if (variant >= 0) {  // check each variant on the sampled rows too
            poison(d);
            if (!run_attention(p, d, b, nullptr, &err)) {
                ++g_cases;
                ++g_failures;
                std::printf("FAIL prefill 8192 variant %d error: %s\n", variant, err.c_str());
                continue;
            }
            compare(p, d, fmt::format("prefill {} variant {} (sampled rows)", describe(p), variant), sample);
        }
        for (int i = 0; i < 3; ++i)
            swiftkv::cuda::attention(d.q, p.q_stride, p.rows, b, layout, d.k, d.v, cfg.nh, p.scale, d.out, g_ws.ptr,
                                     nullptr);
        std::vector<float> times;
        for (int i = 0; i < 20; ++i) {
            CK(cudaEventRecord(e0));
            swiftkv::cuda::attention(d.q, p.q_stride, p.rows, b, layout, d.k, d.v, cfg.nh, p.scale, d.out, g_ws.ptr,
                                     nullptr);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            times.push_back(ms);
        }
        const double ms = median(times);
        const double flops = 4.0 * T * (T / 2.0) * cfg.hd * cfg.nh;
        std::printf("PERF prefill T=%d h%d/%d hd%d bs%d [%s]: %.3f ms  %.1f TFLOP/s (causal FLOPs 4*T*T/2*hd*heads)\n",
                    T, cfg.nh, cfg.nkv, cfg.hd, bs, variant < 0 ? "auto" : vnames[variant], ms,
                    flops / (ms * 1e-3) / 1e12);
    }
    swiftkv::cuda::detail::set_attention_prefill_variant_for_testing(-1);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    d.release();
}

void perf_decode() {
    const Config cfg{128, 32, 8};
    const int ctx = 1024, bs = 16, blocks_per_seq = ctx / bs;
    const int pool_blocks = 65536;  // 256 MiB per cache
    const size_t block_elems = size_t(cfg.nkv) * bs * cfg.hd;
    bf16 *k = nullptr, *v = nullptr, *q = nullptr, *out = nullptr;
    CK(cudaMalloc(&k, size_t(pool_blocks) * block_elems * sizeof(bf16)));
    CK(cudaMalloc(&v, size_t(pool_blocks) * block_elems * sizeof(bf16)));
    {
        Rng rng(5);
        std::vector<bf16> chunk(size_t(1) << 24);
        for (auto& x : chunk) x = __float2bfloat16(rng.uniform(1.0f));
        const size_t total = size_t(pool_blocks) * block_elems;
        for (size_t off = 0; off < total; off += chunk.size()) {
            const size_t n = std::min(chunk.size(), total - off);
            CK(cudaMemcpy(k + off, chunk.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
            CK(cudaMemcpy(v + off, chunk.data() + (chunk.size() - n), n * sizeof(bf16), cudaMemcpyHostToDevice));
        }
    }
    const int max_batch = 128, sets = 8;
    CK(cudaMalloc(&q, size_t(max_batch) * cfg.nh * cfg.hd * sizeof(bf16)));
    CK(cudaMalloc(&out, size_t(max_batch) * cfg.nh * cfg.hd * sizeof(bf16)));
    {
        Rng rng(6);
        std::vector<bf16> hq(size_t(max_batch) * cfg.nh * cfg.hd);
        for (auto& x : hq) x = __float2bfloat16(rng.uniform(3.0f));
        CK(cudaMemcpy(q, hq.data(), hq.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    }
    int32_t *qs = nullptr, *lens = nullptr, *bt = nullptr;
    CK(cudaMalloc(&qs, (max_batch + 1) * 4));
    CK(cudaMalloc(&lens, max_batch * 4));
    CK(cudaMalloc(&bt, size_t(sets) * max_batch * blocks_per_seq * 4));
    {
        std::vector<int32_t> hqs(max_batch + 1), hl(max_batch, ctx);
        std::iota(hqs.begin(), hqs.end(), 0);
        CK(cudaMemcpy(qs, hqs.data(), hqs.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(lens, hl.data(), hl.size() * 4, cudaMemcpyHostToDevice));
        std::vector<int32_t> perm(pool_blocks);
        std::iota(perm.begin(), perm.end(), 0);
        Rng rng(7);
        for (int i = pool_blocks - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(i + 1))]);
        // 8 disjoint sets of 128 x 64 blocks = 65536 blocks: every set reads different memory.
        CK(cudaMemcpy(bt, perm.data(), size_t(sets) * max_batch * blocks_per_seq * 4, cudaMemcpyHostToDevice));
    }
    KvLayout layout;
    layout.num_blocks = pool_blocks;
    layout.block_size = bs;
    layout.n_kv_heads = cfg.nkv;
    layout.head_dim = cfg.hd;
    const float scale = float(1.0 / std::sqrt(double(cfg.hd)));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int batch : {1, 8, 32, 128}) {
        AttentionBatch b;
        b.num_seqs = batch;
        b.query_start = qs;
        b.seq_lens = lens;
        b.max_blocks_per_seq = blocks_per_seq;
        b.max_seq_len = ctx;
        b.max_query_len = 1;
        const size_t ws = swiftkv::cuda::attention_workspace_bytes(batch, b, layout, cfg.nh);
        g_ws.ensure(ws);
        std::vector<float> times;
        for (int i = 0; i < 23; ++i) {
            b.block_tables = bt + size_t(i % sets) * max_batch * blocks_per_seq;
            CK(cudaEventRecord(e0));
            swiftkv::cuda::attention(q, int64_t(cfg.nh) * cfg.hd, batch, b, layout, k, v, cfg.nh, scale, out, g_ws.ptr,
                                     nullptr);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (i >= 3) times.push_back(ms);
        }
        const double ms = median(times);
        const double bytes = double(batch) * ctx * cfg.nkv * cfg.hd * 2.0 * 2.0;
        std::printf("PERF decode batch %3d ctx %d h%d/%d hd%d bs%d: %.4f ms  %.0f GB/s of K/V (workspace %zu B)\n",
                    batch, ctx, cfg.nh, cfg.nkv, cfg.hd, bs, ms, bytes / (ms * 1e-3) / 1e9, ws);
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    for (void* ptr : {(void*)k, (void*)v, (void*)q, (void*)out, (void*)qs, (void*)lens, (void*)bt}) CK(cudaFree(ptr));
}

}  // namespace

int main(int argc, char** argv) {
    bool perf = true, correctness = true, quick = false;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--no-perf") == 0) perf = false;
        if (std::strcmp(argv[i], "--perf-only") == 0) correctness = false;
        if (std::strcmp(argv[i], "--quick") == 0) quick = true;  // fewer, smaller cases (for compute-sanitizer)
    }
    int dev = 0;
    CK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);

    if (correctness) {
        // Empty calls must do nothing.
        {
            AttentionBatch b;
            KvLayout l;
            l.n_kv_heads = 2;
            l.head_dim = 128;
            l.block_size = 16;
            try {
                swiftkv::cuda::attention(nullptr, 256, 0, b, l, nullptr, nullptr, 2, 1.0f, nullptr, nullptr, nullptr);
                b.num_seqs = 3;
                swiftkv::cuda::attention(nullptr, 256, 0, b, l, nullptr, nullptr, 2, 1.0f, nullptr, nullptr, nullptr);
                ++g_cases;
                std::printf("PASS empty calls\n");
            } catch (const std::exception& e) {
                ++g_cases;
                ++g_failures;
                std::printf("FAIL empty calls: %s\n", e.what());
            }
        }
        std::vector<Config> configs = {{64, 4, 4}, {64, 8, 2}, {64, 32, 8}, {64, 12, 4},
                                       {128, 4, 4}, {128, 8, 2}, {128, 32, 8}, {128, 12, 4}};
        if (quick) configs = {{64, 8, 2}, {128, 12, 4}};
        uint64_t seed = 1;
        for (const Config& cfg : configs) {
            // decode rows and an empty sequence (rows != num_seqs)
            run_problem(make_problem(cfg, {{1, 1}, {1, 33}, {0, 50}, {1, 700}, {1, 1024}, {1, 2999}}, seed++, 4.0f),
                        {0, 2, 1}, seed);
            // pure decode, rows == num_seqs
            run_problem(make_problem(cfg, {{1, 1}, {1, 16}, {1, 1500}, {1, 3000}}, seed++, 4.0f), {0, 2}, seed);
            // speculative-decoding-like short query runs
            run_problem(make_problem(cfg, {{3, 100}, {2, 2000}, {4, 517}}, seed++, 4.0f), {0, 2}, seed);
            // rows == num_seqs but not one row each (decode kernel with > 16 packed rows when hint = 0)
            run_problem(make_problem(cfg, {{0, 10}, {0, 300}, {5, 1200}, {0, 7}, {0, 9}, {1, 2048}}, seed++, 4.0f),
                        {0, 2}, seed);
            // mixed batch: decode rows, prefill chunks, an empty sequence
            run_problem(make_problem(cfg, {{1, 900}, {7, 7}, {0, 40}, {64, 64}, {200, 2100}, {1, 3000}, {7, 1234}},
                                     seed++, 4.0f),
                        {0, 2, 1}, seed);
            // long prefill chunk (split-KV prefill) and a full causal prefill
            if (quick) {
                run_problem(make_problem(cfg, {{300, 700}}, seed++, 3.0f), {0}, seed);
                continue;
            }
            run_problem(make_problem(cfg, {{1000, 3000}}, seed++, 3.0f), {0}, seed);
            run_problem(make_problem(cfg, {{1000, 1000}, {64, 1500}}, seed++, 3.0f), {0}, seed);
        }
        // generic head_dim on the simple kernel
        run_problem(make_problem({80, 8, 2}, {{1, 100}, {7, 300}, {0, 5}, {64, 64}}, seed++, 4.0f), {0}, seed);
        run_problem(make_problem({256, 4, 2}, {{1, 100}, {33, 129}}, seed++, 2.0f), {0}, seed);
        const std::vector<SeqSpec> ga = {{1, 900}, {200, 2000}, {99, 148}, {0, 30}};
        const std::vector<SeqSpec> gb = {{150, 1500}, {1, 3000}, {148, 148}, {1, 64}};
        const std::vector<SeqSpec> da = {{1, 5}, {1, 2000}, {1, 100}, {1, 64}, {1, 1}};
        const std::vector<SeqSpec> db = {{1, 1500}, {1, 3000}, {1, 100}, {1, 1000}, {1, 2}};
        graph_case({128, 32, 8}, ga, gb, 200, 3000, 777);
        graph_case({64, 8, 2}, ga, gb, 200, 3000, 778);
        graph_case({128, 32, 8}, da, db, 1, 3000, 779);
        graph_case({64, 12, 4}, da, db, 1, 3000, 780);
    }
    if (perf) {
        perf_prefill({128, 32, 8});
        perf_prefill({64, 32, 8});
        perf_decode();
    }
    if (g_ws.ptr) CK(cudaFree(g_ws.ptr));
    std::printf("%s: %d of %d cases failed\n", g_failures ? "FAILED" : "ALL PASSED", g_failures, g_cases);
    return g_failures ? 1 : 0;
}
