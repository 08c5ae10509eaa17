// GGUF v2/v3 parsing: header, metadata key/values, tensor directory. Everything read from the file
// goes through ByteCursor, which checks bounds before every read, and every count, length, shape
// and offset is checked for plausibility against the file size before anything is allocated, so
// a truncated or hostile file ends in a swiftkv::Error naming the file and the key or tensor.
#include "io/gguf_reader.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <numeric>
#include <set>

#include "core/error.h"
#include "io/io_util.h"

namespace swiftkv {

using io_detail::describe_bytes;

namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxAlignment = uint64_t(1) << 30;
constexpr uint32_t kMaxDims = 4;

// Smallest possible encodings, used to bound counts by the bytes left before allocating anything.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // key length, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name length, n_dims, 1 dim, type, offset

// Bounds-checked little-endian reader over the file image. `context` names what is being read
// (a key or tensor) so that a truncation error says where the file broke.
class ByteCursor {
public:
    ByteCursor(const uint8_t* data, size_t size, const std::string& path)
        : data_(data), size_(size), path_(path) {}

    size_t pos() const { return pos_; }
    uint64_t remaining() const { return size_ - pos_; }
    void set_context(std::string context) { context_ = std::move(context); }
    const std::string& context() const { return context_; }

    void need(uint64_t n, const char* field) const {
        if (n > remaining()) {
            SKV_THROW("GGUF file '{}' is truncated or corrupt: {} ({}) needs {} bytes at offset {}, "
                      "but the file has {} bytes",
                      path_, context_, field, n, pos_, size_);
        }
    }
    const uint8_t* take(uint64_t n, const char* field) {
        need(n, field);
        const uint8_t* p = data_ + pos_;
        pos_ += size_t(n);
        return p;
    }
    uint8_t u8(const char* field) { return *take(1, field); }
    uint16_t u16(const char* field) { return uint16_t(load_le(take(2, field), 2)); }
    uint32_t u32(const char* field) { return uint32_t(load_le(take(4, field), 4)); }
    uint64_t u64(const char* field) { return load_le(take(8, field), 8); }
    float f32(const char* field) { return std::bit_cast<float>(u32(field)); }
    double f64(const char* field) { return std::bit_cast<double>(u64(field)); }
    std::string str(const char* field) {
        const uint64_t n = u64(field);
        const uint8_t* p = take(n, field);
        return std::string(reinterpret_cast<const char*>(p), size_t(n));
    }

private:
    static uint64_t load_le(const uint8_t* p, int n) {
        uint64_t v = 0;
        for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
        return v;
    }

    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
    const std::string& path_;
    std::string context_ = "header";
};

bool is_integer_type(uint32_t t) {
    switch (GgufType(t)) {
        case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
        case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
        default: return false;
    }
}

// Encoded size of one scalar (strings: the minimum, their length prefix). 0 for invalid codes.
uint64_t min_encoded_size(uint32_t t) {
    switch (GgufType(t)) {
        case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
        case GgufType::U16: case GgufType::I16: return 2;
        case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
        case GgufType::U64: case GgufType::I64: case GgufType::F64: case GgufType::STRING: return 8;
        case GgufType::ARRAY: return 4 + 8;
    }
    return 0;
}

// Reads one integer of type t; u64 is returned bit-cast (callers that care check array_type).
int64_t read_integer(ByteCursor& c, uint32_t t) {
    switch (GgufType(t)) {
        case GgufType::U8: return c.u8("u8 value");
        case GgufType::I8: return int8_t(c.u8("i8 value"));
        case GgufType::U16: return c.u16("u16 value");
        case GgufType::I16: return int16_t(c.u16("i16 value"));
        case GgufType::U32: return c.u32("u32 value");
        case GgufType::I32: return int32_t(c.u32("i32 value"));
        case GgufType::U64: return int64_t(c.u64("u64 value"));
        case GgufType::I64: return int64_t(c.u64("i64 value"));
        default: return 0;
    }
}

GgufValue read_value(ByteCursor& c, uint32_t type, const std::string& path, const std::string& key) {
    GgufValue v;
    v.gguf_type = type;
    switch (GgufType(type)) {
        case GgufType::U64: v.value = c.u64("u64 value"); break;
        case GgufType::F32: v.value = double(c.f32("f32 value")); break;
        case GgufType::F64: v.value = c.f64("f64 value"); break;
        case GgufType::BOOL: v.value = c.u8("bool value") != 0; break;
        case GgufType::STRING: v.value = c.str("string value"); break;
        case GgufType::ARRAY: {
            const uint32_t elem = c.u32("array element type");
            const uint64_t count = c.u64("array length");
            v.array_type = elem;
            SKV_CHECK(elem != uint32_t(GgufType::ARRAY),
                      "GGUF file '{}': metadata key '{}' is an array of arrays, which swiftkv does not "
                      "support",
                      path, key);
            const uint64_t elem_size = min_encoded_size(elem);
            SKV_CHECK(elem_size != 0, "GGUF file '{}': metadata key '{}' is an array of unknown type {}",
                      path, key, elem);
            SKV_CHECK(count <= c.remaining() / elem_size,
                      "GGUF file '{}' is truncated or corrupt: metadata key '{}' claims {} array elements "
                      "of at least {} bytes each, but only {} bytes are left",
                      path, key, count, elem_size, c.remaining());
            const size_t n = size_t(count);
            if (elem == uint32_t(GgufType::STRING)) {
                std::vector<std::string> a;
                a.reserve(n);
                for (size_t i = 0; i < n; ++i) a.push_back(c.str("string array element"));
                v.value = GgufValue::Array(std::move(a));
            } else if (elem == uint32_t(GgufType::F32) || elem == uint32_t(GgufType::F64)) {
                std::vector<double> a(n);
                for (size_t i = 0; i < n; ++i)
                    a[i] = elem == uint32_t(GgufType::F32) ? double(c.f32("f32 array element"))
                                                           : c.f64("f64 array element");
                v.value = GgufValue::Array(std::move(a));
            } else if (elem == uint32_t(GgufType::BOOL)) {
                std::vector<bool> a(n);
                for (size_t i = 0; i < n; ++i) a[i] = c.u8("bool array element") != 0;
                v.value = GgufValue::Array(std::move(a));
            } else {
                std::vector<int64_t> a(n);
                for (size_t i = 0; i < n; ++i) a[i] = read_integer(c, elem);
                v.value = GgufValue::Array(std::move(a));
            }
            break;
        }
        default:
            if (is_integer_type(type)) {
                v.value = read_integer(c, type);
            } else {
                SKV_THROW("GGUF file '{}': metadata key '{}' has unknown value type {}", path, key, type);
            }
    }
    return v;
}

std::optional<DType> dtype_from_ggml(uint32_t ggml_type) {
    switch (ggml_type) {
        case 0: return DType::F32;
        case 1: return DType::F16;
        case 2: return DType::Q4_0;
        case 3: return DType::Q4_1;
        case 8: return DType::Q8_0;
        case 30: return DType::BF16;
        default: return std::nullopt;
    }
}

std::string value_type_name(const GgufValue& v) { return gguf_type_name(v.gguf_type, v.array_type); }

}  // namespace

