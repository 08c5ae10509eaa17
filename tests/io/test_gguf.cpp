// GGUF reader tests: the real model against gguf-py's reading of it (tests/io/data/gguf_reference.json,
// made by scripts/make_io_refs.py), a gguf-py-written file with every type, synthetic files made
// by GgufBuilder for each validation path, and dequantization round trips.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "gguf_builder.h"
#include "io/gguf_reader.h"
#include "io_test_util.h"

namespace swiftkv {
namespace {

using testing::GgufBuilder;
using testing::expect_error;
using namespace swiftkv::testing;  // NOLINT: type-code constants

const std::string kModelPath = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";

std::vector<float> dequantize_all(const GgufTensorInfo& t) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::vector<float> out(static_cast<size_t>(n));
    dequantize_to_f32(t.dtype, t.data, out.data(), n);
    return out;
}

// gguf-py computes in float32 with separate multiply and add; we may fuse (FMA): allow an ulp or so.
void expect_close(float got, double want, size_t i, const std::string& what) {
    const double tol = 2e-7 * std::fabs(want) + 1e-9;
    ASSERT_NEAR(got, want, tol) << what << " element " << i;
}

// ---------------------------------------------------------------- the real model vs gguf-py

class RealModel : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(kModelPath)) GTEST_SKIP() << kModelPath << " is absent";
        ref_ = testing::load_json(testing::io_data_dir() + "/gguf_reference.json");
    }
    nlohmann::json ref_;
};

TEST_F(RealModel, HeaderAndTensorTableMatchGgufPy) {
    GgufFile f(kModelPath);
    EXPECT_EQ(f.version(), ref_["version"].get<uint32_t>());
    EXPECT_EQ(f.alignment(), ref_["alignment"].get<uint64_t>());
    EXPECT_EQ(f.data_offset(), ref_["data_offset"].get<uint64_t>());
    const auto& tensors = ref_["tensors"];
    ASSERT_EQ(f.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const GgufTensorInfo& t = f.tensors()[i];
        const auto& r = tensors[i];
        SCOPED_TRACE(t.name);
        EXPECT_EQ(t.name, r["name"].get<std::string>());
        EXPECT_EQ(std::string(dtype_name(t.dtype)), r["type_name"].get<std::string>());
        EXPECT_EQ(t.shape, r["shape"].get<std::vector<int64_t>>());
        EXPECT_EQ(t.offset, r["offset"].get<uint64_t>());
        EXPECT_EQ(t.nbytes, r["nbytes"].get<uint64_t>());
        EXPECT_EQ(t.data, f.tensor(t.name).data);
    }
    // A weight with ne = [in, out] has the Hugging Face shape {out, in}.
    EXPECT_EQ(f.tensor("blk.0.attn_k.weight").shape, (std::vector<int64_t>{192, 576}));
    EXPECT_EQ(f.tensor("token_embd.weight").shape, (std::vector<int64_t>{49152, 576}));
}

TEST_F(RealModel, MetadataMatchesGgufPy) {
    GgufFile f(kModelPath);
    const auto& meta = ref_["metadata"];
    EXPECT_EQ(f.metadata().size(), meta.size());
    const std::map<std::string, uint32_t> type_codes = {
        {"UINT8", 0}, {"INT8", 1}, {"UINT16", 2}, {"INT16", 3}, {"UINT32", 4}, {"INT32", 5}, {"FLOAT32", 6},
        {"BOOL", 7}, {"STRING", 8}, {"ARRAY", 9}, {"UINT64", 10}, {"INT64", 11}, {"FLOAT64", 12}};
    for (const auto& [key, r] : meta.items()) {
        SCOPED_TRACE(key);
        ASSERT_TRUE(f.has(key));
        const GgufValue& v = f.metadata().at(key);
        const std::string type = r["type"].get<std::string>();
        EXPECT_EQ(v.gguf_type, type_codes.at(type));
        if (type == "STRING") {
            EXPECT_EQ(f.get_string(key), r["value"].get<std::string>());
        } else if (type == "BOOL") {
            EXPECT_EQ(f.get_bool(key), r["value"].get<bool>());
        } else if (type == "FLOAT32" || type == "FLOAT64") {
            EXPECT_EQ(f.get_float(key), r["value"].get<double>());
        } else if (type == "ARRAY") {
            const std::string et = r["element_type"].get<std::string>();
            EXPECT_EQ(v.array_type, type_codes.at(et));
            const size_t n = r["length"].get<size_t>();
            const auto& head = r["head"];
            const auto& tail = r["tail"];
            auto check = [&](const auto& got, auto conv) {
                ASSERT_EQ(got.size(), n);
                for (size_t i = 0; i < head.size(); ++i) EXPECT_EQ(got[i], conv(head[i]));
                for (size_t i = 0; i < tail.size(); ++i) EXPECT_EQ(got[n - tail.size() + i], conv(tail[i]));
            };
            if (et == "STRING") {
                check(f.get_string_array(key), [](const nlohmann::json& j) { return j.get<std::string>(); });
            } else if (et == "FLOAT32" || et == "FLOAT64") {
                check(f.get_float_array(key), [](const nlohmann::json& j) { return j.get<double>(); });
            } else {
                check(f.get_int_array(key), [](const nlohmann::json& j) { return j.get<int64_t>(); });
            }
        } else {
            EXPECT_EQ(f.get_int(key), r["value"].get<int64_t>());
        }
    }
    EXPECT_EQ(f.get_int("llama.block_count"), 30);
    EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
}

