// The CUDA backend (DESIGN.md section 6): device memory, one stream, cuBLASLt for every GEMM (bf16 in,
// f32 accumulate), our kernels (cuda_elementwise.cu, cuda_attention.cu, cuda_sample.cu) for the rest,
// and CUDA graphs for replaying recorded steps. Arguments are validated here on the host; kernels
// assume valid input. No op synchronises the host; download() and synchronize() do.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/backend.h"
#include "backend/cuda/cuda_gemv.h"
#include "backend/cuda/cuda_kernels.h"
#include "core/error.h"

namespace swiftkv {

namespace {

void cuda_check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        SKV_THROW("CUDA error in {}: {} ({})", what, cudaGetErrorString(err), cudaGetErrorName(err));
    }
}

void cublas_check(cublasStatus_t st, const char* what) {
    if (st != CUBLAS_STATUS_SUCCESS) SKV_THROW("cuBLASLt error in {}: status {}", what, int(st));
}

// The cuBLASLt workspace: NVIDIA recommends 32 MiB on Hopper.
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
// GEMMs of at least this many multiply-adds get their algorithm picked by timing (see gemm_plan).
constexpr double kTuneMinFlops = 1e10;
// Our GEMV replaces cuBLASLt for 1-2 rows on matrices up to these sizes (measured on H200: 1.07-1.16x
// on the 8B model's qkv and o projections, even on down, slower on the 128K-row LM head and on 8 rows).
constexpr int64_t kGemvRows = 2;
constexpr int64_t kGemvMaxN = 32768;
constexpr int64_t kGemvMaxElems = int64_t(64) << 20;