std::string gguf_type_name(uint32_t t, uint32_t array_type) {
    switch (GgufType(t)) {
        case GgufType::U8: return "u8";
        case GgufType::I8: return "i8";
        case GgufType::U16: return "u16";
        case GgufType::I16: return "i16";
        case GgufType::U32: return "u32";
        case GgufType::I32: return "i32";
        case GgufType::F32: return "f32";
        case GgufType::BOOL: return "bool";
        case GgufType::STRING: return "string";
        case GgufType::ARRAY: return "array of " + gguf_type_name(array_type);
        case GgufType::U64: return "u64";
        case GgufType::I64: return "i64";
        case GgufType::F64: return "f64";
    }
    return fmt::format("type {}", t);
}

std::string ggml_type_name(uint32_t t) {
    static const char* const names[] = {
        "F32",  "F16",    "Q4_0",    "Q4_1",   "Q4_2", "Q4_3",   "Q5_0",   "Q5_1",  "Q8_0", "Q8_1",
        "Q2_K", "Q3_K",   "Q4_K",    "Q5_K",   "Q6_K", "Q8_K",   "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
        "IQ1_S", "IQ4_NL", "IQ3_S",  "IQ2_S",  "IQ4_XS", "I8",   "I16",    "I32",   "I64",  "F64",
        "IQ1_M", "BF16",  "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4",
        "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
    if (t < std::size(names)) return names[t];
    return "unknown";
}

GgufFile::GgufFile(const std::string& path)
    : file_(std::make_unique<MappedFile>(path)), path_(path) {
    bytes_ = file_->data();
    size_ = file_->size();
    parse();
}

GgufFile::GgufFile(const uint8_t* data, size_t size, std::string name)
    : path_(std::move(name)), bytes_(data), size_(size) {
    parse();
}

const std::string& GgufFile::path() const { return path_; }

void GgufFile::parse() {
    SKV_CHECK(size_ >= 8, "'{}' is not a GGUF file: it has only {} bytes", path_, size_);
    SKV_CHECK(bytes_[0] == 'G' && bytes_[1] == 'G' && bytes_[2] == 'U' && bytes_[3] == 'F',
              "'{}' is not a GGUF file: it starts with bytes {:02x} {:02x} {:02x} {:02x}, expected "
              "'GGUF'",
              path_, bytes_[0], bytes_[1], bytes_[2], bytes_[3]);
    ByteCursor c(bytes_, size_, path_);
    c.take(4, "magic");
    version_ = c.u32("version");
    SKV_CHECK(version_ != 1,
              "GGUF file '{}' is version 1, an obsolete format swiftkv does not read; re-convert the "
              "model with a current llama.cpp (GGUF v2 or v3)",
              path_);
    const uint32_t swapped = __builtin_bswap32(version_);
    SKV_CHECK(!(swapped >= 1 && swapped <= 3),
              "GGUF file '{}' is big-endian (version field reads {} when byte-swapped); swiftkv reads "
              "little-endian GGUF only",
              path_, swapped);
    SKV_CHECK(version_ == 2 || version_ == 3,
              "GGUF file '{}' has version {}; swiftkv reads GGUF versions 2 and 3", path_, version_);

    const uint64_t tensor_count = c.u64("tensor count");
    const uint64_t kv_count = c.u64("metadata key count");
    SKV_CHECK(kv_count <= c.remaining() / kMinKvBytes &&
                  tensor_count <= c.remaining() / kMinTensorInfoBytes &&
                  kv_count * kMinKvBytes + tensor_count * kMinTensorInfoBytes <= c.remaining(),
              "GGUF file '{}' is corrupt: it claims {} metadata keys and {} tensors, which cannot fit "
              "in its {} bytes",
              path_, kv_count, tensor_count, size_);

    for (uint64_t i = 0; i < kv_count; ++i) {
        c.set_context(fmt::format("metadata entry #{}", i));
        std::string key = c.str("key");
        SKV_CHECK(!key.empty(), "GGUF file '{}': metadata entry #{} has an empty key", path_, i);
        c.set_context(fmt::format("metadata key '{}'", key));
        SKV_CHECK(metadata_.count(key) == 0, "GGUF file '{}' has metadata key '{}' twice", path_, key);
        const uint32_t type = c.u32("value type");
        metadata_.emplace(key, read_value(c, type, path_, key));
    }

    alignment_ = kDefaultAlignment;
    if (has("general.alignment")) {
        const GgufValue& v = metadata_.at("general.alignment");
        SKV_CHECK(is_integer_type(v.gguf_type),
                  "GGUF file '{}': metadata key 'general.alignment' is {}, expected an integer", path_,
                  value_type_name(v));
        const int64_t a = get_int("general.alignment");
        SKV_CHECK(a > 0 && uint64_t(a) <= kMaxAlignment && std::has_single_bit(uint64_t(a)),
                  "GGUF file '{}': metadata key 'general.alignment' is {}; it must be a power of two "
                  "between 1 and 2^30",
                  path_, a);
        alignment_ = uint64_t(a);
    }

    tensors_.reserve(size_t(tensor_count));
    for (uint64_t i = 0; i < tensor_count; ++i) {
        c.set_context(fmt::format("tensor info #{}", i));
        GgufTensorInfo t;
        t.name = c.str("name");
        SKV_CHECK(!t.name.empty(), "GGUF file '{}': tensor #{} has an empty name", path_, i);
        c.set_context(fmt::format("tensor '{}'", t.name));
        SKV_CHECK(tensor_index_.count(t.name) == 0, "GGUF file '{}' has tensor '{}' twice", path_,
                  t.name);
        const uint32_t n_dims = c.u32("n_dims");
        SKV_CHECK(n_dims >= 1 && n_dims <= kMaxDims,
                  "GGUF file '{}': tensor '{}' has {} dimensions; swiftkv reads 1 to {}", path_, t.name,
                  n_dims, kMaxDims);
        int64_t ne[kMaxDims] = {1, 1, 1, 1};
        int64_t elements = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t n = c.u64("dimension");
            SKV_CHECK(n >= 1 && n <= uint64_t(std::numeric_limits<int64_t>::max()),
                      "GGUF file '{}': tensor '{}' has dimension ne[{}] = {}; every dimension must be "
                      "at least 1",
                      path_, t.name, d, n);
            ne[d] = int64_t(n);
            SKV_CHECK(!__builtin_mul_overflow(elements, ne[d], &elements),
                      "GGUF file '{}': tensor '{}' has so many elements that their count overflows "
                      "64 bits (corrupt shape)",
                      path_, t.name);
        }
        const uint32_t ggml_type = c.u32("type");
        const std::optional<DType> dtype = dtype_from_ggml(ggml_type);
        SKV_CHECK(dtype.has_value(),
                  "GGUF file '{}': tensor '{}' has ggml type {} ({}) which swiftkv does not support; "
                  "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1",
                  path_, t.name, ggml_type, ggml_type_name(ggml_type));
        t.dtype = *dtype;
        const uint64_t relative_offset = c.u64("data offset");

        const int64_t block = dtype_block_elems(t.dtype);
        SKV_CHECK(ne[0] % block == 0,
                  "GGUF file '{}': tensor '{}' is {} with rows of {} elements, which is not a multiple "
                  "of its block size {}",
                  path_, t.name, dtype_name(t.dtype), ne[0], block);
        int64_t nbytes = 0;
        SKV_CHECK(!__builtin_mul_overflow(elements / block, dtype_block_bytes(t.dtype), &nbytes),
                  "GGUF file '{}': tensor '{}' has a byte size that overflows 64 bits (corrupt shape)",
                  path_, t.name);
        t.nbytes = uint64_t(nbytes);
        for (uint32_t d = 0; d < n_dims; ++d) t.shape.push_back(ne[n_dims - 1 - d]);
        t.offset = relative_offset;  // made absolute below, once the data section start is known
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // The data section starts at the first multiple of the alignment after the directory.
    c.set_context("tensor data");
    data_offset_ = (uint64_t(c.pos()) + alignment_ - 1) / alignment_ * alignment_;
    for (GgufTensorInfo& t : tensors_) {
        SKV_CHECK(t.offset % alignment_ == 0,
                  "GGUF file '{}': tensor '{}' has data offset {} which is not a multiple of the "
                  "alignment {}",
                  path_, t.name, t.offset, alignment_);
        const bool fits = t.offset <= uint64_t(size_) && data_offset_ <= uint64_t(size_) - t.offset &&
                          t.nbytes <= uint64_t(size_) - data_offset_ - t.offset;
        if (!fits) {
            // Report the absolute offset when it is representable; a wrapped sum would mislead.
            const bool representable = t.offset <= std::numeric_limits<uint64_t>::max() - data_offset_;
            SKV_THROW("model file '{}' is truncated or corrupt: tensor '{}' needs {} at offset {}, "
                      "but the file has {}",
                      path_, t.name, describe_bytes(t.nbytes),
                      representable ? describe_bytes(data_offset_ + t.offset)
                                    : fmt::format("{} + {} bytes", data_offset_, t.offset),
                      describe_bytes(size_));
        }
        t.offset += data_offset_;
        t.data = bytes_ + t.offset;
    }

    // Overlapping tensors mean a corrupt directory (or a file crafted to alias weights).
    std::vector<size_t> order(tensors_.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
    for (size_t i = 1; i < order.size(); ++i) {
        const GgufTensorInfo& prev = tensors_[order[i - 1]];
        const GgufTensorInfo& next = tensors_[order[i]];
        SKV_CHECK(prev.offset + prev.nbytes <= next.offset,
                  "GGUF file '{}' is corrupt: tensor '{}' (bytes {}..{}) overlaps tensor '{}' (from byte "
                  "{})",
                  path_, prev.name, prev.offset, prev.offset + prev.nbytes, next.name, next.offset);
    }
}

const GgufValue& GgufFile::value(const std::string& key) const {
    auto it = metadata_.find(key);
    SKV_CHECK(it != metadata_.end(), "GGUF file '{}' has no metadata key '{}'", path_, key);
    return it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* i = std::get_if<int64_t>(&v.value)) return *i;
    if (const auto* u = std::get_if<uint64_t>(&v.value)) {
        SKV_CHECK(*u <= uint64_t(std::numeric_limits<int64_t>::max()),
                  "GGUF file '{}': metadata key '{}' is {}, too large for a signed 64-bit integer", path_,
                  key, *u);
        return int64_t(*u);
    }
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected an integer", path_, key,
              value_type_name(v));
}