TEST_F(RealModel, DequantizationMatchesGgufPy) {
    GgufFile f(kModelPath);
    for (const auto& r : ref_["values"]) {
        const std::string name = r["name"].get<std::string>();
        SCOPED_TRACE(name);
        const std::vector<float> x = dequantize_all(f.tensor(name));
        ASSERT_EQ(x.size(), r["count"].get<size_t>());
        const auto first = r["first"].get<std::vector<double>>();
        for (size_t i = 0; i < first.size(); ++i) expect_close(x[i], first[i], i, name);
        double sum = 0, sum_abs = 0;
        for (float v : x) {
            sum += v;
            sum_abs += std::fabs(v);
        }
        const double ref_sum_abs = r["sum_abs"].get<double>();
        EXPECT_NEAR(sum_abs, ref_sum_abs, 1e-6 * ref_sum_abs);
        EXPECT_NEAR(sum, r["sum"].get<double>(), 1e-6 * ref_sum_abs);
    }
}

// Loads every weight as the model loader would; reports the dequantization throughput (the first
// pass includes page faults on the mapping and the output buffer, the second is warm).
TEST_F(RealModel, DequantizeWholeModel) {
    GgufFile f(kModelPath);
    std::vector<float> buf;
    for (int pass = 0; pass < 2; ++pass) {
        int64_t total = 0;
        double checksum = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (const GgufTensorInfo& t : f.tensors()) {
            int64_t n = 1;
            for (int64_t d : t.shape) n *= d;
            buf.resize(static_cast<size_t>(n));
            dequantize_to_f32(t.dtype, t.data, buf.data(), n);
            checksum += buf[static_cast<size_t>(n) / 2];
            total += n;
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_GT(total, 130'000'000);
        EXPECT_TRUE(std::isfinite(checksum));
        std::printf("[   info   ] %s pass: dequantized %lld weights in %.1f ms (%.0f M/s, one thread)\n",
                    pass == 0 ? "cold" : "warm", (long long)total, s * 1e3, double(total) / s / 1e6);
    }
}

// ---------------------------------------------------------------- a file written by gguf-py

TEST(GgufPyWritten, EveryTypeAndMetadataKind) {
    const auto ref = testing::load_json(testing::io_data_dir() + "/gguf_types.json");
    GgufFile f(testing::io_data_dir() + "/gguf_types.gguf");
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), ref["alignment"].get<uint64_t>());
    EXPECT_EQ(f.data_offset(), ref["data_offset"].get<uint64_t>());

    EXPECT_EQ(f.get_int("test.u8"), 200);
    EXPECT_EQ(f.get_int("test.i8"), -100);
    EXPECT_EQ(f.get_int("test.u16"), 60000);
    EXPECT_EQ(f.get_int("test.i16"), -30000);
    EXPECT_EQ(f.get_int("test.u32"), 4000000000);
    EXPECT_EQ(f.get_int("test.i32"), -2000000000);
    EXPECT_EQ(std::get<uint64_t>(f.metadata().at("test.u64").value), 18000000000000000000ull);
    expect_error([&] { (void)f.get_int("test.u64"); }, {"test.u64", "too large"});
    EXPECT_EQ(f.get_float("test.u64"), 18000000000000000000.0);
    EXPECT_EQ(f.get_int("test.i64"), -9000000000000000000ll);
    EXPECT_EQ(f.get_float("test.f32"), 0.15625);
    EXPECT_EQ(f.get_float("test.f64"), 3.141592653589793);
    EXPECT_TRUE(f.get_bool("test.bool_true"));
    EXPECT_FALSE(f.get_bool("test.bool_false"));
    EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo, w\xc3\xb6rld");
    EXPECT_EQ(f.get_string("test.empty_string"), "");
    EXPECT_EQ(f.get_int_array("test.array_i32"), (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ(f.get_int_array("test.array_u8"), (std::vector<int64_t>{0, 255}));
    EXPECT_EQ(f.get_float_array("test.array_f32"), (std::vector<double>{0.5, -1.25}));
    EXPECT_EQ(f.get_string_array("test.array_string"), (std::vector<std::string>{"a", "", "ccc"}));
    const auto& bools = std::get<std::vector<bool>>(std::get<GgufValue::Array>(f.metadata().at("test.array_bool").value));
    EXPECT_EQ(bools, (std::vector<bool>{true, false, true}));
    EXPECT_EQ(f.get_string("general.architecture"), "llama");
    EXPECT_EQ(f.metadata().size(), ref["metadata"].size());

    ASSERT_EQ(f.tensors().size(), ref["tensors"].size());
    for (const auto& r : ref["tensors"]) {
        const std::string name = r["name"].get<std::string>();
        SCOPED_TRACE(name);
        const GgufTensorInfo& t = f.tensor(name);
        EXPECT_EQ(std::string(dtype_name(t.dtype)), r["type_name"].get<std::string>());
        EXPECT_EQ(t.shape, r["shape"].get<std::vector<int64_t>>());
        EXPECT_EQ(t.offset, r["offset"].get<uint64_t>());
        const auto want = r["values"].get<std::vector<double>>();
        const std::vector<float> got = dequantize_all(t);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) expect_close(got[i], want[i], i, name);
    }
}

