// SwiftKV in GGUF (docs/swiftkv-gguf.md). GgufWriter: every metadata value type and tensor dtype
// reads back through GgufFile exactly, data streams in pieces, the file appears atomically (nothing
// left behind on error); tests/convert/test_gguf_interop.py reads the same file with the `gguf`
// package (GgufWriterInterop.WriteForPython writes it). `swiftkv convert --format gguf`: the
// student written from the default model (50% g=1; 15 g=3) reads back through ModelSource with
// the config, every tensor (as f32, Hugging Face layout) and the logits of the Hugging Face
// directory conversion of the same cut, bit for bit; the tokenizer copied from the source GGUF (or
// built from a Hugging Face source) encodes like the original; a missing SwiftKV tensor is named.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "convert/gguf_export.h"
#include "convert/swiftkv_convert.h"
#include "core/error.h"
#include "engine/engine.h"
#include "io/gguf_reader.h"
#include "io/gguf_writer.h"
#include "model/model_source.h"
#include "tokenizer/gguf_vocab.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";

fs::path fresh_dir(const std::string& name) {
    const fs::path d = fs::temp_directory_path() / ("swiftkv_test_gguf_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// Nothing but `keep` in dir (no temporary files of the writer).
void expect_only(const fs::path& dir, const std::vector<std::string>& keep) {
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        EXPECT_TRUE(std::find(keep.begin(), keep.end(), n) != keep.end()) << "leftover " << e.path();
    }
}

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "<no error>";
}

// --- The interop file: its contents are spelled out again in test_gguf_interop.py. ---

std::vector<float> interop_values(int64_t n, int variant) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        v[size_t(i)] = variant == 0 ? float(i) * 0.25f - 1.0f
                                    : float((i % 7) - 3) + 0.5f * float(i % 2);  // exact in f16 and bf16
    }
    return v;
}

std::vector<float> q8_source_values() {
    std::vector<float> v(128);
    for (size_t i = 0; i < v.size(); ++i) v[i] = float(std::sin(double(i) * 0.37) * (i < 64 ? 3.0 : 0.01));
    v[40] = 0.0f;
    for (size_t i = 96; i < 128; ++i) v[i] = 0.0f;  // an all-zero block: scale 0
    return v;
}

void write_interop_file(const std::string& path) {
    GgufWriterOptions o;
    o.overwrite = true;
    GgufWriter w(path, o);
    w.add_string("general.architecture", "test");
    w.add_string("general.name", "gguf writer interop");
    w.add_u8("test.u8", 200);
    w.add_i8("test.i8", -100);
    w.add_u16("test.u16", 60000);
    w.add_i16("test.i16", -30000);
    w.add_u32("test.u32", 4000000000u);
    w.add_i32("test.i32", -2000000000);
    w.add_u64("test.u64", 18000000000000000000ull);
    w.add_i64("test.i64", -9000000000000000000ll);
    w.add_f32("test.f32", 3.25f);
    w.add_f64("test.f64", -1.0e300);
    w.add_bool("test.bool", true);
    w.add_string("test.string", "h\xc3\xa9llo \xe2\x9c\x93 w\xc3\xb6rld");
    w.add_string("test.empty_string", "");
    w.add_int_array("test.array.u8", GgufType::U8, {0, 1, 255});
    w.add_int_array("test.array.i8", GgufType::I8, {-128, 0, 127});
    w.add_int_array("test.array.u16", GgufType::U16, {0, 65535});
    w.add_int_array("test.array.i16", GgufType::I16, {-32768, 32767});
    w.add_int_array("test.array.u32", GgufType::U32, {0, 4294967295ll});
    w.add_int_array("test.array.i32", GgufType::I32, {-2147483648ll, 2147483647});
    w.add_int_array("test.array.u64", GgufType::U64, {0, int64_t(uint64_t(1) << 63)});  // bit pattern
    w.add_int_array("test.array.i64", GgufType::I64, {INT64_MIN, INT64_MAX});
    w.add_float_array("test.array.f32", GgufType::F32, {0.5, -1.5, 1e30});
    w.add_float_array("test.array.f64", GgufType::F64, {0.1, -2.5e-300});
    w.add_bool_array("test.array.bool", {true, false, true});
    w.add_string_array("test.array.string", {"a", "", "\xc3\xbcn\xc3\xaf" "code", "with space"});
    w.add_int_array("test.array.empty", GgufType::I32, {});

    const std::vector<float> f32 = interop_values(15, 0), small = interop_values(8, 1), v3 = interop_values(24, 0);
    const std::vector<float> q8 = q8_source_values();
    w.add_tensor("t.f32", DType::F32, {3, 5});
    w.add_tensor("t.f16", DType::F16, {2, 4});
    w.add_tensor("t.bf16", DType::BF16, {8});
    w.add_tensor("t.q8_0", DType::Q8_0, {2, 64});
    w.add_tensor("t.q8_0.source", DType::F32, {2, 64});
    w.add_tensor("t.3d", DType::F32, {2, 3, 4});

    w.append(f32.data(), 4 * 7);  // in pieces, across element boundaries
    w.append(f32.data() + 7, 4 * 8);
    std::vector<uint16_t> half(8);
    for (size_t i = 0; i < 8; ++i) half[i] = f32_to_f16(small[i]);
    w.append(half.data(), 16);
    for (size_t i = 0; i < 8; ++i) half[i] = f32_to_bf16(small[i]);
    const auto* bytes = reinterpret_cast<const uint8_t*>(half.data());
    for (size_t i = 0; i < 16; ++i) w.append(bytes + i, 1);
    std::vector<uint8_t> quantized(4 * 34);
    quantize_q8_0(q8.data(), quantized.data(), 128);
    w.append(quantized.data(), quantized.size());
    w.append(q8.data(), q8.size() * 4);
    w.append(v3.data(), v3.size() * 4);
    w.finish();
}

}  // namespace

