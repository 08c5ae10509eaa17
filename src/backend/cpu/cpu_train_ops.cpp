// The CPU backend's training ops (issue 6, SwiftKV self-distillation): backward passes of rmsnorm, rope,
// attention, silu_mul and the linear layers, the distillation losses (KL, MSE) and the AdamW step. The
// contracts are documented in backend/train_ops.h. Everything is f32 in memory.
//
// These kernels favour clarity over speed: training on the CPU is for tests and small runs, the real
// runs go to the GPU. Still, nothing is quadratic where it need not be, matrix products go to OpenBLAS
// (like cpu_matmul.cpp: single-threaded OpenBLAS inside our pool's workers), and row-wise work is split
// over the global thread pool. Reductions that decide accuracy (norms, softmax sums, losses, the
// optimizer's arithmetic) run in double.
//
// Attention keeps no score matrix: the forward saves the per-(row, head) log-sum-exp, and the backward
// recomputes each probability as exp(score - lse), the flash-attention recipe, one (sequence, KV head)
// at a time, so that the dK/dV of a KV head and the dQ of its query heads belong to one worker.
#include "backend/cpu/cpu_train_ops.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/op_checks.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace swiftkv::cpu {

namespace {

// Below this much work (elements, or multiply-adds for products) a call runs on the calling thread.
constexpr int64_t kParallelElements = 1 << 15;
constexpr int64_t kParallelMacs = 1 << 16;

ThreadPool& pool() { return ThreadPool::global(); }

// f(begin, end, thread) over chunks of rows [0, rows); thread < pool().size() indexes per-thread scratch.
template <class F>
void for_rows(int64_t rows, int64_t work_per_row, F&& f) {
    ThreadPool& p = pool();
    if (rows <= 1 || rows * work_per_row < kParallelElements || p.size() == 1) {
        f(int64_t(0), rows, 0);
        return;
    }
    p.parallel_for(rows, [&](int64_t begin, int64_t end, int thread) { f(begin, end, thread); });
}

// f(unit, thread) for every unit in [0, units), handed out one at a time: for units of uneven cost
// (packed sequences of different lengths).
template <class F>
void for_units(int64_t units, F&& f) {
    ThreadPool& p = pool();
    const int64_t threads = std::min<int64_t>(p.size(), units);
    if (threads <= 1) {
        for (int64_t u = 0; u < units; ++u) f(u, 0);
        return;
    }
    std::atomic<int64_t> next{0};
    p.parallel_for(threads, [&](int64_t, int64_t, int thread) {
        for (int64_t u = next.fetch_add(1); u < units; u = next.fetch_add(1)) f(u, thread);
    });
}

// Dot product with 8 independent partial sums (the compiler vectorises it).
inline float dot(const float* a, const float* b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
    float tail = 0.0f;
    for (; i < n; ++i) tail += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// y += a * x.
inline void axpy(float a, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Writes or adds a row of n values.
inline void store_row(const float* src, float* dst, int64_t n, bool accumulate) {
    if (accumulate)
        for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
    else
        std::memcpy(dst, src, size_t(n) * sizeof(float));
}

// ---- matrix products ---------------------------------------------------------------------------------

// C[m, n] (row stride ldc) = A B + beta C, where A is [m, k] (row stride lda) or, with trans_a, stored
// transposed as [k, m] (row stride lda); B is [k, n] (row stride ldb).
void gemm(bool trans_a, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float beta, float* c, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, CblasNoTrans, blasint(m), blasint(n), blasint(k),
                1.0f, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

// gemm split over the pool along the larger of C's two dimensions, in multiples of 16. When OpenBLAS
// runs its own threads (BlasThreading::kOpenBlas) the product is left to it in one call.
void parallel_gemm(bool trans_a, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float beta, float* c, int64_t ldc) {
    ThreadPool& p = pool();
    if (m * n * k < kParallelMacs || p.size() == 1 || openblas_get_num_threads() > 1) {
        gemm(trans_a, m, n, k, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    const bool split_m = m >= n;
    const int64_t dim = split_m ? m : n;
    const int64_t units = (dim + 15) / 16;
    const int64_t parts = std::min<int64_t>(p.size(), units);
    p.parallel_for(parts, [&](int64_t part, int64_t, int) {
        const int64_t begin = units * part / parts * 16, end = std::min(dim, units * (part + 1) / parts * 16);
        if (begin >= end) return;
        if (split_m)
            gemm(trans_a, end - begin, n, k, trans_a ? a + begin : a + begin * lda, lda, b, ldb, beta,
                 c + begin * ldc, ldc);
        else
            gemm(trans_a, m, end - begin, k, a, lda, b + begin, ldb, beta, c + begin, ldc);
    });
}

// ---- packed sequences ----------------------------------------------------------------------------------

// The packed batch's host values (shapes are checked by op_checks::packed_attention).
void check_packed(const PackedSequences& seqs, const char* op) {
    if (seqs.cu_seqlens == nullptr) return;  // allowed for an empty batch only
    SKV_CHECK(seqs.cu_seqlens[0] == 0, "{}: cu_seqlens[0] is {}, expected 0", op, seqs.cu_seqlens[0]);
    for (int64_t s = 0; s < seqs.num_seqs; ++s)
        SKV_CHECK(seqs.cu_seqlens[s + 1] >= seqs.cu_seqlens[s], "{}: cu_seqlens decreases at sequence {} ({} -> {})",
                  op, s, seqs.cu_seqlens[s], seqs.cu_seqlens[s + 1]);
    SKV_CHECK(seqs.cu_seqlens[seqs.num_seqs] == seqs.num_rows,
              "{}: cu_seqlens ends at {} but the batch has {} rows", op, seqs.cu_seqlens[seqs.num_seqs],
              seqs.num_rows);
}

}  // namespace

// ---- rmsnorm --------------------------------------------------------------------------------------------
//
// y_j = x_j r w_j with r = (mean(x^2) + eps)^-1/2, so with g_j = w_j dy_j:
//   dx_j = r g_j - x_j r^3 (sum_k g_k x_k) / dim,    dweight_j += dy_j x_j r.
void CpuTrainingOps::rmsnorm_backward(const float* x, const float* weight, const void* dy_act, float* dx,
                                          float* dweight, int64_t rows, int64_t dim, float eps, bool accumulate_dx) {
    op_checks::rows_dim("rmsnorm_backward", rows, dim);
    if (rows == 0) return;
    const float* dy = static_cast<const float*>(dy_act);
    const int threads = pool().size();
    std::vector<double> partial(dweight ? size_t(threads) * size_t(dim) : 0, 0.0);
    for_rows(rows, dim, [&](int64_t begin, int64_t end, int thread) {
        double* dw = dweight ? partial.data() + size_t(thread) * size_t(dim) : nullptr;
        for (int64_t r = begin; r < end; ++r) {
            const float* xr = x + r * dim;
            const float* g = dy + r * dim;
            float* o = dx + r * dim;
            double sum_sq = 0.0, gx = 0.0;
            for (int64_t j = 0; j < dim; ++j) {
                sum_sq += double(xr[j]) * double(xr[j]);
                gx += double(weight[j]) * double(g[j]) * double(xr[j]);
            }
            const double inv = 1.0 / std::sqrt(sum_sq / double(dim) + double(eps));
            const double c = inv * inv * inv * gx / double(dim);
            for (int64_t j = 0; j < dim; ++j) {
                const float v = float(inv * double(weight[j]) * double(g[j]) - c * double(xr[j]));
                o[j] = accumulate_dx ? o[j] + v : v;
                if (dw) dw[j] += double(g[j]) * double(xr[j]) * inv;
            }
        }
    });
    if (dweight)
        for (int64_t j = 0; j < dim; ++j) {
            double sum = 0.0;
            for (int t = 0; t < threads; ++t) sum += partial[size_t(t) * size_t(dim) + size_t(j)];
            dweight[j] += float(sum);
        }
}

// ---- rope -------------------------------------------------------------------------------------------------
//
// The forward rotates each pair (x_i, x_{i+half}) by the angle; its transpose rotates by minus the angle.
// cos/sin are computed exactly like the forward's table (angle in f32, cos/sin in double rounded to f32),
// so this is the exact transpose of the forward op.
void CpuTrainingOps::rope_backward(void* dx_act, int64_t rows, int64_t row_stride, int64_t n_heads,
                                       int64_t head_dim, const int32_t* positions, const float* inv_freq) {
    float* x = static_cast<float*>(dx_act);
    if (rows <= 0 || n_heads <= 0) return;
    op_checks::rope("rope_backward", row_stride, n_heads, head_dim);
    int32_t max_position = 0;
    for (int64_t r = 0; r < rows; ++r) {
        SKV_CHECK(positions[r] >= 0, "rope_backward: row {} has negative position {}", r, positions[r]);
        max_position = std::max(max_position, positions[r]);
    }
    const int64_t half = head_dim / 2;
    auto fill_entry = [&](int64_t position, float* entry) {
        for (int64_t i = 0; i < half; ++i) {
            const float angle = float(position) * inv_freq[i];
            entry[i] = float(std::cos(double(angle)));
            entry[half + i] = float(std::sin(double(angle)));
        }
    };
    // Packed training batches hold positions 0..len-1 per sequence: one entry per distinct position is
    // then at most one per row. Otherwise one entry per row.
    const bool by_position = int64_t(max_position) < rows;
    const int64_t entries = by_position ? int64_t(max_position) + 1 : rows;
    std::vector<float> table(size_t(entries * 2 * half));
    for (int64_t e = 0; e < entries; ++e) fill_entry(by_position ? e : positions[e], table.data() + e * 2 * half);
    for_rows(rows, n_heads * head_dim, [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
            const float* cs = table.data() + (by_position ? int64_t(positions[r]) : r) * 2 * half;
            const float* sn = cs + half;
            for (int64_t h = 0; h < n_heads; ++h) {
                float* a = x + r * row_stride + h * head_dim;
                float* b = a + half;
                for (int64_t i = 0; i < half; ++i) {
                    const float ga = a[i], gb = b[i];
                    a[i] = ga * cs[i] + gb * sn[i];
                    b[i] = gb * cs[i] - ga * sn[i];
                }
            }
        }
    });
}

// ---- attention --------------------------------------------------------------------------------------------
//
// Forward, per (sequence, query head) and query row i: s_j = scale q_i . k_j for the causal keys j,
// lse_i = log sum_j exp(s_j), out_i = sum_j exp(s_j - lse_i) v_j.
void CpuTrainingOps::attention_forward_train(const void* q_act, int64_t q_row_stride, const void* k_act,
                                                 const void* v_act, int64_t kv_row_stride,
                                                 const PackedSequences& seqs, int64_t n_heads, int64_t n_kv_heads,
                                                 int64_t head_dim, float scale, void* out_act, float* lse) {
    op_checks::packed_attention("attention_forward_train", q_row_stride, kv_row_stride, seqs, n_heads, n_kv_heads,
                                head_dim);
    check_packed(seqs, "attention_forward_train");
    if (seqs.num_rows == 0) return;
    const float* q = static_cast<const float*>(q_act);
    const float* k = static_cast<const float*>(k_act);
    const float* v = static_cast<const float*>(v_act);
    float* out = static_cast<float*>(out_act);
    const int32_t* cu = seqs.cu_seqlens;
    const int64_t group = n_heads / n_kv_heads, hd = head_dim, out_stride = n_heads * head_dim;
    int64_t max_len = 0;
    for (int64_t s = 0; s < seqs.num_seqs; ++s) max_len = std::max<int64_t>(max_len, cu[s + 1] - cu[s]);
    std::vector<std::vector<float>> scratch(size_t(pool().size()), std::vector<float>(size_t(max_len)));

    for_units(seqs.num_seqs * n_heads, [&](int64_t unit, int thread) {
        const int64_t s = unit / n_heads, h = unit % n_heads, kvh = h / group;
        const int64_t begin = cu[s], end = cu[s + 1];
        float* p = scratch[size_t(thread)].data();
        for (int64_t i = begin; i < end; ++i) {
            const float* qi = q + i * q_row_stride + h * hd;
            float m = -std::numeric_limits<float>::infinity();
            for (int64_t j = begin; j <= i; ++j) {
                p[j - begin] = scale * dot(qi, k + j * kv_row_stride + kvh * hd, hd);
                m = std::max(m, p[j - begin]);
            }
            double sum = 0.0;
            for (int64_t j = begin; j <= i; ++j) {
                p[j - begin] = std::exp(p[j - begin] - m);
                sum += double(p[j - begin]);
            }
            float* o = out + i * out_stride + h * hd;
            std::fill(o, o + hd, 0.0f);
            for (int64_t j = begin; j <= i; ++j) axpy(p[j - begin], v + j * kv_row_stride + kvh * hd, o, hd);
            const float inv_sum = float(1.0 / sum);
            for (int64_t d = 0; d < hd; ++d) o[d] *= inv_sum;
            lse[i * n_heads + h] = float(double(m) + std::log(sum));
        }
    });
}

// Backward, per (sequence, KV head), for each query head h of the group and query row i, with
// p_j = exp(s_j - lse_i) recomputed and D_i = dout_i . out_i (= sum_j p_j dout_i . v_j):
//   ds_j = p_j (dout_i . v_j - D_i),  dq_i = scale sum_j ds_j k_j,
//   dk_j += scale ds_j q_i,           dv_j += p_j dout_i.
void CpuTrainingOps::attention_backward(const void* q_act, int64_t q_row_stride, const void* k_act,
                                            const void* v_act, int64_t kv_row_stride, const void* out_act,
                                            const float* lse, const void* dout_act, const PackedSequences& seqs,
                                            int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale,
                                            void* dq_act, void* dk_act, void* dv_act, bool accumulate) {
    op_checks::packed_attention("attention_backward", q_row_stride, kv_row_stride, seqs, n_heads, n_kv_heads, head_dim);
    check_packed(seqs, "attention_backward");
    if (seqs.num_rows == 0) return;
    const float* q = static_cast<const float*>(q_act);
    const float* k = static_cast<const float*>(k_act);
    const float* v = static_cast<const float*>(v_act);
    const float* out = static_cast<const float*>(out_act);
    const float* dout = static_cast<const float*>(dout_act);
    float* dq = static_cast<float*>(dq_act);
    float* dk = static_cast<float*>(dk_act);
    float* dv = static_cast<float*>(dv_act);
    const int32_t* cu = seqs.cu_seqlens;
    const int64_t group = n_heads / n_kv_heads, hd = head_dim, out_stride = n_heads * head_dim;
    int64_t max_len = 0;
    for (int64_t s = 0; s < seqs.num_seqs; ++s) max_len = std::max<int64_t>(max_len, cu[s + 1] - cu[s]);
    // Per thread: dK and dV of one (sequence, KV head), then one dq row.
    const size_t scratch_floats = size_t(2 * max_len * hd + hd);
    std::vector<std::vector<float>> scratch(size_t(pool().size()), std::vector<float>(scratch_floats));

    for_units(seqs.num_seqs * n_kv_heads, [&](int64_t unit, int thread) {
        const int64_t s = unit / n_kv_heads, kvh = unit % n_kv_heads;
        const int64_t begin = cu[s], end = cu[s + 1], len = end - begin;
        if (len == 0) return;
        float* dk_acc = scratch[size_t(thread)].data();
        float* dv_acc = dk_acc + len * hd;
        float* dq_row = dv_acc + len * hd;
        std::fill(dk_acc, dk_acc + 2 * len * hd, 0.0f);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            for (int64_t i = begin; i < end; ++i) {
                const float* qi = q + i * q_row_stride + h * hd;
                const float* oi = out + i * out_stride + h * hd;
                const float* doi = dout + i * out_stride + h * hd;
                const float li = lse[i * n_heads + h];
                const float di = dot(doi, oi, hd);
                std::fill(dq_row, dq_row + hd, 0.0f);
                for (int64_t j = begin; j <= i; ++j) {
                    const float* kj = k + j * kv_row_stride + kvh * hd;
                    const float* vj = v + j * kv_row_stride + kvh * hd;
                    const float p = std::exp(scale * dot(qi, kj, hd) - li);
                    const float ds = p * (dot(doi, vj, hd) - di);
                    axpy(p, doi, dv_acc + (j - begin) * hd, hd);
                    axpy(scale * ds, qi, dk_acc + (j - begin) * hd, hd);
                    axpy(scale * ds, kj, dq_row, hd);
                }
                store_row(dq_row, dq + i * q_row_stride + h * hd, hd, accumulate);
            }
        }
        for (int64_t j = begin; j < end; ++j) {
            store_row(dk_acc + (j - begin) * hd, dk + j * kv_row_stride + kvh * hd, hd, accumulate);
            store_row(dv_acc + (j - begin) * hd, dv + j * kv_row_stride + kvh * hd, hd, accumulate);
        }
    });
}

// ---- silu_mul -------------------------------------------------------------------------------------------
//
// out_j = silu(g_j) u_j with silu(g) = g sigma(g) and silu'(g) = sigma(g) (1 + g (1 - sigma(g))):
//   du_j = dy_j silu(g_j),   dg_j = dy_j u_j silu'(g_j).
void CpuTrainingOps::silu_mul_backward(const void* gate_up_act, const void* dy_act, void* d_gate_up_act,
                                           int64_t rows, int64_t ffn) {
    op_checks::rows_dim("silu_mul_backward", rows, ffn, /*dim_may_be_zero=*/true);
    const float* gate_up = static_cast<const float*>(gate_up_act);
    const float* dy = static_cast<const float*>(dy_act);
    float* d_gate_up = static_cast<float*>(d_gate_up_act);
    for_rows(rows, 4 * ffn, [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
            const float* g = gate_up + r * 2 * ffn;
            const float* u = g + ffn;
            const float* d = dy + r * ffn;
            float* dg = d_gate_up + r * 2 * ffn;
            float* du = dg + ffn;
            for (int64_t j = 0; j < ffn; ++j) {
                const float gj = g[j], uj = u[j], dj = d[j];
                const float sig = 1.0f / (1.0f + std::exp(-gj));
                du[j] = dj * gj * sig;
                dg[j] = dj * uj * sig * (1.0f + gj * (1.0f - sig));
            }
        }
    });
}

// ---- linear layers --------------------------------------------------------------------------------------

void CpuTrainingOps::linear_backward_input(const void* dy_act, int64_t rows, const WeightMatrix& w, void* dx_act,
                                               bool accumulate) {
    SKV_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16,
              "linear_backward_input: the CPU backend does not support {} weights (use F32 or BF16)",
              dtype_name(w.dtype));
    op_checks::linear_backward_input(rows, w);
    const float* dy = static_cast<const float*>(dy_act);
    float* dx = static_cast<float*>(dx_act);
    const int64_t out_f = w.rows, in_f = w.cols;
    if (rows == 0 || in_f == 0) return;
    if (out_f == 0) {
        if (!accumulate) std::memset(dx, 0, size_t(rows * in_f) * sizeof(float));
        return;
    }
    if (w.dtype == DType::F32) {
        parallel_gemm(false, rows, in_f, out_f, dy, out_f, static_cast<const float*>(w.data), in_f,
                      accumulate ? 1.0f : 0.0f, dx, in_f);
        return;
    }
    // BF16: widen panels of W's rows (about 4 MiB of f32 each) and accumulate dy[:, panel] W[panel, :].
    const int64_t panel_rows = std::min(out_f, std::max<int64_t>(16, (int64_t(1) << 20) / in_f / 16 * 16));
    std::vector<float> panel(size_t(panel_rows * in_f));
    const uint16_t* wdata = static_cast<const uint16_t*>(w.data);
    for (int64_t o0 = 0; o0 < out_f; o0 += panel_rows) {
        const int64_t nr = std::min(panel_rows, out_f - o0);
        for_rows(nr, in_f, [&](int64_t begin, int64_t end, int) {
            const uint16_t* src = wdata + (o0 + begin) * in_f;
            float* dst = panel.data() + begin * in_f;
            for (int64_t i = 0; i < (end - begin) * in_f; ++i) dst[i] = bf16_to_f32(src[i]);
        });
        const float beta = (o0 == 0 && !accumulate) ? 0.0f : 1.0f;
        parallel_gemm(false, rows, in_f, nr, dy + o0, out_f, panel.data(), in_f, beta, dx, in_f);
    }
}

void CpuTrainingOps::linear_backward_weight(const void* dy_act, const void* x_act, int64_t rows,
                                                int64_t out_features, int64_t in_features, float* dw) {
    op_checks::linear_backward_weight(rows, out_features, in_features);
    if (rows == 0 || out_features == 0 || in_features == 0) return;
    parallel_gemm(true, out_features, in_features, rows, static_cast<const float*>(dy_act), out_features,
                  static_cast<const float*>(x_act), in_features, 1.0f, dw, in_features);
}

// ---- losses -------------------------------------------------------------------------------------------------
//
// With z = logits / T, p = softmax(z_t), q = softmax(z_s) and LSE the log-sum-exp:
//   KL(p || q) = sum_j p_j (log p_j - log q_j) = sum_j p_j (z_t,j - z_s,j) - LSE(z_t) + LSE(z_s)
// (the log-softmax form, using sum_j p_j = 1), all in double; each exponential is taken of a value <= 0
// (shifted by the row maximum), so nothing overflows. d(T^2 KL)/d s_j = T (q_j - p_j).
void CpuTrainingOps::kl_div_loss(const float* teacher_logits, const float* student_logits,
                                     const float* row_weights, int64_t rows, int64_t vocab, float temperature,
                                     float* row_loss, float* d_student_logits) {
    op_checks::kl_div_loss(rows, vocab, temperature);
    if (rows == 0) return;
    const double T = double(temperature), inv_t = 1.0 / T;
    std::vector<std::vector<double>> scratch(size_t(pool().size()), std::vector<double>(size_t(2 * vocab)));
    for_rows(rows, 8 * vocab, [&](int64_t begin, int64_t end, int thread) {
        double* et = scratch[size_t(thread)].data();
        double* es = et + vocab;
        for (int64_t r = begin; r < end; ++r) {
            const float* t = teacher_logits + r * vocab;
            const float* s = student_logits + r * vocab;
            const double w = row_weights ? double(row_weights[r]) : 1.0;
            float* grad = d_student_logits ? d_student_logits + r * vocab : nullptr;
            if (!row_loss && w == 0.0) {  // a masked row: nothing to compute
                if (grad) std::fill(grad, grad + vocab, 0.0f);
                continue;
            }
            double max_t = -INFINITY, max_s = -INFINITY;
            for (int64_t j = 0; j < vocab; ++j) {
                max_t = std::max(max_t, double(t[j]) * inv_t);
                max_s = std::max(max_s, double(s[j]) * inv_t);
            }
            double sum_t = 0.0, sum_s = 0.0;
            for (int64_t j = 0; j < vocab; ++j) {
                et[j] = std::exp(double(t[j]) * inv_t - max_t);
                es[j] = std::exp(double(s[j]) * inv_t - max_s);
                sum_t += et[j];
                sum_s += es[j];
            }
            const double inv_sum_t = 1.0 / sum_t, inv_sum_s = 1.0 / sum_s;
            double cross = 0.0;  // sum_j p_j (z_t,j - z_s,j)
            for (int64_t j = 0; j < vocab; ++j) {
                const double p = et[j] * inv_sum_t;
                if (p > 0.0) cross += p * (double(t[j]) - double(s[j])) * inv_t;
                if (grad) grad[j] = float(w * T * (es[j] * inv_sum_s - p));
            }
            if (row_loss) {
                const double lse_t = max_t + std::log(sum_t), lse_s = max_s + std::log(sum_s);
                row_loss[r] = float(T * T * (cross - lse_t + lse_s));
            }
        }
    });
}

void CpuTrainingOps::mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim,
                                  float* row_loss, float* grad_a) {
    op_checks::rows_dim("mse_loss", rows, dim);
    for_rows(rows, dim, [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
            const float* ar = a + r * dim;
            const float* br = b + r * dim;
            const double w = row_weights ? double(row_weights[r]) : 1.0;
            double sum = 0.0;
            for (int64_t j = 0; j < dim; ++j) {
                const double d = double(ar[j]) - double(br[j]);
                sum += d * d;
                if (grad_a) grad_a[r * dim + j] = float(w * 2.0 * d / double(dim));
            }
            if (row_loss) row_loss[r] = float(sum / double(dim));
        }
    });
}

