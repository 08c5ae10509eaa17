// The CUDA backend's training ops (backend/backend.h "training ops", issue 6) and distillation support ops
// against the CPU backend's, on the same random inputs over a grid of shapes. Activation inputs are rounded
// to bf16 first, so both backends see identical values (bf16 on CUDA, f32 on the CPU); f32 inputs are
// shared as they are. Tolerances (relative Frobenius error ||cuda - cpu|| / ||cpu||):
//   - bf16 outputs (rope/silu_mul backward, dX of the linear layers, attention out and dq/dk/dv): 1e-2,
//     2e-2 for the attention gradients (P and dS enter the tensor-core products in bf16, as in
//     FlashAttention-2);
//   - f32 outputs from bf16 inputs: rmsnorm dx / dweight 1e-5; the weight gradient (a GEMM with f32
//     accumulation over up to 2048 rows, in a different order than OpenBLAS) 1e-4; attention lse 1e-5;
//   - losses: MSE 1e-5; KL per-row losses 1e-4 (a difference of O(10) log-sum-exps accumulated in f32
//     against the CPU's f64) and gradients 1e-5; AdamW 1e-6 (f64 arithmetic on both sides); grad_sq_norm
//     1e-12 (f64 sums of exact f32 squares, different order); scale / add_f32 / convert exact or 1 ulp.
// Attention runs on packed batches of 1-3 sequences (lengths 1, 17, 64, 300, one empty), GQA 1:1 and
// 4:1, head_dim 64 and 128 (tensor-core path) plus 40 and a forced SIMT run (the fallback path), on a fused
// QKV buffer with row padding, both with and without accumulation into the gradients. Every test skips
// when no CUDA device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "backend/sampling_noise.h"
#include "backend/train_ops.h"
#include "core/error.h"
#include "cuda_test_util.h"

namespace swiftkv::cuda::detail {
void set_train_attention_simple_for_testing(bool simple);  // cuda_train_attention.cu
}  // namespace swiftkv::cuda::detail