// --- GgufWriter ---

TEST(GgufWriter, EveryValueTypeAndDtypeReadsBack) {
    const fs::path dir = fresh_dir("writer");
    const std::string path = (dir / "types.gguf").string();
    write_interop_file(path);
    expect_only(dir, {"types.gguf"});

    const GgufFile f(path);
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), 32u);
    EXPECT_EQ(f.data_offset() % 32, 0u);
    auto type_of = [&](const char* key) { return GgufType(f.metadata().at(key).gguf_type); };
    auto array_type_of = [&](const char* key) { return GgufType(f.metadata().at(key).array_type); };
    EXPECT_EQ(f.get_int("general.alignment"), 32);
    EXPECT_EQ(type_of("general.alignment"), GgufType::U32);
    const std::pair<const char*, GgufType> scalar_types[] = {
        {"test.u8", GgufType::U8},   {"test.i8", GgufType::I8},   {"test.u16", GgufType::U16},
        {"test.i16", GgufType::I16}, {"test.u32", GgufType::U32}, {"test.i32", GgufType::I32},
        {"test.u64", GgufType::U64}, {"test.i64", GgufType::I64}, {"test.f32", GgufType::F32},
        {"test.f64", GgufType::F64}, {"test.bool", GgufType::BOOL}, {"test.string", GgufType::STRING}};
    for (const auto& [key, type] : scalar_types) EXPECT_EQ(type_of(key), type) << key;
    EXPECT_EQ(f.get_int("test.u8"), 200);
    EXPECT_EQ(f.get_int("test.i8"), -100);
    EXPECT_EQ(f.get_int("test.u16"), 60000);
    EXPECT_EQ(f.get_int("test.i16"), -30000);
    EXPECT_EQ(f.get_int("test.u32"), 4000000000ll);
    EXPECT_EQ(f.get_int("test.i32"), -2000000000);
    EXPECT_EQ(std::get<uint64_t>(f.metadata().at("test.u64").value), 18000000000000000000ull);
    EXPECT_EQ(f.get_int("test.i64"), -9000000000000000000ll);
    EXPECT_EQ(f.get_float("test.f32"), 3.25);
    EXPECT_EQ(f.get_float("test.f64"), -1.0e300);
    EXPECT_TRUE(f.get_bool("test.bool"));
    EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo \xe2\x9c\x93 w\xc3\xb6rld");
    EXPECT_EQ(f.get_string("test.empty_string"), "");

    const std::pair<const char*, GgufType> array_types[] = {
        {"test.array.u8", GgufType::U8},   {"test.array.i8", GgufType::I8},   {"test.array.u16", GgufType::U16},
        {"test.array.i16", GgufType::I16}, {"test.array.u32", GgufType::U32}, {"test.array.i32", GgufType::I32},
        {"test.array.u64", GgufType::U64}, {"test.array.i64", GgufType::I64}, {"test.array.f32", GgufType::F32},
        {"test.array.f64", GgufType::F64}, {"test.array.bool", GgufType::BOOL},
        {"test.array.string", GgufType::STRING}, {"test.array.empty", GgufType::I32}};
    for (const auto& [key, type] : array_types) {
        EXPECT_EQ(type_of(key), GgufType::ARRAY) << key;
        EXPECT_EQ(array_type_of(key), type) << key;
    }
    EXPECT_EQ(f.get_int_array("test.array.u8"), (std::vector<int64_t>{0, 1, 255}));
    EXPECT_EQ(f.get_int_array("test.array.i8"), (std::vector<int64_t>{-128, 0, 127}));
    EXPECT_EQ(f.get_int_array("test.array.u16"), (std::vector<int64_t>{0, 65535}));
    EXPECT_EQ(f.get_int_array("test.array.i16"), (std::vector<int64_t>{-32768, 32767}));
    EXPECT_EQ(f.get_int_array("test.array.u32"), (std::vector<int64_t>{0, 4294967295ll}));
    EXPECT_EQ(f.get_int_array("test.array.i32"), (std::vector<int64_t>{-2147483648ll, 2147483647}));
    EXPECT_EQ(f.get_float_array("test.array.u64"), (std::vector<double>{0.0, 9223372036854775808.0}));
    EXPECT_EQ(f.get_int_array("test.array.i64"), (std::vector<int64_t>{INT64_MIN, INT64_MAX}));
    EXPECT_EQ(f.get_float_array("test.array.f32"), (std::vector<double>{0.5, -1.5, double(1e30f)}));
    EXPECT_EQ(f.get_float_array("test.array.f64"), (std::vector<double>{0.1, -2.5e-300}));
    const auto& bools = std::get<std::vector<bool>>(std::get<GgufValue::Array>(f.metadata().at("test.array.bool").value));
    EXPECT_EQ(bools, (std::vector<bool>{true, false, true}));
    EXPECT_EQ(f.get_string_array("test.array.string"),
              (std::vector<std::string>{"a", "", "\xc3\xbcn\xc3\xaf" "code", "with space"}));
    EXPECT_TRUE(f.get_int_array("test.array.empty").empty());

    ASSERT_EQ(f.tensors().size(), 6u);
    const std::vector<std::tuple<std::string, DType, std::vector<int64_t>>> expected = {
        {"t.f32", DType::F32, {3, 5}},      {"t.f16", DType::F16, {2, 4}},
        {"t.bf16", DType::BF16, {8}},       {"t.q8_0", DType::Q8_0, {2, 64}},
        {"t.q8_0.source", DType::F32, {2, 64}}, {"t.3d", DType::F32, {2, 3, 4}}};
    for (size_t i = 0; i < expected.size(); ++i) {
        const GgufTensorInfo& t = f.tensors()[i];
        EXPECT_EQ(t.name, std::get<0>(expected[i]));
        EXPECT_EQ(t.dtype, std::get<1>(expected[i])) << t.name;
        EXPECT_EQ(t.shape, std::get<2>(expected[i])) << t.name;
        EXPECT_EQ(t.offset % 32, 0u) << t.name;
    }
    auto read = [&](const char* name) {
        const GgufTensorInfo& t = f.tensor(name);
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        std::vector<float> v(static_cast<size_t>(n));
        dequantize_to_f32(t.dtype, t.data, v.data(), n);
        return v;
    };
    EXPECT_EQ(read("t.f32"), interop_values(15, 0));
    EXPECT_EQ(read("t.f16"), interop_values(8, 1));
    EXPECT_EQ(read("t.bf16"), interop_values(8, 1));
    EXPECT_EQ(read("t.q8_0.source"), q8_source_values());
    EXPECT_EQ(read("t.3d"), interop_values(24, 0));
    // Q8_0: within half a step of each block's scale; the zero block stays zero.
    const std::vector<float> q = read("t.q8_0"), x = q8_source_values();
    for (size_t b = 0; b < 4; ++b) {
        float amax = 0;
        for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
        for (size_t i = 0; i < 32; ++i) {
            EXPECT_LE(std::fabs(q[b * 32 + i] - x[b * 32 + i]), amax / 127.0f * 0.5f + amax * 1e-3f) << b << " " << i;
        }
    }
    EXPECT_EQ(q[40], 0.0f);
    for (size_t i = 96; i < 128; ++i) EXPECT_EQ(q[i], 0.0f);
    // File size: the data section ends at the last tensor's data, padded to the alignment.
    const GgufTensorInfo& last = f.tensors().back();
    EXPECT_EQ(fs::file_size(path), (last.offset + last.nbytes + 31) / 32 * 32);
    fs::remove_all(dir);
}

