// swiftkv convert: a SwiftKV student made from the default model (SmolLM2-135M Q4_1 GGUF) has the
// published llama_swiftkv layout, the distillation init, a tokenizer.json that tokenizes like the GGUF
// (and equals the one Hugging Face-side scripts/make_tokenizer_refs.py builds), and runs with SwiftKV
// off with exactly the base model's logits; bad input fails cleanly and leaves nothing behind. A tiny
// checkpoint written by scripts/make_tiny_swiftkv_checkpoint.py (independent of swiftkv) loads and runs.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "convert/swiftkv_convert.h"
#include "core/error.h"
#include "engine/engine.h"
#include "io/gguf_reader.h"
#include "model/model_source.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer_json_writer.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
const fs::path kData = fs::path(SWIFTKV_SOURCE_DIR) / "tests";

nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    EXPECT_TRUE(in.good()) << p;
    return nlohmann::json::parse(in);
}

std::vector<float> values(const SourceTensor& t) {
    std::vector<float> v(size_t(t.numel()));
    const int64_t cols = t.shape.back();
    const int64_t rows = t.numel() / cols;
    for (int64_t r = 0; r < rows; ++r) {
        dequantize_to_f32(t.dtype, t.data + r * dtype_row_bytes(t.dtype, cols), v.data() + r * cols, cols);
    }
    return v;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    double m = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
}

// No staging (*.tmp-*) or replaced (*.old-*) directory in `parent`.
void expect_no_staging_left(const fs::path& parent) {
    if (!fs::is_directory(parent)) return;
    for (const auto& e : fs::directory_iterator(parent)) {
        const std::string n = e.path().filename().string();
        EXPECT_TRUE(n.find(".tmp-") == std::string::npos && n.find(".old-") == std::string::npos)
            << "leftover " << e.path();
    }
}

// Neither `name` nor any staging directory in `parent`.
void expect_nothing_left(const fs::path& parent, const std::string& name) {
    EXPECT_FALSE(fs::exists(parent / name)) << (parent / name);
    expect_no_staging_left(parent);
}

std::string error_of(const ConvertOptions& o) {
    try {
        convert_to_swiftkv(o);
    } catch (const Error& e) {
        return e.what();
    }
    return "<no error>";
}

std::vector<std::string> sample_texts() {
    return {"Hello, world!",
            "The capital of France is Paris. 12345 + 678 = 13023",
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n",
            "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
            "日本語のテキスト, 中文, 한국어 and emoji 😀👍🏽 — “quotes”",
            "   spaces   and\ttabs\n\n\nnewlines  ",
            "I'm you're he's we've they'll I'd can't DON'T",
            "<|endoftext|><repo_name>x<file_sep>y",
            ""};
}

std::vector<int32_t> prompt_tokens(const Engine& e) {
    return e.tokenizer().encode(
        "<|im_start|>user\nWhat is the capital of France, and why is it famous?<|im_end|>\n<|im_start|>assistant\n",
        false, true);
}

// swiftkv unset: as the checkpoint's config says.
std::vector<float> logits_of(const std::string& model, std::optional<bool> swiftkv,
                             const std::vector<int32_t>* tokens = nullptr) {
    EngineOptions o;
    o.model.path = model;
    o.context_length = 128;
    o.model.swiftkv = swiftkv;
    Engine e(o);
    const std::vector<int32_t> t = tokens ? *tokens : prompt_tokens(e);
    return e.prompt_logits(t, {});
}