namespace swiftkv::test {
namespace {

// --- helpers -------------------------------------------------------------------------------------------

constexpr double kAttnGradTol = 2e-2;
constexpr double kF32Tol = 1e-5;

class CudaTrainOps : public CudaVsCpuTest {
protected:
    void TearDown() override { cuda::detail::set_train_attention_simple_for_testing(false); }
};

// An f32 tensor on both backends.
struct F32 {
    F32(Backend& gpu, Backend& cpu, const std::vector<float>& values) : host(values), g(gpu, values), c(cpu, values) {}
    std::vector<float> host;
    DeviceArray<float> g;
    DeviceArray<float> c;
};

// --- rmsnorm / rope / silu_mul ----------------------------------------------------------------------------

TEST_F(CudaTrainOps, RmsnormBackward) {
    uint64_t seed = 1;
    for (int64_t dim : {64, 576, 4096, 5, 577, 14000}) {
        for (int64_t rows : {1, 17, 300}) {
            for (int variant = 0; variant < 3; ++variant) {
                const bool accumulate = variant >= 1, with_dw = variant != 1;
                F32 x(gpu(), cpu(), fast_floats(size_t(rows * dim), seed++, -3.0f, 3.0f));
                F32 w(gpu(), cpu(), fast_floats(size_t(dim), seed++, 0.5f, 1.5f));
                Act dy(gpu(), cpu(), fast_floats(size_t(rows * dim), seed++));
                F32 dx(gpu(), cpu(), fast_floats(size_t(rows * dim), seed++));
                F32 dw(gpu(), cpu(), fast_floats(size_t(dim), seed++));
                training_ops(gpu()).rmsnorm_backward(x.g.get(), w.g.get(), dy.g.get(), dx.g.get(), with_dw ? dw.g.get() : nullptr, rows,
                                       dim, 1e-5f, accumulate);
                training_ops(cpu()).rmsnorm_backward(x.c.get(), w.c.get(), dy.c.get(), dx.c.get(), with_dw ? dw.c.get() : nullptr, rows,
                                       dim, 1e-5f, accumulate);
                const std::string what = shape_name(rows, dim) + (accumulate ? ", accumulate" : "") +
                                         (with_dw ? ", dweight" : "");
                EXPECT_LE(rel_error(dx.g.to_host(), dx.c.to_host()), kF32Tol) << "dx, " << what;
                const auto dwg = dw.g.to_host();
                EXPECT_LE(rel_error(dwg, dw.c.to_host()), kF32Tol) << "dweight, " << what;
                if (!with_dw) {
                    EXPECT_EQ(dwg, dw.host) << "dweight touched without being passed, " << what;
                }
            }
        }
    }
}

TEST_F(CudaTrainOps, RopeBackward) {
    struct RopeCase { int64_t n_heads, n_kv_heads, head_dim; };
    uint64_t seed = 100;
    for (const RopeCase rc : {RopeCase{32, 8, 128}, RopeCase{9, 3, 64}, RopeCase{4, 2, 6}, RopeCase{2, 1, 20}}) {
        for (int64_t rows : {1, 17, 300}) {
            const int64_t hd = rc.head_dim, half = hd / 2;
            const int64_t stride = (rc.n_heads + 2 * rc.n_kv_heads) * hd;
            Act qkv(gpu(), cpu(), fast_floats(size_t(rows * stride), seed++, -2.0f, 2.0f));
            std::vector<int32_t> pos(static_cast<size_t>(rows));
            for (int64_t r = 0; r < rows; ++r) pos[size_t(r)] = int32_t(r % 97 + (r / 97) * 1000);
            std::vector<float> inv_freq(static_cast<size_t>(half));
            for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = float(std::pow(500000.0, -2.0 * double(i) / double(hd)));
            DeviceArray<int32_t> pg(gpu(), pos), pc(cpu(), pos);
            DeviceArray<float> fg(gpu(), inv_freq), fc(cpu(), inv_freq);
            // Q heads at the start of the row, then K heads (an offset pointer); V must stay untouched.
            training_ops(gpu()).rope_backward(qkv.g.get(), rows, stride, rc.n_heads, hd, pg.get(), fg.get());
            training_ops(gpu()).rope_backward(qkv.g.get() + rc.n_heads * hd, rows, stride, rc.n_kv_heads, hd, pg.get(), fg.get());
            training_ops(cpu()).rope_backward(qkv.c.get(), rows, stride, rc.n_heads, hd, pc.get(), fc.get());
            training_ops(cpu()).rope_backward(qkv.c.get() + rc.n_heads * hd, rows, stride, rc.n_kv_heads, hd, pc.get(), fc.get());
            const auto got = qkv.gpu_values(), ref = qkv.cpu_values();
            const std::string what = "heads " + std::to_string(rc.n_heads) + "/" + std::to_string(rc.n_kv_heads) +
                                     ", head_dim " + std::to_string(hd) + ", rows " + std::to_string(rows);
            EXPECT_LE(rel_error(got, ref), kBf16Tol) << what;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = (rc.n_heads + rc.n_kv_heads) * hd; j < stride; ++j)
                    ASSERT_EQ(got[size_t(r * stride + j)], qkv.host[size_t(r * stride + j)]) << "V modified, " << what;
        }
    }
}

TEST_F(CudaTrainOps, SiluMulBackward) {
    uint64_t seed = 200;
    for (int64_t ffn : {64, 576, 14336, 13}) {
        for (int64_t rows : {1, 17, 300}) {
            Act gate_up(gpu(), cpu(), fast_floats(size_t(rows * 2 * ffn), seed++, -6.0f, 6.0f));
            Act dy(gpu(), cpu(), fast_floats(size_t(rows * ffn), seed++));
            Act out(gpu(), cpu(), std::vector<float>(size_t(rows * 2 * ffn), 0.0f));
            training_ops(gpu()).silu_mul_backward(gate_up.g.get(), dy.g.get(), out.g.get(), rows, ffn);
            training_ops(cpu()).silu_mul_backward(gate_up.c.get(), dy.c.get(), out.c.get(), rows, ffn);
            EXPECT_LE(rel_error(out.gpu_values(), out.cpu_values()), kBf16Tol) << shape_name(rows, ffn);
        }
    }
}

// --- linear layers ------------------------------------------------------------------------------------------

struct LinearShape {
    int64_t rows, out, in;
};
const LinearShape kLinearShapes[] = {{1, 64, 64},      {17, 576, 200},    {300, 4096, 576}, {5, 33, 200},
                                     {300, 1024, 4096}, {2048, 1024, 512}, {17, 128256, 576}};

TEST_F(CudaTrainOps, LinearBackwardInput) {
    uint64_t seed = 300;
    for (const LinearShape s : kLinearShapes) {
        for (const bool accumulate : {false, true}) {
            Act dy(gpu(), cpu(), fast_floats(size_t(s.rows * s.out), seed++));
            const auto w = to_bf16(fast_floats(size_t(s.out * s.in), seed++));
            DeviceArray<uint16_t> wg(gpu(), w), wc(cpu(), w);
            Act dx(gpu(), cpu(), fast_floats(size_t(s.rows * s.in), seed++, -4.0f, 4.0f));
            training_ops(gpu()).linear_backward_input(dy.g.get(), s.rows, WeightMatrix{DType::BF16, s.out, s.in, wg.get()}, dx.g.get(),
                                        accumulate);
            training_ops(cpu()).linear_backward_input(dy.c.get(), s.rows, WeightMatrix{DType::BF16, s.out, s.in, wc.get()}, dx.c.get(),
                                        accumulate);
            EXPECT_LE(rel_error(dx.gpu_values(), dx.cpu_values()), kBf16Tol)
                << s.rows << " rows, W [" << s.out << ", " << s.in << "]" << (accumulate ? ", accumulate" : "");
        }
    }
}

TEST_F(CudaTrainOps, LinearBackwardWeight) {
    uint64_t seed = 400;
    for (const LinearShape s : kLinearShapes) {
        if (s.out * s.in > (int64_t(1) << 26)) continue;  // the LM head shape: dW is never trained
        Act dy(gpu(), cpu(), fast_floats(size_t(s.rows * s.out), seed++));
        Act x(gpu(), cpu(), fast_floats(size_t(s.rows * s.in), seed++));
        F32 dw(gpu(), cpu(), fast_floats(size_t(s.out * s.in), seed++));
        // Twice: dw accumulates.
        for (int rep = 0; rep < 2; ++rep) {
            training_ops(gpu()).linear_backward_weight(dy.g.get(), x.g.get(), s.rows, s.out, s.in, dw.g.get());
            training_ops(cpu()).linear_backward_weight(dy.c.get(), x.c.get(), s.rows, s.out, s.in, dw.c.get());
        }
        EXPECT_LE(rel_error(dw.g.to_host(), dw.c.to_host()), 1e-4)
            << s.rows << " rows, W [" << s.out << ", " << s.in << "]";
    }
}

// Operands at offsets inside larger buffers, as the trainer passes them (fused K/V blocks, parameter
// slices): 16-byte aligned offsets, and a 4-byte aligned f32 dW.
TEST_F(CudaTrainOps, LinearBackwardOffsetOperands) {
    const int64_t rows = 33, out = 96, in = 80;
    for (const int64_t dw_off : {int64_t(4), int64_t(1)}) {
        Act dy(gpu(), cpu(), fast_floats(size_t(rows * out + 8), 500));
        Act x(gpu(), cpu(), fast_floats(size_t(rows * in + 8), 501));
        F32 dw(gpu(), cpu(), fast_floats(size_t(out * in + dw_off), 502));
        training_ops(gpu()).linear_backward_weight(dy.g.get() + 8, x.g.get() + 8, rows, out, in, dw.g.get() + dw_off);
        training_ops(cpu()).linear_backward_weight(dy.c.get() + 8, x.c.get() + 8, rows, out, in, dw.c.get() + dw_off);
        const auto got = dw.g.to_host();
        EXPECT_LE(rel_error(got, dw.c.to_host()), 1e-4) << "dW offset " << dw_off;
        for (int64_t i = 0; i < dw_off; ++i) EXPECT_EQ(got[size_t(i)], dw.host[size_t(i)]);
        const auto w = to_bf16(fast_floats(size_t(out * in + 8), 503));
        DeviceArray<uint16_t> wg(gpu(), w), wc(cpu(), w);
        Act dx(gpu(), cpu(), fast_floats(size_t(rows * in + 8), 504));
        training_ops(gpu()).linear_backward_input(dy.g.get() + 8, rows, WeightMatrix{DType::BF16, out, in, wg.get() + 8},
                                    dx.g.get() + 8, true);
        training_ops(cpu()).linear_backward_input(dy.c.get() + 8, rows, WeightMatrix{DType::BF16, out, in, wc.get() + 8},
                                    dx.c.get() + 8, true);
        EXPECT_LE(rel_error(dx.gpu_values(), dx.cpu_values()), kBf16Tol) << "dX at an offset";
    }
}

// --- attention ------------------------------------------------------------------------------------------------

struct AttnCase {
    std::vector<int32_t> lens;
    int64_t n_heads, n_kv_heads, head_dim;
};

std::string attn_name(const AttnCase& ac, bool simple, bool accumulate) {
    std::string s = "lens {";
    for (size_t i = 0; i < ac.lens.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(ac.lens[i]);
    }
    s += "}, heads " + std::to_string(ac.n_heads) + "/" + std::to_string(ac.n_kv_heads) + ", head_dim " +
         std::to_string(ac.head_dim);
    if (simple) s += ", SIMT path";
    if (accumulate) s += ", accumulate";
    return s;
}

// Forward and backward on a fused QKV buffer [T, (nh + 2 nkv) * hd + 8] (the 8 padding columns must stay
// untouched); the backward gets the CPU forward's out (rounded to bf16) and lse on both backends.
void check_attention(Backend& gpu, Backend& cpu, const AttnCase& ac, bool simple, bool accumulate, uint64_t seed,
                     bool unknown_max_len = false) {
    cuda::detail::set_train_attention_simple_for_testing(simple);
    const int64_t nh = ac.n_heads, nkv = ac.n_kv_heads, hd = ac.head_dim;
    std::vector<int32_t> cu = {0};
    int64_t max_len = 0;
    for (int32_t l : ac.lens) {
        cu.push_back(cu.back() + l);
        max_len = std::max<int64_t>(max_len, l);
    }
    const int64_t T = cu.back();
    const int64_t stride = (nh + 2 * nkv) * hd + 8;
    const int64_t k_off = nh * hd, v_off = (nh + nkv) * hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    const std::string what = attn_name(ac, simple, accumulate);

    Act qkv(gpu, cpu, fast_floats(size_t(T * stride), seed, -2.0f, 2.0f));
    DeviceArray<int32_t> cug(gpu, cu), cuc(cpu, cu);
    PackedSequences sg{int64_t(ac.lens.size()), T, cug.get(), unknown_max_len ? 0 : max_len};
    PackedSequences sc{int64_t(ac.lens.size()), T, cuc.get(), max_len};

    // Forward.
    Act out(gpu, cpu, std::vector<float>(size_t(T * nh * hd), 0.0f));
    DeviceArray<float> lse_g(gpu, size_t(T * nh)), lse_c(cpu, size_t(T * nh));
    training_ops(gpu).attention_forward_train(qkv.g.get(), stride, qkv.g.get() + k_off, qkv.g.get() + v_off, stride, sg, nh, nkv, hd,
                                scale, out.g.get(), lse_g.get());
    training_ops(cpu).attention_forward_train(qkv.c.get(), stride, qkv.c.get() + k_off, qkv.c.get() + v_off, stride, sc, nh, nkv, hd,
                                scale, out.c.get(), lse_c.get());
    const auto out_ref = out.cpu_values();
    const auto lse_ref = lse_c.to_host();
    EXPECT_LE(rel_error(out.gpu_values(), out_ref), kBf16Tol) << "out, " << what;
    EXPECT_LE(rel_error(lse_g.to_host(), lse_ref), kF32Tol) << "lse, " << what;

    // Backward from the CPU forward's results.
    Act o(gpu, cpu, out_ref);
    DeviceArray<float> lg(gpu, lse_ref), lc(cpu, lse_ref);
    Act dout(gpu, cpu, fast_floats(size_t(T * nh * hd), seed + 1));
    const auto init = accumulate ? fast_floats(size_t(T * stride), seed + 2) : std::vector<float>(size_t(T * stride), 0.0f);
    Act grad(gpu, cpu, init);
    training_ops(gpu).attention_backward(qkv.g.get(), stride, qkv.g.get() + k_off, qkv.g.get() + v_off, stride, o.g.get(), lg.get(),
                           dout.g.get(), sg, nh, nkv, hd, scale, grad.g.get(), grad.g.get() + k_off,
                           grad.g.get() + v_off, accumulate);
    training_ops(cpu).attention_backward(qkv.c.get(), stride, qkv.c.get() + k_off, qkv.c.get() + v_off, stride, o.c.get(), lc.get(),
                           dout.c.get(), sc, nh, nkv, hd, scale, grad.c.get(), grad.c.get() + k_off,
                           grad.c.get() + v_off, accumulate);
    const auto got = grad.gpu_values(), ref = grad.cpu_values();
    // Split into dq, dk, dv (and the padding columns).
    auto slice = [&](const std::vector<float>& all, int64_t begin, int64_t width) {
        std::vector<float> s;
        s.reserve(size_t(T * width));
        for (int64_t r = 0; r < T; ++r)
            for (int64_t j = 0; j < width; ++j) s.push_back(all[size_t(r * stride + begin + j)]);
        return s;
    };
    EXPECT_LE(rel_error(slice(got, 0, nh * hd), slice(ref, 0, nh * hd)), kAttnGradTol) << "dq, " << what;
    EXPECT_LE(rel_error(slice(got, k_off, nkv * hd), slice(ref, k_off, nkv * hd)), kAttnGradTol) << "dk, " << what;
    EXPECT_LE(rel_error(slice(got, v_off, nkv * hd), slice(ref, v_off, nkv * hd)), kAttnGradTol) << "dv, " << what;
    EXPECT_EQ(slice(got, stride - 8, 8), slice(grad.host, stride - 8, 8)) << "padding columns modified, " << what;
    cuda::detail::set_train_attention_simple_for_testing(false);
}

TEST_F(CudaTrainOps, AttentionTensorCores) {
    uint64_t seed = 1000;
    const std::vector<std::vector<int32_t>> packings = {{1}, {17}, {300}, {1, 17, 300}, {64, 128}, {17, 0, 65}};
    for (const int64_t hd : {64, 128})
        for (const auto& [nh, nkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}})
            for (const auto& lens : packings)
                for (const bool accumulate : {false, true})
                    check_attention(gpu(), cpu(), AttnCase{lens, nh, nkv, hd}, false, accumulate, seed++);
}

