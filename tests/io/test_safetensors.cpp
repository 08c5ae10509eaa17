// Safetensors tests: a file written by the reference implementation (tests/io/data/
// python_written.safetensors, from scripts/make_io_refs.py), writer round trips, sharded model
// directories, and every validation path.
//
// Interop in the other direction (the reference implementation reading our writer's output) is
// tests/io/test_safetensors_interop.py: it runs this binary's SafetensorsInterop.WriteForPython test
// with SWIFTKV_IO_INTEROP_OUT set to a directory, then reads that file with the `safetensors` package.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "io/safetensors_reader.h"
#include "io_test_util.h"

namespace swiftkv {
namespace {

using testing::expect_error;
namespace fs = std::filesystem;

std::vector<uint8_t> make_st(const std::string& header, const std::vector<uint8_t>& data = {},
                             std::optional<uint64_t> length_field = std::nullopt) {
    std::vector<uint8_t> out;
    const uint64_t n = length_field.value_or(header.size());
    for (int i = 0; i < 8; ++i) out.push_back(uint8_t(n >> (8 * i)));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

void expect_st_error(const std::vector<uint8_t>& bytes, std::initializer_list<std::string> parts) {
    std::vector<uint8_t> copy(bytes);
    expect_error([&] { SafetensorsFile f(copy.data(), copy.size(), "bad.safetensors"); }, parts);
}

double element(const SafetensorsTensorInfo& t, size_t i) {
    const uint8_t* p = t.data;
    switch (t.dtype) {
        case DType::F32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
        case DType::F16: { uint16_t v; std::memcpy(&v, p + 2 * i, 2); return f16_to_f32(v); }
        case DType::BF16: { uint16_t v; std::memcpy(&v, p + 2 * i, 2); return bf16_to_f32(v); }
        case DType::I32: { int32_t v; std::memcpy(&v, p + 4 * i, 4); return v; }
        case DType::I64: { int64_t v; std::memcpy(&v, p + 8 * i, 8); return double(v); }
        case DType::U8: return p[i];
        default: return NAN;
    }
}

// ---------------------------------------------------------------- written by the reference library

TEST(SafetensorsPyWritten, MatchesReference) {
    const auto ref = testing::load_json(testing::io_data_dir() + "/safetensors_reference.json");
    const std::string path = testing::io_data_dir() + "/python_written.safetensors";
    SafetensorsFile f(path);
    EXPECT_EQ(f.path(), path);
    EXPECT_EQ(f.metadata(), (ref["metadata"].get<std::map<std::string, std::string>>()));
    ASSERT_EQ(f.tensors().size(), ref["tensors"].size());
    for (const auto& r : ref["tensors"]) {
        const std::string name = r["name"].get<std::string>();
        SCOPED_TRACE(name);
        const SafetensorsTensorInfo& t = f.at(name);
        EXPECT_EQ(std::string(dtype_name(t.dtype)), r["dtype"].get<std::string>());
        EXPECT_EQ(t.shape, r["shape"].get<std::vector<int64_t>>());
        EXPECT_EQ(t.file, path);
        const auto& values = r["values"];
        ASSERT_EQ(t.nbytes, values.size() * size_t(dtype_block_bytes(t.dtype)));
        for (size_t i = 0; i < values.size(); ++i) {
            if (t.dtype == DType::I64) {
                int64_t v;
                std::memcpy(&v, t.data + 8 * i, 8);
                EXPECT_EQ(v, values[i].get<int64_t>());
            } else {
                EXPECT_EQ(element(t, i), values[i].get<double>()) << i;
            }
        }
    }
    // Tensors come in file order; the data buffer starts 8-byte aligned.
    for (size_t i = 1; i < f.tensors().size(); ++i) EXPECT_LE(f.tensors()[i - 1].data, f.tensors()[i].data);
    EXPECT_EQ(f.find("missing"), nullptr);
    expect_error([&] { (void)f.at("missing"); }, {path, "'missing'"});
}

// ---------------------------------------------------------------- writer

struct Sample {
    std::vector<float> f32 = {1.f, -2.5f, 3.25f, 1e-30f, -0.f, 65504.f};
    std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001, 0x7bff};
    std::vector<uint16_t> bf16 = {0x3f80, 0xc020, 0x7f7f};
    std::vector<int32_t> i32 = {-1, 0, 2147483647};
    std::vector<int64_t> i64 = {-9000000000000000000ll, 7};
    std::vector<uint8_t> u8 = {0, 1, 255};
    std::vector<SafetensorsWriteItem> items() const {
        return {{"layer.f32", DType::F32, {2, 3}, f32.data()},
                {"layer.f16", DType::F16, {4}, f16.data()},
                {"layer.bf16", DType::BF16, {3, 1}, bf16.data()},
                {"ids.i32", DType::I32, {3}, i32.data()},
                {"ids.i64", DType::I64, {1, 2}, i64.data()},
                {"mask.u8", DType::U8, {3}, u8.data()},
                {"empty", DType::F32, {0, 5}, nullptr},
                {"scalar", DType::F32, {}, f32.data()}};
    }
};

TEST(SafetensorsWriter, RoundTrip) {
    testing::TempDir dir;
    const Sample s;
    const std::string path = dir.file("model.safetensors");
    write_safetensors(path, s.items(), {{"format", "pt"}, {"note", "\xc3\xa9t\xc3\xa9"}});
    EXPECT_FALSE(fs::exists(path + ".tmp"));

    const std::vector<uint8_t> bytes = testing::read_bytes(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[size_t(i)];
    EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
    EXPECT_EQ(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}', true);

    SafetensorsFile f(path);
    EXPECT_EQ(f.metadata().at("format"), "pt");
    EXPECT_EQ(f.metadata().at("note"), "\xc3\xa9t\xc3\xa9");
    ASSERT_EQ(f.tensors().size(), 8u);
    for (const SafetensorsWriteItem& item : s.items()) {
        SCOPED_TRACE(item.name);
        const SafetensorsTensorInfo& t = f.at(item.name);
        EXPECT_EQ(t.dtype, item.dtype);
        EXPECT_EQ(t.shape, item.shape);
        if (t.nbytes > 0) {
            EXPECT_EQ(std::memcmp(t.data, item.data, t.nbytes), 0);
        }
    }
    EXPECT_EQ(f.at("empty").nbytes, 0u);
    EXPECT_EQ(f.at("scalar").nbytes, 4u);
    EXPECT_EQ(f.tensors().front().name, "layer.f32");  // file order is the order given

    // Overwriting an existing file replaces it.
    write_safetensors(path, {{"only", DType::U8, {1}, s.u8.data()}});
    EXPECT_EQ(SafetensorsFile(path).tensors().size(), 1u);
}

TEST(SafetensorsWriter, ErrorsLeaveNoFile) {
    testing::TempDir dir;
    const Sample s;
    const std::string path = dir.file("out.safetensors");
    auto expect_no_output = [&](const std::vector<SafetensorsWriteItem>& items, std::initializer_list<std::string> parts) {
        expect_error([&] { write_safetensors(path, items); }, parts);
        EXPECT_FALSE(fs::exists(path));
        EXPECT_FALSE(fs::exists(path + ".tmp"));
    };
    expect_no_output({{"a", DType::U8, {1}, s.u8.data()}, {"a", DType::U8, {1}, s.u8.data()}}, {path, "'a' is given twice"});
    expect_no_output({{"q", DType::Q4_1, {32}, s.u8.data()}}, {path, "'q'", "Q4_1"});
    expect_no_output({{"neg", DType::F32, {-1}, s.f32.data()}}, {path, "'neg'", "shape"});
    expect_no_output({{"big", DType::F32, {1ll << 62, 4}, s.f32.data()}}, {path, "'big'"});
    expect_no_output({{"null", DType::F32, {2}, nullptr}}, {path, "'null'", "no data"});
    expect_no_output({{"__metadata__", DType::F32, {1}, s.f32.data()}}, {path, "__metadata__"});
    expect_no_output({{"bad\xff", DType::U8, {1}, s.u8.data()}}, {path, "UTF-8"});
    expect_error([&] { write_safetensors(dir.file("no/such/dir/x.safetensors"), s.items()); },
                 {"no/such/dir/x.safetensors.tmp"});

    // A failed write does not clobber an existing good file.
    write_safetensors(path, s.items());
    expect_error([&] { write_safetensors(path, {{"q", DType::Q8_0, {32}, s.u8.data()}}); }, {"Q8_0"});
    EXPECT_EQ(SafetensorsFile(path).tensors().size(), 8u);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// Writes cpp_written.safetensors for tests/io/test_safetensors_interop.py (into SWIFTKV_IO_INTEROP_OUT
// when set) and checks it reads back. Values: element i of every tensor is (i % 7) - 3 + 0.5 * (i % 2),
// exact in every dtype used.
TEST(SafetensorsInterop, WriteForPython) {
    testing::TempDir tmp;
    const char* out_env = std::getenv("SWIFTKV_IO_INTEROP_OUT");
    const std::string dir = out_env != nullptr ? std::string(out_env) : tmp.str();
    auto value = [](size_t i) { return double(int(i % 7) - 3) + 0.5 * double(i % 2); };
    std::vector<float> f32(24);
    std::vector<uint16_t> f16(10), bf16(6);
    std::vector<int32_t> i32(5);
    std::vector<int64_t> i64(3);
    std::vector<uint8_t> u8(7);
    for (size_t i = 0; i < f32.size(); ++i) f32[i] = float(value(i));
    for (size_t i = 0; i < f16.size(); ++i) f16[i] = f32_to_f16(float(value(i)));
    for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = f32_to_bf16(float(value(i)));
    for (size_t i = 0; i < i32.size(); ++i) i32[i] = int32_t(std::floor(value(i)));
    for (size_t i = 0; i < i64.size(); ++i) i64[i] = int64_t(std::floor(value(i))) * 1000000000000ll;
    for (size_t i = 0; i < u8.size(); ++i) u8[i] = uint8_t(i * 40);
    const std::string path = dir + "/cpp_written.safetensors";
    write_safetensors(path,
                      {{"model.layers.0.weight", DType::F32, {4, 6}, f32.data()},
                       {"model.layers.0.f16", DType::F16, {2, 5}, f16.data()},
                       {"model.layers.0.bf16", DType::BF16, {6}, bf16.data()},
                       {"ids.i32", DType::I32, {5}, i32.data()},
                       {"ids.i64", DType::I64, {3}, i64.data()},
                       {"mask.u8", DType::U8, {7}, u8.data()},
                       {"empty", DType::F32, {0}, nullptr}},
                      {{"format", "pt"}, {"writer", "swiftkv"}});
    SafetensorsFile f(path);
    ASSERT_EQ(f.tensors().size(), 7u);
    for (size_t i = 0; i < 24; ++i) EXPECT_EQ(element(f.at("model.layers.0.weight"), i), value(i));
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(element(f.at("model.layers.0.bf16"), i), value(i));
}

// ---------------------------------------------------------------- model directories

TEST(SafetensorsModel, SingleFile) {
    testing::TempDir dir;
    const Sample s;
    write_safetensors(dir.file("model.safetensors"), s.items());
    SafetensorsModel m(dir.str());
    EXPECT_EQ(m.tensors().size(), 8u);
    EXPECT_EQ(m.at("layer.f32").shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(m.at("layer.f32").file, dir.file("model.safetensors"));
    EXPECT_EQ(m.find("nope"), nullptr);
    expect_error([&] { (void)m.at("nope"); }, {"'nope'"});
}

TEST(SafetensorsModel, ShardedIndex) {
    testing::TempDir dir;
    const Sample s;
    write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                      {{"a", DType::F32, {6}, s.f32.data()}, {"b", DType::U8, {3}, s.u8.data()}});
    write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"c", DType::I64, {2}, s.i64.data()}});
    auto write_index = [&](const std::string& weight_map) {
        const std::string text = R"({"metadata": {"total_size": 51}, "weight_map": )" + weight_map + "}";
        testing::write_bytes(dir.file("model.safetensors.index.json"), std::vector<uint8_t>(text.begin(), text.end()));
    };
    write_index(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                    "c": "model-00002-of-00002.safetensors"})");
    {
        SafetensorsModel m(dir.str());
        ASSERT_EQ(m.tensors().size(), 3u);
        EXPECT_EQ(m.at("a").file, dir.file("model-00001-of-00002.safetensors"));
        EXPECT_EQ(m.at("c").file, dir.file("model-00002-of-00002.safetensors"));
        int64_t c1;
        std::memcpy(&c1, m.at("c").data + 8, 8);
        EXPECT_EQ(c1, 7);
    }
    // The index wins over a stray model.safetensors.
    write_safetensors(dir.file("model.safetensors"), {{"stray", DType::U8, {1}, s.u8.data()}});
    EXPECT_EQ(SafetensorsModel(dir.str()).find("stray"), nullptr);