class ConvertSmolLM : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!fs::exists(kModel)) return;
        root_ = fs::temp_directory_path() / ("swiftkv_test_convert_" + std::to_string(::getpid()));
        fs::remove_all(root_);
        fs::create_directories(root_);
        try {
            convert_both();
        } catch (const std::exception& e) {
            setup_error_ = e.what();
        }
    }
    static void convert_both() {
        ConvertOptions o;
        o.model_path = kModel;
        o.num_kv_layers = "50%";
        o.out_dir = (root_ / "half").string();
        half_ = new ConvertResult(convert_to_swiftkv(o));
        // L = 15, g = 3, in shards of at most 200 MB.
        o.num_kv_layers = "15";
        o.group_size = 3;
        o.out_dir = (root_ / "g3").string();
        o.max_shard_bytes = 200'000'000;
        int64_t calls = 0;
        o.on_progress = [&calls](const ConvertProgress& p) {
            ++calls;
            EXPECT_EQ(p.tensors_done, calls);
            EXPECT_LE(p.bytes_done, p.bytes_total);
        };
        g3_ = new ConvertResult(convert_to_swiftkv(o));
        EXPECT_EQ(calls, g3_->tensors);
    }
    static void TearDownTestSuite() {
        delete half_;
        delete g3_;
        half_ = g3_ = nullptr;
        if (!root_.empty()) fs::remove_all(root_);
    }
    void SetUp() override {
        if (root_.empty()) GTEST_SKIP() << "default model not found at " << kModel;
        ASSERT_TRUE(setup_error_.empty()) << "converting the default model failed: " << setup_error_;
    }
    static fs::path root_;
    static std::string setup_error_;
    static ConvertResult* half_;
    static ConvertResult* g3_;
};
fs::path ConvertSmolLM::root_;
std::string ConvertSmolLM::setup_error_;
ConvertResult* ConvertSmolLM::half_ = nullptr;
ConvertResult* ConvertSmolLM::g3_ = nullptr;

}  // namespace

TEST_F(ConvertSmolLM, ConfigHasThePublishedKeys) {
    for (const auto& [r, g] : {std::pair{half_, 1}, std::pair{g3_, 3}}) {
        const nlohmann::json c = read_json(fs::path(r->out_dir) / "config.json");
        EXPECT_EQ(c["model_type"], "llama_swiftkv");
        EXPECT_EQ(c["architectures"], nlohmann::json::array({"LlamaSwiftKVForCausalLM"}));
        EXPECT_EQ(c["num_key_value_layers"], 15);
        EXPECT_EQ(c["key_value_group_size"], g);
        EXPECT_EQ(c["swiftkv"], true);
        EXPECT_EQ(c["torch_dtype"], "float32");
        EXPECT_EQ(c["tie_word_embeddings"], true);
        EXPECT_EQ(c["num_hidden_layers"], 30);
        EXPECT_EQ(c["hidden_size"], 576);
        EXPECT_EQ(c["num_attention_heads"], 9);
        EXPECT_EQ(c["num_key_value_heads"], 3);
        EXPECT_EQ(c["head_dim"], 64);
        EXPECT_EQ(c["intermediate_size"], 1536);
        EXPECT_EQ(c["vocab_size"], 49152);
        EXPECT_EQ(c["bos_token_id"], 1);
        EXPECT_EQ(c["eos_token_id"], 2);
        EXPECT_DOUBLE_EQ(c["rope_theta"].get<double>(), 100000.0);
        const nlohmann::json gen = read_json(fs::path(r->out_dir) / "generation_config.json");
        EXPECT_EQ(gen["bos_token_id"], 1);
        EXPECT_TRUE(gen.contains("eos_token_id"));

        auto src = ModelSource::open(r->out_dir);
        EXPECT_EQ(src->config().architecture, "llama_swiftkv");
        EXPECT_EQ(src->config().num_kv_layers, 15);
        EXPECT_EQ(src->config().kv_group_size, g);
        EXPECT_EQ(src->config().kv_cache_layers(), 15 + 15 / g);
        EXPECT_TRUE(src->config().swiftkv_enabled);  // "swiftkv": true: the student loads as the student
    }
    EXPECT_EQ(half_->weight_files, std::vector<std::string>{"model.safetensors"});
}

