// The CUDA backend (DESIGN.md section 6): device memory, one stream, cuBLASLt for every GEMM (bf16 in,
// f32 accumulate), our kernels (cuda_elementwise.cu, cuda_attention.cu, cuda_sample.cu) for the rest,
// and CUDA graphs for replaying recorded steps. Arguments are validated here on the host; kernels
// assume valid input. No op synchronises the host; download() and synchronize() do.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/op_checks.h"
#include "backend/train_ops.h"
#include "backend/cuda/cuda_gemv.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_train_ops.h"
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

// The training ops share the stream, cuBLASLt handle and workspaces with the inference ops, so the
// backend object is its own TrainingOps.
class CudaBackend final : public Backend, public TrainingOps {
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
    TrainingOps* training() override { return this; }

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
        op_checks::matmul(rows, w);
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
        op_checks::rope("rope", row_stride, n_heads, head_dim);
        cuda::rope(static_cast<cuda::bf16*>(x), rows, row_stride, n_heads, head_dim, positions, inv_freq, stream_);
    }
    void silu_mul(const void* gate_up, void* out, int64_t rows, int64_t ffn) override {
        cuda::silu_mul(static_cast<const cuda::bf16*>(gate_up), static_cast<cuda::bf16*>(out), rows, ffn, stream_);
    }
    void kv_write(const void* k, const void* v, int64_t rows, int64_t row_stride, const int32_t* slots,
                  const KvLayout& layout, void* k_cache, void* v_cache) override {
        op_checks::kv_write("kv_write", row_stride, layout);
        kv_write_layers(k, v, rows, row_stride, 0, 1, slots, layout, k_cache, v_cache, 0);
    }
    void kv_write_layers(const void* k, const void* v, int64_t rows, int64_t row_stride, int64_t layer_offset,
                         int64_t layers, const int32_t* slots, const KvLayout& layout, void* k_cache, void* v_cache,
                         int64_t cache_layer_stride) override {
        op_checks::kv_write_layers(row_stride, layout, layers, layer_offset, cache_layer_stride);
        if (rows <= 0 || layers <= 0) return;
        cuda::kv_write(static_cast<const cuda::bf16*>(k), static_cast<const cuda::bf16*>(v), rows, row_stride,
                       layer_offset, layers, slots, layout, static_cast<cuda::bf16*>(k_cache),
                       static_cast<cuda::bf16*>(v_cache), cache_layer_stride, stream_);
    }
    void attention(const void* q, int64_t q_row_stride, const AttentionBatch& batch, const KvLayout& layout,
                   const void* k_cache, const void* v_cache, int64_t n_heads, float scale, void* out) override {
        op_checks::attention(q_row_stride, batch, layout, n_heads);
        if (batch.num_seqs <= 0) return;
        const int64_t rows = batch.num_rows;
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
        op_checks::sample(rows, vocab);
        const size_t need = cuda::sample_workspace_bytes(rows, vocab);
        ensure_workspace(sample_workspace_, sample_workspace_bytes_, need, "sample");
        cuda::sample(logits, rows, vocab, params, tokens, sample_workspace_, stream_);
    }

    // ==== training ops (issue 6: SwiftKV self-distillation) =====================================================
    // TrainingOps (backend/train_ops.h) on the GPU. Kernels live in
    // cuda_train_*.cu; the linear layers' backward passes are cuBLASLt GEMMs (bf16 operands, f32
    // accumulation) planned by lt_gemm below. Everything here is stream-ordered; only grad_sq_norm
    // synchronises (it returns a host value). Workspaces grow on demand (outside graph capture).
    void rmsnorm_backward(const float* x, const float* weight, const void* dy, float* dx, float* dweight, int64_t rows,
                          int64_t dim, float eps, bool accumulate_dx) override {
        op_checks::rows_dim("rmsnorm_backward", rows, dim);
        if (rows == 0) return;
        const size_t need = cuda::rmsnorm_backward_workspace_bytes(rows, dim, dweight != nullptr);
        if (need > 0) ensure_workspace(train_.workspace, train_.workspace_bytes, need, "rmsnorm_backward");
        cuda::rmsnorm_backward(x, weight, static_cast<const cuda::bf16*>(dy), dx, dweight, rows, dim, eps, accumulate_dx,
                               train_.workspace, stream_);
    }

    void rope_backward(void* dx, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                       const int32_t* positions, const float* inv_freq) override {
        if (rows <= 0 || n_heads <= 0) return;
        op_checks::rope("rope_backward", row_stride, n_heads, head_dim);
        cuda::rope_backward(static_cast<cuda::bf16*>(dx), rows, row_stride, n_heads, head_dim, positions, inv_freq,
                            stream_);
    }

    void attention_forward_train(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                 int64_t kv_row_stride, const PackedSequences& seqs, int64_t n_heads,
                                 int64_t n_kv_heads, int64_t head_dim, float scale, void* out, float* lse) override {
        check_train_attention(q_row_stride, kv_row_stride, seqs, n_heads, n_kv_heads, head_dim, "attention_forward_train");
        if (seqs.num_rows == 0 || seqs.num_seqs == 0) return;
        cuda::TrainAttention t = train_attention(q, q_row_stride, k, v, kv_row_stride, seqs, n_heads, n_kv_heads,
                                                 head_dim, scale);
        t.out = static_cast<cuda::bf16*>(out);
        t.lse = lse;
        cuda::attention_forward_train(t, stream_);
    }

    void attention_backward(const void* q, int64_t q_row_stride, const void* k, const void* v, int64_t kv_row_stride,
                            const void* out, const float* lse, const void* dout, const PackedSequences& seqs,
                            int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale, void* dq, void* dk,
                            void* dv, bool accumulate) override {
        check_train_attention(q_row_stride, kv_row_stride, seqs, n_heads, n_kv_heads, head_dim, "attention_backward");
        if (seqs.num_rows == 0 || seqs.num_seqs == 0) return;
        cuda::TrainAttention t = train_attention(q, q_row_stride, k, v, kv_row_stride, seqs, n_heads, n_kv_heads,
                                                 head_dim, scale);
        t.out = static_cast<cuda::bf16*>(const_cast<void*>(out));
        t.lse = const_cast<float*>(lse);
        t.dout = static_cast<const cuda::bf16*>(dout);
        t.dq = static_cast<cuda::bf16*>(dq);
        t.dk = static_cast<cuda::bf16*>(dk);
        t.dv = static_cast<cuda::bf16*>(dv);
        t.accumulate = accumulate;
        const size_t need = cuda::attention_backward_train_workspace_bytes(t);
        if (need > 0) ensure_workspace(train_.workspace, train_.workspace_bytes, need, "attention_backward");
        cuda::attention_backward_train(t, train_.workspace, stream_);
    }

    void silu_mul_backward(const void* gate_up, const void* dy, void* d_gate_up, int64_t rows, int64_t ffn) override {
        op_checks::rows_dim("silu_mul_backward", rows, ffn, /*dim_may_be_zero=*/true);
        cuda::silu_mul_backward(static_cast<const cuda::bf16*>(gate_up), static_cast<const cuda::bf16*>(dy),
                                static_cast<cuda::bf16*>(d_gate_up), rows, ffn, stream_);
    }

    // dx[rows, in] = dy[rows, out] W[out, in] (+ dx): in cuBLASLt's column-major terms dx^T (in x rows) =
    // W^T (in x out, i.e. W row-major seen column-major, ld in) * dy^T (out x rows, ld out). With
    // accumulate the bf16 dx is read as C (beta = 1): the sum is formed in f32 and rounded to bf16 once.
    void linear_backward_input(const void* dy, int64_t rows, const WeightMatrix& w, void* dx, bool accumulate) override {
        check_weight(w, "linear_backward_input");
        op_checks::linear_backward_input(rows, w);
        if (rows == 0 || w.cols == 0) return;
        if (w.rows == 0) {
            if (!accumulate) fill_zero(dx, size_t(rows * w.cols) * 2);
            return;
        }
        lt_gemm(false, false, w.cols, rows, w.rows, w.data, CUDA_R_16BF, w.cols, dy, CUDA_R_16BF, w.rows, dx, CUDA_R_16BF,
                w.cols, accumulate ? 1.0f : 0.0f, "linear_backward_input");
    }

    // dw[out, in] += dy[rows, out]^T x[rows, in]: dw^T (in x out, ld in) = x^T (in x rows, ld in) * dy (rows x
    // out: dy^T stored column-major as out x rows, transposed), f32 output with beta = 1.
    void linear_backward_weight(const void* dy, const void* x, int64_t rows, int64_t out_features, int64_t in_features,
                                float* dw) override {
        op_checks::linear_backward_weight(rows, out_features, in_features);
        if (rows == 0 || out_features == 0 || in_features == 0) return;
        lt_gemm(false, true, in_features, out_features, rows, x, CUDA_R_16BF, in_features, dy, CUDA_R_16BF, out_features,
                dw, CUDA_R_32F, in_features, 1.0f, "linear_backward_weight");
    }

    void kl_div_loss(const float* teacher_logits, const float* student_logits, const float* row_weights, int64_t rows,
                     int64_t vocab, float temperature, float* row_loss, float* d_student_logits) override {
        op_checks::kl_div_loss(rows, vocab, temperature);
        if (rows == 0 || (!row_loss && !d_student_logits)) return;
        cuda::kl_div_loss(teacher_logits, student_logits, row_weights, rows, vocab, temperature, row_loss,
                          d_student_logits, stream_);
    }

    void mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim, float* row_loss,
                  float* grad_a) override {
        op_checks::rows_dim("mse_loss", rows, dim);
        cuda::mse_loss(a, b, row_weights, rows, dim, row_loss, grad_a, stream_);
    }

    void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& params,
                    int64_t step) override {
        op_checks::adamw_step(n, step);
        const double b1 = params.beta1, b2 = params.beta2, lr = params.lr;
        const double step_size = lr / (1.0 - std::pow(b1, double(step)));
        const double inv_sqrt_bc2 = 1.0 / std::sqrt(1.0 - std::pow(b2, double(step)));
        const double decay = 1.0 - lr * double(params.weight_decay);
        cuda::adamw_step(param, grad, m, v, n, b1, b2, double(params.eps), step_size, inv_sqrt_bc2, decay, stream_);
    }

    double grad_sq_norm(const float* x, int64_t n) override {
        op_checks::count("grad_sq_norm", n);
        // [result (256 bytes reserved)][per-block partials]
        const size_t need = 256 + cuda::sq_norm_workspace_bytes(n);
        ensure_workspace(train_.workspace, train_.workspace_bytes, need, "grad_sq_norm");
        double* result = static_cast<double*>(train_.workspace);
        cuda::sq_norm(x, n, result, static_cast<char*>(train_.workspace) + 256, stream_);
        double host = 0.0;
        download(&host, result, sizeof(double));
        return host;
    }

    void scale(float* x, int64_t n, float s) override {
        op_checks::count("scale", n);
        cuda::scale_f32(x, n, s, stream_);
    }

    void convert_from_f32(const float* src, void* dst, int64_t n, DType dtype) override {
        op_checks::convert_from_f32(n, dtype);
        if (n == 0) return;
        if (dtype == DType::F32) {
            if (static_cast<const void*>(src) != dst) copy(dst, src, size_t(n) * 4);
            return;
        }
        cuda::f32_to_bf16(src, static_cast<cuda::bf16*>(dst), n, stream_);
    }

    void add_f32(float* y, const float* x, int64_t n, float alpha) override {
        op_checks::count("add_f32", n);
        cuda::add_f32(y, x, n, alpha, stream_);
    }

