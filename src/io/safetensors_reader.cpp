// Safetensors reading (one file or a sharded directory) and writing. Layout: u64 little-endian
// header length N, N bytes of JSON, then the data buffer; each tensor's data_offsets are relative
// to the buffer's start (byte 8 + N). The JSON is parsed with nesting depth and duplicate keys
// checked as it streams, and every dtype, shape and offset is validated before a pointer is formed.
#include "io/safetensors_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/error.h"
#include "io/io_util.h"

namespace swiftkv {

using io_detail::describe_bytes;

namespace {

// The reference implementation caps the header at 100 MB; a real header is a few hundred KB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Deepest valid element: an entry of "shape" (top object > tensor object > shape array > number).
constexpr int kMaxJsonDepth = 3;

std::optional<DType> dtype_from_safetensors(const std::string& s) {
    if (s == "F32") return DType::F32;
    if (s == "F16") return DType::F16;
    if (s == "BF16") return DType::BF16;
    if (s == "I32") return DType::I32;
    if (s == "I64") return DType::I64;
    if (s == "U8") return DType::U8;
    return std::nullopt;
}

bool writable_dtype(DType t) {
    switch (t) {
        case DType::F32: case DType::F16: case DType::BF16: case DType::I32: case DType::I64:
        case DType::U8: return true;
        default: return false;
    }
}

// Parses JSON text, rejecting nesting deeper than max_depth and duplicate keys in any object (both
// legal for nlohmann but never in a valid file; the depth limit also bounds parser memory).
nlohmann::json parse_strict_json(const char* begin, const char* end, int max_depth,
                                 const std::string& what) {
    std::array<std::set<std::string>, 8> keys_at_depth;
    auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        if (depth > max_depth) SKV_THROW("{} is nested deeper than a valid file can be", what);
        if (event == nlohmann::json::parse_event_t::object_start) {
            keys_at_depth[size_t(depth) + 1].clear();
        } else if (event == nlohmann::json::parse_event_t::key) {
            const std::string& key = parsed.get_ref<const std::string&>();
            SKV_CHECK(keys_at_depth[size_t(depth)].insert(key).second, "{} has the key '{}' twice",
                      what, key);
        }
        return true;
    };
    try {
        return nlohmann::json::parse(begin, end, callback);
    } catch (const nlohmann::json::exception& e) {
        SKV_THROW("{} is not valid JSON: {}", what, e.what());
    }
}

std::optional<uint64_t> as_unsigned(const nlohmann::json& j) {
    if (!j.is_number_unsigned()) return std::nullopt;
    return j.get<uint64_t>();
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path)
    : file_(std::make_unique<MappedFile>(path)), path_(path) {
    bytes_ = file_->data();
    size_ = file_->size();
    parse();
}

SafetensorsFile::SafetensorsFile(const uint8_t* data, size_t size, std::string name)
    : path_(std::move(name)), bytes_(data), size_(size) {
    parse();
}

const std::string& SafetensorsFile::path() const { return path_; }

void SafetensorsFile::parse() {
    SKV_CHECK(size_ >= 8, "'{}' is not a safetensors file: it has only {} bytes", path_, size_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes_[i];
    SKV_CHECK(header_len <= kMaxHeaderBytes,
              "'{}' is not a safetensors file (or is corrupt): its header length field is {}, more "
              "than the 100 MB limit",
              path_, header_len);
    SKV_CHECK(header_len <= size_ - 8,
              "safetensors file '{}' is truncated: its header needs {} after the 8-byte length, but "
              "the file has {}",
              path_, describe_bytes(header_len), describe_bytes(size_));
    SKV_CHECK(header_len >= 2 && bytes_[8] == '{',
              "'{}' is not a safetensors file: the header does not start with a JSON object", path_);

    const char* text = reinterpret_cast<const char*>(bytes_ + 8);
    const nlohmann::json header = parse_strict_json(text, text + header_len, kMaxJsonDepth,
                                                    fmt::format("safetensors header of '{}'", path_));
    SKV_CHECK(header.is_object(), "safetensors header of '{}' is not a JSON object", path_);

    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = uint64_t(size_) - data_start;
    std::vector<std::pair<uint64_t, size_t>> order;  // (begin, tensor index) for the overlap check
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            SKV_CHECK(entry.is_object(), "safetensors file '{}': '__metadata__' is not a JSON object",
                      path_);
            for (const auto& [key, value] : entry.items()) {
                SKV_CHECK(value.is_string(),
                          "safetensors file '{}': '__metadata__' entry '{}' is not a string", path_,
                          key);
                metadata_.emplace(key, value.get<std::string>());
            }
            continue;
        }
        SKV_CHECK(entry.is_object(), "safetensors file '{}': tensor '{}' is not described by a JSON object",
                  path_, name);
        const auto dtype_it = entry.find("dtype");
        const auto shape_it = entry.find("shape");
        const auto offsets_it = entry.find("data_offsets");
        SKV_CHECK(dtype_it != entry.end() && dtype_it->is_string(),
                  "safetensors file '{}': tensor '{}' has no string 'dtype'", path_, name);
        SKV_CHECK(shape_it != entry.end() && shape_it->is_array(),
                  "safetensors file '{}': tensor '{}' has no 'shape' array", path_, name);
        SKV_CHECK(offsets_it != entry.end() && offsets_it->is_array() && offsets_it->size() == 2,
                  "safetensors file '{}': tensor '{}' has no 'data_offsets' pair [begin, end]", path_,
                  name);

        SafetensorsTensorInfo t;
        t.name = name;
        t.file = path_;
        const std::string dtype = dtype_it->get<std::string>();
        const std::optional<DType> dt = dtype_from_safetensors(dtype);
        SKV_CHECK(dt.has_value(),
                  "safetensors file '{}': tensor '{}' has dtype {} which swiftkv does not support; "
                  "supported: F32, F16, BF16, I32, I64, U8",
                  path_, name, dtype);
        t.dtype = *dt;

        int64_t elements = 1;
        for (const nlohmann::json& dim : *shape_it) {
            const std::optional<uint64_t> d = as_unsigned(dim);
            SKV_CHECK(d.has_value() && *d <= uint64_t(std::numeric_limits<int64_t>::max()),
                      "safetensors file '{}': tensor '{}' has shape {}; dimensions must be "
                      "non-negative integers",
                      path_, name, shape_it->dump());
            t.shape.push_back(int64_t(*d));
            SKV_CHECK(!__builtin_mul_overflow(elements, int64_t(*d), &elements),
                      "safetensors file '{}': tensor '{}' has shape {} whose element count overflows "
                      "64 bits",
                      path_, name, shape_it->dump());
        }
        int64_t nbytes = 0;
        SKV_CHECK(!__builtin_mul_overflow(elements, dtype_block_bytes(t.dtype), &nbytes),
                  "safetensors file '{}': tensor '{}' has shape {} whose byte size overflows 64 bits",
                  path_, name, shape_it->dump());
        t.nbytes = uint64_t(nbytes);

        const std::optional<uint64_t> begin = as_unsigned((*offsets_it)[0]);
        const std::optional<uint64_t> end = as_unsigned((*offsets_it)[1]);
        SKV_CHECK(begin && end && *begin <= *end,
                  "safetensors file '{}': tensor '{}' has data_offsets {}; expected [begin, end] with "
                  "0 <= begin <= end",
                  path_, name, offsets_it->dump());
        SKV_CHECK(*end - *begin == t.nbytes,
                  "safetensors file '{}': tensor '{}' has data_offsets {} ({} bytes), but {} of shape "
                  "{} needs {} bytes",
                  path_, name, offsets_it->dump(), *end - *begin, dtype, shape_it->dump(), t.nbytes);
        SKV_CHECK(*end <= data_size,
                  "safetensors file '{}' is truncated: tensor '{}' needs {} at offset {}, but the file "
                  "has {}",
                  path_, name, describe_bytes(t.nbytes),
                  describe_bytes(data_start + *begin), describe_bytes(size_));
        t.data = bytes_ + data_start + *begin;
        order.emplace_back(*begin, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // Keep tensors in file order, and reject overlapping data ranges (a corrupt or crafted header).
    std::sort(order.begin(), order.end());
    std::vector<SafetensorsTensorInfo> sorted;
    sorted.reserve(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) {
        SafetensorsTensorInfo& t = tensors_[order[i].second];
        if (!sorted.empty()) {
            const SafetensorsTensorInfo& prev = sorted.back();
            const uint64_t prev_end = uint64_t(prev.data - bytes_) + prev.nbytes;
            SKV_CHECK(prev_end <= uint64_t(t.data - bytes_),
                      "safetensors file '{}' is corrupt: the data of tensors '{}' and '{}' overlap",
                      path_, prev.name, t.name);
        }
        tensor_index_.emplace(t.name, sorted.size());
        sorted.push_back(std::move(t));
    }
    tensors_ = std::move(sorted);
}

const SafetensorsTensorInfo* SafetensorsFile::find(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensorInfo& SafetensorsFile::at(const std::string& name) const {
    const SafetensorsTensorInfo* t = find(name);
    SKV_CHECK(t != nullptr, "safetensors file '{}' has no tensor '{}'", path_, name);
    return *t;
}

SafetensorsModel::SafetensorsModel(const std::string& directory) {
    namespace fs = std::filesystem;
    const fs::path dir(directory);
    const fs::path index_path = dir / "model.safetensors.index.json";
    const fs::path single_path = dir / "model.safetensors";
    std::error_code ec;

    if (fs::exists(index_path, ec)) {
        const std::string index_name = index_path.string();
        MappedFile index_file(index_name);
        SKV_CHECK(index_file.size() <= kMaxHeaderBytes, "'{}' is {}, too large for a weight index",
                  index_name, describe_bytes(index_file.size()));
        const char* text = reinterpret_cast<const char*>(index_file.data());
        // Depth 2 covers {"weight_map": {name: file}}; "metadata" values may be objects in some
        // exports, so allow a little more.
        const nlohmann::json index = parse_strict_json(text, text + index_file.size(), 4,
                                                       fmt::format("weight index '{}'", index_name));
        SKV_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                  "weight index '{}' has no 'weight_map' object", index_name);

        std::map<std::string, std::vector<std::string>> names_by_shard;
        for (const auto& [name, shard] : index["weight_map"].items()) {
            SKV_CHECK(shard.is_string(), "weight index '{}': the shard of tensor '{}' is not a string",
                      index_name, name);
            const std::string shard_name = shard.get<std::string>();
            // Shards must sit beside the index: no paths, so a hostile index cannot point elsewhere.
            SKV_CHECK(!shard_name.empty() && shard_name != "." && shard_name != ".." &&
                          shard_name.find('/') == std::string::npos &&
                          shard_name.find('\\') == std::string::npos,
                      "weight index '{}': tensor '{}' names shard '{}', which is not a plain file name",
                      index_name, name, shard_name);
            names_by_shard[shard_name].push_back(name);
        }
        for (const auto& [shard_name, names] : names_by_shard) {
            const std::string shard_path = (dir / shard_name).string();
            SKV_CHECK(fs::exists(shard_path, ec),
                      "weight index '{}' lists shard '{}' (for tensor '{}'), but '{}' does not exist",
                      index_name, shard_name, names.front(), shard_path);
            files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
            const SafetensorsFile& shard = *files_.back();
            for (const std::string& name : names) {
                const SafetensorsTensorInfo* t = shard.find(name);
                SKV_CHECK(t != nullptr,
                          "weight index '{}' puts tensor '{}' in shard '{}', but that shard has no "
                          "such tensor",
                          index_name, name, shard_path);
                tensors_.emplace(name, *t);
            }
        }
        return;
    }
    if (fs::exists(single_path, ec)) {
        files_.push_back(std::make_unique<SafetensorsFile>(single_path.string()));
        for (const SafetensorsTensorInfo& t : files_.back()->tensors()) tensors_.emplace(t.name, t);
        return;
    }
    SKV_THROW("no model.safetensors or model.safetensors.index.json in '{}'", directory);
}

const SafetensorsTensorInfo* SafetensorsModel::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

const SafetensorsTensorInfo& SafetensorsModel::at(const std::string& name) const {
    const SafetensorsTensorInfo* t = find(name);
    SKV_CHECK(t != nullptr, "the model's safetensors weights have no tensor '{}'", name);
    return *t;
}

namespace {

// Removes the temporary file unless released: an error anywhere leaves nothing behind.
class TempFileGuard {
public:
    explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
    ~TempFileGuard() {
        if (!path_.empty()) std::remove(path_.c_str());
    }
    void release() { path_.clear(); }

private:
    std::string path_;
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        SKV_CHECK(w > 0, "cannot write '{}': {}", path, std::strerror(errno));
        p += w;
        n -= size_t(w);
    }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& items,
                       const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
        nlohmann::ordered_json meta = nlohmann::ordered_json::object();
        for (const auto& [k, v] : metadata) meta[k] = v;
        header["__metadata__"] = std::move(meta);
    }
    std::set<std::string> names;
    std::vector<uint64_t> sizes;
    uint64_t offset = 0;
    for (const SafetensorsWriteItem& item : items) {
        SKV_CHECK(!item.name.empty() && item.name != "__metadata__",
                  "cannot write '{}': '{}' is not a valid tensor name", path, item.name);
        SKV_CHECK(names.insert(item.name).second, "cannot write '{}': tensor '{}' is given twice", path,
                  item.name);
        SKV_CHECK(writable_dtype(item.dtype),
                  "cannot write '{}': tensor '{}' is {}, which safetensors files here cannot hold "
                  "(supported: F32, F16, BF16, I32, I64, U8)",
                  path, item.name, dtype_name(item.dtype));
        int64_t elements = 1;
        for (int64_t d : item.shape) {
            SKV_CHECK(d >= 0 && !__builtin_mul_overflow(elements, d, &elements),
                      "cannot write '{}': tensor '{}' has an invalid shape", path, item.name);
        }
        int64_t nbytes = 0;
        SKV_CHECK(!__builtin_mul_overflow(elements, dtype_block_bytes(item.dtype), &nbytes),
                  "cannot write '{}': tensor '{}' is too large", path, item.name);
        SKV_CHECK(nbytes == 0 || item.data != nullptr, "cannot write '{}': tensor '{}' has no data",
                  path, item.name);
        header[item.name] = {{"dtype", std::string(dtype_name(item.dtype))},
                             {"shape", item.shape},
                             {"data_offsets", {offset, offset + uint64_t(nbytes)}}};
        sizes.push_back(uint64_t(nbytes));
        offset += uint64_t(nbytes);
    }

    std::string text;
    try {
        text = header.dump();
    } catch (const nlohmann::json::exception& e) {
        SKV_THROW("cannot write '{}': a tensor name or metadata string is not valid UTF-8 ({})", path,
                  e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference does
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    SKV_CHECK(fd >= 0, "cannot create '{}': {}", tmp, std::strerror(errno));
    TempFileGuard guard(tmp);
    try {
        write_all(fd, len_bytes, 8, tmp);
        write_all(fd, text.data(), text.size(), tmp);
        for (size_t i = 0; i < items.size(); ++i) write_all(fd, items[i].data, size_t(sizes[i]), tmp);
        SKV_CHECK(::fsync(fd) == 0, "cannot write '{}': {}", tmp, std::strerror(errno));
    } catch (...) {
        ::close(fd);
        throw;
    }
    SKV_CHECK(::close(fd) == 0, "cannot write '{}': {}", tmp, std::strerror(errno));
    SKV_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp, path,
              std::strerror(errno));
    guard.release();
}

}  // namespace swiftkv