TEST_F(ConvertSmolLM, TensorsAreTheTeacherPlusSwiftKV) {
    for (const auto& [r, g] : {std::pair{half_, int64_t(1)}, std::pair{g3_, int64_t(3)}}) {
        auto src = ModelSource::open(r->out_dir);
        const int64_t L = 15, N = 30;
        EXPECT_EQ(int64_t(src->tensors().size()), N * 9 + 2 + (N - L) + 2 * (N - L) / g + 1);
        EXPECT_EQ(src->find("lm_head.weight"), nullptr) << "tied embeddings: no lm_head";
        EXPECT_EQ(src->find("rope_freqs.weight"), nullptr);
        for (const auto& [name, t] : src->tensors()) EXPECT_EQ(t.dtype, DType::F32) << name;
        src->require("model.embed_tokens.weight", {49152, 576});
        src->require("model.norm.weight", {576});
        src->require("model.norm_swiftkv.weight", {576});
        for (int64_t j = 0; j < N; ++j) {
            const std::string p = "model.layers." + std::to_string(j) + ".";
            src->require(p + "self_attn.q_proj.weight", {576, 576});
            src->require(p + "self_attn.k_proj.weight", {192, 576});
            src->require(p + "self_attn.v_proj.weight", {192, 576});
            src->require(p + "self_attn.o_proj.weight", {576, 576});
            src->require(p + "mlp.gate_proj.weight", {1536, 576});
            src->require(p + "mlp.down_proj.weight", {576, 1536});
            EXPECT_EQ(src->find(p + "self_attn.q_proj_swiftkv.weight") != nullptr, j >= L) << j;
            const bool leader = j >= L && (j - L) % g == 0;
            EXPECT_EQ(src->find(p + "self_attn.k_proj_swiftkv.weight") != nullptr, leader) << j;
            EXPECT_EQ(src->find(p + "self_attn.v_proj_swiftkv.weight") != nullptr, leader) << j;
            if (j >= L) src->require(p + "self_attn.q_proj_swiftkv.weight", {576, 576});
            if (leader) src->require(p + "self_attn.k_proj_swiftkv.weight", {192, 576});
        }
    }
}

TEST_F(ConvertSmolLM, ShardsWithAnIndex) {
    const fs::path dir = g3_->out_dir;
    ASSERT_GE(g3_->weight_files.size(), 3u);
    EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
    const nlohmann::json index = read_json(dir / "model.safetensors.index.json");
    const auto& map = index["weight_map"];
    auto src = ModelSource::open(dir.string());
    EXPECT_EQ(map.size(), src->tensors().size());
    uint64_t total = 0;
    for (const auto& [name, t] : src->tensors()) {
        ASSERT_TRUE(map.contains(name)) << name;
        total += uint64_t(t.numel()) * 4;
    }
    EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
    for (size_t i = 0; i < g3_->weight_files.size(); ++i) {
        EXPECT_EQ(g3_->weight_files[i], fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, g3_->weight_files.size()));
        EXPECT_LE(fs::file_size(dir / g3_->weight_files[i]), 200'000'000u + 100'000u);
    }
}

TEST_F(ConvertSmolLM, SwiftKVTensorsStartAtTheDistillationInit) {
    auto src = ModelSource::open(g3_->out_dir);
    auto t = [&](const std::string& name) { return values(*src->find(name)); };
    auto layer = [](int64_t j, const char* what) { return "model.layers." + std::to_string(j) + "." + what; };
    EXPECT_EQ(t("model.norm_swiftkv.weight"), t(layer(15, "input_layernorm.weight")));
    for (int64_t j = 15; j < 30; ++j) {
        EXPECT_EQ(t(layer(j, "self_attn.q_proj_swiftkv.weight")), t(layer(j, "self_attn.q_proj.weight"))) << j;
    }
    for (int64_t leader = 15; leader < 30; leader += 3) {
        for (const char* which : {"k", "v"}) {
            const std::string proj = std::string("self_attn.") + which + "_proj.weight";
            const std::vector<float> a = t(layer(leader, proj.c_str())), b = t(layer(leader + 1, proj.c_str())),
                                     c = t(layer(leader + 2, proj.c_str()));
            const std::string sw = std::string("self_attn.") + which + "_proj_swiftkv.weight";
            const std::vector<float> got = t(layer(leader, sw.c_str()));
            ASSERT_EQ(got.size(), a.size());
            double worst = 0;
            for (size_t i = 0; i < a.size(); ++i) {
                const double mean = (double(a[i]) + double(b[i]) + double(c[i])) / 3.0;
                worst = std::max(worst, std::fabs(got[i] - mean));
            }
            EXPECT_LT(worst, 1e-6) << which << " leader " << leader;
            EXPECT_GT(max_abs_diff(got, a), 1e-3) << "the mean differs from a single member";
        }
    }
}

