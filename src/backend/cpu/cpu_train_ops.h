// The CPU backend's training ops (backend/train_ops.h; kernels in cpu_train_ops.cpp); the CPU backend
// returns them from Backend::training(). All tensors are f32 (the CPU's act_dtype) in host memory;
// kernels parallelise on the global thread pool, the one the CPU backend uses.
#pragma once

#include <cstdint>

#include "backend/train_ops.h"

namespace swiftkv::cpu {

class CpuTrainingOps final : public TrainingOps {
public:
    void rmsnorm_backward(const float* x, const float* weight, const void* dy, float* dx, float* dweight,
                          int64_t rows, int64_t dim, float eps, bool accumulate_dx) override;
    void rope_backward(void* dx, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                       const int32_t* positions, const float* inv_freq) override;
    void attention_forward_train(const void* q, int64_t q_row_stride, const void* k, const void* v,
                                 int64_t kv_row_stride, const PackedSequences& seqs, int64_t n_heads,
                                 int64_t n_kv_heads, int64_t head_dim, float scale, void* out, float* lse) override;
    void attention_backward(const void* q, int64_t q_row_stride, const void* k, const void* v, int64_t kv_row_stride,
                            const void* out, const float* lse, const void* dout, const PackedSequences& seqs,
                            int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float scale, void* dq, void* dk,
                            void* dv, bool accumulate) override;
    void silu_mul_backward(const void* gate_up, const void* dy, void* d_gate_up, int64_t rows, int64_t ffn) override;
    void linear_backward_input(const void* dy, int64_t rows, const WeightMatrix& w, void* dx, bool accumulate) override;
    void linear_backward_weight(const void* dy, const void* x, int64_t rows, int64_t out_features,
                                int64_t in_features, float* dw) override;
    void kl_div_loss(const float* teacher_logits, const float* student_logits, const float* row_weights, int64_t rows,
                     int64_t vocab, float temperature, float* row_loss, float* d_student_logits) override;
    void mse_loss(const float* a, const float* b, const float* row_weights, int64_t rows, int64_t dim,
                  float* row_loss, float* grad_a) override;
    void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& params,
                    int64_t step) override;
    double grad_sq_norm(const float* x, int64_t n) override;
    void scale(float* x, int64_t n, float s) override;
    void convert_from_f32(const float* src, void* dst, int64_t n, DType dtype) override;
    void add_f32(float* y, const float* x, int64_t n, float alpha) override;
};

}  // namespace swiftkv::cpu
