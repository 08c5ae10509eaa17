// Streaming safetensors writer (see safetensors_stream_writer.h).
#include "convert/safetensors_stream_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace swiftkv {

namespace {

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
        const ssize_t n = ::write(fd, p, bytes);
        if (n < 0 && errno == EINTR) continue;
        SKV_CHECK(n > 0, "cannot write '{}': {}", path, n < 0 ? std::strerror(errno) : "no progress");
        p += n;
        bytes -= size_t(n);
    }
}

}  // namespace

uint64_t safetensors_entry_bytes(const SafetensorsEntry& e) {
    int64_t elements = 1;
    for (int64_t d : e.shape) {
        SKV_CHECK(d >= 0 && !__builtin_mul_overflow(elements, d, &elements), "tensor '{}' has an invalid shape",
                  e.name);
    }
    int64_t bytes = 0;
    SKV_CHECK(!__builtin_mul_overflow(elements, dtype_block_bytes(e.dtype), &bytes), "tensor '{}' is too large",
              e.name);
    return uint64_t(bytes);
}

SafetensorsStreamWriter::SafetensorsStreamWriter(std::string path, std::vector<SafetensorsEntry> entries,
                                                 const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), entries_(std::move(entries)) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
        nlohmann::ordered_json meta = nlohmann::ordered_json::object();
        for (const auto& [k, v] : metadata) meta[k] = v;
        header["__metadata__"] = std::move(meta);
    }
    std::set<std::string> names;
    uint64_t offset = 0;
    for (const SafetensorsEntry& e : entries_) {
        SKV_CHECK(!e.name.empty() && e.name != "__metadata__", "cannot write '{}': '{}' is not a valid tensor name",
                  path_, e.name);
        SKV_CHECK(names.insert(e.name).second, "cannot write '{}': tensor '{}' is given twice", path_, e.name);
        SKV_CHECK(e.dtype == DType::F32 || e.dtype == DType::F16 || e.dtype == DType::BF16,
                  "cannot write '{}': tensor '{}' is {} (expected F32, F16 or BF16)", path_, e.name,
                  dtype_name(e.dtype));
        const uint64_t bytes = safetensors_entry_bytes(e);
        header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                          {"shape", e.shape},
                          {"data_offsets", {offset, offset + bytes}}};
        sizes_.push_back(bytes);
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference does
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    SKV_CHECK(fd_ >= 0, "cannot create '{}': {}", path_, std::strerror(errno));
    write_all(fd_, len_bytes, 8, path_);
    write_all(fd_, text.data(), text.size(), path_);
    while (current_ < sizes_.size() && sizes_[current_] == 0) ++current_;
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
    if (fd_ >= 0) ::close(fd_);
}

void SafetensorsStreamWriter::append(const void* data, size_t bytes) {
    SKV_CHECK(fd_ >= 0, "internal error: '{}' is already closed", path_);
    SKV_CHECK(current_ < sizes_.size() && written_in_current_ + bytes <= sizes_[current_],
              "internal error: {} bytes written past the end of tensor '{}' in '{}'", bytes,
              current_ < entries_.size() ? entries_[current_].name : std::string("<none>"), path_);
    write_all(fd_, data, bytes, path_);
    written_in_current_ += bytes;
    while (current_ < sizes_.size() && written_in_current_ == sizes_[current_]) {
        ++current_;
        written_in_current_ = 0;
    }
}

void SafetensorsStreamWriter::finish() {
    SKV_CHECK(fd_ >= 0, "internal error: '{}' is already closed", path_);
    SKV_CHECK(current_ == sizes_.size(), "internal error: '{}' is incomplete: tensor '{}' has no data", path_,
              current_ < entries_.size() ? entries_[current_].name : std::string());
    SKV_CHECK(::fsync(fd_) == 0, "cannot write '{}': {}", path_, std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    SKV_CHECK(::close(fd) == 0, "cannot write '{}': {}", path_, std::strerror(errno));
}

}  // namespace swiftkv
