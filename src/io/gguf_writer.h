// GgufWriter — writes a GGUF v3 file (the format GgufFile reads; llama.cpp's gguf.c and the `gguf`
// Python package read it too): metadata of every GGUF value type (scalars, strings, arrays of
// scalars or strings), then the tensor directory, then the data of each tensor, aligned.
//
// Streaming: everything about the file (keys, tensor names, dtypes, shapes) is declared first; the
// tensor data then arrives in declaration order through append(), in pieces of any size, so a
// model larger than memory can be written one chunk of one tensor at a time.
//
// Atomic: the bytes go to a temporary file next to the target ("<path>.tmp-XXXXXX"), which
// finish() flushes to disk and renames onto the target. If finish() is never reached (an error, an
// exception, a missing tensor), the destructor removes the temporary file: the target is either
// untouched or complete.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/gguf_reader.h"

namespace swiftkv {

struct GgufWriterOptions {
    uint64_t alignment = 32;  // data alignment, written as general.alignment (u32)
    bool overwrite = false;   // replace an existing file at the target path (else: error)
};

class GgufWriter {
public:
    // Checks that the target can be written (its folder exists; no file there unless overwrite).
    // Nothing is created on disk until the first append() or finish(). Throws swiftkv::Error.
    explicit GgufWriter(std::string path, GgufWriterOptions options = {});
    ~GgufWriter();
    GgufWriter(const GgufWriter&) = delete;
    GgufWriter& operator=(const GgufWriter&) = delete;

    // --- Metadata, written in the order added. A key may be given once. ---
    void add_u8(const std::string& key, uint8_t v);
    void add_i8(const std::string& key, int8_t v);
    void add_u16(const std::string& key, uint16_t v);
    void add_i16(const std::string& key, int16_t v);
    void add_u32(const std::string& key, uint32_t v);
    void add_i32(const std::string& key, int32_t v);
    void add_u64(const std::string& key, uint64_t v);
    void add_i64(const std::string& key, int64_t v);
    void add_f32(const std::string& key, float v);
    void add_f64(const std::string& key, double v);
    void add_bool(const std::string& key, bool v);
    void add_string(const std::string& key, const std::string& v);
    // Arrays. element_type is the GGUF code of the elements; each value must fit it (checked).
    void add_int_array(const std::string& key, GgufType element_type, const std::vector<int64_t>& values);
    void add_float_array(const std::string& key, GgufType element_type, const std::vector<double>& values);
    void add_bool_array(const std::string& key, const std::vector<bool>& values);
    void add_string_array(const std::string& key, const std::vector<std::string>& values);
    // A value as GgufFile read it (type codes kept): copies a key from one file to another unchanged.
    void add_value(const std::string& key, const GgufValue& value);
    bool has_key(const std::string& key) const;

    // --- Tensors ---
    // shape in Hugging Face order (shape[0] slowest; written reversed as ggml's ne). dtype: F32, F16,
    // BF16, Q8_0, Q4_0 or Q4_1 (the last dimension a multiple of 32 for the quantized ones).
    // Names are at most 63 bytes (llama.cpp's limit).
    void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
    // Bytes of the data of tensor i as stored (no padding).
    uint64_t tensor_bytes(size_t i) const { return tensors_.at(i).nbytes; }
    size_t tensor_count() const { return tensors_.size(); }
    // Total file size once complete.
    uint64_t file_bytes() const;

    // --- Data ---
    // Appends data of the current tensor (in declaration order; a call may not run past its end).
    // The first call writes the header; after it no key or tensor can be added.
    void append(const void* data, size_t bytes);
    // The tensor append() writes to next, or tensor_count() when all are complete.
    size_t current() const { return current_; }
    // Checks every tensor got all its bytes, flushes to disk and renames into place.
    void finish();

    const std::string& path() const { return path_; }

private:
    struct Entry {
        std::string key;
        std::vector<uint8_t> encoded;  // type code + payload
    };
    struct TensorEntry {
        std::string name;
        DType dtype;
        std::vector<int64_t> shape;
        uint64_t nbytes = 0;
        uint64_t offset = 0;  // relative to the data section
    };

    void add_encoded(const std::string& key, std::vector<uint8_t> encoded);
    void add_int_scalar(const std::string& key, GgufType type, int64_t value);
    void open_and_write_header();
    void write_bytes(const void* data, size_t bytes);
    void pad_to_alignment();
    void discard();

    std::string path_;
    GgufWriterOptions options_;
    std::vector<Entry> metadata_;
    std::vector<TensorEntry> tensors_;
    std::string tmp_path_;
    int fd_ = -1;
    bool header_written_ = false;
    bool finished_ = false;
    size_t current_ = 0;
    uint64_t written_in_current_ = 0;
    uint64_t file_pos_ = 0;
};

// Q8_0 quantization of n floats (n a multiple of 32) into n / 32 blocks of 34 bytes: an f16 scale
// d = max|x| / 127 and 32 int8 values round(x / d) — ggml's quantize_row_q8_0_ref and gguf-py's
// quants.quantize(..., Q8_0), bit for bit.
void quantize_q8_0(const float* src, uint8_t* dst, int64_t n);

// ggml's type code of a dtype (F32 0, F16 1, Q4_0 2, Q4_1 3, Q8_0 8, BF16 30); throws for others.
uint32_t ggml_type_of(DType dtype);

}  // namespace swiftkv
