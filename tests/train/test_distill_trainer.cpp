// run_distill end to end on tiny random SwiftKV students (train/distill_trainer.h):
//   - an interrupted and resumed run (stop flag = what Ctrl-C sets, and --max-steps) ends with the same
//     weights and the same per-step losses, bit for bit, as an uninterrupted one;
//   - the loss goes down over 30 steps on real text (held-out loss of the written model too);
//   - a corrupted or mismatched checkpoint, a student that does not match --base, and a batch that cannot
//     fit in memory give clear errors, and a failed resume leaves the checkpoint untouched;
//   - the written outputs load: the full llama_swiftkv directory, and the overlay (base + small tensor
//     file) with the same logits.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "backend/backend.h"
#include "core/error.h"
#include "io/safetensors_reader.h"
#include "kv/paged_kv_cache.h"
#include "model/llama_model.h"
#include "model/model_source.h"
#include "runner/model_runner.h"
#include "train/distill_checkpoint.h"
#include "train/distill_trainer.h"
#include "train_test_util.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

std::string read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// About `bytes` of real English text: the start of tinyshakespeare when shared/ has it, else a fixed passage.
std::string real_text(size_t bytes) {
    const std::string path = std::string(SWIFTKV_SHARED_DIR) + "/data/tinyshakespeare.txt";
    std::string text = fs::exists(path) ? read_all(path) : "";
    if (text.empty()) {
        const std::string p = "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
                              "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n";
        while (text.size() < bytes) text += p;
    }
    return text.substr(0, bytes);
}

struct Fixture {
    std::string root, student, data;
    TinyModel tiny;
};

Fixture make_fixture(const std::string& name, int group = 1, size_t text_bytes = 40000) {
    Fixture f;
    f.root = test_temp_dir(name);
    TinyStudentSpec spec;
    spec.base.layers = 4;
    spec.base.hidden = 32;
    spec.base.heads = 4;
    spec.base.kv_heads = 2;
    spec.base.head_dim = 8;
    spec.base.ffn = 64;
    spec.base.vocab = kByteVocab;
    spec.base.seed = 3;
    spec.cut = 2;
    spec.group = group;
    spec.swiftkv_noise = 0.3f;
    f.student = f.root + "/student";
    f.tiny = write_tiny_student(spec, f.student);
    f.data = f.root + "/text.txt";
    std::ofstream(f.data) << real_text(text_bytes);
    return f;
}

DistillOptions base_options(const Fixture& f, const std::string& out) {
    DistillOptions o;
    o.model = f.student;
    o.data = {f.data};
    o.out = f.root + "/" + out;
    o.seq_len = 64;
    o.batch_size = 3;
    o.grad_accum = 2;
    o.tokens = 8 * 3 * 64 * 2;  // 8 steps
    o.lr = 3e-3;
    o.warmup = 0.25;
    o.save_every = 3;
    o.hidden_mse = 0.1;
    o.weight_decay = 0.01;
    o.threads = 2;
    o.overlay_dtype = "f32";
    return o;
}

