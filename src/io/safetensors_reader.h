// SafetensorsFile / SafetensorsModel — reads Hugging Face safetensors weights over a memory map:
// one file, or a sharded set described by model.safetensors.index.json. The JSON header, dtypes,
// shapes and data offsets are all validated against the file size (a hostile header gives a
// swiftkv::Error naming the file and tensor, never an out-of-bounds read).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace swiftkv {

struct SafetensorsTensorInfo {
    std::string name;
    DType dtype;                 // F32, F16, BF16, I32, I64, U8 supported
    std::vector<int64_t> shape;  // row-major, shape[0] slowest
    uint64_t nbytes = 0;
    const uint8_t* data = nullptr;
    std::string file;            // the file holding it
};

class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::string& path);
    // Parses a safetensors image already in memory (fuzzing, tests). The bytes are not copied: they
    // must outlive this object. `name` is used in messages and as each tensor's `file`.
    SafetensorsFile(const uint8_t* data, size_t size, std::string name);
    const std::string& path() const;
    const SafetensorsTensorInfo* find(const std::string& name) const;
    const SafetensorsTensorInfo& at(const std::string& name) const;  // throws if missing
    const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

private:
    void parse();

    std::unique_ptr<MappedFile> file_;
    std::string path_;
    const uint8_t* bytes_ = nullptr;
    size_t size_ = 0;
    std::vector<SafetensorsTensorInfo> tensors_;  // in file order (ascending data offset)
    std::map<std::string, size_t> tensor_index_;
    std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory: model.safetensors, or model.safetensors.index.json with shards.
class SafetensorsModel {
public:
    explicit SafetensorsModel(const std::string& directory);
    const std::map<std::string, SafetensorsTensorInfo>& tensors() const { return tensors_; }
    const SafetensorsTensorInfo* find(const std::string& name) const;
    const SafetensorsTensorInfo& at(const std::string& name) const;  // throws if missing

private:
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::map<std::string, SafetensorsTensorInfo> tensors_;
};

// Writes tensors to a single safetensors file (used by convert and distill). Data is copied as given
// (host byte order, which safetensors defines as little-endian). The file is written to path + ".tmp"
// and renamed into place, so an error never leaves a partial file at `path`. Tensors are laid out in
// the order given; the JSON header is padded with spaces to a multiple of 8 bytes as the reference
// implementation does. Supported dtypes: F32, F16, BF16, I32, I64, U8.
struct SafetensorsWriteItem {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
};
void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& items,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace swiftkv
