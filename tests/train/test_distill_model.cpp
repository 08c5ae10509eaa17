// The distillation forward against the inference engine (issue 6 item 3, "student forward logits in the
// trainer equal LlamaModel's full-student logits"): on a tiny random SwiftKV student with AcrossKV groups,
// the trainer's packed student forward must give, at every row, the logits LlamaModel computes on the
// full-student path (SwiftKV on, every position requested, each packed segment as its own sequence in the
// paged cache); its teacher forward must give LlamaModel's logits with SwiftKV off, and those must match a
// plain double-precision reference (tests/model/tiny_model.h), so packing never leaks across segments.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numeric>

#include "backend/backend.h"
#include "core/error.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "runner/model_runner.h"
#include "model/model_source.h"
#include "train/distill_model.h"
#include "train_test_util.h"

using namespace swiftkv;

namespace {

// Logits of every position of each segment, one sequence per segment, through the inference forward.
std::vector<float> engine_logits(const ModelSource& source, Backend& backend, bool swiftkv, const PackedBatch& batch) {
    LoadOptions lo;
    lo.swiftkv = swiftkv;
    LlamaModel model(source, backend, lo);
    ModelRunner runner(model);
    PagedKvCache cache(backend, model.config(), 64, 16);
    const int64_t V = model.config().vocab;
    std::vector<float> out;
    for (size_t s = 0; s + 1 < batch.cu_seqlens.size(); ++s) {
        const int32_t b = batch.cu_seqlens[s], n = batch.cu_seqlens[s + 1] - b;
        std::vector<int32_t> table(size_t((n + 15) / 16));
        std::iota(table.begin(), table.end(), 0);
        ForwardBatch fb = ForwardBatch::with_block_table_width(int64_t(table.size()));
        fb.add_sequence(batch.tokens.data() + b, 0, n, table, 0);
        std::vector<float> logits;
        runner.forward(fb, cache.view(), logits);
        EXPECT_EQ(int64_t(logits.size()), int64_t(n) * V);
        out.insert(out.end(), logits.begin(), logits.end());
    }
    return out;
}

// Largest |a - b| over the row's largest |b|, worst row.
double worst_row_error(const std::vector<float>& a, const std::vector<float>& b, int64_t V) {
    double worst = 0;
    for (size_t r = 0; r * V < b.size(); ++r) {
        double scale = 0, err = 0;
        for (int64_t j = 0; j < V; ++j) {
            scale = std::max(scale, double(std::fabs(b[r * V + j])));
            err = std::max(err, double(std::fabs(a[r * V + j] - b[r * V + j])));
        }
        worst = std::max(worst, err / scale);
    }
    return worst;
}

}  // namespace