TEST_F(ConvertSmolLM, TeacherGivesTheBaseModelsLogits) {
    const std::vector<float> base = logits_of(kModel, true);
    for (const ConvertResult* r : {half_, g3_}) {
        const std::vector<float> teacher = logits_of(r->out_dir, false);
        ASSERT_EQ(teacher.size(), base.size());
        EXPECT_LT(max_abs_diff(teacher, base), 1e-5) << r->out_dir;
    }
    // The student (SwiftKV on, not yet distilled) runs and differs from the teacher.
    const std::vector<float> student = logits_of(half_->out_dir, true);
    ASSERT_EQ(student.size(), base.size());
    for (float v : student) ASSERT_TRUE(std::isfinite(v));
    EXPECT_GT(max_abs_diff(student, base), 1e-3);
}

TEST_F(ConvertSmolLM, GeneratedTokenizerMatchesTheGguf) {
    const GgufFile gguf(kModel);
    const TokenizerSpec spec = tokenizer_spec_from_gguf(gguf);
    // The same document the Hugging Face-side script builds from this GGUF (it is its oracle's input).
    const nlohmann::json reference = read_json(kData / "tokenizer/data/smollm2_tokenizer.json");
    EXPECT_TRUE(tokenizer_json_from_spec(spec) == reference);

    const fs::path dir = half_->out_dir;
    const nlohmann::json tok_json = read_json(dir / "tokenizer.json");
    const nlohmann::json tok_config = read_json(dir / "tokenizer_config.json");
    EXPECT_TRUE(tok_json == reference);
    EXPECT_EQ(tok_config["chat_template"], chat_template_from_gguf(gguf).value());
    EXPECT_EQ(tok_config["bos_token"], "<|im_start|>");
    EXPECT_EQ(tok_config["eos_token"], "<|im_end|>");
    EXPECT_EQ(tok_config["add_bos_token"], false);
    EXPECT_EQ(tok_config["model_max_length"], 8192);

    const BpeTokenizer from_gguf(spec);
    const BpeTokenizer from_json = BpeTokenizer::from_tokenizer_json(tok_json, &tok_config);
    auto src = ModelSource::open(dir.string());
    const BpeTokenizer loaded = load_tokenizer(*src);
    for (const BpeTokenizer* t : {&from_json, &loaded}) {
        EXPECT_EQ(t->vocab_size(), from_gguf.vocab_size());
        for (const std::string& s : sample_texts()) {
            for (bool parse_special : {true, false}) {
                EXPECT_EQ(t->encode(s, true, parse_special), from_gguf.encode(s, true, parse_special)) << s;
            }
        }
    }
    EXPECT_EQ(from_json.spec().bos_id, spec.bos_id);
    EXPECT_EQ(from_json.spec().eos_id, spec.eos_id);
    EXPECT_EQ(from_json.spec().pad_id, spec.pad_id);
    EXPECT_EQ(from_json.spec().add_bos, spec.add_bos);
    EXPECT_EQ(from_json.spec().eos_ids, spec.eos_ids);
    EXPECT_EQ(load_chat_template(*src), chat_template_from_gguf(gguf));
}