// Not a check on its own: writes the file test_gguf_interop.py reads with the `gguf` package.
TEST(GgufWriterInterop, WriteForPython) {
    const char* out = std::getenv("SWIFTKV_GGUF_INTEROP_OUT");
    if (out == nullptr) GTEST_SKIP() << "SWIFTKV_GGUF_INTEROP_OUT not set (run by test_gguf_interop.py)";
    write_interop_file((fs::path(out) / "cpp_written.gguf").string());
}

TEST(GgufWriter, ErrorsLeaveNothingBehind) {
    const fs::path dir = fresh_dir("writer_errors");
    const std::string path = (dir / "x.gguf").string();
    {
        GgufWriter w(path);
        w.add_string("general.architecture", "test");
        EXPECT_NE(error_of([&] { w.add_string("general.architecture", "again"); }).find("given twice"),
                  std::string::npos);
        EXPECT_NE(error_of([&] { w.add_int_array("k", GgufType::U8, {256}); }).find("does not fit"), std::string::npos);
        EXPECT_NE(error_of([&] { w.add_int_array("k", GgufType::F32, {1}); }).find("integer array"), std::string::npos);
        EXPECT_NE(error_of([&] { w.add_tensor(std::string(64, 'n'), DType::F32, {4}); }).find("63 bytes"),
                  std::string::npos);
        EXPECT_NE(error_of([&] { w.add_tensor("q", DType::Q8_0, {2, 48}); }).find("multiple of 32"), std::string::npos);
        EXPECT_NE(error_of([&] { w.add_tensor("z", DType::F32, {0}); }).find("invalid dimension"), std::string::npos);
        EXPECT_NE(error_of([&] { w.add_tensor("i", DType::I32, {4}); }).find("cannot be stored"), std::string::npos);
        w.add_tensor("a", DType::F32, {4});
        w.add_tensor("b", DType::F32, {4});
        EXPECT_NE(error_of([&] { w.add_tensor("a", DType::F32, {4}); }).find("given twice"), std::string::npos);
        const float data[4] = {1, 2, 3, 4};
        w.append(data, 16);
        EXPECT_NE(error_of([&] { w.add_string("late", "x"); }).find("after the tensor data"), std::string::npos);
        EXPECT_NE(error_of([&] { w.append(data, 20); }).find("past the end"), std::string::npos);
        // Tensor "b" never gets its data.
        EXPECT_NE(error_of([&] { w.finish(); }).find("tensor 'b' has 0 of 16 bytes"), std::string::npos);
    }
    expect_only(dir, {});
    {
        GgufWriter w(path);  // abandoned mid-way: the destructor removes the temporary file
        w.add_tensor("a", DType::F32, {4});
        const float data[2] = {1, 2};
        w.append(data, 8);
        bool tmp_exists = false;
        for (const auto& e : fs::directory_iterator(dir)) tmp_exists |= e.path().filename().string().find(".tmp-") != std::string::npos;
        EXPECT_TRUE(tmp_exists);
    }
    expect_only(dir, {});

    // An existing file is kept unless overwrite is set.
    std::ofstream(path) << "keep me";
    EXPECT_NE(error_of([&] { GgufWriter w(path); }).find("already exists"), std::string::npos);
    {
        GgufWriterOptions o;
        o.overwrite = true;
        GgufWriter w(path, o);
        w.add_string("general.architecture", "test");
        w.finish();
    }
    EXPECT_EQ(GgufFile(path).get_string("general.architecture"), "test");
    EXPECT_EQ(GgufFile(path).tensors().size(), 0u);
    expect_only(dir, {"x.gguf"});
    EXPECT_NE(error_of([&] { GgufWriter w((dir / "no" / "such" / "x.gguf").string()); }).find("does not exist"),
              std::string::npos);
    fs::create_directories(dir / "d.gguf");
    GgufWriterOptions o;
    o.overwrite = true;
    EXPECT_NE(error_of([&] { GgufWriter w((dir / "d.gguf").string(), o); }).find("not a regular file"),
              std::string::npos);
    fs::remove_all(dir);
}