std::vector<double> logged(const std::string& log_path, const char* key) {
    std::vector<double> out;
    std::ifstream in(log_path);
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line)[key].get<double>());
    return out;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST(DistillTrainer, ResumedRunEqualsUninterruptedRunBitForBit) {
    const Fixture f = make_fixture("resume", 2);
    const DistillTextCodec codec = byte_codec();
    const DistillOptions a = base_options(f, "straight");
    const DistillResult ra = run_distill(a, codec);
    ASSERT_TRUE(ra.finished);
    EXPECT_EQ(ra.steps_done, 8);

    // Interrupted twice: by the stop flag (what Ctrl-C sets) after step 2, then by --max-steps after 3 more.
    DistillOptions b = base_options(f, "interrupted");
    std::atomic<bool> stop{false};
    DistillHooks hooks;
    hooks.stop = &stop;
    hooks.on_step = [&](const DistillStepLog& s) {
        if (s.step == 2) stop = true;
    };
    DistillResult rb = run_distill(b, codec, hooks);
    EXPECT_TRUE(rb.interrupted);
    EXPECT_EQ(rb.steps_done, 2);
    EXPECT_TRUE(has_distill_checkpoint(b.out));
    b.resume = true;
    b.max_steps = 3;
    rb = run_distill(b, codec);
    EXPECT_TRUE(rb.interrupted);
    EXPECT_EQ(rb.steps_done, 5);
    b.max_steps = 0;
    rb = run_distill(b, codec);
    ASSERT_TRUE(rb.finished);
    EXPECT_EQ(rb.steps_done, 8);

    const std::string wa = read_all(a.out + "/swiftkv_tensors.safetensors"), wb = read_all(b.out + "/swiftkv_tensors.safetensors");
    ASSERT_FALSE(wa.empty());
    EXPECT_TRUE(wa == wb) << "final weights differ";
    EXPECT_EQ(read_all(a.out + "/model.safetensors"), read_all(b.out + "/model.safetensors"));
    const auto la = logged(ra.log_path, "loss"), lb = logged(rb.log_path, "loss");
    ASSERT_EQ(la.size(), 8u);
    EXPECT_EQ(la, lb) << "per-step losses differ";
    EXPECT_EQ(logged(ra.log_path, "grad_norm"), logged(rb.log_path, "grad_norm"));
    // The weights moved.
    auto source = ModelSource::open(f.student);
    SafetensorsFile trained(a.out + "/swiftkv_tensors.safetensors");
    const auto& t = trained.at("model.layers.3.self_attn.q_proj_swiftkv.weight");
    const float* init = reinterpret_cast<const float*>(source->require(t.name, t.shape).data);
    EXPECT_NE(std::memcmp(init, t.data, t.nbytes), 0);
    fs::remove_all(f.root);
}

TEST(DistillTrainer, LossDecreasesOnRealText) {
    const Fixture f = make_fixture("loss", 1, 60000);
    DistillOptions o = base_options(f, "out");
    o.tokens = 30 * 3 * 64 * 2;  // 30 steps
    o.lr = 1e-2;
    o.warmup = 0.1;
    o.hidden_mse = 0;
    o.weight_decay = 0;
    o.save_every = 0;
    const DistillResult r = run_distill(o, byte_codec());
    ASSERT_TRUE(r.finished);
    const auto loss = logged(r.log_path, "loss");
    ASSERT_EQ(loss.size(), 30u);
    double first = 0, last = 0;
    for (int i = 0; i < 5; ++i) first += loss[size_t(i)] / 5, last += loss[loss.size() - 1 - size_t(i)] / 5;
    std::printf("training loss, mean of the first 5 steps %.5f, of the last 5 %.5f\n", first, last);
    EXPECT_LT(last, 0.6 * first);

    // Held-out text (further into the file than training read): the distilled model's loss is lower.
    const std::string held = real_text(120000).substr(100000, 4000);
    const DistillTextCodec codec = byte_codec();
    PackedBatch batch;
    const std::vector<int32_t> ids = codec.encode(held, false);
    std::vector<float> w(ids.size() / 2, 1.0f / float(ids.size() / 2));
    batch.add_segment(ids.data(), int64_t(w.size()), w.data());
    auto backend = make_cpu_backend(2);
    double before = 0, after = 0;
    {
        auto src = ModelSource::open(f.student);
        DistillModel m(*src, *backend, DistillModelOptions{});
        before = m.forward_backward(batch, LossOptions{}, false).loss;
    }
    {
        auto src = ModelSource::open(o.out);
        DistillModel m(*src, *backend, DistillModelOptions{});
        after = m.forward_backward(batch, LossOptions{}, false).loss;
    }
    std::printf("held-out loss %.5f -> %.5f\n", before, after);
    EXPECT_LT(after, 0.7 * before);
    fs::remove_all(f.root);
}

