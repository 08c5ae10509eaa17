// What of the CUDA backend only a CUDA device can show, through the Backend interface: memory_info
// tracks device allocations, and a captured CUDA graph replays a step exactly as the eager ops ran it,
// reading new inputs from the same buffers. Every op's results are checked on every backend, CUDA
// included, against double-precision references in tests/backend (test_backend: BackendOps,
// BackendMatmul, BackendAttention, BackendSample, with their model-sized grids on CUDA); the
// tensor-core attention kernels' paths in attention_selftest, the GEMV in gemv_selftest. Every test
// skips when no CUDA device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_test_util.h"

namespace swiftkv::test {
namespace {

class CudaOps : public CudaTest {};

TEST_F(CudaOps, MemoryInfo) {
    size_t free0 = 0, total = 0;
    gpu().memory_info(&free0, &total);
    EXPECT_GT(total, size_t(1) << 30);
    EXPECT_LE(free0, total);
    const size_t bytes = size_t(1) << 30;
    void* p = gpu().alloc(bytes);
    size_t free1 = 0, total1 = 0;
    gpu().memory_info(&free1, &total1);
    EXPECT_EQ(total1, total);
    EXPECT_LT(free1, free0);
    EXPECT_GE(free0 - free1, bytes / 2);
    gpu().free(p);
}

// --- graphs -------------------------------------------------------------------------------------------------

TEST_F(CudaOps, CaptureReplay) {
    ASSERT_TRUE(gpu().supports_graphs());
    const int64_t rows = 5, dim = 576, ffn = 1536, vocab = 4096;
    const auto w = fast_floats(size_t(dim), 1, 0.5f, 1.5f);
    const auto wmat = to_bf16(fast_floats(size_t(vocab * dim), 2));
    DeviceArray<float> x(gpu(), fast_floats(size_t(rows * dim), 3)), weight(gpu(), w);
    DeviceArray<uint16_t> gate_up(gpu(), to_bf16(fast_floats(size_t(rows * 2 * ffn), 4))), wm(gpu(), wmat);
    std::vector<SampleParams> sp(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
        sp[size_t(r)].temperature = r == 0 ? 0.0f : 0.9f;
        sp[size_t(r)].top_p = 0.9f;
        sp[size_t(r)].seed = uint64_t(r);
    }
    DeviceArray<SampleParams> params(gpu(), sp);
    struct Outs {
        Outs(Backend& b, int64_t rows, int64_t dim, int64_t ffn, int64_t vocab)
            : normed(b, size_t(rows * dim)), act(b, size_t(rows * ffn)), logits(b, size_t(rows * vocab)),
              tokens(b, size_t(rows)) {}
        DeviceArray<uint16_t> normed, act;
        DeviceArray<float> logits;
        DeviceArray<int32_t> tokens;
    };
    Outs graph_out(gpu(), rows, dim, ffn, vocab), eager_out(gpu(), rows, dim, ffn, vocab);
    auto step = [&](Outs& o) {
        gpu().rmsnorm(x.get(), weight.get(), o.normed.get(), rows, dim, 1e-5f);
        gpu().silu_mul(gate_up.get(), o.act.get(), rows, ffn);
        gpu().matmul(o.normed.get(), rows, WeightMatrix{DType::BF16, vocab, dim, wm.get()}, o.logits.get(), DType::F32);
        gpu().sample(o.logits.get(), rows, vocab, params.get(), o.tokens.get());
    };
    step(eager_out);  // warms up plans and workspaces before recording
    auto graph = gpu().capture([&] { step(graph_out); });
    ASSERT_TRUE(graph);
    gpu().synchronize();
    const auto untouched = graph_out.normed.to_host();
    EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](uint16_t v) { return v == 0; }))
        << "capture executed the ops";
    for (int round = 0; round < 2; ++round) {
        if (round == 1) {
            // New inputs in the same buffers: the replay must see them.
            // (Host buffers outlive the uploads: they are read asynchronously.)
            static const auto nx = fast_floats(size_t(rows * dim), 30);
            static const auto ngu = to_bf16(fast_floats(size_t(rows * 2 * ffn), 40));
            gpu().upload(x.get(), nx.data(), nx.size() * 4);
            gpu().upload(gate_up.get(), ngu.data(), ngu.size() * 2);
            step(eager_out);
        }
        gpu().replay(*graph);
        gpu().synchronize();
        EXPECT_EQ(graph_out.normed.to_host(), eager_out.normed.to_host()) << "round " << round;
        EXPECT_EQ(graph_out.act.to_host(), eager_out.act.to_host()) << "round " << round;
        EXPECT_EQ(graph_out.logits.to_host(), eager_out.logits.to_host()) << "round " << round;
        EXPECT_EQ(graph_out.tokens.to_host(), eager_out.tokens.to_host()) << "round " << round;
    }
}

}  // namespace
}  // namespace swiftkv::test