TEST(GgufWriter, Q8_0MatchesTheReferenceRounding) {
    // ggml's quantize_row_q8_0_ref: d = amax / 127 (stored f16), q = roundf(x / d) with halves away from zero.
    std::vector<float> x(32);
    for (int i = 0; i < 32; ++i) x[size_t(i)] = float(i - 16) * 0.5f;  // amax 8, d = 8/127
    x[31] = 8.0f;
    std::vector<uint8_t> q(34);
    quantize_q8_0(x.data(), q.data(), 32);
    const float d = 8.0f / 127.0f;
    EXPECT_EQ(uint16_t(q[0] | (q[1] << 8)), f32_to_f16(d));
    for (int i = 0; i < 32; ++i) EXPECT_EQ(int8_t(q[size_t(2 + i)]), int8_t(std::roundf(x[size_t(i)] * (1.0f / d)))) << i;
    EXPECT_EQ(int8_t(q[2 + 31]), 127);
    EXPECT_EQ(int8_t(q[2 + 0]), -127);
}

// --- swiftkv convert --format gguf ---

namespace {

std::vector<float> logits_of(const std::string& model, bool swiftkv) {
    EngineOptions o;
    o.model.path = model;
    o.context_length = 128;
    o.model.swiftkv = swiftkv;
    Engine e(o);
    const std::vector<int32_t> t = e.tokenizer().encode(
        "<|im_start|>user\nWhat is the capital of France, and why is it famous?<|im_end|>\n<|im_start|>assistant\n",
        false, true);
    return e.prompt_logits(t, {});
}

std::vector<float> rows_f32(const SourceTensor& t, int64_t head_dim) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    std::vector<float> v(size_t(t.numel()));
    read_source_rows_f32(t, 0, rows, head_dim, v.data());
    return v;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
    EXPECT_EQ(a.architecture, b.architecture);
    EXPECT_EQ(a.n_layers, b.n_layers);
    EXPECT_EQ(a.hidden, b.hidden);
    EXPECT_EQ(a.n_heads, b.n_heads);
    EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
    EXPECT_EQ(a.head_dim, b.head_dim);
    EXPECT_EQ(a.ffn, b.ffn);
    EXPECT_EQ(a.vocab, b.vocab);
    EXPECT_EQ(a.max_position, b.max_position);
    EXPECT_EQ(a.rms_eps, b.rms_eps);
    EXPECT_EQ(a.rope_theta, b.rope_theta);
    EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
    EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
    EXPECT_EQ(a.num_kv_layers, b.num_kv_layers);
    EXPECT_EQ(a.kv_group_size, b.kv_group_size);
}

