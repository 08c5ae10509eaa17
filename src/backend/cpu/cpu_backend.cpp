// The CPU backend: host memory, argument validation, the RoPE cos/sin table, and dispatch to the kernels
// in cpu_matmul.cpp, cpu_elementwise.cpp and cpu_attention.cpp.
#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

#include "backend/cpu/cpu_simd.h"
#include "backend/cpu/cpu_train_ops.h"
#include "backend/op_checks.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace swiftkv {

namespace {

// Copies below this many bytes are not worth waking the pool for.
constexpr int64_t kParallelCopyBytes = 1 << 20;
// The RoPE table covers positions up to this size (256K positions at head_dim 64); rows beyond it get
// their cos/sin computed per call.
constexpr int64_t kMaxRopeTableBytes = int64_t(64) << 20;

// cos/sin of angle = float(position) * inv_freq[i] for positions [0, positions()), computed once per
// inv_freq: angles in f32 as PyTorch does, cos/sin in double then rounded (PyTorch's f32 cos/sin are
// accurate to ~1 ulp too). Entry layout per position: half cos values, then half sin values.
class RopeTable {
public:
    bool matches(const float* inv_freq, int64_t half) const {
        return int64_t(inv_freq_.size()) == half && std::memcmp(inv_freq_.data(), inv_freq, size_t(half) * 4) == 0;
    }
    void reset(const float* inv_freq, int64_t half) {
        inv_freq_.assign(inv_freq, inv_freq + half);
        table_.clear();
        positions_ = 0;
    }
    const float* ensure(int64_t max_position) {
        if (max_position >= positions_) {
            const int64_t half = int64_t(inv_freq_.size());
            const int64_t n = std::min(cpu::round_up(max_position + 1, 1024), kMaxRopeTableBytes / int64_t(sizeof(float)) / (2 * half));
            table_.resize(size_t(n * 2 * half));
            for (int64_t p = positions_; p < n; ++p) fill_entry(p, inv_freq_.data(), half, table_.data() + p * 2 * half);
            positions_ = n;
        }
        return table_.data();
    }
    static void fill_entry(int64_t position, const float* inv_freq, int64_t half, float* entry) {
        for (int64_t i = 0; i < half; ++i) {
            const float angle = float(position) * inv_freq[i];
            entry[i] = float(std::cos(double(angle)));
            entry[half + i] = float(std::sin(double(angle)));
        }
    }

private:
    std::vector<float> inv_freq_;
    std::vector<float> table_;
    int64_t positions_ = 0;
};

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(const CpuBackendOptions& options)
        : options_(options.matmul), vk_(&cpu::vector_kernels(options.isa ? *options.isa : cpu::default_cpu_isa())) {
        if (options.num_threads > 0) ThreadPool::set_global_threads(options.num_threads);
        pool_ = &ThreadPool::global();
        cpu::setup_openblas(options_.threading, pool_->size());
    }

    std::string name() const override { return "cpu"; }
    // The backward passes, losses and AdamW (cpu_train_ops.cpp).
    TrainingOps* training() override { return &training_; }

    void* alloc(size_t bytes) override {
        SKV_CHECK(bytes <= SIZE_MAX - 64, "CPU backend: cannot allocate {} bytes", bytes);
        const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
        void* p = std::aligned_alloc(64, rounded);
        if (!p)
            SKV_THROW("CPU backend: out of memory allocating {} bytes ({:.1f} MiB); use a smaller KV cache or model",
                      bytes, double(bytes) / (1 << 20));
        return p;
    }
    void free(void* ptr) override { std::free(ptr); }
    void upload(void* dst, const void* host_src, size_t bytes) override { copy(dst, host_src, bytes); }
    void download(void* host_dst, const void* src, size_t bytes) override { copy(host_dst, src, bytes); }
    void copy(void* dst, const void* src, size_t bytes) override {
        if (bytes > 0) std::memcpy(dst, src, bytes);
    }
    void fill_zero(void* dst, size_t bytes) override {
        if (bytes > 0) std::memset(dst, 0, bytes);
    }
    void synchronize() override {}
    bool supports_weight_dtype(DType dtype) const override { return dtype == DType::F32 || dtype == DType::BF16; }
    DType act_dtype() const override { return DType::F32; }

    // MemAvailable and MemTotal from /proc/meminfo; sysconf's free and total pages where it is unreadable.
    void memory_info(size_t* free_bytes, size_t* total_bytes) const override {
        size_t available = 0, total = 0;
        bool have_available = false, have_total = false;
        std::ifstream meminfo("/proc/meminfo");
        std::string key;
        unsigned long long kib = 0;
        std::string unit;
        while (meminfo >> key >> kib) {
            std::getline(meminfo, unit);
            if (key == "MemAvailable:") {
                available = size_t(kib) * 1024;
                have_available = true;
            } else if (key == "MemTotal:") {
                total = size_t(kib) * 1024;
                have_total = true;
            }
        }
        const long page = sysconf(_SC_PAGESIZE);
        if (!have_total) {
            const long pages = sysconf(_SC_PHYS_PAGES);
            total = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
        }
        if (!have_available) {
            const long pages = sysconf(_SC_AVPHYS_PAGES);
            available = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
        }
        if (free_bytes) *free_bytes = std::min(available, total);
        if (total_bytes) *total_bytes = total;
    }