// ---------------------------------------------------------------- synthetic files: valid

TEST(GgufSynthetic, SampleParsesFromMemoryAndFile) {
    const std::vector<uint8_t> bytes = testing::make_sample_gguf().build();
    GgufFile mem(bytes.data(), bytes.size(), "sample.gguf");
    testing::TempDir dir;
    testing::write_bytes(dir.file("sample.gguf"), bytes);
    GgufFile file(dir.file("sample.gguf"));
    for (const GgufFile* f : {&mem, &file}) {
        EXPECT_EQ(f->tensors().size(), 6u);
        EXPECT_EQ(f->metadata().size(), 17u);
        EXPECT_EQ(f->get_int("t.u8"), 7);
        EXPECT_EQ(f->get_int("t.i8"), -7);
        EXPECT_EQ(f->get_int("t.u16"), 700);
        EXPECT_EQ(f->get_int("t.i16"), -700);
        EXPECT_EQ(f->get_int("t.u32"), 70000);
        EXPECT_EQ(f->get_int("t.i32"), -70000);
        EXPECT_EQ(f->get_int("t.u64"), 7000000000ll);
        EXPECT_EQ(f->get_int("t.i64"), -7000000000ll);
        EXPECT_EQ(f->get_float("t.f32"), 0.5);
        EXPECT_EQ(f->get_float("t.f64"), -0.25);
        EXPECT_EQ(f->get_float("t.i32"), -70000.0);  // get_float accepts integers
        EXPECT_TRUE(f->get_bool("t.bool"));
        EXPECT_EQ(f->get_string_array("t.strings"), (std::vector<std::string>{"a", "bc", ""}));
        EXPECT_EQ(f->get_int_array("t.ints"), (std::vector<int64_t>{1, -2, 3}));
        EXPECT_EQ(f->get_float_array("t.ints"), (std::vector<double>{1, -2, 3}));
        EXPECT_EQ(f->get_float_array("t.floats"), (std::vector<double>{1.5, -2.5}));
        EXPECT_EQ(f->tensor("w.f32").shape, (std::vector<int64_t>{2, 8}));
        EXPECT_EQ(f->tensor("w.bf16").shape, (std::vector<int64_t>{2, 2, 4}));
        EXPECT_EQ(f->tensor("w.q4_1").shape, (std::vector<int64_t>{2, 1, 1, 32}));
        EXPECT_EQ(f->tensor("w.q8_0").nbytes, 68u);
        EXPECT_EQ(f->tensor("w.q4_0").nbytes, 36u);
        EXPECT_EQ(f->tensor("w.q4_1").nbytes, 40u);
        for (const GgufTensorInfo& t : f->tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
    }
    EXPECT_EQ(file.path(), dir.file("sample.gguf"));
    EXPECT_EQ(mem.path(), "sample.gguf");
    EXPECT_EQ(std::memcmp(mem.tensor("w.f16").data, file.tensor("w.f16").data, 32), 0);
}

TEST(GgufSynthetic, VersionTwoAndCustomAlignment) {
    GgufBuilder b;
    b.version = 2;
    b.alignment = 64;
    b.add_u32("general.alignment", 64);
    b.add_tensor("a", kGgmlF32, {3}, testing::encode_f32({1, 2, 3}));
    b.add_tensor("b", kGgmlF32, {2}, testing::encode_f32({4, 5}));
    const auto bytes = b.build();
    GgufFile f(bytes.data(), bytes.size(), "v2.gguf");
    EXPECT_EQ(f.version(), 2u);
    EXPECT_EQ(f.alignment(), 64u);
    EXPECT_EQ(f.data_offset() % 64, 0u);
    EXPECT_EQ(f.tensor("b").offset - f.tensor("a").offset, 64u);
    float x[2];
    dequantize_to_f32(DType::F32, f.tensor("b").data, x, 2);
    EXPECT_EQ(x[0], 4.f);
    EXPECT_EQ(x[1], 5.f);
}

TEST(GgufSynthetic, NoTensorsAndEmptyArrays) {
    GgufBuilder b;
    b.add_int_array("empty", kGgufI64, {});
    b.add_string_array("empty_strings", {});
    const auto bytes = b.build();
    GgufFile f(bytes.data(), bytes.size(), "meta.gguf");
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_TRUE(f.get_int_array("empty").empty());
    EXPECT_TRUE(f.get_string_array("empty_strings").empty());
    EXPECT_EQ(f.find_tensor("x"), nullptr);
    expect_error([&] { (void)f.tensor("x"); }, {"meta.gguf", "'x'"});
}

TEST(GgufSynthetic, GetterErrorsAndOptionals) {
    GgufBuilder b;
    b.add_string("s", "text");
    b.add_u64("big", 0xffffffffffffffffull);
    b.add_int_array("u64s", kGgufU64, {-1});  // 2^64-1 as u64
    b.add_f32("f", 1.5f);
    const auto bytes = b.build();
    GgufFile f(bytes.data(), bytes.size(), "g.gguf");
    expect_error([&] { (void)f.get_int("missing"); }, {"g.gguf", "'missing'"});
    expect_error([&] { (void)f.get_int("s"); }, {"g.gguf", "'s'", "string", "integer"});
    expect_error([&] { (void)f.get_int("f"); }, {"'f'", "f32"});
    expect_error([&] { (void)f.get_int("big"); }, {"'big'", "too large"});
    expect_error([&] { (void)f.get_int_array("u64s"); }, {"'u64s'", "too large"});
    EXPECT_EQ(f.get_float_array("u64s")[0], 18446744073709551615.0);
    expect_error([&] { (void)f.get_bool("s"); }, {"'s'", "bool"});
    expect_error([&] { (void)f.get_string("f"); }, {"'f'", "string"});
    expect_error([&] { (void)f.get_string_array("s"); }, {"'s'", "array of strings"});
    expect_error([&] { (void)f.get_float("s"); }, {"'s'", "number"});
    expect_error([&] { (void)f.get_float_array("s"); }, {"'s'", "array of numbers"});
    EXPECT_FALSE(f.find_int("missing").has_value());
    EXPECT_FALSE(f.find_float("missing").has_value());
    EXPECT_FALSE(f.find_string("missing").has_value());
    EXPECT_EQ(f.find_string("s"), "text");
    EXPECT_EQ(f.find_float("f"), 1.5);
    EXPECT_THROW((void)f.find_int("s"), Error);  // present with the wrong type is still an error
    EXPECT_EQ(gguf_type_name(9, 8), "array of string");
}

// ---------------------------------------------------------------- synthetic files: invalid

std::vector<uint8_t> header_only(uint32_t version, uint64_t tensors, uint64_t kvs) {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
    testing::put_u32(out, version);
    testing::put_u64(out, tensors);
    testing::put_u64(out, kvs);
    return out;
}

void expect_gguf_error(const std::vector<uint8_t>& bytes, std::initializer_list<std::string> parts) {
    // An exact-size heap copy, so ASan builds catch any read past the end.
    std::vector<uint8_t> copy(bytes);
    expect_error([&] { GgufFile f(copy.data(), copy.size(), "bad.gguf"); }, parts);
}

TEST(GgufInvalid, EveryTruncationIsAnError) {
    const std::vector<uint8_t> bytes = testing::make_sample_gguf().build();
    ASSERT_GT(bytes.size(), 500u);
    for (size_t len = 0; len < bytes.size(); ++len) {
        auto buf = std::make_unique<uint8_t[]>(len + 1);  // +1: never a null pointer for len 0
        std::memcpy(buf.get(), bytes.data(), len);
        EXPECT_THROW(GgufFile(buf.get(), len, "cut.gguf"), Error) << "truncated to " << len << " bytes";
    }
    // And through the file path (mmap) for a few lengths, including the empty file.
    testing::TempDir dir;
    for (size_t len : {size_t(0), size_t(3), size_t(24), bytes.size() / 2, bytes.size() - 1}) {
        testing::write_bytes(dir.file("cut.gguf"), std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(len)));
        expect_error([&] { GgufFile f(dir.file("cut.gguf")); }, {dir.file("cut.gguf")});
    }
}