TEST_F(CudaTrainOps, AttentionLlamaShape) {
    // Llama-3.1-8B's heads (32 query, 8 KV, head_dim 128) on two packed sequences.
    check_attention(gpu(), cpu(), AttnCase{{300, 213}, 32, 8, 128}, false, true, 2000);
}

TEST_F(CudaTrainOps, AttentionUnknownMaxLen) {
    check_attention(gpu(), cpu(), AttnCase{{17, 130}, 8, 2, 64}, false, false, 2100, /*unknown_max_len=*/true);
}

TEST_F(CudaTrainOps, AttentionSimtPath) {
    uint64_t seed = 3000;
    const std::vector<std::vector<int32_t>> packings = {{1}, {17}, {1, 17, 300}, {17, 0, 65}};
    // head_dim 40 has no tensor-core kernel; 64 and 128 are forced onto the SIMT path.
    for (const int64_t hd : {40, 64, 128})
        for (const auto& [nh, nkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}})
            for (const auto& lens : packings)
                for (const bool accumulate : {false, true})
                    check_attention(gpu(), cpu(), AttnCase{lens, nh, nkv, hd}, hd != 40, accumulate, seed++);
}

// --- losses ----------------------------------------------------------------------------------------------------

TEST_F(CudaTrainOps, KlDivLoss) {
    uint64_t seed = 4000;
    for (const int64_t vocab : {1000, 50000, 1001}) {
        for (const int64_t rows : {1, 3, 17}) {
            for (const float temperature : {1.0f, 2.0f}) {
                for (int outputs = 0; outputs < 3; ++outputs) {  // both, loss only, gradient only
                    const auto t = fast_floats(size_t(rows * vocab), seed++, -8.0f, 8.0f);
                    auto s = fast_floats(size_t(rows * vocab), seed++, -1.0f, 1.0f);
                    for (size_t i = 0; i < s.size(); ++i) s[i] += t[i];
                    auto wv = fast_floats(size_t(rows), seed++, 0.0f, 1.0f);
                    if (rows > 1) wv[1] = 0.0f;  // a masked row
                    F32 tg(gpu(), cpu(), t), sgv(gpu(), cpu(), s), w(gpu(), cpu(), wv);
                    F32 loss(gpu(), cpu(), std::vector<float>(size_t(rows), -1.0f));
                    F32 grad(gpu(), cpu(), std::vector<float>(size_t(rows * vocab), 7.0f));
                    const bool with_loss = outputs != 2, with_grad = outputs != 1;
                    training_ops(gpu()).kl_div_loss(tg.g.get(), sgv.g.get(), w.g.get(), rows, vocab, temperature,
                                      with_loss ? loss.g.get() : nullptr, with_grad ? grad.g.get() : nullptr);
                    training_ops(cpu()).kl_div_loss(tg.c.get(), sgv.c.get(), w.c.get(), rows, vocab, temperature,
                                      with_loss ? loss.c.get() : nullptr, with_grad ? grad.c.get() : nullptr);
                    const std::string what = shape_name(rows, vocab) + ", T " + std::to_string(temperature) +
                                             ", outputs " + std::to_string(outputs);
                    EXPECT_LE(rel_error(loss.g.to_host(), loss.c.to_host()), 1e-4) << "row loss, " << what;
                    EXPECT_LE(rel_error(grad.g.to_host(), grad.c.to_host()), kF32Tol) << "gradient, " << what;
                }
            }
        }
    }
    // Null row weights (all 1), the Llama vocabulary.
    const int64_t rows = 4, vocab = 128256;
    const auto t = fast_floats(size_t(rows * vocab), 4999, -10.0f, 10.0f);
    auto s = fast_floats(size_t(rows * vocab), 5000, -2.0f, 2.0f);
    for (size_t i = 0; i < s.size(); ++i) s[i] += t[i];
    F32 tg(gpu(), cpu(), t), sgv(gpu(), cpu(), s);
    F32 loss(gpu(), cpu(), std::vector<float>(size_t(rows), 0.0f)), grad(gpu(), cpu(), std::vector<float>(size_t(rows * vocab), 0.0f));
    training_ops(gpu()).kl_div_loss(tg.g.get(), sgv.g.get(), nullptr, rows, vocab, 1.0f, loss.g.get(), grad.g.get());
    training_ops(cpu()).kl_div_loss(tg.c.get(), sgv.c.get(), nullptr, rows, vocab, 1.0f, loss.c.get(), grad.c.get());
    EXPECT_LE(rel_error(loss.g.to_host(), loss.c.to_host()), 1e-4) << "row loss, vocab 128256";
    EXPECT_LE(rel_error(grad.g.to_host(), grad.c.to_host()), kF32Tol) << "gradient, vocab 128256";
}

