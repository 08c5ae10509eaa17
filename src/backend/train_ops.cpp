// The base-class defaults of the training ops (backend/backend.h, "training ops"): every op throws until
// a backend implements it, so a backend without them stops a training run with a clear message instead
// of a missing symbol. The CPU (cpu/cpu_train_ops.cpp) and CUDA (cuda/cuda_train_*.cu) backends
// implement all of them.
#include "backend/backend.h"
#include "core/error.h"

namespace swiftkv {

namespace {

[[noreturn]] void not_implemented(const Backend& backend, const char* op) {
    SKV_THROW("{} is not implemented on the {} backend (training runs on the cpu and cuda backends)", op,
              backend.name());
}

}  // namespace

void Backend::rmsnorm_backward(const float*, const float*, const void*, float*, float*, int64_t, int64_t, float,
                               bool) {
    not_implemented(*this, "rmsnorm_backward");
}

void Backend::rope_backward(void*, int64_t, int64_t, int64_t, int64_t, const int32_t*, const float*) {
    not_implemented(*this, "rope_backward");
}

void Backend::attention_forward_train(const void*, int64_t, const void*, const void*, int64_t,
                                      const PackedSequences&, int64_t, int64_t, int64_t, float, void*, float*) {
    not_implemented(*this, "attention_forward_train");
}

void Backend::attention_backward(const void*, int64_t, const void*, const void*, int64_t, const void*, const float*,
                                 const void*, const PackedSequences&, int64_t, int64_t, int64_t, float, void*, void*,
                                 void*, bool) {
    not_implemented(*this, "attention_backward");
}

void Backend::silu_mul_backward(const void*, const void*, void*, int64_t, int64_t) {
    not_implemented(*this, "silu_mul_backward");
}

void Backend::linear_backward_input(const void*, int64_t, const WeightMatrix&, void*, bool) {
    not_implemented(*this, "linear_backward_input");
}

void Backend::linear_backward_weight(const void*, const void*, int64_t, int64_t, int64_t, float*) {
    not_implemented(*this, "linear_backward_weight");
}

void Backend::kl_div_loss(const float*, const float*, const float*, int64_t, int64_t, float, float*, float*) {
    not_implemented(*this, "kl_div_loss");
}

void Backend::mse_loss(const float*, const float*, const float*, int64_t, int64_t, float*, float*) {
    not_implemented(*this, "mse_loss");
}

void Backend::adamw_step(float*, const float*, float*, float*, int64_t, const AdamWParams&, int64_t) {
    not_implemented(*this, "adamw_step");
}

double Backend::grad_sq_norm(const float*, int64_t) { not_implemented(*this, "grad_sq_norm"); }

void Backend::scale(float*, int64_t, float) { not_implemented(*this, "scale"); }

}  // namespace swiftkv
