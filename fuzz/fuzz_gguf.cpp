// libFuzzer target for GgufFile: parses the input as a GGUF image in memory, then reads every
// metadata value through the typed getters and dequantizes every tensor. A swiftkv::Error is the
// expected outcome for bad input; anything else (a crash, a sanitizer report, another exception
// type, a huge allocation) is a bug.
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "io/gguf_reader.h"

namespace {

template <typename F>
void ignore_errors(F&& f) {
    try {
        f();
    } catch (const swiftkv::Error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const swiftkv::GgufFile file(data, size, "fuzz.gguf");
        for (const auto& entry : file.metadata()) {
            const std::string& key = entry.first;
            ignore_errors([&] { (void)file.get_int(key); });
            ignore_errors([&] { (void)file.get_float(key); });
            ignore_errors([&] { (void)file.get_bool(key); });
            ignore_errors([&] { (void)file.get_string(key); });
            ignore_errors([&] { (void)file.get_string_array(key); });
            ignore_errors([&] { (void)file.get_int_array(key); });
            ignore_errors([&] { (void)file.get_float_array(key); });
            (void)swiftkv::gguf_type_name(entry.second.gguf_type, entry.second.array_type);
        }
        std::vector<float> out;
        for (const swiftkv::GgufTensorInfo& t : file.tensors()) {
            int64_t n = 1;
            for (int64_t d : t.shape) n *= d;
            if (n > (int64_t(1) << 22)) continue;  // nbytes is validated against the input size
            out.resize(size_t(n));
            swiftkv::dequantize_to_f32(t.dtype, t.data, out.data(), n);
            if (file.find_tensor(t.name) != &t) __builtin_trap();
        }
    } catch (const swiftkv::Error&) {
    }
    return 0;
}