TEST_F(CudaTrainOps, KlDivLossOfIdenticalLogitsIsZero) {
    const int64_t rows = 3, vocab = 50000;
    const auto t = fast_floats(size_t(rows * vocab), 77, -8.0f, 8.0f);
    DeviceArray<float> tg(gpu(), t), loss(gpu(), size_t(rows)), grad(gpu(), size_t(rows * vocab));
    training_ops(gpu()).kl_div_loss(tg.get(), tg.get(), nullptr, rows, vocab, 1.5f, loss.get(), grad.get());
    for (float l : loss.to_host()) EXPECT_NEAR(l, 0.0f, 1e-5f);
    for (float g : grad.to_host()) ASSERT_NEAR(g, 0.0f, 1e-7f);
}

TEST_F(CudaTrainOps, MseLoss) {
    uint64_t seed = 6000;
    for (const int64_t dim : {64, 4096, 577}) {
        for (const int64_t rows : {1, 17, 300}) {
            for (const bool weighted : {false, true}) {
                F32 a(gpu(), cpu(), fast_floats(size_t(rows * dim), seed++, -3.0f, 3.0f));
                F32 b(gpu(), cpu(), fast_floats(size_t(rows * dim), seed++, -3.0f, 3.0f));
                F32 w(gpu(), cpu(), fast_floats(size_t(rows), seed++, 0.0f, 1.0f));
                F32 loss(gpu(), cpu(), std::vector<float>(size_t(rows), 0.0f));
                F32 grad(gpu(), cpu(), std::vector<float>(size_t(rows * dim), 0.0f));
                training_ops(gpu()).mse_loss(a.g.get(), b.g.get(), weighted ? w.g.get() : nullptr, rows, dim, loss.g.get(), grad.g.get());
                training_ops(cpu()).mse_loss(a.c.get(), b.c.get(), weighted ? w.c.get() : nullptr, rows, dim, loss.c.get(), grad.c.get());
                const std::string what = shape_name(rows, dim) + (weighted ? ", weighted" : "");
                EXPECT_LE(rel_error(loss.g.to_host(), loss.c.to_host()), kF32Tol) << "row loss, " << what;
                EXPECT_LE(rel_error(grad.g.to_host(), grad.c.to_host()), kF32Tol) << "gradient, " << what;
            }
        }
    }
}

