// GgufFile — reads a GGUF v2/v3 file (the llama.cpp ecosystem's model format): metadata key/values
// and the tensor directory, over a read-only memory map. Every length, count, offset, type and shape
// is validated against the file size before use, so a truncated or hostile file gives a
// swiftkv::Error naming the file (and key or tensor), never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace swiftkv {

// One metadata value. Arrays hold homogeneous scalars or strings (nested arrays are rejected).
struct GgufValue {
    using Array = std::variant<std::vector<int64_t>, std::vector<double>, std::vector<std::string>,
                               std::vector<bool>>;
    std::variant<int64_t, uint64_t, double, bool, std::string, Array> value;
    uint32_t gguf_type = 0;   // the GGUF type code as stored (for inspect)
    uint32_t array_type = 0;  // for arrays (gguf_type 9): the element type code
};

// GGUF value type codes (gguf_type / array_type above).
enum class GgufType : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
    U64 = 10, I64 = 11, F64 = 12,
};
// "u32", "string", "array of i32", ... (for messages and inspect).
std::string gguf_type_name(uint32_t gguf_type, uint32_t array_type = 0);
// The ggml tensor type's name ("Q4_K"), or "unknown" — for messages.
std::string ggml_type_name(uint32_t ggml_type);

struct GgufTensorInfo {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;  // Hugging Face order: shape[0] is the slowest axis (ggml ne reversed)
    uint64_t offset = 0;         // absolute offset of the data in the file
    uint64_t nbytes = 0;
    const uint8_t* data = nullptr;
};

class GgufFile {
public:
    // Opens, maps and validates the file. Throws swiftkv::Error on any problem.
    explicit GgufFile(const std::string& path);
    // Parses a GGUF image already in memory (fuzzing, tests, embedded models). The bytes are not
    // copied: they must outlive this object and its tensors' data pointers. `name` is used in
    // messages in place of a path.
    GgufFile(const uint8_t* data, size_t size, std::string name);

    const std::string& path() const;
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }

    const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
    const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

    bool has(const std::string& key) const { return metadata_.count(key) != 0; }
    // Typed getters; throw a clear error when the key is missing or has another type.
    int64_t get_int(const std::string& key) const;
    std::optional<int64_t> find_int(const std::string& key) const;
    double get_float(const std::string& key) const;  // accepts integer values too
    std::optional<double> find_float(const std::string& key) const;
    bool get_bool(const std::string& key) const;
    std::string get_string(const std::string& key) const;
    std::optional<std::string> find_string(const std::string& key) const;
    std::vector<std::string> get_string_array(const std::string& key) const;
    std::vector<int64_t> get_int_array(const std::string& key) const;
    std::vector<double> get_float_array(const std::string& key) const;

    const GgufTensorInfo* find_tensor(const std::string& name) const;
    const GgufTensorInfo& tensor(const std::string& name) const;  // throws if missing

    // Absolute offset of the tensor data section (aligned end of the tensor directory).
    uint64_t data_offset() const { return data_offset_; }

private:
    void parse();
    const GgufValue& value(const std::string& key) const;  // throws if missing

    std::unique_ptr<MappedFile> file_;
    std::string path_;
    const uint8_t* bytes_ = nullptr;
    size_t size_ = 0;
    uint64_t data_offset_ = 0;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    std::map<std::string, GgufValue> metadata_;
    std::vector<GgufTensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

// Converts n elements of a tensor row of any supported dtype (F32, F16, BF16, Q8_0, Q4_0, Q4_1) to f32.
// n must be a multiple of the block size (32) for the quantized types; src holds
// dtype_row_bytes(dtype, n) bytes. Throws swiftkv::Error for other dtypes.
void dequantize_to_f32(DType dtype, const uint8_t* src, float* dst, int64_t n);
// The same through plain scalar loops (no SIMD), the reference tests check the fast path against.
void dequantize_to_f32_reference(DType dtype, const uint8_t* src, float* dst, int64_t n);

}  // namespace swiftkv
