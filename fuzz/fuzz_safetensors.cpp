// libFuzzer target for SafetensorsFile: parses the input as a safetensors image in memory and reads
// every byte of every tensor it reports (so ASan sees any range the validation let through that
// lies outside the input). A swiftkv::Error is the expected outcome for bad input; anything else
// is a bug.
#include <cstdint>

#include "core/error.h"
#include "io/safetensors_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const swiftkv::SafetensorsFile file(data, size, "fuzz.safetensors");
        unsigned checksum = 0;
        for (const swiftkv::SafetensorsTensorInfo& t : file.tensors()) {
            for (uint64_t i = 0; i < t.nbytes; ++i) checksum += t.data[i];
            if (file.find(t.name) != &t) __builtin_trap();
        }
        for (const auto& [k, v] : file.metadata()) checksum += unsigned(k.size() + v.size());
        volatile unsigned sink = checksum;
        (void)sink;
    } catch (const swiftkv::Error&) {
    }
    return 0;
}
