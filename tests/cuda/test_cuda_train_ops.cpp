// The CUDA backend's training ops: what only the CUDA build can test. The op tests themselves -- every
// training op against double-precision references, on every backend, with the CUDA kernels' shapes
// (Llama-3.1-8B attention heads, tensor-core packings, cuBLASLt products, ffn/norm/vocabulary sizes)
// on device backends -- are the TrainOps suite of tests/backend/test_train_ops.cpp (instantiated on
// all_backend_names(), so its cuda instance runs wherever a device is usable). Here:
//   - AttentionSimtPath: the training attention's SIMT fallback (head_dim 40, which has no tensor-core
//     kernel, and head_dim 64/128 forced onto it through cuda::detail::set_train_attention_simple_for_testing,
//     a hook of the CUDA build), on packed batches of 1-3 sequences (lengths 1, 17, 300, one empty), GQA 1:1
//     and 4:1, written and accumulated, with the f64 check shared with TrainOps (train_attention_check.h:
//     its bf16 tolerances hold a fortiori here, where P and dS stay in f32);
//   - TimingsLlama8BShapes: informational timings, no assertions.
// Every test skips when no CUDA device is usable.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <utility>
#include <vector>

#include "../backend/train_attention_check.h"
#include "backend/train_ops.h"
#include "cuda_test_util.h"

namespace swiftkv::cuda::detail {
void set_train_attention_simple_for_testing(bool simple);  // cuda_train_attention.cu
}  // namespace swiftkv::cuda::detail