TEST(GgufInvalid, TruncatedTensorDataNamesTensorAndSizes) {
    GgufBuilder b;
    b.add_tensor("blk.3.attn_q.weight", kGgmlF32, {256, 4}, testing::encode_f32(std::vector<float>(1024, 1.f)));
    auto bytes = b.build();
    bytes.resize(bytes.size() - 100);
    expect_gguf_error(bytes, {"bad.gguf", "truncated", "blk.3.attn_q.weight", "4096 bytes (4.0 KiB)"});
}

TEST(GgufInvalid, MissingFile) { expect_error([] { GgufFile f("/nonexistent/x.gguf"); }, {"/nonexistent/x.gguf"}); }

TEST(GgufInvalid, Header) {
    auto bytes = header_only(3, 0, 0);
    bytes[0] = 'X';
    expect_gguf_error(bytes, {"bad.gguf", "not a GGUF file"});
    expect_gguf_error(header_only(1, 0, 0), {"bad.gguf", "version 1"});
    expect_gguf_error(header_only(4, 0, 0), {"bad.gguf", "version 4", "2 and 3"});
    expect_gguf_error(header_only(0x03000000, 0, 0), {"bad.gguf", "big-endian"});
    expect_gguf_error({'G', 'G', 'U'}, {"bad.gguf"});
    // Counts that cannot fit in the file must fail before any allocation.
    expect_gguf_error(header_only(3, 0xffffffffffffffffull, 0), {"bad.gguf", "cannot fit"});
    expect_gguf_error(header_only(3, 0, 0xffffffffffffffffull), {"bad.gguf", "cannot fit"});
    expect_gguf_error(header_only(3, 1ull << 40, 1ull << 40), {"bad.gguf", "cannot fit"});
    GgufFile ok = [] {
        static const auto empty = header_only(3, 0, 0);
        return GgufFile(empty.data(), empty.size(), "empty.gguf");
    }();
    EXPECT_TRUE(ok.tensors().empty());
}