// --- optimizer and vector ops ------------------------------------------------------------------------------

TEST_F(CudaTrainOps, AdamwStep) {
    uint64_t seed = 7000;
    for (const int64_t n : {int64_t(1), int64_t(17), int64_t(1000003)}) {
        F32 p(gpu(), cpu(), fast_floats(size_t(n), seed++));
        F32 m(gpu(), cpu(), std::vector<float>(size_t(n), 0.0f)), v(gpu(), cpu(), std::vector<float>(size_t(n), 0.0f));
        AdamWParams hp;
        hp.lr = 1e-3f;
        hp.weight_decay = 0.1f;
        for (int64_t step = 1; step <= 10; ++step) {
            F32 g(gpu(), cpu(), fast_floats(size_t(n), seed++, -0.1f, 0.1f));
            training_ops(gpu()).adamw_step(p.g.get(), g.g.get(), m.g.get(), v.g.get(), n, hp, step);
            training_ops(cpu()).adamw_step(p.c.get(), g.c.get(), m.c.get(), v.c.get(), n, hp, step);
        }
        EXPECT_LE(rel_error(p.g.to_host(), p.c.to_host()), 1e-6) << "param, n " << n;
        EXPECT_LE(rel_error(m.g.to_host(), m.c.to_host()), 1e-6) << "m, n " << n;
        EXPECT_LE(rel_error(v.g.to_host(), v.c.to_host()), 1e-6) << "v, n " << n;
    }
    // An unaligned slice (the scalar path).
    const int64_t n = 1001;
    F32 p(gpu(), cpu(), fast_floats(size_t(n + 1), 7100)), g(gpu(), cpu(), fast_floats(size_t(n + 1), 7101));
    F32 m(gpu(), cpu(), fast_floats(size_t(n + 1), 7102, -0.01f, 0.01f));
    F32 v(gpu(), cpu(), fast_floats(size_t(n + 1), 7103, 0.0f, 0.01f));
    training_ops(gpu()).adamw_step(p.g.get() + 1, g.g.get() + 1, m.g.get() + 1, v.g.get() + 1, n, AdamWParams{}, 3);
    training_ops(cpu()).adamw_step(p.c.get() + 1, g.c.get() + 1, m.c.get() + 1, v.c.get() + 1, n, AdamWParams{}, 3);
    EXPECT_LE(rel_error(p.g.to_host(), p.c.to_host()), 1e-6) << "param, unaligned";
}