// Converting the bf16 output of a conversion (a Hugging Face source): bytes pass through, the
// tokenizer files are copied, dtype auto stays bf16; the cut at L = N writes no SwiftKV tensors.
TEST_F(ConvertSmolLM, BaseCutBf16AndHuggingFaceSource) {
    ConvertOptions o;
    o.model_path = kModel;
    o.num_kv_layers = "30";
    o.dtype = ConvertDType::BF16;
    o.out_dir = (root_ / "full_bf16").string();
    const ConvertResult full = convert_to_swiftkv(o);
    EXPECT_EQ(full.dtype, DType::BF16);
    const nlohmann::json c = read_json(fs::path(full.out_dir) / "config.json");
    EXPECT_EQ(c["model_type"], "llama_swiftkv");
    EXPECT_EQ(c["num_key_value_layers"], 30);
    EXPECT_EQ(c["torch_dtype"], "bfloat16");
    auto src = ModelSource::open(full.out_dir);
    EXPECT_FALSE(src->config().is_swiftkv());
    EXPECT_EQ(src->tensors().size(), 30u * 9 + 2);
    for (const auto& [name, t] : src->tensors()) {
        EXPECT_EQ(t.dtype, DType::BF16) << name;
        EXPECT_EQ(name.find("swiftkv"), std::string::npos) << name;
    }

    ConvertOptions again;
    again.model_path = full.out_dir;
    again.num_kv_layers = "50%";
    again.group_size = 5;
    again.out_dir = (root_ / "from_hf").string();
    const ConvertResult r = convert_to_swiftkv(again);
    EXPECT_EQ(r.dtype, DType::BF16) << "auto keeps an all-bf16 base in bf16";
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
        std::ifstream a(fs::path(full.out_dir) / f), b(fs::path(r.out_dir) / f);
        EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}), std::string(std::istreambuf_iterator<char>(b), {}))
            << f << " is copied unchanged";
    }
    auto out = ModelSource::open(r.out_dir);
    EXPECT_EQ(out->config().kv_cache_layers(), 15 + 3);
    // Pass-through tensors are byte-identical.
    const SourceTensor& a = *src->find("model.layers.3.mlp.up_proj.weight");
    const SourceTensor& b = *out->find("model.layers.3.mlp.up_proj.weight");
    EXPECT_EQ(std::memcmp(a.data, b.data, size_t(a.numel()) * 2), 0);
    // Teacher logits equal the source's (both loaded as f32 from the same bf16 values).
    const std::vector<float> l_src = logits_of(full.out_dir, true), l_out = logits_of(r.out_dir, false);
    EXPECT_LT(max_abs_diff(l_src, l_out), 1e-5);

    // --force replaces a previous conversion.
    again.force = true;
    again.num_kv_layers = "20";
    const ConvertResult replaced = convert_to_swiftkv(again);
    EXPECT_EQ(ModelSource::open(replaced.out_dir)->config().num_kv_layers, 20);
    expect_no_staging_left(root_);

    // A SwiftKV model is not a base model.
    again.model_path = r.out_dir;
    again.out_dir = (root_ / "twice").string();
    EXPECT_NE(error_of(again).find("already a SwiftKV model"), std::string::npos);
    expect_nothing_left(root_, "twice");
}

TEST_F(ConvertSmolLM, BadInputFailsCleanly) {
    ConvertOptions o;
    o.model_path = kModel;
    o.out_dir = (root_ / "bad").string();
    auto expect_error = [&](const std::string& layers, int64_t group, const std::string& fragment) {
        o.num_kv_layers = layers;
        o.group_size = group;
        const std::string e = error_of(o);
        EXPECT_NE(e.find(fragment), std::string::npos) << layers << " g=" << group << ": " << e;
        expect_nothing_left(root_, "bad");
    };
    expect_error("0", 1, "out of range");
    expect_error("31", 1, "out of range");
    expect_error("-3", 1, "out of range");
    expect_error("0%", 1, "out of range");
    expect_error("150%", 1, "out of range");
    expect_error("half", 1, "neither a layer index");
    expect_error("15", 0, "--group 0 is out of range");
    expect_error("15", 4, "use --swiftkv-layers 14 or 18");
    expect_error("15", 4, "use --group 1, 3, 5, 15");

    // Existing output without --force: refused, untouched.
    fs::create_directories(root_ / "exists");
    { std::ofstream(root_ / "exists" / "keep.txt") << "mine"; }
    o.num_kv_layers = "50%";
    o.group_size = 1;
    o.out_dir = (root_ / "exists").string();
    EXPECT_NE(error_of(o).find("already exists; pass --force"), std::string::npos);
    o.force = true;  // and --force does not delete a folder that is not a model directory
    EXPECT_NE(error_of(o).find("does not look like a model directory"), std::string::npos);
    EXPECT_TRUE(fs::exists(root_ / "exists" / "keep.txt"));
    expect_no_staging_left(root_);
    o.force = false;

    // Unwritable places.
    { std::ofstream(root_ / "a_file") << "x"; }
    o.out_dir = (root_ / "a_file" / "out").string();
    EXPECT_NE(error_of(o).find("cannot"), std::string::npos);
    expect_no_staging_left(root_);
    o.out_dir = "/proc/swiftkv_convert_test_out";
    EXPECT_NE(error_of(o).find("cannot"), std::string::npos);
    EXPECT_FALSE(fs::exists(o.out_dir));

    // An error while writing (here: the progress callback gives up) removes the staging directory
    // and the parent folders convert created.
    o.out_dir = (root_ / "new_parent" / "deeper" / "out").string();
    o.on_progress = [](const ConvertProgress& p) {
        if (p.tensors_done == 5) throw Error("stop here");
    };
    EXPECT_EQ(error_of(o), "stop here");
    EXPECT_FALSE(fs::exists(root_ / "new_parent"));
    o.on_progress = nullptr;

    o.out_dir = (root_ / "bad").string();
    o.model_path = (root_ / "no_such_model.gguf").string();
    EXPECT_NE(error_of(o).find("does not exist"), std::string::npos);
    expect_nothing_left(root_, "bad");
}