TEST(GgufInvalid, MetadataValues) {
    {  // string length beyond the file
        GgufBuilder b;
        std::vector<uint8_t> p;
        testing::put_u64(p, 1ull << 62);
        b.add_raw_kv("general.name", kGgufString, p);
        expect_gguf_error(b.build(), {"bad.gguf", "general.name", "truncated"});
    }
    {  // key length beyond the file
        auto bytes = header_only(3, 0, 1);
        testing::put_u64(bytes, 0xfffffffffffffff0ull);
        bytes.resize(bytes.size() + 16, 'k');
        expect_gguf_error(bytes, {"bad.gguf", "metadata entry #0"});
    }
    {  // huge array count
        GgufBuilder b;
        std::vector<uint8_t> p;
        testing::put_u32(p, kGgufU32);
        testing::put_u64(p, 1ull << 60);
        p.resize(p.size() + 64);
        b.add_raw_kv("tokenizer.ggml.token_type", kGgufArray, p);
        expect_gguf_error(b.build(), {"bad.gguf", "tokenizer.ggml.token_type", "array elements"});
    }
    {  // nested array
        GgufBuilder b;
        std::vector<uint8_t> p;
        testing::put_u32(p, kGgufArray);
        testing::put_u64(p, 1);
        testing::put_u32(p, kGgufU8);
        testing::put_u64(p, 1);
        p.push_back(1);
        b.add_raw_kv("nested", kGgufArray, p);
        expect_gguf_error(b.build(), {"bad.gguf", "'nested'", "array of arrays"});
    }
    {  // unknown value type, and unknown array element type
        GgufBuilder b;
        b.add_raw_kv("odd", 13, {0, 0, 0, 0, 0, 0, 0, 0});
        expect_gguf_error(b.build(), {"bad.gguf", "'odd'", "unknown value type 13"});
        GgufBuilder c;
        std::vector<uint8_t> p;
        testing::put_u32(p, 99);
        testing::put_u64(p, 1);
        p.resize(p.size() + 8);
        c.add_raw_kv("odd_array", kGgufArray, p);
        expect_gguf_error(c.build(), {"bad.gguf", "'odd_array'", "unknown type 99"});
    }
    {  // duplicate and empty keys
        GgufBuilder b;
        b.add_u32("llama.block_count", 30);
        b.add_u32("llama.block_count", 31);
        expect_gguf_error(b.build(), {"bad.gguf", "'llama.block_count' twice"});
        GgufBuilder c;
        c.add_u32("", 1);
        expect_gguf_error(c.build(), {"bad.gguf", "empty key"});
    }
    {  // kv count larger than the entries present (but plausible): the read runs off the end
        GgufBuilder b;
        b.add_u32("a", 1);
        b.kv_count_override = 2;
        expect_gguf_error(b.build(), {"bad.gguf", "metadata entry #1"});
    }
}