TEST_F(CudaTrainOps, GradSqNormAndScale) {
    uint64_t seed = 8000;
    for (const int64_t n : {int64_t(0), int64_t(1), int64_t(17), int64_t(1000003), int64_t(1) << 24}) {
        F32 x(gpu(), cpu(), fast_floats(size_t(std::max<int64_t>(n, 1)), seed++));
        const double got = training_ops(gpu()).grad_sq_norm(x.g.get(), n), ref = training_ops(cpu()).grad_sq_norm(x.c.get(), n);
        EXPECT_NEAR(got, ref, 1e-12 * std::max(1.0, std::abs(ref))) << "n " << n;
        EXPECT_EQ(got, training_ops(gpu()).grad_sq_norm(x.g.get(), n)) << "not deterministic, n " << n;
        training_ops(gpu()).scale(x.g.get(), n, 0.37f);
        training_ops(cpu()).scale(x.c.get(), n, 0.37f);
        EXPECT_EQ(x.g.to_host(), x.c.to_host()) << "scale, n " << n;
    }
    // Unaligned scale.
    F32 y(gpu(), cpu(), fast_floats(1003, 8100));
    training_ops(gpu()).scale(y.g.get() + 1, 1001, -2.5f);
    training_ops(cpu()).scale(y.c.get() + 1, 1001, -2.5f);
    EXPECT_EQ(y.g.to_host(), y.c.to_host()) << "scale, unaligned";
}

