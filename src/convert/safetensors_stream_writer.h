// SafetensorsStreamWriter — writes one safetensors file tensor by tensor, so that converting a
// model never holds more than a chunk of one tensor in memory (write_safetensors in io/ takes every
// tensor's bytes at once). The header (same layout as write_safetensors: insertion order, padded
// with spaces to a multiple of 8 bytes) is written first from the declared names, dtypes and shapes;
// then the data arrives in declaration order through append(). The file is written in place: the
// caller stages the whole output directory and removes it on failure.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace swiftkv {

struct SafetensorsEntry {
    std::string name;
    DType dtype;                 // F32, F16 or BF16
    std::vector<int64_t> shape;
};

// Bytes of a tensor's data in a safetensors file.
uint64_t safetensors_entry_bytes(const SafetensorsEntry& entry);

class SafetensorsStreamWriter {
public:
    // Creates `path` (it must not exist) and writes the header. Throws swiftkv::Error.
    SafetensorsStreamWriter(std::string path, std::vector<SafetensorsEntry> entries,
                            const std::map<std::string, std::string>& metadata);
    ~SafetensorsStreamWriter();
    SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
    SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

    // Appends data of the current tensor (tensors in declaration order; a call may not run past the
    // end of the current tensor).
    void append(const void* data, size_t bytes);
    // The tensor append() writes to next, or entries().size() when all are complete.
    size_t current() const { return current_; }
    // Checks that every tensor received exactly its bytes, flushes to disk and closes.
    void finish();

    const std::string& path() const { return path_; }
    const std::vector<SafetensorsEntry>& entries() const { return entries_; }

private:
    std::string path_;
    std::vector<SafetensorsEntry> entries_;
    std::vector<uint64_t> sizes_;
    int fd_ = -1;
    size_t current_ = 0;
    uint64_t written_in_current_ = 0;
};

}  // namespace swiftkv