TEST(GgufInvalid, Alignment) {
    for (uint32_t bad : {0u, 3u, 48u, 0x80000000u}) {
        GgufBuilder b;
        b.add_u32("general.alignment", bad);
        expect_gguf_error(b.build(), {"bad.gguf", "general.alignment", std::to_string(bad), "power of two"});
    }
    GgufBuilder b;
    b.add_string("general.alignment", "32");
    expect_gguf_error(b.build(), {"bad.gguf", "general.alignment", "expected an integer"});
    GgufBuilder u64;
    u64.alignment = 16;
    u64.add_u64("general.alignment", 16);  // spec says u32, but any integer type is accepted
    u64.add_tensor("t", kGgmlF32, {1}, testing::encode_f32({1}));
    const auto bytes = u64.build();
    EXPECT_EQ(GgufFile(bytes.data(), bytes.size(), "a.gguf").alignment(), 16u);
}

GgufBuilder one_tensor(const std::string& name, uint32_t type, std::vector<uint64_t> ne, size_t data_bytes) {
    GgufBuilder b;
    b.add_tensor(name, type, std::move(ne), std::vector<uint8_t>(data_bytes, 0));
    return b;
}

TEST(GgufInvalid, TensorInfos) {
    expect_gguf_error(one_tensor("blk.0.attn_q.weight", 12, {256, 4}, 576).build(),
                      {"bad.gguf",
                       "tensor 'blk.0.attn_q.weight' has ggml type 12 (Q4_K) which swiftkv does not support; "
                       "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"});
    expect_gguf_error(one_tensor("x", 1000, {4}, 16).build(), {"'x'", "ggml type 1000 (unknown)"});
    expect_gguf_error(one_tensor("zero_dims", kGgmlF32, {}, 4).build(), {"'zero_dims'", "0 dimensions"});
    expect_gguf_error(one_tensor("five_dims", kGgmlF32, {1, 1, 1, 1, 1}, 4).build(), {"'five_dims'", "5 dimensions"});
    expect_gguf_error(one_tensor("empty_dim", kGgmlF32, {4, 0}, 0).build(), {"'empty_dim'", "ne[1] = 0"});
    expect_gguf_error(one_tensor("neg_dim", kGgmlF32, {0xffffffffffffffffull}, 0).build(), {"'neg_dim'", "ne[0]"});
    expect_gguf_error(one_tensor("huge", kGgmlF32, {1ull << 40, 1ull << 40}, 0).build(), {"'huge'", "overflows"});
    expect_gguf_error(one_tensor("huge_bytes", kGgmlF32, {1ull << 62}, 0).build(), {"'huge_bytes'", "overflows"});
    expect_gguf_error(one_tensor("q", kGgmlQ4_1, {48, 2}, 120).build(), {"'q'", "Q4_1", "48", "block size 32"});
    {  // data beyond the end
        expect_gguf_error(one_tensor("big", kGgmlF32, {1024}, 16).build(), {"'big'", "truncated", "4096 bytes"});
    }
    {  // duplicate names
        GgufBuilder b;
        b.add_tensor("w", kGgmlF32, {1}, testing::encode_f32({1}));
        b.add_tensor("w", kGgmlF32, {1}, testing::encode_f32({1}));
        expect_gguf_error(b.build(), {"bad.gguf", "tensor 'w' twice"});
    }
    {  // empty name
        expect_gguf_error(one_tensor("", kGgmlF32, {1}, 4).build(), {"bad.gguf", "empty name"});
    }
    {  // unaligned offset
        GgufBuilder b = one_tensor("t", kGgmlF32, {4}, 64);
        b.tensors[0].offset = 4;
        expect_gguf_error(b.build(), {"'t'", "offset 4", "alignment 32"});
    }
    {  // offsets far out of range, including ones that overflow when added to the data start
        for (uint64_t off : {1ull << 20, 0xffffffffffffffe0ull, 0x8000000000000000ull}) {
            GgufBuilder b = one_tensor("far", kGgmlF32, {4}, 16);
            b.tensors[0].offset = off;
            expect_gguf_error(b.build(), {"bad.gguf", "'far'", "truncated"});
        }
    }
    {  // overlapping tensors
        GgufBuilder b;
        b.add_tensor("first", kGgmlF32, {16}, std::vector<uint8_t>(64));
        b.add_tensor("second", kGgmlF32, {16}, std::vector<uint8_t>(64));
        b.tensors[1].offset = 32;
        expect_gguf_error(b.build(), {"bad.gguf", "'first'", "overlaps", "'second'"});
    }
    {  // tensor count larger than present (plausible): runs off the end of the directory
        GgufBuilder b = one_tensor("t", kGgmlF32, {32}, 128);
        b.tensor_count_override = 2;
        expect_gguf_error(b.build(), {"bad.gguf", "tensor #1"});
    }
}