class CudaGraph final : public BackendGraph {
public:
    explicit CudaGraph(cudaGraphExec_t exec) : exec_(exec) {}
    ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
    cudaGraphExec_t exec() const { return exec_; }

private:
    cudaGraphExec_t exec_;
};

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(int device) : device_(device) {
        int count = 0;
        cuda_check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
        SKV_CHECK(device >= 0 && device < count, "CUDA device {} does not exist ({} device(s) visible)", device, count);
        cuda_check(cudaSetDevice(device), "cudaSetDevice");
        cudaDeviceProp prop{};
        cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
        SKV_CHECK(prop.major >= 8, "CUDA device {} ({}) has compute capability {}.{}; swiftkv needs 8.0 or newer (bf16 "
                  "tensor cores)", device, prop.name, prop.major, prop.minor);
        name_ = fmt::format("cuda:{} ({})", device, prop.name);
        cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        cublas_check(cublasLtCreate(&lt_), "cublasLtCreate");
        cublas_workspace_ = alloc(kCublasWorkspaceBytes);
    }

    ~CudaBackend() override {
        cudaStreamSynchronize(stream_);
        graph_cache_cleanup();
        if (cublas_workspace_) cudaFree(cublas_workspace_);
        if (attn_workspace_) cudaFree(attn_workspace_);
        if (sample_workspace_) cudaFree(sample_workspace_);
        cublasLtDestroy(lt_);
        cudaStreamDestroy(stream_);
    }

    std::string name() const override { return name_; }

    // --- memory -------------------------------------------------------------------------------
    void* alloc(size_t bytes) override {
        check_not_capturing("alloc");
        void* p = nullptr;
        const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
        if (err != cudaSuccess) {
            cudaGetLastError();  // clear the (non-sticky) allocation error
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            SKV_THROW("CUDA backend: out of GPU memory allocating {} bytes ({:.1f} MiB; {:.1f} MiB free of {:.1f} MiB on "
                      "{}): use a smaller model, KV cache (--kv-cache-tokens / --gpu-memory-fraction) or batch",
                      bytes, double(bytes) / (1 << 20), double(free_b) / (1 << 20), double(total_b) / (1 << 20), name_);
        }
        return p;
    }
    void free(void* ptr) override {
        if (ptr) cudaFree(ptr);
    }
    void upload(void* dst, const void* host_src, size_t bytes) override {
        check_not_capturing("upload");
        if (bytes == 0) return;
        cuda_check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "upload");
    }
    void download(void* host_dst, const void* src, size_t bytes) override {
        check_not_capturing("download");
        if (bytes == 0) return;
        cuda_check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "download");
        cuda_check(cudaStreamSynchronize(stream_), "download (a kernel before it failed)");
    }
    void copy(void* dst, const void* src, size_t bytes) override {
        if (bytes == 0) return;
        cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy");
    }
    void fill_zero(void* dst, size_t bytes) override {
        if (bytes == 0) return;
        cuda_check(cudaMemsetAsync(dst, 0, bytes, stream_), "fill_zero");
    }
    void synchronize() override {
        check_not_capturing("synchronize");
        cuda_check(cudaStreamSynchronize(stream_), "synchronize (a kernel failed)");
    }
    bool supports_weight_dtype(DType dtype) const override { return dtype == DType::BF16; }
    DType act_dtype() const override { return DType::BF16; }
    void memory_info(size_t* free_bytes, size_t* total_bytes) const override {
        cuda_check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    }
    void fill_random(void* dst, int64_t n, DType dtype, uint64_t seed, float scale) override {
        if (dtype == DType::F32) {
            cuda::fill_random_f32(static_cast<float*>(dst), n, seed, scale, stream_);
        } else {
            SKV_CHECK(dtype == DType::BF16, "fill_random: dtype {} is not supported (F32 or BF16)", dtype_name(dtype));
            cuda::fill_random_bf16(static_cast<cuda::bf16*>(dst), n, seed, scale, stream_);
        }
    }

    // --- graphs -------------------------------------------------------------------------------
    bool supports_graphs() const override { return true; }
    std::unique_ptr<BackendGraph> capture(const std::function<void()>& ops) override {
        check_not_capturing("capture");
        cuda_check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        capturing_ = true;
        cudaGraph_t graph = nullptr;
        try {
            ops();
        } catch (...) {
            capturing_ = false;
            cudaStreamEndCapture(stream_, &graph);
            if (graph) cudaGraphDestroy(graph);
            cudaGetLastError();
            throw;
        }
        capturing_ = false;
        cuda_check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
        cudaGraphExec_t exec = nullptr;
        const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        cuda_check(err, "cudaGraphInstantiate");
        return std::make_unique<CudaGraph>(exec);
    }
    void replay(BackendGraph& graph) override {
        check_not_capturing("replay");
        auto* g = dynamic_cast<CudaGraph*>(&graph);
        SKV_CHECK(g != nullptr, "replay: graph was not recorded by a CUDA backend");
        cuda_check(cudaGraphLaunch(g->exec(), stream_), "cudaGraphLaunch");
    }

    // --- ops ----------------------------------------------------------------------------------
    void embedding(const WeightMatrix& table, const int32_t* tokens, int64_t n, float* out) override {
        check_weight(table, "embedding");
        cuda::embedding(static_cast<const cuda::bf16*>(table.data), table.cols, tokens, n, out, stream_);
    }

    void matmul(const void* x, int64_t rows, const WeightMatrix& w, void* out, DType out_dtype) override {
        check_weight(w, "matmul");
        SKV_CHECK(rows >= 0, "matmul: negative row count {}", rows);
        SKV_CHECK(out_dtype == DType::BF16 || out_dtype == DType::F32,
                  "matmul: output dtype {} is not supported on CUDA (BF16 or F32)", dtype_name(out_dtype));
        if (rows == 0 || w.rows == 0) return;
        SKV_CHECK(w.cols > 0, "matmul: weight has no columns");
        // Decode-sized products stream the weights through our GEMV (cuBLASLt reaches ~80% of the copy
        // bandwidth there); SWIFTKV_GEMV=off keeps everything on cuBLASLt.
        if (use_gemv_ && rows <= kGemvRows && w.rows <= kGemvMaxN && w.rows * w.cols <= kGemvMaxElems &&
            cuda::gemv_supported(rows, w.rows, w.cols) && aligned16(x) && aligned16(w.data)) {
            cuda::gemv(static_cast<const cuda::bf16*>(x), rows, static_cast<const cuda::bf16*>(w.data), w.rows, w.cols,
                       out, out_dtype == DType::F32, stream_);
            return;
        }
        const Plan& plan = gemm_plan(rows, w.rows, w.cols, out_dtype, x, w.data, out);
        const float alpha = 1.0f, beta = 0.0f;
        cublas_check(cublasLtMatmul(lt_, plan.op, &alpha, w.data, plan.a, x, plan.b, &beta, out, plan.c, out, plan.c,
                                    plan.has_algo ? &plan.algo : nullptr, cublas_workspace_, kCublasWorkspaceBytes,
                                    stream_),
                     "cublasLtMatmul");
    }

    void rmsnorm(const float* x, const float* weight, void* out, int64_t rows, int64_t dim, float eps) override {
        cuda::rmsnorm(x, weight, static_cast<cuda::bf16*>(out), rows, dim, eps, stream_);
    }
    void add_rmsnorm(float* residual, const void* delta, const float* weight, void* out, int64_t rows, int64_t dim,
                     float eps) override {
        cuda::add_rmsnorm(residual, static_cast<const cuda::bf16*>(delta), weight, static_cast<cuda::bf16*>(out), rows,
                          dim, eps, stream_);
    }
    void rope(void* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim, const int32_t* positions,
              const float* inv_freq) override {
        if (rows <= 0 || n_heads <= 0) return;
        SKV_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim {} must be even", head_dim);
        SKV_CHECK(row_stride >= n_heads * head_dim, "rope: row stride {} is shorter than {} heads of {}", row_stride,
                  n_heads, head_dim);
        cuda::rope(static_cast<cuda::bf16*>(x), rows, row_stride, n_heads, head_dim, positions, inv_freq, stream_);
    }
    void silu_mul(const void* gate_up, void* out, int64_t rows, int64_t ffn) override {
        cuda::silu_mul(static_cast<const cuda::bf16*>(gate_up), static_cast<cuda::bf16*>(out), rows, ffn, stream_);
    }
    void kv_write(const void* k, const void* v, int64_t rows, int64_t row_stride, const int32_t* slots,
                  const KvLayout& layout, void* k_cache, void* v_cache) override {
        kv_write_layers(k, v, rows, row_stride, 0, 1, slots, layout, k_cache, v_cache, 0);
    }
    void kv_write_layers(const void* k, const void* v, int64_t rows, int64_t row_stride, int64_t layer_offset,
                         int64_t layers, const int32_t* slots, const KvLayout& layout, void* k_cache, void* v_cache,
                         int64_t cache_layer_stride) override {
        SKV_CHECK(row_stride >= layout.n_kv_heads * layout.head_dim,
                  "kv_write: row stride {} is shorter than {} KV heads of {}", row_stride, layout.n_kv_heads,
                  layout.head_dim);
        if (rows <= 0 || layers <= 0) return;
        cuda::kv_write(static_cast<const cuda::bf16*>(k), static_cast<const cuda::bf16*>(v), rows, row_stride,
                       layer_offset, layers, slots, layout, static_cast<cuda::bf16*>(k_cache),
                       static_cast<cuda::bf16*>(v_cache), cache_layer_stride, stream_);
    }
    void attention(const void* q, int64_t q_row_stride, const AttentionBatch& batch, const KvLayout& layout,
                   const void* k_cache, const void* v_cache, int64_t n_heads, float scale, void* out) override {
        SKV_CHECK(layout.n_kv_heads > 0 && n_heads % layout.n_kv_heads == 0,
                  "attention: {} query heads is not a multiple of {} KV heads", n_heads, layout.n_kv_heads);
        SKV_CHECK(q_row_stride >= n_heads * layout.head_dim, "attention: q row stride {} is shorter than {} heads of {}",
                  q_row_stride, n_heads, layout.head_dim);
        if (batch.num_seqs <= 0) return;
        const int64_t rows = batch.num_rows;
        SKV_CHECK(rows >= 0, "attention: negative row count {}", rows);
        if (rows == 0) return;
        const size_t need = cuda::attention_workspace_bytes(rows, batch, layout, n_heads);
        ensure_workspace(attn_workspace_, attn_workspace_bytes_, need, "attention");
        cuda::attention(static_cast<const cuda::bf16*>(q), q_row_stride, rows, batch, layout,
                        static_cast<const cuda::bf16*>(k_cache), static_cast<const cuda::bf16*>(v_cache), n_heads,
                        scale, static_cast<cuda::bf16*>(out), attn_workspace_, stream_);
    }
    void gather_rows(const void* x, const int32_t* indices, int64_t n, int64_t row_bytes, void* out) override {
        if (n <= 0 || row_bytes <= 0) return;
        cuda::gather_rows(x, indices, n, row_bytes, out, stream_);
    }
    void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params,
                int32_t* tokens) override {
        if (rows <= 0) return;
        SKV_CHECK(vocab > 0, "sample: empty vocabulary");
        const size_t need = cuda::sample_workspace_bytes(rows, vocab);
        ensure_workspace(sample_workspace_, sample_workspace_bytes_, need, "sample");
        cuda::sample(logits, rows, vocab, params, tokens, sample_workspace_, stream_);
    }