    const std::string index = dir.file("model.safetensors.index.json");
    write_index(R"({"a": "model-00001-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"})");
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "'d'", "model-00002-of-00002.safetensors", "no such tensor"});
    write_index(R"({"a": "model-00003-of-00003.safetensors"})");
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "model-00003-of-00003.safetensors", "does not exist"});
    write_index(R"({"a": "../model-00001-of-00002.safetensors"})");
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "'a'", "not a plain file name"});
    write_index(R"({"a": 5})");
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "'a'", "not a string"});
    write_index(R"([1, 2])");
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "weight_map"});
    write_index(R"({"a": "model-00001-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"})");
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "'a' twice"});
    testing::write_bytes(index, {'{', 'x'});
    expect_error([&] { SafetensorsModel m(dir.str()); }, {index, "not valid JSON"});
}

TEST(SafetensorsModel, NeitherFile) {
    testing::TempDir dir;
    expect_error([&] { SafetensorsModel m(dir.str()); },
                 {"no model.safetensors or model.safetensors.index.json in '" + dir.str() + "'"});
    expect_error([&] { SafetensorsModel m(dir.file("missing")); }, {"no model.safetensors"});
}

// ---------------------------------------------------------------- validation

TEST(SafetensorsInvalid, EveryTruncationIsAnError) {
    testing::TempDir dir;
    const Sample s;
    write_safetensors(dir.file("m.safetensors"), s.items(), {{"k", "v"}});
    const std::vector<uint8_t> bytes = testing::read_bytes(dir.file("m.safetensors"));
    for (size_t len = 0; len < bytes.size(); ++len) {
        auto buf = std::make_unique<uint8_t[]>(len + 1);
        std::memcpy(buf.get(), bytes.data(), len);
        EXPECT_THROW(SafetensorsFile(buf.get(), len, "cut.safetensors"), Error) << "truncated to " << len;
    }
    for (size_t len : {size_t(0), size_t(7), size_t(9), bytes.size() - 1}) {
        testing::write_bytes(dir.file("cut.safetensors"), std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(len)));
        expect_error([&] { SafetensorsFile f(dir.file("cut.safetensors")); }, {dir.file("cut.safetensors")});
    }
}