// ---------------------------------------------------------------- dequantization

// Independent scalar references for the block formats (ggml's dequantize_row_*), using the core
// f16 conversion rather than the F16C path the library may take.
float ref_f16(const uint8_t* p) { return f16_to_f32(uint16_t(p[0] | (p[1] << 8))); }

std::vector<float> ref_dequantize(DType t, const std::vector<uint8_t>& src, size_t n) {
    std::vector<float> y(n);
    for (size_t b = 0; b < n / 32; ++b) {
        if (t == DType::Q8_0) {
            const uint8_t* blk = &src[b * 34];
            for (int j = 0; j < 32; ++j) y[b * 32 + j] = ref_f16(blk) * float(int8_t(blk[2 + j]));
        } else if (t == DType::Q4_0) {
            const uint8_t* blk = &src[b * 18];
            for (int j = 0; j < 16; ++j) {
                y[b * 32 + j] = ref_f16(blk) * float((blk[2 + j] & 15) - 8);
                y[b * 32 + j + 16] = ref_f16(blk) * float((blk[2 + j] >> 4) - 8);
            }
        } else {
            const uint8_t* blk = &src[b * 20];
            for (int j = 0; j < 16; ++j) {
                y[b * 32 + j] = ref_f16(blk) * float(blk[4 + j] & 15) + ref_f16(blk + 2);
                y[b * 32 + j + 16] = ref_f16(blk) * float(blk[4 + j] >> 4) + ref_f16(blk + 2);
            }
        }
    }
    return y;
}

std::vector<float> test_signal(size_t n, uint32_t seed) {
    std::vector<float> x(n);
    uint32_t s = seed;
    for (float& v : x) {
        s = s * 1664525u + 1013904223u;
        v = (float(s >> 8) / float(1 << 24) - 0.5f) * 4.f;
    }
    return x;
}

