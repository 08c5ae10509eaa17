// Distillation checkpoints: atomic writes, verified reads (see distill_checkpoint.h).
#include "train/distill_checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "io/safetensors_reader.h"
#include "train/distill_data.h"

namespace swiftkv {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFile = "state.json";
constexpr const char* kTensorFile = "optimizer.safetensors";
constexpr int kVersion = 1;

// A 64-bit checksum of a file, eight bytes at a time (fast enough for multi-GB optimizer states).
std::string file_checksum(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    SKV_CHECK(in.good(), "cannot read '{}'", path);
    uint64_t h = 1469598103934665603ull;
    std::vector<char> buf(size_t(1) << 22);
    while (in) {
        in.read(buf.data(), std::streamsize(buf.size()));
        const size_t n = size_t(in.gcount());
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            std::memcpy(&w, buf.data() + i, 8);
            h = (h ^ w) * 1099511628211ull;
            h ^= h >> 29;
        }
        h = fnv1a64(buf.data() + i, n - i, h);
    }
    return fmt::format("{:016x}", h);
}

void write_text_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    SKV_CHECK(out.good(), "cannot write '{}' (disk full?)", path);
}

std::string checkpoint_dir(const std::string& out_dir) {
    const fs::path cur = fs::path(out_dir) / "checkpoint";
    std::error_code ec;
    if (fs::exists(cur / kStateFile, ec)) return cur.string();
    const fs::path old = fs::path(out_dir) / "checkpoint.old";
    if (fs::exists(old / kStateFile, ec)) return old.string();  // a swap was interrupted
    return cur.string();
}

nlohmann::json read_state(const std::string& dir) {
    const std::string path = (fs::path(dir) / kStateFile).string();
    std::error_code ec;
    SKV_CHECK(fs::exists(path, ec), "no checkpoint to resume from: '{}' does not exist (start without --resume)", path);
    std::ifstream in(path);
    SKV_CHECK(in.good(), "cannot read checkpoint '{}'", path);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        SKV_THROW("checkpoint '{}' is corrupted (not valid JSON: {}); restore it from a backup or start over without "
                  "--resume in a new --out directory", path, e.what());
    }
    SKV_CHECK(j.is_object() && j.value("format", "") == "swiftkv-distill-checkpoint",
              "checkpoint '{}' is corrupted or not a swiftkv distill checkpoint", path);
    SKV_CHECK(j.value("version", 0) == kVersion, "checkpoint '{}' has version {}; this swiftkv reads version {}", path,
              j.value("version", 0), kVersion);
    return j;
}

}  // namespace

nlohmann::json trainable_layout(const std::vector<TrainableTensor>& tensors, int64_t num_params) {
    nlohmann::json t = nlohmann::json::array();
    for (const auto& x : tensors) t.push_back({x.name, x.shape, x.offset});
    return {{"num_params", num_params}, {"tensors", t}};
}

void save_distill_checkpoint(const std::string& out_dir, const DistillCheckpoint& c) {
    const size_t P = c.params.size();
    SKV_CHECK(c.adam_m.size() == P && c.adam_v.size() == P, "checkpoint: optimizer state sizes differ from {} parameters",
              P);
    const fs::path out(out_dir), tmp = out / "checkpoint.tmp", cur = out / "checkpoint", old = out / "checkpoint.old";
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    SKV_CHECK(!ec, "cannot create '{}': {}", tmp.string(), ec.message());
    const std::vector<int64_t> shape{int64_t(P)};
    write_safetensors((tmp / kTensorFile).string(),
                      {{"params", DType::F32, shape, c.params.data()},
                       {"adam_m", DType::F32, shape, c.adam_m.data()},
                       {"adam_v", DType::F32, shape, c.adam_v.data()}});
    nlohmann::json state = {{"format", "swiftkv-distill-checkpoint"},
                            {"version", kVersion},
                            {"step", c.step},
                            {"rows_consumed", c.rows_consumed},
                            {"elapsed_seconds", c.elapsed_seconds},
                            {"data_fingerprint", fmt::format("{:016x}", c.data_fingerprint)},
                            {"options", c.options},
                            {"layout", c.layout},
                            {"tensors_checksum", file_checksum((tmp / kTensorFile).string())}};
    write_text_file((tmp / kStateFile).string(), state.dump(2) + "\n");
    // Swap: the current checkpoint becomes .old until the new one is in place.
    fs::remove_all(old, ec);
    if (fs::exists(cur, ec)) {
        fs::rename(cur, old, ec);
        SKV_CHECK(!ec, "cannot move the previous checkpoint aside: {}", ec.message());
    }
    fs::rename(tmp, cur, ec);
    SKV_CHECK(!ec, "cannot move the new checkpoint into place: {} (the previous one is in '{}')", ec.message(),
              old.string());
    fs::remove_all(old, ec);
}

bool has_distill_checkpoint(const std::string& out_dir) {
    std::error_code ec;
    return fs::exists(fs::path(checkpoint_dir(out_dir)) / kStateFile, ec);
}

nlohmann::json read_distill_checkpoint_options(const std::string& out_dir) {
    const nlohmann::json j = read_state(checkpoint_dir(out_dir));
    return j.value("options", nlohmann::json::object());
}

DistillCheckpoint load_distill_checkpoint(const std::string& out_dir) {
    const std::string dir = checkpoint_dir(out_dir);
    const nlohmann::json j = read_state(dir);
    const std::string tensors = (fs::path(dir) / kTensorFile).string();
    std::error_code ec;
    SKV_CHECK(fs::exists(tensors, ec), "checkpoint '{}' is incomplete: '{}' is missing", dir, tensors);
    const std::string sum = file_checksum(tensors);
    SKV_CHECK(sum == j.value("tensors_checksum", ""),
              "checkpoint '{}' is corrupted: '{}' has checksum {} but state.json recorded {}; restore it or start over "
              "without --resume in a new --out directory", dir, tensors, sum, j.value("tensors_checksum", ""));
    DistillCheckpoint c;
    try {
        c.step = j.at("step").get<int64_t>();
        c.rows_consumed = j.at("rows_consumed").get<int64_t>();
        c.elapsed_seconds = j.value("elapsed_seconds", 0.0);
        c.data_fingerprint = std::stoull(j.at("data_fingerprint").get<std::string>(), nullptr, 16);
        c.options = j.at("options");
        c.layout = j.at("layout");
    } catch (const std::exception& e) {
        SKV_THROW("checkpoint '{}' is corrupted (state.json: {})", dir, e.what());
    }
    SKV_CHECK(c.step >= 0 && c.rows_consumed >= 0, "checkpoint '{}' is corrupted (negative step or cursor)", dir);
    SafetensorsFile file(tensors);
    const int64_t P = c.layout.value("num_params", int64_t(-1));
    for (const char* name : {"params", "adam_m", "adam_v"}) {
        const SafetensorsTensorInfo* t = file.find(name);
        SKV_CHECK(t != nullptr && t->dtype == DType::F32 && t->shape == std::vector<int64_t>{P},
                  "checkpoint '{}' is corrupted: tensor '{}' is missing or is not f32 [{}]", dir, name, P);
        std::vector<float> v(static_cast<size_t>(P));
        std::memcpy(v.data(), t->data, size_t(P) * 4);
        (std::string(name) == "params" ? c.params : std::string(name) == "adam_m" ? c.adam_m : c.adam_v) = std::move(v);
    }
    return c;
}

}  // namespace swiftkv