// Every tensor of `hf` is in `gguf` with the same shape and, read as f32 in Hugging Face layout
// (the GGUF side un-permuted by the loader), the same bits; and nothing else is.
void expect_same_tensors(const ModelSource& gguf, const ModelSource& hf) {
    const int64_t hd = hf.config().head_dim;
    EXPECT_EQ(gguf.tensors().size() - (gguf.find("rope_freqs.weight") ? 1 : 0), hf.tensors().size());
    for (const auto& [name, t] : hf.tensors()) {
        const SourceTensor* g = gguf.find(name);
        ASSERT_NE(g, nullptr) << name;
        EXPECT_EQ(g->shape, t.shape) << name;
        EXPECT_EQ(g->file_name, gguf_name_from_canonical(name));
        EXPECT_EQ(g->gguf_rope_permuted, convert_detail::is_rope_permuted_name(name)) << name;
        EXPECT_TRUE(bitwise_equal(rows_f32(*g, hd), rows_f32(t, hd))) << name;
    }
}

std::vector<std::string> sample_texts() {
    return {"Hello, world!",
            "The capital of France is Paris. 12345 + 678 = 13023",
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n",
            "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
            "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e, emoji \xf0\x9f\x98\x80 \xe2\x80\x94 \xe2\x80\x9cquotes\xe2\x80\x9d",
            "   spaces   and\ttabs\n\n\nnewlines  ",
            "I'm you're he's we've they'll I'd can't DON'T",
            ""};
}

void expect_same_tokenizer(const ModelSource& a, const ModelSource& b) {
    const BpeTokenizer ta = load_tokenizer(a), tb = load_tokenizer(b);
    EXPECT_EQ(ta.vocab_size(), tb.vocab_size());
    EXPECT_EQ(ta.spec().bos_id, tb.spec().bos_id);
    EXPECT_EQ(ta.spec().eos_id, tb.spec().eos_id);
    EXPECT_EQ(ta.spec().eos_ids, tb.spec().eos_ids);
    EXPECT_EQ(ta.spec().add_bos, tb.spec().add_bos);
    for (const std::string& s : sample_texts()) {
        for (bool parse_special : {true, false}) {
            EXPECT_EQ(ta.encode(s, true, parse_special), tb.encode(s, true, parse_special)) << s;
        }
    }
    EXPECT_EQ(load_chat_template(a), load_chat_template(b));
}

struct Cut {
    std::string layers;
    int64_t group;
    std::string name;
};

class ConvertGguf : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!fs::exists(kModel)) return;
        root_ = fresh_dir("convert");
        try {
            for (const Cut& cut : cuts()) {
                ConvertOptions o;
                o.model_path = kModel;
                o.num_kv_layers = cut.layers;
                o.group_size = cut.group;
                o.out_dir = (root_ / (cut.name + "_hf")).string();
                convert_to_swiftkv(o);
                o.format = ConvertFormat::Gguf;
                o.out_dir = (root_ / (cut.name + ".gguf")).string();
                const ConvertResult r = convert_to_swiftkv(o);
                EXPECT_EQ(r.out_dir, o.out_dir);
                EXPECT_EQ(r.weight_files, std::vector<std::string>{cut.name + ".gguf"});
                EXPECT_EQ(r.dtype, DType::F32);
            }
        } catch (const std::exception& e) {
            setup_error_ = e.what();
        }
    }
    static void TearDownTestSuite() {
        if (!root_.empty()) fs::remove_all(root_);
    }
    void SetUp() override {
        if (root_.empty()) GTEST_SKIP() << "default model not found at " << kModel;
        ASSERT_TRUE(setup_error_.empty()) << "converting the default model failed: " << setup_error_;
    }
    static std::vector<Cut> cuts() { return {{"50%", 1, "half"}, {"15", 3, "g3"}}; }
    static std::string gguf(const Cut& c) { return (root_ / (c.name + ".gguf")).string(); }
    static std::string hf(const Cut& c) { return (root_ / (c.name + "_hf")).string(); }
    static fs::path root_;
    static std::string setup_error_;
};
fs::path ConvertGguf::root_;
std::string ConvertGguf::setup_error_;

}  // namespace

