// Writes a seed corpus of small valid files for the fuzzers: GGUF files from tests/io's GgufBuilder
// (every metadata type, every tensor type, v2 and v3, custom alignment) and safetensors files from
// write_safetensors (every dtype, metadata, empty and scalar tensors).
// Usage: fuzz_make_seeds GGUF_DIR SAFETENSORS_DIR
#include <cstdio>
#include <fstream>
#include <string>

#include "gguf_builder.h"
#include "io/safetensors_reader.h"

namespace {

void write(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

}  // namespace

int main(int argc, char** argv) {
    using namespace swiftkv::testing;
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s GGUF_DIR SAFETENSORS_DIR\n", argv[0]);
        return 2;
    }
    const std::string gguf_dir = argv[1], st_dir = argv[2];

    write(gguf_dir + "/sample.gguf", make_sample_gguf().build());
    {
        GgufBuilder b;
        b.version = 2;
        b.alignment = 64;
        b.add_u32("general.alignment", 64);
        b.add_string("general.name", "v2");
        b.add_tensor("a", kGgmlF32, {3}, encode_f32({1, 2, 3}));
        b.add_tensor("b", kGgmlQ8_0, {32}, quantize_q8_0(std::vector<float>(32, 0.5f)));
        write(gguf_dir + "/v2_align64.gguf", b.build());
    }
    {
        GgufBuilder b;
        b.add_string_array("tokenizer.ggml.tokens", {"<s>", "</s>", "a", "b"});
        b.add_f32_array("tokenizer.ggml.scores", {0, 0, -1, -2});
        b.add_int_array("tokenizer.ggml.token_type", kGgufI32, {3, 3, 1, 1});
        write(gguf_dir + "/metadata_only.gguf", b.build());
    }
    const uint32_t types[] = {kGgmlF32, kGgmlF16, kGgmlBF16, kGgmlQ8_0, kGgmlQ4_0, kGgmlQ4_1};
    std::vector<float> x(64);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 9) - 4.f;
    for (uint32_t t : types) {
        GgufBuilder b;
        std::vector<uint8_t> data = t == kGgmlF32    ? encode_f32(x)
                                    : t == kGgmlF16  ? encode_f16(x)
                                    : t == kGgmlBF16 ? encode_bf16(x)
                                    : t == kGgmlQ8_0 ? quantize_q8_0(x)
                                    : t == kGgmlQ4_0 ? quantize_q4_0(x)
                                                     : quantize_q4_1(x);
        b.add_tensor("blk.0.attn_q.weight", t, {32, 2}, data);
        write(gguf_dir + "/type_" + std::to_string(t) + ".gguf", b.build());
    }

    std::vector<float> f32 = {1, -2, 3.5f, 0};
    std::vector<uint16_t> h16 = {0x3c00, 0xc000};
    std::vector<int64_t> i64 = {-1, 1};
    std::vector<int32_t> i32 = {7, 8};
    std::vector<uint8_t> u8 = {1, 2, 3};
    swiftkv::write_safetensors(st_dir + "/all_dtypes.safetensors",
                               {{"f32", swiftkv::DType::F32, {2, 2}, f32.data()},
                                {"f16", swiftkv::DType::F16, {2}, h16.data()},
                                {"bf16", swiftkv::DType::BF16, {1, 2}, h16.data()},
                                {"i32", swiftkv::DType::I32, {2}, i32.data()},
                                {"i64", swiftkv::DType::I64, {2}, i64.data()},
                                {"u8", swiftkv::DType::U8, {3}, u8.data()},
                                {"empty", swiftkv::DType::F32, {0}, nullptr},
                                {"scalar", swiftkv::DType::F32, {}, f32.data()}},
                               {{"format", "pt"}});
    swiftkv::write_safetensors(st_dir + "/empty.safetensors", {});
    swiftkv::write_safetensors(st_dir + "/one.safetensors",
                               {{"model.embed_tokens.weight", swiftkv::DType::BF16, {2}, h16.data()}});
    return 0;
}