TEST(DistillTrainer, BadCheckpointsAndSettingsGiveClearErrors) {
    const Fixture f = make_fixture("errors");
    const DistillTextCodec codec = byte_codec();
    DistillOptions o = base_options(f, "out");
    o.max_steps = 2;
    ASSERT_TRUE(run_distill(o, codec).interrupted);
    o.max_steps = 0;
    const std::string ckpt = o.out + "/checkpoint";
    const std::string tensors = read_all(ckpt + "/optimizer.safetensors"), state = read_all(ckpt + "/state.json");

    // Starting over in a directory with a checkpoint needs --resume or --force.
    EXPECT_NE(error_of([&] { run_distill(o, codec); }).find("--resume"), std::string::npos);
    o.resume = true;
    // A flipped byte in the optimizer state.
    {
        std::string bad = tensors;
        bad[bad.size() / 2] ^= 0x40;
        std::ofstream(ckpt + "/optimizer.safetensors", std::ios::binary) << bad;
        const std::string e = error_of([&] { run_distill(o, codec); });
        EXPECT_NE(e.find("corrupted"), std::string::npos) << e;
        EXPECT_NE(e.find("checksum"), std::string::npos) << e;
        std::ofstream(ckpt + "/optimizer.safetensors", std::ios::binary) << tensors;
    }
    // A truncated state file.
    {
        std::ofstream(ckpt + "/state.json", std::ios::binary) << state.substr(0, state.size() / 2);
        const std::string e = error_of([&] { run_distill(o, codec); });
        EXPECT_NE(e.find("corrupted"), std::string::npos) << e;
        std::ofstream(ckpt + "/state.json", std::ios::binary) << state;
    }
    // Different settings cannot continue identically.
    {
        DistillOptions changed = o;
        changed.lr = 1e-3;
        const std::string e = error_of([&] { run_distill(changed, codec); });
        EXPECT_NE(e.find("lr"), std::string::npos) << e;
    }
    // Different data.
    {
        DistillOptions changed = o;
        const std::string other = f.root + "/other.txt";
        std::ofstream(other) << real_text(40000).substr(100);
        changed.data = {other};
        const std::string e = error_of([&] { run_distill(changed, codec); });
        EXPECT_NE(e.find("data differs"), std::string::npos) << e;
    }
    // Nothing was lost: the checkpoint is byte-identical and still resumes to the end.
    EXPECT_EQ(read_all(ckpt + "/optimizer.safetensors"), tensors);
    EXPECT_EQ(read_all(ckpt + "/state.json"), state);
    const DistillResult r = run_distill(o, codec);
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.steps_done, 8);

    // --resume with no checkpoint.
    DistillOptions fresh = base_options(f, "fresh");
    fresh.resume = true;
    EXPECT_NE(error_of([&] { run_distill(fresh, codec); }).find("no checkpoint"), std::string::npos);
    fs::remove_all(f.root);
}

TEST(DistillTrainer, MismatchedBaseAndOversizedBatchAreRefused) {
    const Fixture f = make_fixture("refuse");
    const DistillTextCodec codec = byte_codec();
    // A base with other weights (another seed): the student was not converted from it.
    TinySpec other;
    other.layers = 4;
    other.hidden = 32;
    other.heads = 4;
    other.kv_heads = 2;
    other.head_dim = 8;
    other.ffn = 64;
    other.vocab = kByteVocab;
    other.seed = 99;
    write_tiny_model(make_tiny_model(other), f.root + "/other_base");
    DistillOptions o = base_options(f, "out");
    o.base = f.root + "/other_base";
    std::string e = error_of([&] { run_distill(o, codec); });
    EXPECT_NE(e.find("does not match the base"), std::string::npos) << e;
    // A base of another shape.
    other.ffn = 48;
    write_tiny_model(make_tiny_model(other), f.root + "/other_shape");
    o.base = f.root + "/other_shape";
    e = error_of([&] { run_distill(o, codec); });
    EXPECT_NE(e.find("intermediate_size"), std::string::npos) << e;

    // A micro-batch far beyond memory: the message names the largest batch size that fits.
    DistillOptions big = base_options(f, "big");
    big.seq_len = 4096;
    big.batch_size = int64_t(1) << 22;
    big.tokens = big.seq_len * big.batch_size;
    std::ofstream(f.root + "/long.txt") << real_text(30000);
    big.data = {f.root + "/long.txt"};
    e = error_of([&] { run_distill(big, codec); });
    EXPECT_NE(e.find("does not fit"), std::string::npos) << e;
    EXPECT_NE(e.find("largest --batch-size that fits is"), std::string::npos) << e;
    fs::remove_all(f.root);
}