TEST_F(ConvertGguf, MetadataAndConfig) {
    const GgufFile source(kModel);
    for (const Cut& cut : cuts()) {
        const GgufFile f(gguf(cut));
        EXPECT_EQ(f.version(), 3u);
        EXPECT_EQ(f.get_string("general.architecture"), "llama_swiftkv");
        EXPECT_EQ(f.get_int("general.alignment"), 32);
        EXPECT_EQ(f.get_int("general.file_type"), 0);
        EXPECT_EQ(f.get_int("llama_swiftkv.swiftkv.num_key_value_layers"), 15);
        EXPECT_EQ(f.get_int("llama_swiftkv.swiftkv.key_value_group_size"), cut.group);
        EXPECT_EQ(f.get_int("llama_swiftkv.block_count"), 30);
        EXPECT_EQ(f.get_int("llama_swiftkv.embedding_length"), 576);
        EXPECT_EQ(f.get_int("llama_swiftkv.attention.head_count"), 9);
        EXPECT_EQ(f.get_int("llama_swiftkv.attention.head_count_kv"), 3);
        EXPECT_EQ(f.get_int("llama_swiftkv.attention.key_length"), 64);
        EXPECT_EQ(f.get_int("llama_swiftkv.feed_forward_length"), 1536);
        EXPECT_EQ(f.get_int("llama_swiftkv.vocab_size"), 49152);
        EXPECT_EQ(f.get_float("llama_swiftkv.rope.freq_base"), source.get_float("llama.rope.freq_base"));
        EXPECT_EQ(f.get_float("llama_swiftkv.attention.layer_norm_rms_epsilon"),
                  source.get_float("llama.attention.layer_norm_rms_epsilon"));
        for (const auto& [key, value] : f.metadata()) EXPECT_NE(key.rfind("llama.", 0), 0u) << key;
        // The tokenizer keys are the source's, types included.
        for (const auto& [key, value] : source.metadata()) {
            if (key.rfind("tokenizer.", 0) != 0) continue;
            ASSERT_TRUE(f.has(key)) << key;
            EXPECT_EQ(f.metadata().at(key).gguf_type, value.gguf_type) << key;
            EXPECT_EQ(f.metadata().at(key).array_type, value.array_type) << key;
            EXPECT_TRUE(f.metadata().at(key).value == value.value) << key;
        }
        auto from_gguf = ModelSource::open(gguf(cut));
        auto from_hf = ModelSource::open(hf(cut));
        expect_same_config(from_gguf->config(), from_hf->config());
        EXPECT_EQ(from_gguf->config().kv_cache_layers(), 15 + 15 / cut.group);
    }
}

TEST_F(ConvertGguf, EveryTensorEqualsTheHuggingFaceConversion) {
    for (const Cut& cut : cuts()) {
        auto from_gguf = ModelSource::open(gguf(cut));
        auto from_hf = ModelSource::open(hf(cut));
        expect_same_tensors(*from_gguf, *from_hf);
        // llama.cpp's names, and the teacher's Q/K are the source's rows in the source's order.
        const GgufFile f(gguf(cut)), source(kModel);
        EXPECT_NE(f.find_tensor("swiftkv_norm.weight"), nullptr);
        EXPECT_NE(f.find_tensor("blk.29.attn_q_swiftkv.weight"), nullptr);
        EXPECT_NE(f.find_tensor("blk.15.attn_k_swiftkv.weight"), nullptr);
        EXPECT_EQ(f.find_tensor("blk.16.attn_k_swiftkv.weight") != nullptr, cut.group == 1);
        EXPECT_EQ(f.find_tensor("output.weight"), nullptr) << "tied embeddings";
        for (const char* name : {"blk.3.attn_q.weight", "blk.20.attn_k.weight"}) {
            const GgufTensorInfo& s = source.tensor(name);
            const GgufTensorInfo& t = f.tensor(name);
            std::vector<float> a(size_t(s.shape[0] * s.shape[1])), b(a.size());
            dequantize_to_f32(s.dtype, s.data, a.data(), int64_t(a.size()));
            dequantize_to_f32(t.dtype, t.data, b.data(), int64_t(b.size()));
            EXPECT_TRUE(bitwise_equal(a, b)) << name;
        }
    }
}

TEST_F(ConvertGguf, LogitsEqualTheHuggingFaceDirectory) {
    for (const Cut& cut : cuts()) {
        for (bool swiftkv : {true, false}) {
            const std::vector<float> a = logits_of(gguf(cut), swiftkv), b = logits_of(hf(cut), swiftkv);
            ASSERT_EQ(a.size(), b.size());
            EXPECT_TRUE(bitwise_equal(a, b)) << cut.name << " swiftkv " << swiftkv;
        }
    }
    // The teacher is the base model, bit for bit (f32 holds Q4_1 exactly).
    EXPECT_TRUE(bitwise_equal(logits_of(gguf(cuts()[0]), false), logits_of(kModel, true)));
}

TEST_F(ConvertGguf, TokenizerEncodesLikeTheSource) {
    auto source = ModelSource::open(kModel);
    for (const Cut& cut : cuts()) {
        auto written = ModelSource::open(gguf(cut));
        expect_same_tokenizer(*written, *source);
    }
}

TEST_F(ConvertGguf, MissingSwiftKVTensorIsNamed) {
    // A copy of the g = 3 file without one SwiftKV tensor, written with GgufWriter.
    const GgufFile f(gguf(cuts()[1]));
    for (const std::string drop : {"blk.21.attn_k_swiftkv.weight", "blk.17.attn_q_swiftkv.weight",
                                   "swiftkv_norm.weight"}) {
        const std::string path = (root_ / "missing.gguf").string();
        {
            GgufWriterOptions o;
            o.overwrite = true;
            GgufWriter w(path, o);
            for (const auto& [key, value] : f.metadata()) {
                if (key != "general.alignment") w.add_value(key, value);
            }
            for (const GgufTensorInfo& t : f.tensors()) {
                if (t.name != drop) w.add_tensor(t.name, t.dtype, t.shape);
            }
            for (const GgufTensorInfo& t : f.tensors()) {
                if (t.name != drop) w.append(t.data, t.nbytes);
            }
            w.finish();
        }
        const std::string canonical = *canonical_name_from_gguf(drop);
        const std::string message = error_of([&] { logits_of(path, true); });
        EXPECT_NE(message.find(canonical), std::string::npos) << message;
        // The teacher does not need it.
        if (drop != "swiftkv_norm.weight") {
            const size_t n = logits_of(path, false).size();
            EXPECT_TRUE(n > 0 && n % 49152 == 0) << n;
        }
    }
}