namespace swiftkv::test {
namespace {

class CudaTrainOps : public CudaTest {
protected:
    void TearDown() override { cuda::detail::set_train_attention_simple_for_testing(false); }
};

TEST_F(CudaTrainOps, AttentionSimtPath) {
    uint32_t seed = 3000;
    const std::vector<std::vector<int32_t>> packings = {{1}, {17}, {1, 17, 300}, {17, 0, 65}};
    // head_dim 40 has no tensor-core kernel; 64 and 128 are forced onto the SIMT path.
    for (const int64_t hd : {40, 64, 128})
        for (const auto& [nh, nkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}})
            for (const auto& lens : packings) {
                cuda::detail::set_train_attention_simple_for_testing(hd != 40);
                SCOPED_TRACE(hd != 40 ? "SIMT path (forced)" : "SIMT path");
                check_train_attention(gpu(), TrainAttnCase{lens, nh, nkv, hd}, seed++);
            }
    cuda::detail::set_train_attention_simple_for_testing(false);
}

// --- timings (informational, no assertions) ------------------------------------------------------------------
//
// Llama-3.1-8B-shaped training work on 4 packed sequences of 2048 tokens: the attention forward and backward
// (32 query / 8 KV heads of 128, causal) and the linear backward GEMMs of a q projection [4096, 4096] and the
// MLP's down projection [4096, 14336]. Prints achieved TFLOP/s (useful FLOPs: causal attention counts the
// lower triangle only).
TEST_F(CudaTrainOps, TimingsLlama8BShapes) {
    const int64_t seq = 2048, nseq = 4, T = seq * nseq, nh = 32, nkv = 8, hd = 128, H = 4096;
    const int64_t stride = (nh + 2 * nkv) * hd;
    std::vector<int32_t> cu;
    for (int64_t s = 0; s <= nseq; ++s) cu.push_back(int32_t(s * seq));
    DeviceArray<int32_t> cug(gpu(), cu);
    const PackedSequences seqs{nseq, T, cug.get(), seq};
    DeviceArray<uint16_t> qkv(gpu(), size_t(T * stride)), out(gpu(), size_t(T * nh * hd)), dout(gpu(), size_t(T * nh * hd));
    DeviceArray<uint16_t> grad(gpu(), size_t(T * stride));
    DeviceArray<float> lse(gpu(), size_t(T * nh));
    gpu().fill_random(qkv.get(), T * stride, DType::BF16, 1, 1.0f);
    gpu().fill_random(dout.get(), T * nh * hd, DType::BF16, 2, 1.0f);
    const float scale = 1.0f / std::sqrt(float(hd));
    auto time_ms = [&](const std::function<void()>& f) {
        f();  // warm-up (workspaces, plans, tuning)
        gpu().synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        const int reps = 5;
        for (int i = 0; i < reps; ++i) f();
        gpu().synchronize();
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    };
    const double attn_flops = 4.0 * double(nseq) * double(seq) * double(seq + 1) / 2.0 * double(hd) * double(nh);
    const double fwd = time_ms([&] {
        training_ops(gpu()).attention_forward_train(qkv.get(), stride, qkv.get() + nh * hd, qkv.get() + (nh + nkv) * hd, stride, seqs,
                                      nh, nkv, hd, scale, out.get(), lse.get());
    });
    const double bwd = time_ms([&] {
        training_ops(gpu()).attention_backward(qkv.get(), stride, qkv.get() + nh * hd, qkv.get() + (nh + nkv) * hd, stride, out.get(),
                                 lse.get(), dout.get(), seqs, nh, nkv, hd, scale, grad.get(), grad.get() + nh * hd,
                                 grad.get() + (nh + nkv) * hd, true);
    });
    std::printf("attention forward  (8B heads, 4 x 2048): %8.3f ms  %6.1f TFLOP/s\n", fwd, attn_flops / fwd * 1e-9);
    std::printf("attention backward (8B heads, 4 x 2048): %8.3f ms  %6.1f TFLOP/s\n", bwd, 2.5 * attn_flops / bwd * 1e-9);

    // W [out, in]: q_proj [4096, 4096] and down_proj [4096, 14336].
    for (const auto& [w_rows, w_cols] : {std::pair<int64_t, int64_t>{H, H}, {H, 14336}}) {
        DeviceArray<uint16_t> w(gpu(), size_t(w_rows * w_cols)), dy(gpu(), size_t(T * w_rows)), x(gpu(), size_t(T * w_cols));
        DeviceArray<uint16_t> dx(gpu(), size_t(T * w_cols));
        DeviceArray<float> dw(gpu(), size_t(w_rows * w_cols));
        gpu().fill_random(w.get(), w_rows * w_cols, DType::BF16, 3, 0.02f);
        gpu().fill_random(dy.get(), T * w_rows, DType::BF16, 4, 1.0f);
        gpu().fill_random(x.get(), T * w_cols, DType::BF16, 5, 1.0f);
        const double flops = 2.0 * double(T) * double(w_rows) * double(w_cols);
        const double ti = time_ms([&] {
            training_ops(gpu()).linear_backward_input(dy.get(), T, WeightMatrix{DType::BF16, w_rows, w_cols, w.get()}, dx.get(), false);
        });
        const double tw = time_ms([&] { training_ops(gpu()).linear_backward_weight(dy.get(), x.get(), T, w_rows, w_cols, dw.get()); });
        std::printf("linear backward input  W [%lld, %lld], %lld rows: %8.3f ms  %6.1f TFLOP/s\n", (long long)w_rows,
                    (long long)w_cols, (long long)T, ti, flops / ti * 1e-9);
        std::printf("linear backward weight W [%lld, %lld], %lld rows: %8.3f ms  %6.1f TFLOP/s\n", (long long)w_rows,
                    (long long)w_cols, (long long)T, tw, flops / tw * 1e-9);
    }

    const int64_t rows = 1024, vocab = 128256;
    DeviceArray<float> t(gpu(), size_t(rows * vocab)), s(gpu(), size_t(rows * vocab)), g(gpu(), size_t(rows * vocab));
    DeviceArray<float> rl(gpu(), size_t(rows));
    gpu().fill_random(t.get(), rows * vocab, DType::F32, 6, 8.0f);
    gpu().fill_random(s.get(), rows * vocab, DType::F32, 7, 8.0f);
    const double kl = time_ms([&] { training_ops(gpu()).kl_div_loss(t.get(), s.get(), nullptr, rows, vocab, 1.0f, rl.get(), g.get()); });
    std::printf("kl_div_loss %lld x %lld: %8.3f ms  %6.0f GB/s (2 reads of both, 1 write)\n", (long long)rows,
                (long long)vocab, kl, 5.0 * double(rows * vocab) * 4.0 / kl * 1e-6);
}

}  // namespace
}  // namespace swiftkv::test