TEST_F(CudaTrainOps, ConvertFromF32AndAddF32) {
    uint64_t seed = 9000;
    for (const int64_t n : {int64_t(1), int64_t(17), int64_t(1000003)}) {
        for (const int64_t off : {int64_t(0), int64_t(1)}) {
            const auto src = fast_floats(size_t(n + off), seed++, -100.0f, 100.0f);
            DeviceArray<float> sg(gpu(), src), fg(gpu(), size_t(n + off));
            DeviceArray<uint16_t> bg(gpu(), size_t(n + off));
            training_ops(gpu()).convert_from_f32(sg.get() + off, bg.get() + off, n, DType::BF16);
            training_ops(gpu()).convert_from_f32(sg.get() + off, fg.get() + off, n, DType::F32);
            const auto b = bg.to_host();
            const auto f = fg.to_host();
            for (int64_t i = 0; i < n; ++i) {
                ASSERT_EQ(b[size_t(off + i)], f32_to_bf16(src[size_t(off + i)])) << "bf16, n " << n << ", i " << i;
                ASSERT_EQ(f[size_t(off + i)], src[size_t(off + i)]) << "f32, n " << n << ", i " << i;
            }
            F32 y(gpu(), cpu(), fast_floats(size_t(n + off), seed++));
            F32 x(gpu(), cpu(), fast_floats(size_t(n + off), seed++));
            training_ops(gpu()).add_f32(y.g.get() + off, x.g.get() + off, n, 0.75f);
            training_ops(cpu()).add_f32(y.c.get() + off, x.c.get() + off, n, 0.75f);
            EXPECT_LE(rel_error(y.g.to_host(), y.c.to_host()), 1e-7) << "add_f32, n " << n << ", offset " << off;
        }
    }
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