private:
    // Training-op state, freed by its own destructor (after ~CudaBackend's body has synchronised).
    struct LtPlan {
        cublasLtMatmulDesc_t op = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
        cublasLtMatmulAlgo_t algo{};
    };
    struct TrainState {
        void* workspace = nullptr;
        size_t workspace_bytes = 0;
        std::map<std::vector<int64_t>, LtPlan> plans;
        TrainState() = default;
        TrainState(const TrainState&) = delete;
        TrainState& operator=(const TrainState&) = delete;
        ~TrainState() {
            if (workspace) cudaFree(workspace);
            for (auto& [key, p] : plans) {
                cublasLtMatrixLayoutDestroy(p.a);
                cublasLtMatrixLayoutDestroy(p.b);
                cublasLtMatrixLayoutDestroy(p.c);
                cublasLtMatmulDescDestroy(p.op);
            }
        }
    };
    TrainState train_;

    // Largest power of two (<= 256) dividing the address: what cuBLASLt may assume about a pointer.
    static uint32_t pointer_alignment(const void* p) {
        const uintptr_t v = reinterpret_cast<uintptr_t>(p);
        uint32_t a = 256;
        while (a > 1 && v % a != 0) a >>= 1;
        return a;
    }

    // Column-major C[m, n] = op(A) op(B) + beta C with f32 compute and scale: A stored (ta ? k x m : m x k)
    // with leading dimension lda, B stored (tb ? n x k : k x n) with ldb, C m x n with ldc. Plans (layouts and
    // the heuristic's first algorithm, for the pointers' actual alignments) are cached per shape.
    void lt_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, cudaDataType_t at, int64_t lda,
                 const void* B, cudaDataType_t bt, int64_t ldb, void* C, cudaDataType_t ct, int64_t ldc, float beta,
                 const char* what) {
        const uint32_t al_a = pointer_alignment(A), al_b = pointer_alignment(B), al_c = pointer_alignment(C);
        const std::vector<int64_t> key = {int64_t(ta), int64_t(tb), m, n, k, lda, ldb, ldc, int64_t(at), int64_t(bt),
                                          int64_t(ct), int64_t(al_a), int64_t(al_b), int64_t(al_c), int64_t(beta != 0.0f)};
        auto it = train_.plans.find(key);
        if (it == train_.plans.end()) {
            LtPlan p;
            cublas_check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
            const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
            cublas_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)), "TRANSA");
            cublas_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)), "TRANSB");
            cublas_check(cublasLtMatrixLayoutCreate(&p.a, at, uint64_t(ta ? k : m), uint64_t(ta ? m : k), lda), "layout A");
            cublas_check(cublasLtMatrixLayoutCreate(&p.b, bt, uint64_t(tb ? n : k), uint64_t(tb ? k : n), ldb), "layout B");
            cublas_check(cublasLtMatrixLayoutCreate(&p.c, ct, uint64_t(m), uint64_t(n), ldc), "layout C");
            cublasLtMatmulPreference_t pref = nullptr;
            cublas_check(cublasLtMatmulPreferenceCreate(&pref), "preference");
            const size_t ws = kCublasWorkspaceBytes;
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
            constexpr int kCandidates = 8;
            cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
            int found = 0;
            const cublasStatus_t st =
                cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, kCandidates, results, &found);
            cublasLtMatmulPreferenceDestroy(pref);
            if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
                cublasLtMatrixLayoutDestroy(p.a);
                cublasLtMatrixLayoutDestroy(p.b);
                cublasLtMatrixLayoutDestroy(p.c);
                cublasLtMatmulDescDestroy(p.op);
                SKV_THROW("{}: cuBLASLt has no algorithm for {}x{}x{} (status {}, alignments {}/{}/{} bytes)", what, m, n,
                          k, int(st), al_a, al_b, al_c);
            }
            p.algo = results[0].algo;
            // Large products: time the candidates once (like matmul's plans) and keep the fastest. The timing
            // runs write a scratch C (dW accumulates into C, so the real one must not be touched); without
            // the memory for it, or while a graph is recorded, the heuristic's first choice stays.
            if (tune_gemms_ && !capturing_ && found > 1 && double(m) * double(n) * double(k) >= kTuneMinFlops) {
                const size_t c_bytes = size_t(m) * size_t(n) * (ct == CUDA_R_32F ? 4 : 2);
                void* scratch = nullptr;
                if (cudaMalloc(&scratch, c_bytes) == cudaSuccess) {
                    p.algo = results[fastest_lt_algo(p, results, found, A, B, scratch, beta)].algo;
                    cuda_check(cudaStreamSynchronize(stream_), "GEMM tuning");
                    cudaFree(scratch);
                } else {
                    cudaGetLastError();
                }
            }
            it = train_.plans.emplace(key, p).first;
        }
        const LtPlan& p = it->second;
        const float alpha = 1.0f;
        cublas_check(cublasLtMatmul(lt_, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.c, C, p.c, &p.algo, cublas_workspace_,
                                    kCublasWorkspaceBytes, stream_),
                     what);
    }

    int fastest_lt_algo(const LtPlan& p, const cublasLtMatmulHeuristicResult_t* results, int found, const void* A,
                        const void* B, void* C, float beta) {
        cudaEvent_t start = nullptr, stop = nullptr;
        cuda_check(cudaEventCreate(&start), "cudaEventCreate");
        cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
        const float alpha = 1.0f;
        int best = 0;
        float best_ms = 0.0f;
        bool have = false;
        for (int i = 0; i < found; ++i) {
            if (results[i].workspaceSize > kCublasWorkspaceBytes) continue;
            float total = 0.0f;
            bool ok = true;
            for (int rep = 0; rep < 4 && ok; ++rep) {
                cudaEventRecord(start, stream_);
                ok = cublasLtMatmul(lt_, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.c, C, p.c, &results[i].algo,
                                    cublas_workspace_, kCublasWorkspaceBytes, stream_) == CUBLAS_STATUS_SUCCESS;
                cudaEventRecord(stop, stream_);
                cudaEventSynchronize(stop);
                float ms = 0.0f;
                cudaEventElapsedTime(&ms, start, stop);
                if (rep > 0) total += ms;  // the first run warms up
            }
            if (ok && (!have || total < best_ms)) {
                best = i;
                best_ms = total;
                have = true;
            }
        }
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        cudaGetLastError();
        return best;
    }

    void check_train_attention(int64_t q_row_stride, int64_t kv_row_stride, const PackedSequences& seqs,
                               int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, const char* op) const {
        op_checks::packed_attention(op, q_row_stride, kv_row_stride, seqs, n_heads, n_kv_heads, head_dim);
        // The kernels' grid limits.
        SKV_CHECK(seqs.num_rows <= INT32_MAX && n_heads <= 65535, "{}: batch too large ({} rows, {} heads)", op,
                  seqs.num_rows, n_heads);
    }

    static cuda::TrainAttention train_attention(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                                int64_t kv_row_stride, const PackedSequences& seqs, int64_t n_heads,
                                                int64_t n_kv_heads, int64_t head_dim, float scale) {
        cuda::TrainAttention t;
        t.q = static_cast<const cuda::bf16*>(q);
        t.q_stride = q_row_stride;
        t.k = static_cast<const cuda::bf16*>(k);
        t.v = static_cast<const cuda::bf16*>(v);
        t.kv_stride = kv_row_stride;
        t.cu_seqlens = seqs.cu_seqlens;
        t.num_seqs = seqs.num_seqs;
        t.rows = seqs.num_rows;
        t.max_seq_len = seqs.max_seq_len;
        t.n_heads = n_heads;
        t.n_kv_heads = n_kv_heads;
        t.head_dim = head_dim;
        t.scale = scale;
        return t;
    }

public:
    // ==== end of training ops ===================================================================================

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
        op_checks::weight_shape(op, w);
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