private:
    struct Plan {
        cublasLtMatmulDesc_t op = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
        cublasLtMatmulAlgo_t algo{};
        bool has_algo = false;
    };

    // out[M, N] (row-major) = x[M, K] * W[N, K]^T. cuBLASLt is column-major: compute
    // out^T (N x M, ld N) = W^T^T ... i.e. op(A) = A^T with A = W seen column-major as K x N (ld K), and
    // B = x seen column-major as K x M (ld K).
    const Plan& gemm_plan(int64_t M, int64_t N, int64_t K, DType out_dtype, const void* x, const void* w, void* out) {
        const auto key = std::make_tuple(M, N, K, int(out_dtype));
        auto it = plans_.find(key);
        if (it != plans_.end()) return it->second;
        Plan p;
        cublas_check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        cublas_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
        cublas_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
        const cudaDataType_t ct = out_dtype == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
        cublas_check(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, uint64_t(K), uint64_t(N), K), "layout A");
        cublas_check(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, uint64_t(K), uint64_t(M), K), "layout B");
        cublas_check(cublasLtMatrixLayoutCreate(&p.c, ct, uint64_t(N), uint64_t(M), N), "layout C");
        cublasLtMatmulPreference_t pref = nullptr;
        cublas_check(cublasLtMatmulPreferenceCreate(&pref), "preference");
        const size_t ws = kCublasWorkspaceBytes;
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
        // Serving sees a different token count M almost every step. The algorithm is chosen (and for
        // large products timed) once per bucket of M (8 per octave) and reused for every M in it when
        // cuBLASLt confirms it supports that exact shape; only the cheap layouts are per exact M.
        const auto bucket_key = std::make_tuple(m_bucket(M), N, K, int(out_dtype));
        auto bit = bucket_algos_.find(bucket_key);
        if (bit != bucket_algos_.end()) {
            cublasLtMatmulHeuristicResult_t check{};
            if (cublasLtMatmulAlgoCheck(lt_, p.op, p.a, p.b, p.c, p.c, &bit->second, &check) == CUBLAS_STATUS_SUCCESS &&
                check.workspaceSize <= kCublasWorkspaceBytes) {
                cublasLtMatmulPreferenceDestroy(pref);
                p.algo = bit->second;
                p.has_algo = true;
                return plans_.emplace(key, p).first->second;
            }
        }
        constexpr int kCandidates = 8;
        cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
        int found = 0;
        const cublasStatus_t st =
            cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, kCandidates, results, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
            p.algo = results[0].algo;
            p.has_algo = true;
            // Large products (prefill): time the heuristic's candidates once on the real operands and
            // keep the fastest; the first guess is often 5-10% off for these shapes. Never while a graph
            // is being recorded (the timing runs would be recorded too).
            if (tune_gemms_ && !capturing_ && found > 1 && double(M) * double(N) * double(K) >= kTuneMinFlops) {
                p.algo = results[fastest_algo(p, results, found, x, w, out)].algo;
            }
            if (bit == bucket_algos_.end()) bucket_algos_.emplace(bucket_key, p.algo);
        }
        return plans_.emplace(key, p).first->second;
    }

    // M rounded up to one of 8 steps per octave (exact up to 64).
    static int64_t m_bucket(int64_t M) {
        if (M <= 64) return M;
        int64_t p = 64;
        while (p * 2 <= M) p *= 2;  // p <= M < 2p
        const int64_t step = p / 8;
        return (M + step - 1) / step * step;
    }

    int fastest_algo(const Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found, const void* x,
                     const void* w, void* out) {
        cudaEvent_t start = nullptr, stop = nullptr;
        cuda_check(cudaEventCreate(&start), "cudaEventCreate");
        cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
        const float alpha = 1.0f, beta = 0.0f;
        int best = 0;
        float best_ms = 0.0f;
        for (int i = 0; i < found; ++i) {
            float total = 0.0f;
            bool ok = true;
            for (int rep = 0; rep < 4 && ok; ++rep) {
                cudaEventRecord(start, stream_);
                ok = cublasLtMatmul(lt_, p.op, &alpha, w, p.a, x, p.b, &beta, out, p.c, out, p.c, &results[i].algo,
                                    cublas_workspace_, kCublasWorkspaceBytes, stream_) == CUBLAS_STATUS_SUCCESS;
                cudaEventRecord(stop, stream_);
                cudaEventSynchronize(stop);
                float ms = 0.0f;
                cudaEventElapsedTime(&ms, start, stop);
                if (rep > 0) total += ms;  // the first run warms up
            }
            if (ok && (i == 0 || total < best_ms)) {
                best = i;
                best_ms = total;
            }
        }
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        cudaGetLastError();
        return best;
    }

    void graph_cache_cleanup() {
        for (auto& [key, p] : plans_) {
            cublasLtMatrixLayoutDestroy(p.a);
            cublasLtMatrixLayoutDestroy(p.b);
            cublasLtMatrixLayoutDestroy(p.c);
            cublasLtMatmulDescDestroy(p.op);
        }
        plans_.clear();
    }

    void ensure_workspace(void*& ptr, size_t& have, size_t need, const char* op) {
        if (need <= have) return;
        SKV_CHECK(!capturing_, "{}: its workspace must grow to {} bytes while a graph is being recorded; run the same "
                  "shapes once eagerly before recording", op, need);
        if (ptr) {
            cuda_check(cudaStreamSynchronize(stream_), "workspace resize");
            cudaFree(ptr);
            ptr = nullptr;
            have = 0;
        }
        const size_t bytes = std::max(need, have * 2);
        ptr = alloc(bytes);
        have = bytes;
    }

    static bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

    void check_weight(const WeightMatrix& w, const char* op) const {
        SKV_CHECK(w.dtype == DType::BF16, "{}: the CUDA backend holds weights in bf16, got {}", op, dtype_name(w.dtype));
        SKV_CHECK(w.rows >= 0 && w.cols >= 0, "{}: invalid weight shape [{}, {}]", op, w.rows, w.cols);
    }
    void check_not_capturing(const char* what) const {
        SKV_CHECK(!capturing_, "{} is not allowed while a CUDA graph is being recorded", what);
    }

    int device_;
    std::string name_;
    cudaStream_t stream_ = nullptr;
    cublasLtHandle_t lt_ = nullptr;
    void* cublas_workspace_ = nullptr;
    void* attn_workspace_ = nullptr;
    size_t attn_workspace_bytes_ = 0;
    void* sample_workspace_ = nullptr;
    size_t sample_workspace_bytes_ = 0;
    bool capturing_ = false;
    bool tune_gemms_ = [] {
        const char* env = std::getenv("SWIFTKV_GEMM_TUNE");
        return !(env && std::string(env) == "off");
    }();
    bool use_gemv_ = [] {
        const char* env = std::getenv("SWIFTKV_GEMV");
        return !(env && std::string(env) == "off");
    }();
    std::map<std::tuple<int64_t, int64_t, int64_t, int>, Plan> plans_;
    std::map<std::tuple<int64_t, int64_t, int64_t, int>, cublasLtMatmulAlgo_t> bucket_algos_;  // by M bucket
};

}  // namespace

bool cuda_backend_available(std::string* why_not) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        if (why_not) {
            *why_not = err != cudaSuccess ? fmt::format("no usable CUDA device: {}", cudaGetErrorString(err))
                                          : std::string("no CUDA device found");
        }
        cudaGetLastError();
        return false;
    }
    return true;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
    std::string why;
    if (!cuda_backend_available(&why)) SKV_THROW("the CUDA backend is not available: {}", why);
    return std::make_unique<CudaBackend>(device);
}

}  // namespace swiftkv