TEST(SafetensorsInvalid, HeaderLengthAndJson) {
    expect_st_error(make_st("{}", {}, 1ull << 40), {"bad.safetensors", "100 MB"});
    expect_st_error(make_st("{}", {}, 1000), {"bad.safetensors", "truncated"});
    expect_st_error(make_st("{}", {}, 0xffffffffffffffffull), {"bad.safetensors"});
    expect_st_error(make_st("[1, 2]"), {"bad.safetensors", "JSON object"});
    expect_st_error(make_st("{\"a\": "), {"bad.safetensors", "not valid JSON"});
    expect_st_error(make_st("{} x"), {"bad.safetensors", "not valid JSON"});
    expect_st_error(make_st("{\"a\": {\"b\": {\"c\": [[1]]}}}"), {"bad.safetensors", "nested"});
    expect_st_error(make_st("{\"\xff\": 1}"), {"bad.safetensors", "not valid JSON"});
    expect_st_error(make_st(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                               "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                            {0, 0, 0, 0}),
                    {"bad.safetensors", "'x' twice"});
    expect_st_error(make_st(R"({"__metadata__": {"k": 1}})"), {"bad.safetensors", "'k'", "not a string"});
    expect_st_error(make_st(R"({"__metadata__": [1]})"), {"bad.safetensors", "__metadata__"});
    // Valid: empty header, padded header, empty and scalar tensors.
    const auto ok = make_st(R"({"e": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]},
                               "s": {"dtype": "I32", "shape": [], "data_offsets": [0, 4]}}   )",
                            {1, 0, 0, 0});
    SafetensorsFile f(ok.data(), ok.size(), "ok.safetensors");
    EXPECT_EQ(f.at("s").nbytes, 4u);
    EXPECT_TRUE(f.at("s").shape.empty());
    EXPECT_EQ(f.at("e").nbytes, 0u);
    const auto empty = make_st("{}");
    EXPECT_TRUE(SafetensorsFile(empty.data(), empty.size(), "e.safetensors").tensors().empty());
}