    void fill_random(void* dst, int64_t n, DType dtype, uint64_t seed, float scale) override {
        SKV_CHECK(dtype == DType::F32 || dtype == DType::BF16,
                  "fill_random: the CPU backend fills F32 or BF16, not {}", dtype_name(dtype));
        SKV_CHECK(n >= 0, "fill_random: negative element count {}", n);
        cpu::fill_random(dst, n, dtype, seed, scale, *pool_);
    }

    void embedding(const WeightMatrix& table, const int32_t* tokens, int64_t n, float* out) override {
        check_weight(table, "embedding");
        const int64_t vocab = table.rows, dim = table.cols;
        for (int64_t i = 0; i < n; ++i)
            SKV_CHECK(tokens[i] >= 0 && tokens[i] < vocab,
                      "embedding: token id {} at position {} is outside the vocabulary of {} tokens", tokens[i], i,
                      vocab);
        auto rows = [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                float* dst = out + i * dim;
                if (table.dtype == DType::F32) {
                    std::memcpy(dst, static_cast<const float*>(table.data) + int64_t(tokens[i]) * dim,
                                size_t(dim) * sizeof(float));
                } else {
                    const uint16_t* src = static_cast<const uint16_t*>(table.data) + int64_t(tokens[i]) * dim;
                    for (int64_t j = 0; j < dim; ++j) dst[j] = bf16_to_f32(src[j]);
                }
            }
        };
        parallel_copy(n, dim * 4, rows);
    }

    // Activations are f32 on the CPU, so x is float and out must be F32.
    void matmul(const void* x, int64_t rows, const WeightMatrix& w, void* out, DType out_dtype) override {
        check_weight(w, "matmul");
        SKV_CHECK(out_dtype == DType::F32,
                  "matmul: the CPU backend writes F32 outputs only (its activations are F32), not {}",
                  dtype_name(out_dtype));
        op_checks::matmul(rows, w);
        cpu::matmul(static_cast<const float*>(x), rows, w, static_cast<float*>(out), *pool_, options_, *vk_);
    }

    void rmsnorm(const float* x, const float* weight, void* out, int64_t rows, int64_t dim, float eps) override {
        cpu::rmsnorm(x, weight, static_cast<float*>(out), rows, dim, eps, *pool_, *vk_);
    }

    void add_rmsnorm(float* residual, const void* delta, const float* weight, void* out, int64_t rows, int64_t dim,
                     float eps) override {
        cpu::add_rmsnorm(residual, static_cast<const float*>(delta), weight, static_cast<float*>(out), rows, dim, eps,
                         *pool_, *vk_);
    }

    void rope(void* x_act, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim, const int32_t* positions,
              const float* inv_freq) override {
        float* x = static_cast<float*>(x_act);
        if (rows <= 0 || n_heads <= 0) return;
        op_checks::rope("rope", row_stride, n_heads, head_dim);
        int32_t max_position = 0;
        for (int64_t r = 0; r < rows; ++r) {
            SKV_CHECK(positions[r] >= 0, "rope: row {} has negative position {}", r, positions[r]);
            max_position = std::max(max_position, positions[r]);
        }
        const int64_t half = head_dim / 2;
        if ((int64_t(max_position) + 1) * 2 * half * int64_t(sizeof(float)) > kMaxRopeTableBytes) {
            // Positions too far out to tabulate: compute this call's rows directly (same formula as the table).
            std::vector<float> cos_sin(size_t(rows * 2 * half));
            std::vector<int32_t> row_index(static_cast<size_t>(rows));
            for (int64_t r = 0; r < rows; ++r) {
                RopeTable::fill_entry(positions[r], inv_freq, half, cos_sin.data() + r * 2 * half);
                row_index[size_t(r)] = int32_t(r);
            }
            cpu::rope_apply(x, rows, row_stride, n_heads, head_dim, row_index.data(), cos_sin.data(), *pool_, *vk_);
            return;
        }
        std::lock_guard<std::mutex> lock(rope_mutex_);
        RopeTable* table = nullptr;
        for (auto& t : rope_tables_)
            if (t.matches(inv_freq, half)) table = &t;
        if (!table) {
            // A handful of distinct inv_freq arrays (one per model) is the expected case; recycle beyond that.
            if (rope_tables_.size() >= 4) rope_tables_.erase(rope_tables_.begin());
            rope_tables_.emplace_back();
            table = &rope_tables_.back();
            table->reset(inv_freq, half);
        }
        const float* cos_sin = table->ensure(max_position);
        cpu::rope_apply(x, rows, row_stride, n_heads, head_dim, positions, cos_sin, *pool_, *vk_);
    }

    void silu_mul(const void* gate_up, void* out, int64_t rows, int64_t ffn) override {
        cpu::silu_mul(static_cast<const float*>(gate_up), static_cast<float*>(out), rows, ffn, *pool_, *vk_);
    }

    void kv_write(const void* k, const void* v, int64_t rows, int64_t row_stride, const int32_t* slots,
                  const KvLayout& layout, void* k_cache, void* v_cache) override {
        op_checks::kv_write("kv_write", row_stride, layout);
        cpu::kv_write(static_cast<const float*>(k), static_cast<const float*>(v), rows, row_stride, slots, layout,
                      static_cast<float*>(k_cache), static_cast<float*>(v_cache));
    }

    void kv_write_layers(const void* k, const void* v, int64_t rows, int64_t row_stride, int64_t layer_offset,
                         int64_t layers, const int32_t* slots, const KvLayout& layout, void* k_cache, void* v_cache,
                         int64_t cache_layer_stride) override {
        op_checks::kv_write_layers(row_stride, layout, layers, layer_offset, cache_layer_stride);
        if (layers == 0 || rows <= 0) return;
        // Validate the slots here (cpu::kv_write would throw inside a pool worker otherwise).
        const int64_t capacity = layout.num_blocks * layout.block_size;
        for (int64_t r = 0; r < rows; ++r)
            SKV_CHECK(slots[r] < capacity,
                      "kv_write_layers: row {} targets slot {}, but the cache holds {} slots ({} blocks of {})", r,
                      slots[r], capacity, layout.num_blocks, layout.block_size);
        const float* kf = static_cast<const float*>(k);
        const float* vf = static_cast<const float*>(v);
        float* kc = static_cast<float*>(k_cache);
        float* vc = static_cast<float*>(v_cache);
        auto write = [&](int64_t begin, int64_t end) {
            for (int64_t g = begin; g < end; ++g)
                cpu::kv_write(kf + g * layer_offset, vf + g * layer_offset, rows, row_stride, slots, layout,
                              kc + g * cache_layer_stride, vc + g * cache_layer_stride);
        };
        // Layers write disjoint cache layers: one layer per thread once the copy is large.
        parallel_copy(layers, rows * 2 * layout.n_kv_heads * layout.head_dim * int64_t(sizeof(float)), write);
    }

    void attention(const void* q, int64_t q_row_stride, const AttentionBatch& batch, const KvLayout& layout,
                   const void* k_cache, const void* v_cache, int64_t n_heads, float scale, void* out) override {
        op_checks::attention(q_row_stride, batch, layout, n_heads);
        cpu::attention(static_cast<const float*>(q), q_row_stride, batch, layout, static_cast<const float*>(k_cache),
                       static_cast<const float*>(v_cache), n_heads, scale, static_cast<float*>(out), *pool_);
    }

    void gather_rows(const void* x, const int32_t* indices, int64_t n, int64_t row_bytes, void* out) override {
        SKV_CHECK(row_bytes >= 0, "gather_rows: negative row size {} bytes", row_bytes);
        for (int64_t i = 0; i < n; ++i)
            SKV_CHECK(indices[i] >= 0, "gather_rows: index {} at position {} is negative", indices[i], i);
        const char* src = static_cast<const char*>(x);
        char* dst = static_cast<char*>(out);
        parallel_copy(n, row_bytes, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i)
                std::memcpy(dst + i * row_bytes, src + int64_t(indices[i]) * row_bytes, size_t(row_bytes));
        });
    }

    // The reference sampler; the rules are documented at cpu::sample (cpu_elementwise.cpp).
    void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams* params,
                int32_t* tokens) override {
        op_checks::sample(rows, vocab);
        if (rows == 0) return;
        cpu::sample(logits, rows, vocab, params, tokens, *pool_);
    }

private:
    void check_weight(const WeightMatrix& w, const char* op) const {
        SKV_CHECK(supports_weight_dtype(w.dtype), "{}: the CPU backend does not support {} weights (use F32 or BF16)",
                  op, dtype_name(w.dtype));
        op_checks::weight_shape(op, w);
    }

    template <class F>
    void parallel_copy(int64_t n, int64_t bytes_per_row, F&& rows) {
        if (n * bytes_per_row < kParallelCopyBytes || pool_->size() == 1) {
            rows(0, n);
            return;
        }
        pool_->parallel_for(n, [&](int64_t begin, int64_t end, int) { rows(begin, end); });
    }

    cpu::MatmulOptions options_;
    const cpu::VectorKernels* vk_;  // the SIMD kernels of the chosen instruction set
    cpu::CpuTrainingOps training_;
    ThreadPool* pool_ = nullptr;
    std::mutex rope_mutex_;
    std::vector<RopeTable> rope_tables_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options) {
    return std::make_unique<CpuBackend>(options);
}

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
    CpuBackendOptions options;
    options.num_threads = num_threads;
    return make_cpu_backend(options);
}

const char* cpu_backend_blas_core() { return cpu::openblas_core_name(); }

}  // namespace swiftkv
