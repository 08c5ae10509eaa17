// The whole student's gradient against finite differences (issue 6 item 3): on tiny random SwiftKV
// students (4 layers, cut L = 2, AcrossKV g = 1 and g = 2, GQA 4 heads over 2 KV heads), with packed
// sequences of different lengths, random row weights (a masked mean) and the hidden-state MSE term on,
// the analytic gradient of every trainable tensor (norm_swiftkv, q_proj_swiftkv of each later layer,
// k/v_proj_swiftkv of each group leader) must match central differences of the full loss:
//   - along a random unit direction within each tensor, and
//   - for the three largest gradient components of each tensor, element by element.
// f32 arithmetic throughout: eps = 1e-2 along unit directions (the loss is smooth; truncation error is
// O(eps^2)), tolerance 2e-2 relative to the larger of the two values, with an absolute floor of 1e-5 for
// near-zero components.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "backend/backend.h"
#include "model/model_source.h"
#include "train/distill_model.h"
#include "train_test_util.h"

using namespace swiftkv;

namespace {

struct GradCase {
    int group;
    float mse_weight;
    unsigned seed;
};

class DistillGradient : public ::testing::TestWithParam<GradCase> {};

double loss_at(DistillModel& model, const PackedBatch& batch, const LossOptions& lo, const std::vector<float>& params) {
    model.upload_params(params);
    return model.forward_backward(batch, lo, false).loss;
}

}  // namespace

TEST_P(DistillGradient, MatchesFiniteDifferences) {
    const GradCase gc = GetParam();
    TinyStudentSpec spec;
    spec.base.layers = 4;
    spec.base.hidden = 32;
    spec.base.heads = 4;
    spec.base.kv_heads = 2;
    spec.base.head_dim = 8;
    spec.base.ffn = 48;
    spec.base.vocab = 64;
    spec.base.seed = gc.seed;
    spec.cut = 2;
    spec.group = gc.group;
    spec.swiftkv_noise = 0.15f;
    const std::string dir = test_temp_dir("grad_g" + std::to_string(gc.group));
    write_tiny_student(spec, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(2);
    DistillModelOptions mo;
    mo.max_tokens = 64;
    mo.hidden_mse = true;
    DistillModel model(*source, *backend, mo);
    ASSERT_EQ(model.config().num_kv_layers, 2);
    // norm, K and V per group, q per later layer
    ASSERT_EQ(model.trainables().size(), size_t(1 + 2 * (2 / gc.group) + 2));

    std::mt19937 rng(gc.seed);
    const PackedBatch batch = random_packed_batch(rng, {9, 14, 1, 6}, spec.base.vocab);
    LossOptions lo;
    lo.temperature = 2.0f;
    lo.hidden_mse_weight = gc.mse_weight;

    model.zero_grads();
    const LossParts parts = model.forward_backward(batch, lo, true);
    EXPECT_GT(parts.kl, 0.0);
    if (gc.mse_weight > 0) {
        EXPECT_GT(parts.mse, 0.0);
    }
    const std::vector<float> grad = model.download_grads();
    const std::vector<float> p0 = model.download_params();
    // The forward-only loss agrees with the one returned alongside the gradient.
    EXPECT_NEAR(loss_at(model, batch, lo, p0), parts.loss, 1e-6 * std::fabs(parts.loss));

    auto check = [&](const char* what, const std::string& name, double analytic, double numeric) {
        const double scale = std::max({std::fabs(analytic), std::fabs(numeric), 1e-5 / 2e-2});
        EXPECT_LT(std::fabs(analytic - numeric) / scale, 2e-2)
            << what << " of " << name << ": analytic " << analytic << ", finite differences " << numeric;
    };
    std::normal_distribution<float> nd(0.0f, 1.0f);
    double worst = 0;
    for (const TrainableTensor& t : model.trainables()) {
        const int64_t n = t.numel();
        // Random unit direction within the tensor.
        std::vector<float> u(static_cast<size_t>(n));
        double norm = 0;
        for (auto& x : u) {
            x = nd(rng);
            norm += double(x) * x;
        }
        for (auto& x : u) x = float(x / std::sqrt(norm));
        double analytic = 0;
        for (int64_t i = 0; i < n; ++i) analytic += double(grad[size_t(t.offset + i)]) * u[size_t(i)];
        const double eps = 1e-2;
        std::vector<float> p = p0;
        for (int64_t i = 0; i < n; ++i) p[size_t(t.offset + i)] = p0[size_t(t.offset + i)] + float(eps) * u[size_t(i)];
        const double lp = loss_at(model, batch, lo, p);
        for (int64_t i = 0; i < n; ++i) p[size_t(t.offset + i)] = p0[size_t(t.offset + i)] - float(eps) * u[size_t(i)];
        const double lm = loss_at(model, batch, lo, p);
        const double numeric = (lp - lm) / (2 * eps);
        check("directional derivative", t.name, analytic, numeric);
        worst = std::max(worst, std::fabs(analytic - numeric) / std::max(std::fabs(numeric), 1e-9));
        EXPECT_GT(std::fabs(analytic), 1e-6) << t.name << " gets no gradient";

        // The largest components one by one.
        std::vector<int64_t> idx(static_cast<size_t>(n));
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(), [&](int64_t a, int64_t b) {
            return std::fabs(grad[size_t(t.offset + a)]) > std::fabs(grad[size_t(t.offset + b)]);
        });
        for (int k = 0; k < 3; ++k) {
            const size_t at = size_t(t.offset + idx[size_t(k)]);
            const double e = 1e-2 * std::max(1.0, double(std::fabs(p0[at])));
            std::vector<float> q = p0;
            q[at] = float(p0[at] + e);
            const double lp1 = loss_at(model, batch, lo, q);
            q[at] = float(p0[at] - e);
            const double lm1 = loss_at(model, batch, lo, q);
            const double step = (double(float(p0[at] + e)) - double(float(p0[at] - e)));
            check("component", t.name + "[" + std::to_string(idx[size_t(k)]) + "]", grad[at], (lp1 - lm1) / step);
        }
    }
    std::printf("[g=%d mse=%.2f] loss %.6f (kl %.6f, mse %.6f), worst directional relative error %.3g\n", gc.group,
                gc.mse_weight, parts.loss, parts.kl, parts.mse, worst);
    std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TinyStudents, DistillGradient,
                         ::testing::Values(GradCase{1, 0.0f, 1}, GradCase{1, 0.5f, 2}, GradCase{2, 0.5f, 3}),
                         [](const auto& info) {
                             return "g" + std::to_string(info.param.group) +
                                    (info.param.mse_weight > 0 ? "_mse" : "_kl") + "_seed" + std::to_string(info.param.seed);
                         });