TEST(DistillTrainer, OutputsLoadAsFullDirectoryAndAsOverlay) {
    const Fixture f = make_fixture("outputs", 2);
    DistillOptions o = base_options(f, "out");
    o.tokens = 2 * 3 * 64 * 2;
    o.overlay_dtype = "auto";  // the student is f32
    const DistillResult r = run_distill(o, byte_codec());
    ASSERT_TRUE(r.finished);
    ASSERT_EQ(r.model_dir, o.out);
    EXPECT_TRUE(fs::exists(o.out + "/config.json"));

    auto full = ModelSource::open(o.out);
    auto overlay = ModelSource::open(r.overlay_path);
    EXPECT_EQ(overlay->config().num_kv_layers, 2);
    EXPECT_EQ(overlay->config().kv_group_size, 2);
    EXPECT_EQ(overlay->overlay_base_path(), fs::path(f.student).lexically_normal().string());
    // The overlay holds only the trainable tensors.
    SafetensorsFile small(o.out + "/swiftkv_tensors.safetensors");
    EXPECT_EQ(small.tensors().size(), 1u + 2u + 2u);  // norm, q of layers 2 and 3, k/v of the one group

    auto backend = make_cpu_backend(2);
    auto logits_of = [&](const ModelSource& src) {
        LlamaModel m(src, *backend, LoadOptions{});
        PagedKvCache cache(*backend, m.config(), 8, 16);
        std::vector<int32_t> tokens;
        for (int32_t t = 0; t < 20; ++t) tokens.push_back((t * 37 + 11) % kByteVocab);
        ForwardBatch b = ForwardBatch::with_block_table_width(2);
        b.add_sequence(tokens.data(), 0, int64_t(tokens.size()), {0, 1}, 0);
        std::vector<float> out;
        ModelRunner(m).forward(b, cache.view(), out);
        return out;
    };
    EXPECT_EQ(logits_of(*full), logits_of(*overlay));

    // An overlay pointed at the wrong base is refused.
    nlohmann::json desc = nlohmann::json::parse(read_all(r.overlay_path));
    TinySpec other;
    other.layers = 4;
    other.hidden = 32;
    other.heads = 4;
    other.kv_heads = 2;
    other.head_dim = 8;
    other.ffn = 64;
    other.vocab = kByteVocab;
    other.seed = 42;
    write_tiny_model(make_tiny_model(other), f.root + "/wrong_base");
    desc["base"] = f.root + "/wrong_base";
    std::ofstream(f.root + "/wrong.json") << desc.dump();
    const std::string e = error_of([&] { ModelSource::open(f.root + "/wrong.json"); });
    EXPECT_NE(e.find("different weights"), std::string::npos) << e;
    fs::remove_all(f.root);
}

