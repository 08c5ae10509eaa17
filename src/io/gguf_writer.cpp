// GGUF v3 writer (see gguf_writer.h). The layout is the one gguf_reader.cpp parses: header, metadata
// key/values, tensor directory (ne in ggml order, offsets relative to the data section), zero
// padding to the alignment, then each tensor's data padded to the alignment, as gguf-py writes it.
#include "io/gguf_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include "core/error.h"
#include "io/io_util.h"

namespace swiftkv {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kGgufVersion = 3;
constexpr size_t kMaxTensorName = 63;  // llama.cpp: GGML_MAX_NAME (64) including the terminating NUL
constexpr uint32_t kMaxDims = 4;

void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(uint8_t(v >> (8 * i)));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
    put_le(out, s.size(), 8);
    out.insert(out.end(), s.begin(), s.end());
}

// Encoded size of a scalar of type t (0 for strings, arrays and unknown codes).
int scalar_bytes(GgufType t) {
    switch (t) {
        case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
        case GgufType::U16: case GgufType::I16: return 2;
        case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
        case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
        default: return 0;
    }
}

bool is_integer(GgufType t) {
    switch (t) {
        case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
        case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
        default: return false;
    }
}

// Appends an integer of type t; U64 takes v's bit pattern (as GgufFile stores u64 array elements).
void put_integer(std::vector<uint8_t>& out, GgufType t, int64_t v, const std::string& key) {
    int64_t lo = 0, hi = 0;
    switch (t) {
        case GgufType::U8: lo = 0, hi = 0xff; break;
        case GgufType::I8: lo = -128, hi = 127; break;
        case GgufType::U16: lo = 0, hi = 0xffff; break;
        case GgufType::I16: lo = -32768, hi = 32767; break;
        case GgufType::U32: lo = 0, hi = 0xffffffffll; break;
        case GgufType::I32: lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max(); break;
        case GgufType::U64: case GgufType::I64:
            lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
            break;
        default: SKV_THROW("internal error: GGUF type {} is not an integer type (key '{}')", uint32_t(t), key);
    }
    SKV_CHECK(v >= lo && v <= hi, "GGUF metadata key '{}': {} does not fit the type {}", key, v,
              gguf_type_name(uint32_t(t)));
    put_le(out, uint64_t(v), scalar_bytes(t));
}

void put_float(std::vector<uint8_t>& out, GgufType t, double v) {
    if (t == GgufType::F32) {
        put_le(out, std::bit_cast<uint32_t>(float(v)), 4);
    } else {
        put_le(out, std::bit_cast<uint64_t>(v), 8);
    }
}

std::vector<uint8_t> with_type(GgufType t) {
    std::vector<uint8_t> out;
    put_le(out, uint32_t(t), 4);
    return out;
}

std::vector<uint8_t> array_header(GgufType element, size_t count) {
    std::vector<uint8_t> out = with_type(GgufType::ARRAY);
    put_le(out, uint32_t(element), 4);
    put_le(out, count, 8);
    return out;
}

std::string random_suffix() {
    static std::mt19937_64 rng{std::random_device{}() ^ uint64_t(::getpid())};
    return fmt::format("{:06x}", rng() & 0xffffff);
}

}  // namespace

uint32_t ggml_type_of(DType dtype) {
    switch (dtype) {
        case DType::F32: return 0;
        case DType::F16: return 1;
        case DType::Q4_0: return 2;
        case DType::Q4_1: return 3;
        case DType::Q8_0: return 8;
        case DType::BF16: return 30;
        default: SKV_THROW("dtype {} cannot be stored in GGUF (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                           dtype_name(dtype));
    }
}

void quantize_q8_0(const float* src, uint8_t* dst, int64_t n) {
    SKV_CHECK(n % 32 == 0, "Q8_0 quantization needs a multiple of 32 values, got {}", n);
    for (int64_t b = 0; b < n / 32; ++b) {
        const float* x = src + b * 32;
        uint8_t* out = dst + b * 34;
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t d16 = f32_to_f16(d);
        out[0] = uint8_t(d16);
        out[1] = uint8_t(d16 >> 8);
        for (int i = 0; i < 32; ++i) out[2 + i] = uint8_t(int8_t(std::roundf(x[i] * id)));
    }
}

GgufWriter::GgufWriter(std::string path, GgufWriterOptions options) : path_(std::move(path)), options_(options) {
    SKV_CHECK(!path_.empty(), "no output file given");
    SKV_CHECK(options_.alignment > 0 && options_.alignment <= (uint64_t(1) << 30) &&
                  std::has_single_bit(options_.alignment),
              "GGUF alignment {} must be a power of two up to 2^30", options_.alignment);
    std::error_code ec;
    const fs::path target(path_);
    const fs::file_status st = fs::symlink_status(target, ec);
    if (fs::exists(st)) {
        SKV_CHECK(options_.overwrite, "'{}' already exists; pass --force to replace it", path_);
        SKV_CHECK(fs::is_regular_file(st), "'{}' exists and is not a regular file; refusing to replace it", path_);
    }
    const fs::path parent = fs::absolute(target, ec).parent_path();
    SKV_CHECK(fs::is_directory(parent, ec), "cannot write '{}': the folder '{}' does not exist", path_,
              parent.string());
}

GgufWriter::~GgufWriter() {
    if (!finished_) discard();
}

void GgufWriter::discard() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    if (!tmp_path_.empty()) {
        ::unlink(tmp_path_.c_str());
        tmp_path_.clear();
    }
}