TEST_F(ConvertGguf, HuggingFaceSourceAndFullCut) {
    // L = N: a plain "llama" GGUF, bitwise the base model.
    ConvertOptions o;
    o.model_path = kModel;
    o.num_kv_layers = "30";
    o.format = ConvertFormat::Gguf;
    o.out_dir = (root_ / "base.gguf").string();
    const ConvertResult base = convert_to_swiftkv(o);
    EXPECT_EQ(base.config.architecture, "llama");
    const GgufFile f(base.out_dir);
    EXPECT_EQ(f.get_string("general.architecture"), "llama");
    EXPECT_EQ(f.get_int("llama.block_count"), 30);
    EXPECT_FALSE(f.has("llama.swiftkv.num_key_value_layers"));
    EXPECT_TRUE(bitwise_equal(logits_of(base.out_dir, true), logits_of(kModel, true)));

    // A Hugging Face source (the f32 base directory): Q/K are permuted on the way out, the tokenizer
    // metadata is built from tokenizer.json; the result equals the GGUF-source conversion.
    o.format = ConvertFormat::HuggingFace;
    o.out_dir = (root_ / "base_hf").string();
    convert_to_swiftkv(o);
    o.model_path = o.out_dir;
    o.num_kv_layers = "15";
    o.group_size = 3;
    o.format = ConvertFormat::Gguf;
    o.out_dir = (root_ / "from_hf.gguf").string();
    convert_to_swiftkv(o);
    auto a = ModelSource::open(o.out_dir);
    auto b = ModelSource::open(gguf(cuts()[1]));
    expect_same_config(a->config(), b->config());
    expect_same_tensors(*a, *b);
    expect_same_tokenizer(*a, *b);
    const GgufFile written(o.out_dir);
    EXPECT_EQ(written.get_string("tokenizer.ggml.model"), "gpt2");
    EXPECT_EQ(written.get_string("tokenizer.ggml.pre"), "smollm");
    EXPECT_EQ(written.get_string_array("tokenizer.ggml.tokens"), GgufFile(kModel).get_string_array("tokenizer.ggml.tokens"));
    EXPECT_EQ(written.get_string_array("tokenizer.ggml.merges"), GgufFile(kModel).get_string_array("tokenizer.ggml.merges"));
    EXPECT_TRUE(bitwise_equal(logits_of(o.out_dir, true), logits_of(gguf(cuts()[1]), true)));
}

TEST_F(ConvertGguf, Bf16AndQ8_0) {
    ConvertOptions o;
    o.model_path = kModel;
    o.num_kv_layers = "50%";
    o.format = ConvertFormat::Gguf;
    const std::vector<float> reference = logits_of(gguf(cuts()[0]), true);
    for (const auto& [dtype, stored, tolerance] :
         {std::tuple{ConvertDType::BF16, DType::BF16, 1.0}, std::tuple{ConvertDType::Q8_0, DType::Q8_0, 2.0}}) {
        o.dtype = dtype;
        o.out_dir = (root_ / fmt::format("half_{}.gguf", dtype_name(stored))).string();
        const ConvertResult r = convert_to_swiftkv(o);
        EXPECT_EQ(r.dtype, stored);
        const GgufFile f(r.out_dir);
        EXPECT_EQ(f.get_int("general.file_type"), stored == DType::BF16 ? 32 : 7);
        for (const GgufTensorInfo& t : f.tensors()) EXPECT_EQ(t.dtype, t.shape.size() == 2 ? stored : DType::F32) << t.name;
        const std::vector<float> l = logits_of(r.out_dir, true);
        ASSERT_EQ(l.size(), reference.size());
        double worst = 0;
        for (size_t i = 0; i < l.size(); ++i) worst = std::max(worst, double(std::fabs(l[i] - reference[i])));
        EXPECT_LT(worst, tolerance) << dtype_name(stored);
        const size_t last = l.size() - 49152;
        EXPECT_EQ(std::max_element(l.begin() + last, l.end()) - l.begin(),
                  std::max_element(reference.begin() + last, reference.end()) - reference.begin());
        EXPECT_GT(worst, 0.0) << dtype_name(stored);
    }
    o.format = ConvertFormat::HuggingFace;
    o.dtype = ConvertDType::Q8_0;
    o.out_dir = (root_ / "q8_hf").string();
    EXPECT_NE(error_of([&] { convert_to_swiftkv(o); }).find("--format gguf"), std::string::npos);
}