std::optional<int64_t> GgufFile::find_int(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_int(key);
}

double GgufFile::get_float(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* d = std::get_if<double>(&v.value)) return *d;
    if (const auto* i = std::get_if<int64_t>(&v.value)) return double(*i);
    if (const auto* u = std::get_if<uint64_t>(&v.value)) return double(*u);
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected a number", path_, key,
              value_type_name(v));
}

std::optional<double> GgufFile::find_float(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_float(key);
}

bool GgufFile::get_bool(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* b = std::get_if<bool>(&v.value)) return *b;
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected a bool", path_, key,
              value_type_name(v));
}

std::string GgufFile::get_string(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* s = std::get_if<std::string>(&v.value)) return *s;
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected a string", path_, key,
              value_type_name(v));
}

std::optional<std::string> GgufFile::find_string(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return get_string(key);
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* a = std::get_if<GgufValue::Array>(&v.value)) {
        if (const auto* s = std::get_if<std::vector<std::string>>(a)) return *s;
    }
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected an array of strings", path_, key,
              value_type_name(v));
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* a = std::get_if<GgufValue::Array>(&v.value)) {
        if (const auto* ints = std::get_if<std::vector<int64_t>>(a)) {
            if (v.array_type == uint32_t(GgufType::U64)) {
                for (size_t i = 0; i < ints->size(); ++i) {
                    SKV_CHECK((*ints)[i] >= 0,
                              "GGUF file '{}': metadata key '{}' element {} is {}, too large for a "
                              "signed 64-bit integer",
                              path_, key, i, uint64_t((*ints)[i]));
                }
            }
            return *ints;
        }
    }
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected an array of integers", path_, key,
              value_type_name(v));
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (const auto* a = std::get_if<GgufValue::Array>(&v.value)) {
        if (const auto* d = std::get_if<std::vector<double>>(a)) return *d;
        if (const auto* ints = std::get_if<std::vector<int64_t>>(a)) {
            std::vector<double> out(ints->size());
            for (size_t i = 0; i < ints->size(); ++i) {
                out[i] = v.array_type == uint32_t(GgufType::U64) ? double(uint64_t((*ints)[i]))
                                                                 : double((*ints)[i]);
            }
            return out;
        }
    }
    SKV_THROW("GGUF file '{}': metadata key '{}' is {}, expected an array of numbers", path_, key,
              value_type_name(v));
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
    const GgufTensorInfo* t = find_tensor(name);
    SKV_CHECK(t != nullptr, "GGUF file '{}' has no tensor '{}'", path_, name);
    return *t;
}

}  // namespace swiftkv