bool GgufWriter::has_key(const std::string& key) const {
    return std::any_of(metadata_.begin(), metadata_.end(), [&](const Entry& e) { return e.key == key; });
}

void GgufWriter::add_encoded(const std::string& key, std::vector<uint8_t> encoded) {
    SKV_CHECK(!header_written_, "internal error: GGUF key '{}' added after the tensor data started", key);
    SKV_CHECK(!key.empty() && key.size() <= 65535, "GGUF metadata keys must have 1 to 65535 bytes, got '{}'", key);
    SKV_CHECK(!has_key(key), "GGUF metadata key '{}' is given twice", key);
    metadata_.push_back({key, std::move(encoded)});
}

void GgufWriter::add_u8(const std::string& k, uint8_t v) { add_int_scalar(k, GgufType::U8, v); }
void GgufWriter::add_i8(const std::string& k, int8_t v) { add_int_scalar(k, GgufType::I8, v); }
void GgufWriter::add_u16(const std::string& k, uint16_t v) { add_int_scalar(k, GgufType::U16, v); }
void GgufWriter::add_i16(const std::string& k, int16_t v) { add_int_scalar(k, GgufType::I16, v); }
void GgufWriter::add_u32(const std::string& k, uint32_t v) { add_int_scalar(k, GgufType::U32, v); }
void GgufWriter::add_i32(const std::string& k, int32_t v) { add_int_scalar(k, GgufType::I32, v); }
void GgufWriter::add_u64(const std::string& k, uint64_t v) { add_int_scalar(k, GgufType::U64, int64_t(v)); }
void GgufWriter::add_i64(const std::string& k, int64_t v) { add_int_scalar(k, GgufType::I64, v); }