TEST_F(ConvertGguf, BadOutputFailsCleanly) {
    const fs::path dir = root_ / "bad";
    fs::create_directories(dir);
    ConvertOptions o;
    o.model_path = kModel;
    o.num_kv_layers = "50%";
    o.format = ConvertFormat::Gguf;
    o.out_dir = (dir / "x.gguf").string();
    std::ofstream(o.out_dir) << "keep me";
    EXPECT_NE(error_of([&] { convert_to_swiftkv(o); }).find("--force"), std::string::npos);
    EXPECT_EQ(fs::file_size(o.out_dir), 7u);
    // Aborted half way (the progress callback throws): the old file stays, no temporary file is left.
    o.force = true;
    o.on_progress = [](const ConvertProgress& p) {
        if (p.tensors_done == 100) SKV_THROW("stop");
    };
    EXPECT_EQ(error_of([&] { convert_to_swiftkv(o); }), "stop");
    EXPECT_EQ(fs::file_size(o.out_dir), 7u);
    expect_only(dir, {"x.gguf"});
    o.on_progress = nullptr;
    EXPECT_EQ(convert_to_swiftkv(o).tensors, 318);
    EXPECT_EQ(ModelSource::open(o.out_dir)->config().num_kv_layers, 15);
    expect_only(dir, {"x.gguf"});
    // The base model itself is never the output (checked before --force would matter).
    o.force = false;
    o.out_dir = kModel;
    EXPECT_NE(error_of([&] { convert_to_swiftkv(o); }).find("base model itself"), std::string::npos);
    EXPECT_TRUE(fs::exists(kModel));
    o.force = true;
    o.out_dir = dir.string();
    EXPECT_NE(error_of([&] { convert_to_swiftkv(o); }).find("not a regular file"), std::string::npos);
}

// A Hugging Face source with Llama-3 RoPE scaling (the tiny teacher's config patched): the GGUF
// carries it as llama.cpp's rope_freqs divisors and runs like the directory; the tokenizer
// metadata built from its tokenizer.json tokenizes like the reference ids.
TEST(ConvertGgufTiny, Llama3RopeScalingAndTokenizerFromHuggingFace) {
    const fs::path data = fs::path(SWIFTKV_SOURCE_DIR) / "tests/convert/data";
    const fs::path root = fresh_dir("tiny");
    ConvertOptions o;
    o.model_path = (data / "tiny_teacher.gguf").string();
    o.num_kv_layers = "4";
    o.out_dir = (root / "base").string();
    convert_to_swiftkv(o);
    nlohmann::json config;
    {
        std::ifstream in(root / "base" / "config.json");
        config = nlohmann::json::parse(in);
    }
    config["rope_scaling"] = {{"rope_type", "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 64}};
    std::ofstream(root / "base" / "config.json") << config.dump(2);

    o.model_path = (root / "base").string();
    o.num_kv_layers = "50%";
    o.group_size = 2;
    o.out_dir = (root / "student").string();
    convert_to_swiftkv(o);
    o.format = ConvertFormat::Gguf;
    o.out_dir = (root / "student.gguf").string();
    convert_to_swiftkv(o);

    auto hf = ModelSource::open((root / "student").string());
    auto gguf = ModelSource::open(o.out_dir);
    EXPECT_EQ(hf->config().rope_scaling.type, RopeScaling::Type::Llama3);
    EXPECT_EQ(gguf->config().rope_scaling.type, RopeScaling::Type::None) << "GGUF says it with rope_freqs";
    const SourceTensor* freqs = gguf->find("rope_freqs.weight");
    ASSERT_NE(freqs, nullptr);
    std::vector<float> divisors(8);
    read_source_rows_f32(*freqs, 0, 1, 0, divisors.data());
    EXPECT_EQ(divisors.front(), 1.0f);
    EXPECT_NEAR(divisors.back(), 8.0f, 1e-5);
    // The engine divides the plain frequencies by the divisors: the same as Hugging Face's.
    ModelConfig plain = hf->config();
    plain.rope_scaling = RopeScaling{};
    const std::vector<float> base_freq = plain.rope_inv_freq(), scaled = hf->config().rope_inv_freq();
    for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(base_freq[i] / divisors[i], scaled[i], 1e-7 * base_freq[i]) << i;
    expect_same_tensors(*gguf, *hf);  // rope_freqs aside: the HF side has none
    const BpeTokenizer tok = load_tokenizer(*gguf);
    std::ifstream refs(data / "tiny_swiftkv_tokens.json");
    for (const auto& e : nlohmann::json::parse(refs)) {
        EXPECT_EQ(tok.encode(e["text"].get<std::string>(), false, true), e["ids"].get<std::vector<int32_t>>())
            << e["text"];
    }
    for (bool swiftkv : {true, false}) {
        const std::vector<float> a = logits_of(o.out_dir, swiftkv), b = logits_of((root / "student").string(), swiftkv);
        ASSERT_EQ(a.size(), b.size());
        double worst = 0;
        for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
        EXPECT_LT(worst, 1e-5) << "swiftkv " << swiftkv;
    }
    fs::remove_all(root);
}