TEST(Dequantize, RoundTripsThroughGguf) {
    const size_t n = 4 * 256;
    const std::vector<float> x = test_signal(n, 42);
    struct Case {
        const char* name;
        uint32_t ggml;
        DType dtype;
        std::vector<uint8_t> data;
    };
    std::vector<Case> cases = {
        {"f32", kGgmlF32, DType::F32, testing::encode_f32(x)},
        {"f16", kGgmlF16, DType::F16, testing::encode_f16(x)},
        {"bf16", kGgmlBF16, DType::BF16, testing::encode_bf16(x)},
        {"q8_0", kGgmlQ8_0, DType::Q8_0, testing::quantize_q8_0(x)},
        {"q4_0", kGgmlQ4_0, DType::Q4_0, testing::quantize_q4_0(x)},
        {"q4_1", kGgmlQ4_1, DType::Q4_1, testing::quantize_q4_1(x)},
    };
    GgufBuilder b;
    for (const Case& c : cases) b.add_tensor(c.name, c.ggml, {256, 4}, c.data);
    const auto bytes = b.build();
    GgufFile f(bytes.data(), bytes.size(), "roundtrip.gguf");
    for (const Case& c : cases) {
        SCOPED_TRACE(c.name);
        const GgufTensorInfo& t = f.tensor(c.name);
        EXPECT_EQ(t.dtype, c.dtype);
        EXPECT_EQ(t.nbytes, c.data.size());
        const std::vector<float> y = dequantize_all(t);
        ASSERT_EQ(y.size(), n);
        for (size_t i = 0; i < n; ++i) {
            switch (c.dtype) {
                case DType::F32: ASSERT_EQ(y[i], x[i]); break;
                case DType::F16: ASSERT_EQ(y[i], f16_to_f32(f32_to_f16(x[i]))); break;
                case DType::BF16: ASSERT_EQ(y[i], bf16_to_f32(f32_to_bf16(x[i]))); break;
                default: break;
            }
        }
        if (c.dtype == DType::Q8_0 || c.dtype == DType::Q4_0 || c.dtype == DType::Q4_1) {
            const std::vector<float> ref = ref_dequantize(c.dtype, c.data, n);
            for (size_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], ref[i], 1e-6f * std::fabs(ref[i]) + 1e-7f) << i;
            // Quantization error is bounded by the block's step (inputs lie in [-2, 2]).
            const float step = c.dtype == DType::Q8_0 ? 2.f / 127.f : 4.f / 15.f;
            for (size_t i = 0; i < n; ++i) ASSERT_LE(std::fabs(y[i] - x[i]), step * 1.01f) << i;
        }
    }
}

// The SIMD paths against the library's scalar loops, on random blocks (every nibble and int8
// pattern occurs) with finite random f16 scales.
TEST(Dequantize, FastPathMatchesScalarReference) {
    uint32_t state = 7;
    auto next = [&] {
        state = state * 1664525u + 1013904223u;
        return state >> 8;
    };
    for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::F16, DType::BF16, DType::F32}) {
        for (int64_t blocks : {1, 2, 7, 129}) {
            const int64_t n = blocks * 32;
            std::vector<uint8_t> src(size_t(dtype_row_bytes(t, n)));
            for (uint8_t& b : src) b = uint8_t(next());
            if (t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1) {
                const size_t bb = size_t(dtype_block_bytes(t));
                for (size_t b = 0; b < size_t(blocks); ++b) {  // finite scales: exponent below 31
                    src[b * bb + 1] &= 0xbb;
                    if (t == DType::Q4_1) src[b * bb + 3] &= 0xbb;
                }
            }
            std::vector<float> fast(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
            dequantize_to_f32(t, src.data(), fast.data(), n);
            dequantize_to_f32_reference(t, src.data(), ref.data(), n);
            for (size_t i = 0; i < size_t(n); ++i) {
                if (std::isnan(ref[i])) {
                    ASSERT_TRUE(std::isnan(fast[i])) << dtype_name(t) << " " << i;
                } else if (t == DType::Q4_1) {  // fused multiply-add: within an ulp or so
                    ASSERT_NEAR(fast[i], ref[i], 2.5e-7f * std::fabs(ref[i]) + 1e-30f) << i;
                } else {
                    ASSERT_EQ(fast[i], ref[i]) << dtype_name(t) << " " << i;
                }
            }
        }
    }
}

TEST(Dequantize, F16SpecialValues) {
    const uint16_t h[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xc000, 0x7bff, 0x7c00, 0xfc00, 0x7e00};
    const std::vector<uint8_t> src(reinterpret_cast<const uint8_t*>(h), reinterpret_cast<const uint8_t*>(h) + sizeof(h));
    std::vector<float> y(std::size(h));
    dequantize_to_f32(DType::F16, src.data(), y.data(), int64_t(y.size()));
    for (size_t i = 0; i < y.size(); ++i) {
        const float want = f16_to_f32(h[i]);
        if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(y[i]));
        } else {
            EXPECT_EQ(y[i], want) << i;
            EXPECT_EQ(std::signbit(y[i]), std::signbit(want)) << i;
        }
    }
}

TEST(Dequantize, Errors) {
    uint8_t buf[64] = {};
    float out[32];
    expect_error([&] { dequantize_to_f32(DType::Q4_1, buf, out, 16); }, {"Q4_1", "multiple of 32"});
    expect_error([&] { dequantize_to_f32(DType::I32, buf, out, 4); }, {"I32"});
    expect_error([&] { dequantize_to_f32(DType::F32, buf, out, -1); }, {"negative"});
    dequantize_to_f32(DType::Q8_0, buf, out, 0);  // empty is fine
}

}  // namespace
}  // namespace swiftkv