void GgufWriter::add_int_scalar(const std::string& key, GgufType t, int64_t v) {
    std::vector<uint8_t> e = with_type(t);
    put_integer(e, t, v, key);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_f32(const std::string& key, float v) {
    std::vector<uint8_t> e = with_type(GgufType::F32);
    put_float(e, GgufType::F32, v);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_f64(const std::string& key, double v) {
    std::vector<uint8_t> e = with_type(GgufType::F64);
    put_float(e, GgufType::F64, v);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_bool(const std::string& key, bool v) {
    std::vector<uint8_t> e = with_type(GgufType::BOOL);
    e.push_back(v ? 1 : 0);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_string(const std::string& key, const std::string& v) {
    std::vector<uint8_t> e = with_type(GgufType::STRING);
    put_string(e, v);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_int_array(const std::string& key, GgufType element_type, const std::vector<int64_t>& values) {
    SKV_CHECK(is_integer(element_type), "GGUF metadata key '{}': an integer array cannot have elements of type {}",
              key, gguf_type_name(uint32_t(element_type)));
    std::vector<uint8_t> e = array_header(element_type, values.size());
    e.reserve(e.size() + values.size() * size_t(scalar_bytes(element_type)));
    for (int64_t v : values) put_integer(e, element_type, v, key);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_float_array(const std::string& key, GgufType element_type, const std::vector<double>& values) {
    SKV_CHECK(element_type == GgufType::F32 || element_type == GgufType::F64,
              "GGUF metadata key '{}': a float array cannot have elements of type {}", key,
              gguf_type_name(uint32_t(element_type)));
    std::vector<uint8_t> e = array_header(element_type, values.size());
    for (double v : values) put_float(e, element_type, v);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_bool_array(const std::string& key, const std::vector<bool>& values) {
    std::vector<uint8_t> e = array_header(GgufType::BOOL, values.size());
    for (bool v : values) e.push_back(v ? 1 : 0);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& values) {
    size_t bytes = 0;
    for (const std::string& s : values) bytes += 8 + s.size();
    std::vector<uint8_t> e = array_header(GgufType::STRING, values.size());
    e.reserve(e.size() + bytes);
    for (const std::string& s : values) put_string(e, s);
    add_encoded(key, std::move(e));
}

void GgufWriter::add_value(const std::string& key, const GgufValue& v) {
    const GgufType t = GgufType(v.gguf_type);
    if (t == GgufType::ARRAY) {
        const auto* array = std::get_if<GgufValue::Array>(&v.value);
        SKV_CHECK(array != nullptr, "internal error: GGUF key '{}' is an array without elements", key);
        const GgufType et = GgufType(v.array_type);
        if (const auto* ints = std::get_if<std::vector<int64_t>>(array)) return add_int_array(key, et, *ints);
        if (const auto* floats = std::get_if<std::vector<double>>(array)) return add_float_array(key, et, *floats);
        if (const auto* bools = std::get_if<std::vector<bool>>(array)) return add_bool_array(key, *bools);
        return add_string_array(key, std::get<std::vector<std::string>>(*array));
    }
    if (const auto* s = std::get_if<std::string>(&v.value)) return add_string(key, *s);
    if (const auto* b = std::get_if<bool>(&v.value)) return add_bool(key, *b);
    if (const auto* d = std::get_if<double>(&v.value)) {
        SKV_CHECK(t == GgufType::F32 || t == GgufType::F64, "GGUF key '{}': a float value with type code {}", key,
                  v.gguf_type);
        return t == GgufType::F32 ? add_f32(key, float(*d)) : add_f64(key, *d);
    }
    if (const auto* u = std::get_if<uint64_t>(&v.value)) return add_u64(key, *u);
    SKV_CHECK(is_integer(t), "GGUF key '{}': an integer value with type code {}", key, v.gguf_type);
    add_int_scalar(key, t, std::get<int64_t>(v.value));
}

void GgufWriter::add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
    SKV_CHECK(!header_written_, "internal error: tensor '{}' added after the tensor data started", name);
    SKV_CHECK(!name.empty() && name.size() <= kMaxTensorName, "GGUF tensor names must have 1 to {} bytes, got '{}'",
              kMaxTensorName, name);
    SKV_CHECK(std::none_of(tensors_.begin(), tensors_.end(), [&](const TensorEntry& t) { return t.name == name; }),
              "GGUF tensor '{}' is given twice", name);
    SKV_CHECK(!shape.empty() && shape.size() <= kMaxDims, "GGUF tensor '{}' must have 1 to {} dimensions, got {}",
              name, kMaxDims, shape.size());
    ggml_type_of(dtype);  // throws for dtypes GGUF cannot hold
    int64_t elements = 1;
    for (int64_t d : shape) {
        SKV_CHECK(d >= 1 && !__builtin_mul_overflow(elements, d, &elements),
                  "GGUF tensor '{}' has an invalid dimension {}", name, d);
    }
    const int64_t block = dtype_block_elems(dtype);
    SKV_CHECK(shape.back() % block == 0, "GGUF tensor '{}' is {} with rows of {} values, not a multiple of {}", name,
              dtype_name(dtype), shape.back(), block);
    int64_t nbytes = 0;
    SKV_CHECK(!__builtin_mul_overflow(elements / block, dtype_block_bytes(dtype), &nbytes),
              "GGUF tensor '{}' is too large", name);
    TensorEntry t{name, dtype, shape, uint64_t(nbytes), 0};
    if (!tensors_.empty()) {
        const TensorEntry& prev = tensors_.back();
        const uint64_t a = options_.alignment;
        t.offset = (prev.offset + prev.nbytes + a - 1) / a * a;
    }
    tensors_.push_back(std::move(t));
}

uint64_t GgufWriter::file_bytes() const {
    // Header size as open_and_write_header() computes it, plus the aligned data.
    uint64_t header = 4 + 4 + 8 + 8;
    for (const Entry& e : metadata_) header += 8 + e.key.size() + e.encoded.size();
    if (!has_key("general.alignment")) header += 8 + std::string("general.alignment").size() + 4 + 4;
    for (const TensorEntry& t : tensors_) header += 8 + t.name.size() + 4 + 8 * t.shape.size() + 4 + 8;
    const uint64_t a = options_.alignment;
    uint64_t data = 0;
    if (!tensors_.empty()) data = tensors_.back().offset + (tensors_.back().nbytes + a - 1) / a * a;
    return (header + a - 1) / a * a + data;
}

void GgufWriter::write_bytes(const void* data, size_t bytes) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
        const ssize_t n = ::write(fd_, p, bytes);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const std::string why = n < 0 ? std::strerror(errno) : "no progress";
            discard();
            SKV_THROW("cannot write '{}': {}", path_, why);
        }
        p += n;
        bytes -= size_t(n);
        file_pos_ += uint64_t(n);
    }
}

void GgufWriter::pad_to_alignment() {
    static const uint8_t zeros[64] = {};
    uint64_t pad = (options_.alignment - file_pos_ % options_.alignment) % options_.alignment;
    while (pad > 0) {
        const size_t n = size_t(std::min<uint64_t>(pad, sizeof(zeros)));
        write_bytes(zeros, n);
        pad -= n;
    }
}

void GgufWriter::open_and_write_header() {
    if (header_written_) return;
    if (has_key("general.alignment")) {
        // A caller-given alignment must be the one the layout uses.
        const Entry& e = *std::find_if(metadata_.begin(), metadata_.end(),
                                       [](const Entry& x) { return x.key == "general.alignment"; });
        std::vector<uint8_t> expected = with_type(GgufType::U32);
        put_le(expected, options_.alignment, 4);
        SKV_CHECK(e.encoded == expected, "general.alignment must be the u32 {} the writer lays the data out with",
                  options_.alignment);
    } else {
        std::vector<uint8_t> e = with_type(GgufType::U32);
        put_le(e, options_.alignment, 4);
        metadata_.push_back({"general.alignment", std::move(e)});
    }

    const fs::path target(path_);
    const std::string base = fs::absolute(target).string();
    int error = 0;
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
        const std::string candidate = base + ".tmp-" + random_suffix();
        fd_ = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd_ >= 0) {
            tmp_path_ = candidate;
        } else if ((error = errno) != EEXIST) {
            break;
        }
    }
    SKV_CHECK(fd_ >= 0, "cannot create a file next to '{}': {}", path_, std::strerror(error));

    std::vector<uint8_t> header;
    header.insert(header.end(), {'G', 'G', 'U', 'F'});
    put_le(header, kGgufVersion, 4);
    put_le(header, tensors_.size(), 8);
    put_le(header, metadata_.size(), 8);
    for (const Entry& e : metadata_) {
        put_string(header, e.key);
        header.insert(header.end(), e.encoded.begin(), e.encoded.end());
    }
    for (const TensorEntry& t : tensors_) {
        put_string(header, t.name);
        put_le(header, t.shape.size(), 4);
        for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put_le(header, uint64_t(*it), 8);
        put_le(header, ggml_type_of(t.dtype), 4);
        put_le(header, t.offset, 8);
    }
    header_written_ = true;
    write_bytes(header.data(), header.size());
    pad_to_alignment();
    while (current_ < tensors_.size() && tensors_[current_].nbytes == 0) ++current_;
}

void GgufWriter::append(const void* data, size_t bytes) {
    SKV_CHECK(!finished_, "internal error: '{}' is already finished", path_);
    open_and_write_header();
    SKV_CHECK(current_ < tensors_.size() && written_in_current_ + bytes <= tensors_[current_].nbytes,
              "internal error: {} bytes written past the end of tensor '{}' in '{}'", bytes,
              current_ < tensors_.size() ? tensors_[current_].name : std::string("<none>"), path_);
    write_bytes(data, bytes);
    written_in_current_ += bytes;
    while (current_ < tensors_.size() && written_in_current_ == tensors_[current_].nbytes) {
        pad_to_alignment();
        ++current_;
        written_in_current_ = 0;
    }
}

void GgufWriter::finish() {
    SKV_CHECK(!finished_, "internal error: '{}' is already finished", path_);
    open_and_write_header();
    SKV_CHECK(current_ == tensors_.size(), "internal error: '{}' is incomplete: tensor '{}' has {} of {} bytes",
              path_, tensors_[current_].name, written_in_current_, tensors_[current_].nbytes);
    if (::fsync(fd_) != 0) {
        const std::string why = std::strerror(errno);
        discard();
        SKV_THROW("cannot write '{}': {}", path_, why);
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
        const std::string why = std::strerror(errno);
        discard();
        SKV_THROW("cannot write '{}': {}", path_, why);
    }
    if (options_.overwrite) {
        if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
            const std::string why = std::strerror(errno);
            discard();
            SKV_THROW("cannot move the written file to '{}': {}", path_, why);
        }
    } else {
        // link(2) fails if the target appeared meanwhile, so an existing file is never replaced.
        if (::link(tmp_path_.c_str(), path_.c_str()) != 0) {
            const int err = errno;
            if (err == EEXIST) {
                discard();
                SKV_THROW("'{}' already exists; pass --force to replace it", path_);
            }
            // File systems without hard links: a plain rename after a last check.
            std::error_code ec;
            if (fs::exists(fs::symlink_status(path_, ec)) || std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
                discard();
                SKV_THROW("cannot move the written file to '{}': {}", path_, std::strerror(err));
            }
        } else {
            ::unlink(tmp_path_.c_str());
        }
    }
    tmp_path_.clear();
    finished_ = true;
    // Make the new name durable.
    const std::string parent = fs::absolute(fs::path(path_)).parent_path().string();
    const int dir = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

}  // namespace swiftkv