TEST(Convert, ParsesTheCut) {
    EXPECT_EQ(parse_swiftkv_layers("50%", 30), 15);
    EXPECT_EQ(parse_swiftkv_layers("33%", 30), 10);  // 9.9 rounds to nearest
    EXPECT_EQ(parse_swiftkv_layers("37.5%", 32), 12);
    EXPECT_EQ(parse_swiftkv_layers("100%", 30), 30);
    EXPECT_EQ(parse_swiftkv_layers(" 15 ", 30), 15);
    EXPECT_EQ(parse_swiftkv_layers("16", 32), 16);
    EXPECT_THROW(parse_swiftkv_layers("15.5", 30), Error);
    EXPECT_THROW(parse_swiftkv_layers("%", 30), Error);
    EXPECT_THROW(parse_swiftkv_layers("", 30), Error);
    EXPECT_NO_THROW(validate_swiftkv_cut(30, 1, 30));
    EXPECT_NO_THROW(validate_swiftkv_cut(16, 4, 32));
    EXPECT_THROW(validate_swiftkv_cut(16, 5, 32), Error);
    EXPECT_THROW(validate_swiftkv_cut(0, 1, 32), Error);
}

TEST(Convert, RecoversLlama3RopeScalingFromGgufDivisors) {
    ModelConfig c;
    c.head_dim = 128;
    c.rope_theta = 500000.0;
    const std::vector<float> plain = c.rope_inv_freq();
    ModelConfig scaled = c;
    scaled.rope_scaling = {RopeScaling::Type::Llama3, 8.0, 1.0, 4.0, 8192};
    const std::vector<float> want = scaled.rope_inv_freq();
    // What llama.cpp's converter stores: plain / scaled per frequency.
    std::vector<float> divisors(plain.size());
    for (size_t i = 0; i < plain.size(); ++i) divisors[i] = plain[i] / want[i];
    const auto r = llama3_rope_scaling_from_divisors(c, divisors);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->type, RopeScaling::Type::Llama3);
    EXPECT_DOUBLE_EQ(r->factor, 8.0);
    EXPECT_DOUBLE_EQ(r->low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(r->high_freq_factor, 4.0);

    const auto none = llama3_rope_scaling_from_divisors(c, std::vector<float>(plain.size(), 1.0f));
    ASSERT_TRUE(none.has_value());
    EXPECT_EQ(none->type, RopeScaling::Type::None);
    std::vector<float> bad(plain.size(), 1.0f);
    for (size_t i = 0; i < bad.size(); i += 2) bad[i] = 3.0f;  // not a llama3 profile
    EXPECT_FALSE(llama3_rope_scaling_from_divisors(c, bad).has_value());
}

// A Llama-3 style vocabulary (llama-bpe pre-tokenizer: BOS added, ignore_merges): the generated
// tokenizer.json gives the ids Hugging Face gave (tests/tokenizer/data/tokenizer_refs.json).
TEST(Convert, Llama3TokenizerJsonMatchesHuggingFace) {
    const GgufFile gguf((kData / "tokenizer/data/tiny_llama_bpe.gguf").string());
    const TokenizerSpec spec = tokenizer_spec_from_gguf(gguf);
    ASSERT_TRUE(spec.add_bos);
    const nlohmann::json doc = tokenizer_json_from_spec(spec);
    const nlohmann::json cfg = tokenizer_config_from_spec(spec, std::nullopt, 8192);
    EXPECT_EQ(doc["model"]["ignore_merges"], true);
    EXPECT_EQ(doc["post_processor"]["type"], "TemplateProcessing");
    const BpeTokenizer tok = BpeTokenizer::from_tokenizer_json(doc, &cfg);
    const BpeTokenizer tok_no_config = BpeTokenizer::from_tokenizer_json(doc);
    const nlohmann::json refs = read_json(kData / "tokenizer/data/tokenizer_refs.json")["tiny_llama_bpe"];
    ASSERT_FALSE(refs["cases"].empty());
    for (const auto& c : refs["cases"]) {
        const std::string text = c["text"].get<std::string>();
        const auto ids = c["ids"].get<std::vector<int32_t>>();
        EXPECT_EQ(tok.encode(text, true, true), ids) << text;
        EXPECT_EQ(tok_no_config.encode(text, true, true), ids) << text << " (BOS from the post-processor)";
    }
    EXPECT_EQ(tok.spec().bos_id, spec.bos_id);
    EXPECT_EQ(tok.spec().eos_ids, spec.eos_ids);
}