// A student whose config.json says "swiftkv": false (Snowflake's key for "run as the teacher") still
// trains as the student: the key is a run-time default, not structure, so the run is bit-identical to
// one on the same student saying "swiftkv": true, and the distilled directory says true (it loads as the
// student). The overlay, whose base is that student directory, runs as the student too.
TEST(DistillTrainer, StudentConfigSayingSwiftKVFalseStillDistillsAStudent) {
    const Fixture f = make_fixture("swiftkv_key", 2);
    const std::string off_student = f.root + "/student_off";
    fs::create_directories(off_student);
    for (const auto& e : fs::directory_iterator(f.student))
        fs::copy_file(e.path(), fs::path(off_student) / e.path().filename());
    nlohmann::json config = nlohmann::json::parse(read_all(f.student + "/config.json"));
    config["swiftkv"] = false;
    std::ofstream(off_student + "/config.json") << config.dump(2);
    ASSERT_FALSE(ModelSource::open(off_student)->config().swiftkv_enabled);

    DistillOptions on_opts = base_options(f, "out_on");
    on_opts.tokens = 2 * 3 * 64 * 2;
    DistillOptions off_opts = on_opts;
    off_opts.model = off_student;
    off_opts.out = f.root + "/out_off";
    const DistillResult on = run_distill(on_opts, byte_codec());
    const DistillResult off = run_distill(off_opts, byte_codec());
    ASSERT_TRUE(on.finished && off.finished);
    EXPECT_EQ(off.first_loss, on.first_loss);
    EXPECT_EQ(off.last_loss, on.last_loss);

    EXPECT_EQ(nlohmann::json::parse(read_all(off_opts.out + "/config.json"))["swiftkv"], true);
    auto full = ModelSource::open(off_opts.out);
    auto overlay = ModelSource::open(off.overlay_path);
    EXPECT_EQ(overlay->overlay_base_path(), fs::path(off_student).lexically_normal().string());
    auto backend = make_cpu_backend(2);
    for (const ModelSource* src : {full.get(), overlay.get()}) {
        EXPECT_TRUE(src->config().swiftkv_enabled) << src->path();
        LlamaModel m(*src, *backend, LoadOptions{});
        EXPECT_TRUE(m.config().is_swiftkv()) << src->path();
    }
    fs::remove_all(f.root);
}

// --synthetic: random weights of a named shape on random tokens, for speed benchmarks. It trains (finite,
// logged steps), honours --max-steps and writes nothing but the log; bad combinations are refused.
TEST(DistillTrainer, SyntheticBenchmarkRunsAndWritesOnlyTheLog) {
    const std::string root = test_temp_dir("synthetic");
    DistillOptions o;
    o.synthetic = "smollm2-135m:2";
    o.synthetic_swiftkv = "50%";
    o.out = root + "/out";
    o.seq_len = 32;
    o.batch_size = 2;
    o.tokens = 3 * 2 * 32;
    o.threads = 2;
    o.max_steps = 2;
    const DistillTextCodec codec = byte_codec();
    const DistillResult r = run_distill(o, codec);
    EXPECT_EQ(r.steps_done, 2);
    EXPECT_EQ(r.total_steps, 3);
    EXPECT_TRUE(std::isfinite(r.first_loss) && r.first_loss > 0) << r.first_loss;
    EXPECT_GT(r.mean_tokens_per_second, 0);
    EXPECT_EQ(logged(r.log_path, "loss").size(), 2u);
    EXPECT_FALSE(fs::exists(o.out + "/checkpoint"));
    EXPECT_FALSE(fs::exists(o.out + "/swiftkv_tensors.json"));

    DistillOptions bad = o;
    bad.model = "somewhere";
    EXPECT_NE(error_of([&] { run_distill(bad, codec); }).find("drop --model"), std::string::npos);
    bad = o;
    bad.synthetic_swiftkv = "";
    EXPECT_NE(error_of([&] { run_distill(bad, codec); }).find("SwiftKV"), std::string::npos);
    bad = o;
    bad.synthetic = "gpt-17";
    EXPECT_NE(error_of([&] { run_distill(bad, codec); }).find("unknown synthetic shape"), std::string::npos);
    fs::remove_all(root);
}