TEST(DistillModelForward, StudentAndTeacherLogitsEqualLlamaModel) {
    TinyStudentSpec spec;
    spec.base.layers = 6;
    spec.base.vocab = 80;
    spec.base.seed = 11;
    spec.base.llama3_scaling = true;  // RoPE scaling goes through the shared inverse frequencies
    spec.cut = 2;
    spec.group = 2;
    const std::string dir = test_temp_dir("forward");
    const TinyModel tiny = write_tiny_student(spec, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(2);
    std::mt19937 rng(5);
    const PackedBatch batch = random_packed_batch(rng, {17, 1, 40, 9}, spec.base.vocab);
    const int64_t V = spec.base.vocab;

    DistillModelOptions mo;
    mo.max_tokens = 16;       // smaller than the batch: the workspace grows
    mo.logits_chunk = 7;      // logits in several chunks
    DistillModel model(*source, *backend, mo);
    const std::vector<float> student = model.student_logits(batch);
    const std::vector<float> teacher = model.teacher_logits(batch);
    ASSERT_EQ(student.size(), size_t(batch.num_tokens() * V));

    const std::vector<float> engine_student = engine_logits(*source, *backend, true, batch);
    const std::vector<float> engine_teacher = engine_logits(*source, *backend, false, batch);
    const double es = worst_row_error(student, engine_student, V), et = worst_row_error(teacher, engine_teacher, V);
    std::printf("student vs LlamaModel full student: %.3g; teacher vs LlamaModel SwiftKV off: %.3g\n", es, et);
    EXPECT_LT(es, 1e-4);
    EXPECT_LT(et, 1e-4);

    // The teacher against the double-precision reference, segment by segment.
    double worst_ref = 0;
    for (size_t s = 0; s + 1 < batch.cu_seqlens.size(); ++s) {
        const int32_t b = batch.cu_seqlens[s], n = batch.cu_seqlens[s + 1] - b;
        std::vector<int> toks(batch.tokens.begin() + b, batch.tokens.begin() + b + n);
        const std::vector<double> ref = reference_logits(tiny, toks);
        std::vector<float> ref_f(ref.begin(), ref.end());
        std::vector<float> got(teacher.begin() + int64_t(b) * V, teacher.begin() + int64_t(b + n) * V);
        worst_ref = std::max(worst_ref, worst_row_error(got, ref_f, V));
    }
    std::printf("teacher vs double reference: %.3g\n", worst_ref);
    EXPECT_LT(worst_ref, 1e-4);
    // The student really differs from the teacher (the SwiftKV tensors are not the teacher's).
    EXPECT_GT(worst_row_error(student, teacher, V), 1e-3);
    std::filesystem::remove_all(dir);
}

TEST(DistillModelForward, RejectsModelsWithoutTeacherOrSwiftKV) {
    TinyStudentSpec spec;
    const std::string dir = test_temp_dir("noteacher");
    TinyModel m = write_tiny_student(spec, dir);
    auto backend = make_cpu_backend(2);
    // A plain Llama (no SwiftKV) is refused.
    {
        TinyModel plain = make_tiny_model(spec.base);
        write_tiny_model(plain, dir + "/plain");
        auto src = ModelSource::open(dir + "/plain");
        try {
            DistillModel model(*src, *backend, DistillModelOptions{});
            FAIL() << "expected an error";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("not a SwiftKV student"), std::string::npos) << e.what();
        }
    }
    // A student without the teacher's later-layer q_proj is refused with the tensor's name.
    m.tensors.erase("model.layers.2.self_attn.q_proj.weight");
    m.shapes.erase("model.layers.2.self_attn.q_proj.weight");
    write_tiny_model(m, dir + "/student_only");
    auto src = ModelSource::open(dir + "/student_only");
    try {
        DistillModel model(*src, *backend, DistillModelOptions{});
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("model.layers.2.self_attn.q_proj.weight"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("teacher"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}

// bf16 weights and compute copies (the CUDA configuration, run here on the CPU backend): the trainable
// tensors' compute copies come from the f32 masters through TrainingOps::convert_from_f32, and the results stay
// within bf16 rounding of the f32 run: logits within 5e-2 of the row scale, gradients pointing the same way.
TEST(DistillModelForward, Bf16ComputeCopiesTrackTheF32Masters) {
    TinyStudentSpec spec;
    spec.base.layers = 4;
    spec.base.seed = 21;
    spec.cut = 2;
    spec.group = 1;
    const std::string dir = test_temp_dir("bf16");
    write_tiny_student(spec, dir);
    auto source = ModelSource::open(dir);
    auto backend = make_cpu_backend(2);
    std::mt19937 rng(9);
    const PackedBatch batch = random_packed_batch(rng, {12, 20}, spec.base.vocab);
    DistillModelOptions mo;
    DistillModel f32(*source, *backend, mo);
    mo.weight_dtype = DType::BF16;
    DistillModel bf16(*source, *backend, mo);
    EXPECT_EQ(f32.download_params(), bf16.download_params());  // the masters are f32 either way
    const int64_t V = spec.base.vocab;
    EXPECT_LT(worst_row_error(bf16.student_logits(batch), f32.student_logits(batch), V), 5e-2);

    f32.zero_grads();
    bf16.zero_grads();
    const double l32 = f32.forward_backward(batch, LossOptions{}, true).loss;
    const double l16 = bf16.forward_backward(batch, LossOptions{}, true).loss;
    EXPECT_NEAR(l16, l32, 0.05 * l32);
    const auto g32 = f32.download_grads(), g16 = bf16.download_grads();
    double dot = 0, n32 = 0, n16 = 0;
    for (size_t i = 0; i < g32.size(); ++i) dot += double(g32[i]) * g16[i], n32 += double(g32[i]) * g32[i], n16 += double(g16[i]) * g16[i];
    const double cosine = dot / std::sqrt(n32 * n16);
    std::printf("bf16 vs f32: loss %.6f vs %.6f, gradient cosine %.5f\n", l16, l32, cosine);
    EXPECT_GT(cosine, 0.99);

    // After a change of the masters, the compute copies follow (params_updated through upload_params).
    std::vector<float> p = bf16.download_params();
    for (auto& x : p) x *= 0.5f;
    bf16.upload_params(p);
    f32.upload_params(p);
    EXPECT_LT(worst_row_error(bf16.student_logits(batch), f32.student_logits(batch), V), 5e-2);
    std::filesystem::remove_all(dir);
}