// The checkpoint written by scripts/make_tiny_swiftkv_checkpoint.py (no swiftkv code involved).
TEST(Convert, IndependentTinyCheckpointRuns) {
    const fs::path dir = kData / "convert/data/tiny_swiftkv";
    auto src = ModelSource::open(dir.string());
    const ModelConfig& c = src->config();
    EXPECT_EQ(c.architecture, "llama_swiftkv");
    EXPECT_EQ(c.n_layers, 4);
    EXPECT_EQ(c.num_kv_layers, 2);
    EXPECT_EQ(c.kv_group_size, 2);
    EXPECT_FALSE(c.tie_embeddings);
    EXPECT_EQ(src->find("model.layers.3.self_attn.k_proj_swiftkv.weight"), nullptr);
    ASSERT_NE(src->find("model.layers.2.self_attn.k_proj_swiftkv.weight"), nullptr);

    // Its tokenizer tokenizes like Hugging Face did (ids stored by scripts/check_swiftkv_format.py).
    const BpeTokenizer tok = load_tokenizer(*src);
    for (const auto& e : read_json(kData / "convert/data/tiny_swiftkv_tokens.json")) {
        EXPECT_EQ(tok.encode(e["text"].get<std::string>(), false, true), e["ids"].get<std::vector<int32_t>>())
            << e["text"];
    }

    const std::vector<int32_t> tokens = tok.encode("<|im_start|>user\nThe dog runs to the house.<|im_end|>\n", false, true);
    ASSERT_GT(tokens.size(), 5u);
    const std::vector<float> on = logits_of(dir.string(), true, &tokens);
    const std::vector<float> off = logits_of(dir.string(), false, &tokens);
    ASSERT_EQ(on.size(), tokens.size() * size_t(c.vocab));
    ASSERT_EQ(off.size(), on.size());
    for (size_t i = 0; i < on.size(); ++i) {
        ASSERT_TRUE(std::isfinite(on[i]) && std::isfinite(off[i])) << i;
    }
    // Random SwiftKV tensors: the student and the teacher differ.
    EXPECT_GT(max_abs_diff(on, off), 1e-3);
}

// Snowflake's `swiftkv` config key: false runs the checkpoint as its teacher (the original q/k/v of every
// layer, no prefill skipping), true or absent as the SwiftKV student; EngineOptions::swiftkv (the CLI's
// --swiftkv on|off) overrides it either way.
TEST(Convert, SwiftKVConfigKeyPicksTheDefaultRunMode) {
    const fs::path original = kData / "convert/data/tiny_swiftkv";
    const fs::path root = fs::temp_directory_path() / ("swiftkv_test_swiftkv_key_" + std::to_string(::getpid()));
    fs::remove_all(root);
    auto copy_with_key = [&](const std::string& name, const nlohmann::json& value) {
        const fs::path dir = root / name;
        fs::create_directories(dir);
        for (const auto& e : fs::directory_iterator(original)) fs::copy_file(e.path(), dir / e.path().filename());
        nlohmann::json config = read_json(original / "config.json");
        if (value.is_null()) {
            config.erase("swiftkv");
        } else {
            config["swiftkv"] = value;
        }
        std::ofstream(dir / "config.json") << config.dump(2);
        return dir.string();
    };
    const std::string off = copy_with_key("off", false), absent = copy_with_key("absent", nullptr);
    ASSERT_EQ(read_json(original / "config.json")["swiftkv"], true);

    const std::vector<int32_t> tokens = load_tokenizer(*ModelSource::open(original.string()))
                                            .encode("<|im_start|>user\nThe cat sat on the mat.<|im_end|>\n", false, true);
    ASSERT_GT(tokens.size(), 5u);
    const std::vector<float> student = logits_of(original.string(), true, &tokens);
    const std::vector<float> teacher = logits_of(original.string(), false, &tokens);
    ASSERT_GT(max_abs_diff(student, teacher), 1e-3);  // the two modes are distinguishable

    EXPECT_EQ(max_abs_diff(logits_of(original.string(), std::nullopt, &tokens), student), 0.0);  // "swiftkv": true
    EXPECT_EQ(max_abs_diff(logits_of(absent, std::nullopt, &tokens), student), 0.0);             // no key
    EXPECT_EQ(max_abs_diff(logits_of(off, std::nullopt, &tokens), teacher), 0.0);                // "swiftkv": false
    EXPECT_EQ(max_abs_diff(logits_of(off, true, &tokens), student), 0.0);                        // --swiftkv on
    EXPECT_EQ(max_abs_diff(logits_of(off, false, &tokens), teacher), 0.0);                       // --swiftkv off

    // What the engine reports runs: the teacher is the plain base model (L = N, no AcrossKV groups).
    EngineOptions o;
    o.model.path = off;
    o.context_length = 64;
    {
        Engine e(o);
        EXPECT_FALSE(e.config().is_swiftkv());
        EXPECT_EQ(e.config().num_kv_layers, 4);
        EXPECT_EQ(e.config().kv_cache_layers(), 4);
    }
    o.model.swiftkv = true;
    {
        Engine e(o);
        EXPECT_TRUE(e.config().is_swiftkv());
        EXPECT_EQ(e.config().num_kv_layers, 2);
        EXPECT_EQ(e.config().kv_cache_layers(), 3);
    }
    fs::remove_all(root);
}