// ---- optimizer ----------------------------------------------------------------------------------------------

void CpuTrainingOps::adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                                    const AdamWParams& params, int64_t step) {
    op_checks::adamw_step(n, step);
    const double b1 = params.beta1, b2 = params.beta2, eps = params.eps, lr = params.lr;
    const double step_size = lr / (1.0 - std::pow(b1, double(step)));
    const double inv_sqrt_bc2 = 1.0 / std::sqrt(1.0 - std::pow(b2, double(step)));
    const double decay = 1.0 - lr * double(params.weight_decay);
    for_rows(n, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) {
            const double g = grad[i];
            const double mi = b1 * double(m[i]) + (1.0 - b1) * g;
            const double vi = b2 * double(v[i]) + (1.0 - b2) * g * g;
            m[i] = float(mi);
            v[i] = float(vi);
            param[i] = float(double(param[i]) * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps));
        }
    });
}

double CpuTrainingOps::grad_sq_norm(const float* x, int64_t n) {
    op_checks::count("grad_sq_norm", n);
    std::vector<double> partial(size_t(pool().size()), 0.0);
    for_rows(n, 1, [&](int64_t begin, int64_t end, int thread) {
        double sum = 0.0;
        for (int64_t i = begin; i < end; ++i) sum += double(x[i]) * double(x[i]);
        partial[size_t(thread)] += sum;
    });
    double total = 0.0;
    for (double p : partial) total += p;
    return total;
}

void CpuTrainingOps::scale(float* x, int64_t n, float s) {
    op_checks::count("scale", n);
    for_rows(n, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) x[i] *= s;
    });
}

// Host memory: the trainer's f32 master weights and gradients into the compute dtype.
void CpuTrainingOps::convert_from_f32(const float* src, void* dst, int64_t n, DType dtype) {
    op_checks::convert_from_f32(n, dtype);
    if (n == 0) return;
    if (dtype == DType::F32) {
        if (static_cast<const void*>(src) != dst) std::memmove(dst, src, size_t(n) * 4);
        return;
    }
    uint16_t* out = static_cast<uint16_t*>(dst);
    for_rows(n, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) out[i] = f32_to_bf16(src[i]);
    });
}

void CpuTrainingOps::add_f32(float* y, const float* x, int64_t n, float alpha) {
    op_checks::count("add_f32", n);
    for_rows(n, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) y[i] += alpha * x[i];
    });
}

}  // namespace swiftkv::cpu