TEST(SafetensorsInvalid, TensorEntries) {
    auto one = [](const std::string& entry, size_t data = 16) {
        return make_st("{\"model.w\": " + entry + "}", std::vector<uint8_t>(data));
    };
    expect_st_error(one(R"({"dtype": "F64", "shape": [2], "data_offsets": [0, 16]})"),
                    {"bad.safetensors", "tensor 'model.w' has dtype F64 which swiftkv does not support; supported: "
                                        "F32, F16, BF16, I32, I64, U8"});
    expect_st_error(one(R"(5)"), {"'model.w'", "JSON object"});
    expect_st_error(one(R"({"shape": [2], "data_offsets": [0, 8]})"), {"'model.w'", "dtype"});
    expect_st_error(one(R"({"dtype": 1, "shape": [2], "data_offsets": [0, 8]})"), {"'model.w'", "dtype"});
    expect_st_error(one(R"({"dtype": "F32", "data_offsets": [0, 8]})"), {"'model.w'", "shape"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2]})"), {"'model.w'", "data_offsets"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [0]})"), {"'model.w'", "data_offsets"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]})"), {"'model.w'", "non-negative"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]})"), {"'model.w'", "non-negative"});
    expect_st_error(one(R"({"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]})"), {"'model.w'", "non-negative"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [1e300], "data_offsets": [0, 8]})"), {"'model.w'", "non-negative"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 8]})"),
                    {"'model.w'", "non-negative"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]})"),
                    {"'model.w'", "overflows"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 8]})"),
                    {"'model.w'", "overflows"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 12]})"),
                    {"'model.w'", "12 bytes", "needs 8 bytes"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]})"), {"'model.w'", "begin <= end"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]})"), {"'model.w'", "data_offsets"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [12, 20]})"),
                    {"bad.safetensors", "truncated", "'model.w'"});
    expect_st_error(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551608, 0]})"),
                    {"'model.w'", "data_offsets"});
    expect_st_error(one(R"({"dtype": "U8", "shape": [8], "data_offsets": [18446744073709551608, 18446744073709551615]})"),
                    {"'model.w'"});
    expect_st_error(make_st(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                            std::vector<uint8_t>(16)),
                    {"bad.safetensors", "'a' and 'b' overlap"});
}

}  // namespace
}  // namespace swiftkv