// The tiny checkpoint's teacher as a llama.cpp-style GGUF (Q/K rows permuted by llama.cpp's own
// permute, written by the gguf package): converting it gives back the checkpoint's Hugging Face
// tensors exactly, a tokenizer that tokenizes like Hugging Face, and the same teacher logits.
TEST(Convert, TinyGgufTeacherRoundTripsToHuggingFaceLayout) {
    const fs::path data = kData / "convert/data";
    const fs::path root = fs::temp_directory_path() / ("swiftkv_test_convert_tiny_" + std::to_string(::getpid()));
    fs::remove_all(root);
    ConvertOptions o;
    o.model_path = (data / "tiny_teacher.gguf").string();
    o.num_kv_layers = "50%";
    o.group_size = 2;
    o.out_dir = (root / "student").string();
    const ConvertResult r = convert_to_swiftkv(o);
    EXPECT_EQ(r.dtype, DType::F32);

    auto original = ModelSource::open((data / "tiny_swiftkv").string());
    auto converted = ModelSource::open(r.out_dir);
    EXPECT_FALSE(converted->config().tie_embeddings);
    EXPECT_EQ(converted->config().num_kv_layers, 2);
    EXPECT_EQ(converted->config().kv_group_size, 2);
    EXPECT_EQ(converted->tensors().size(), original->tensors().size());
    int64_t compared = 0;
    for (const auto& [name, t] : original->tensors()) {
        const SourceTensor* c = converted->find(name);
        ASSERT_NE(c, nullptr) << name;
        EXPECT_EQ(c->shape, t.shape) << name;
        if (name.find("swiftkv") != std::string::npos) continue;  // random in the checkpoint, the init here
        EXPECT_EQ(values(*c), values(t)) << name;
        ++compared;
    }
    EXPECT_EQ(compared, 4 * 9 + 3);

    const BpeTokenizer tok = load_tokenizer(*converted);
    for (const auto& e : read_json(data / "tiny_swiftkv_tokens.json")) {
        EXPECT_EQ(tok.encode(e["text"].get<std::string>(), false, true), e["ids"].get<std::vector<int32_t>>())
            << e["text"];
    }
    const std::vector<int32_t> tokens = tok.encode("The dog runs to the house in the evening.", false, true);
    const std::vector<float> a = logits_of(r.out_dir, false, &tokens);
    const std::vector<float> b = logits_of((data / "tiny_swiftkv").string(), false, &tokens);
    const std::vector<float> gguf = logits_of(o.model_path, true, &tokens);
    EXPECT_LT(max_abs_diff(a, b), 1e-5);
    EXPECT_LT(max_abs_diff(a, gguf), 1e-5);
    fs::remove_all(root);
}
