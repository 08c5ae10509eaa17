// Base Llama model -> SwiftKV student directory (see swiftkv_convert.h).
#include "convert/swiftkv_convert.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "convert/convert_plan.h"
#include "convert/gguf_export.h"
#include "convert/safetensors_stream_writer.h"
#include "core/error.h"
#include "model/model_loader.h"
#include "io/gguf_reader.h"
#include "model/model_source.h"
#include "tokenizer/tokenizer_json_writer.h"

namespace swiftkv {

namespace fs = std::filesystem;
using convert_detail::PlannedTensor;
using convert_detail::for_each_f32_chunk;

namespace {

std::string layer_name(int64_t layer, const char* suffix) { return fmt::format("model.layers.{}.{}", layer, suffix); }

std::string shape_text(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

bool convertible_dtype(DType t) {
    return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 || t == DType::Q4_0 ||
           t == DType::Q4_1;
}

void write_tensor(SafetensorsStreamWriter& writer, const PlannedTensor& t, DType out_dtype, int64_t head_dim) {
    const SourceTensor& first = *t.sources.front();
    if (t.sources.size() == 1 && first.dtype == out_dtype && !first.gguf_rope_permuted) {
        // Same dtype and layout: the bytes go straight from the memory map to the file.
        const size_t total = size_t(first.numel()) * size_t(dtype_block_bytes(out_dtype));
        constexpr size_t kPiece = size_t(64) << 20;
        for (size_t done = 0; done < total; done += kPiece) {
            writer.append(first.data + done, std::min(kPiece, total - done));
        }
        return;
    }
    const int64_t cols = t.shape.back();
    std::vector<uint16_t> half;
    for_each_f32_chunk(t, head_dim, false, [&](const float* values, int64_t rows) {
        const size_t count = size_t(rows * cols);
        if (out_dtype == DType::F32) {
            writer.append(values, count * 4);
            return;
        }
        half.resize(count);
        for (size_t i = 0; i < count; ++i) half[i] = out_dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
        writer.append(half.data(), count * 2);
    });
}

// The output directory, built under a staging name next to the target and renamed into place by
// commit(). Until then the destructor removes the staging directory and any parent folders this
// object created, so an error leaves nothing behind.
class StagedDirectory {
public:
    StagedDirectory(const std::string& out_dir, bool force, const std::string& source_path) {
        fs::path target = fs::absolute(fs::path(out_dir)).lexically_normal();
        if (target.filename().empty()) target = target.parent_path();  // "out/" -> "out"
        SKV_CHECK(!target.filename().empty() && target.filename() != "." && target.filename() != "..",
                  "'{}' cannot be an output directory", out_dir);
        target_ = target;
        std::error_code ec;
        if (fs::exists(fs::symlink_status(target_, ec))) {
            SKV_CHECK(force, "output directory '{}' already exists; pass --force to replace it", target_.string());
            SKV_CHECK(fs::is_directory(fs::symlink_status(target_, ec)),
                      "'{}' exists and is not a directory; refusing to replace it", target_.string());
            const bool empty = fs::is_empty(target_, ec);
            SKV_CHECK(empty || fs::exists(target_ / "config.json"),
                      "'{}' exists and does not look like a model directory (no config.json); --force only replaces "
                      "model directories: remove it yourself or choose another --out",
                      target_.string());
            const std::string src = fs::weakly_canonical(fs::absolute(source_path), ec).string();
            const std::string dst = fs::weakly_canonical(target_, ec).string() + "/";
            SKV_CHECK(src.rfind(dst, 0) != 0 && src + "/" != dst,
                      "the base model '{}' is inside the output directory '{}'; choose another --out", source_path,
                      target_.string());
            replace_existing_ = true;
        }
        const fs::path parent = target_.parent_path();
        if (!fs::exists(parent, ec)) {
            fs::path missing = parent;
            while (!missing.parent_path().empty() && missing.parent_path() != missing &&
                   !fs::exists(missing.parent_path(), ec)) {
                missing = missing.parent_path();
            }
            fs::create_directories(parent, ec);
            SKV_CHECK(!ec, "cannot create the folder '{}' for the output: {}", parent.string(), ec.message());
            created_root_ = missing;
        }
        SKV_CHECK(fs::is_directory(parent, ec), "cannot write to '{}': '{}' is not a directory", target_.string(),
                  parent.string());
        // mkdir (not mkdtemp) so that the directory gets the permissions the umask gives a plain mkdir.
        int error = 0;
        for (int attempt = 0; attempt < 100 && staging_.empty(); ++attempt) {
            const fs::path candidate = parent / (target_.filename().string() + ".tmp-" + random_suffix());
            if (::mkdir(candidate.c_str(), 0777) == 0) {
                staging_ = candidate;
            } else if ((error = errno) != EEXIST) {
                break;
            }
        }
        if (staging_.empty()) {
            remove_created_parents();
            SKV_THROW("cannot create the output directory in '{}': {}", parent.string(), std::strerror(error));
        }
    }

    ~StagedDirectory() {
        if (committed_) return;
        std::error_code ec;
        fs::remove_all(staging_, ec);
        remove_created_parents();
    }

    StagedDirectory(const StagedDirectory&) = delete;
    StagedDirectory& operator=(const StagedDirectory&) = delete;

    const fs::path& dir() const { return staging_; }
    const fs::path& target() const { return target_; }

    void commit() {
        const fs::path parent = target_.parent_path();
        fs::path old;
        if (replace_existing_) {
            for (int attempt = 0; attempt < 100 && old.empty(); ++attempt) {
                const fs::path candidate = parent / (target_.filename().string() + ".old-" + random_suffix());
                if (::mkdir(candidate.c_str(), 0700) == 0) {
                    old = candidate;
                } else {
                    SKV_CHECK(errno == EEXIST, "cannot replace '{}': {}", target_.string(), std::strerror(errno));
                }
            }
            SKV_CHECK(!old.empty(), "cannot replace '{}': no free name for the old directory", target_.string());
            // rename(2) replaces the empty placeholder directory atomically.
            if (std::rename(target_.c_str(), old.c_str()) != 0) {
                const std::string why = std::strerror(errno);
                std::error_code ec;
                fs::remove(old, ec);
                SKV_THROW("cannot replace '{}': {}", target_.string(), why);
            }
        }
        if (std::rename(staging_.c_str(), target_.c_str()) != 0) {
            const std::string why = std::strerror(errno);
            if (!old.empty()) std::rename(old.c_str(), target_.c_str());
            SKV_THROW("cannot move '{}' to '{}': {}", staging_.string(), target_.string(), why);
        }
        committed_ = true;
        std::error_code ec;
        if (!old.empty()) fs::remove_all(old, ec);
        // Make the rename durable.
        const int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            ::fsync(fd);
            ::close(fd);
        }
    }

private:
    static std::string random_suffix() {
        static std::mt19937_64 rng{std::random_device{}() ^ uint64_t(::getpid())};
        return fmt::format("{:06x}", rng() & 0xffffff);
    }

    void remove_created_parents() {
        if (created_root_.empty()) return;
        std::error_code ec;
        // Only empty folders go (fs::remove refuses others), from the deepest up to the one we created.
        for (fs::path p = target_.parent_path(); !p.empty(); p = p.parent_path()) {
            fs::remove(p, ec);
            if (p == created_root_ || p == p.parent_path()) break;
        }
    }

    fs::path target_, staging_, created_root_;
    bool replace_existing_ = false;
    bool committed_ = false;
};

// Written and flushed to disk before the directory is renamed into place.
void write_text_file(const fs::path& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    SKV_CHECK(fd >= 0, "cannot create '{}': {}", path.string(), std::strerror(errno));
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const std::string why = n < 0 ? std::strerror(errno) : "no progress";
            ::close(fd);
            SKV_THROW("cannot write '{}': {}", path.string(), why);
        }
        done += size_t(n);
    }
    const bool synced = ::fsync(fd) == 0;
    const std::string why = synced ? "" : std::strerror(errno);
    SKV_CHECK(::close(fd) == 0 && synced, "cannot write '{}': {}", path.string(), why.empty() ? "close failed" : why);
}

void write_json_file(const fs::path& path, const nlohmann::json& doc) {
    std::string text;
    try {
        text = doc.dump(2, ' ', false, nlohmann::json::error_handler_t::strict);
    } catch (const nlohmann::json::exception& e) {
        SKV_THROW("cannot write '{}': a string is not valid UTF-8 ({})", path.string(), e.what());
    }
    text += '\n';
    write_text_file(path, text);
}

double round_to(double v, double step) { return std::round(v / step) * step; }

bool rope_matches(const ModelConfig& base, const RopeScaling& r, const std::vector<float>& plain,
                  const std::vector<float>& divisors) {
    ModelConfig scaled = base;
    scaled.rope_scaling = r;
    const std::vector<float> got = scaled.rope_inv_freq();
    for (size_t i = 0; i < got.size(); ++i) {
        const double want = double(plain[i]) / double(divisors[i]);
        if (!(std::fabs(got[i] - want) <= 1e-4 * std::fabs(want))) return false;
    }
    return true;
}

}  // namespace

int64_t parse_swiftkv_layers(std::string_view spec, int64_t n_layers) {
    auto trimmed = spec;
    while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.front()))) trimmed.remove_prefix(1);
    while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.back()))) trimmed.remove_suffix(1);
    SKV_CHECK(!trimmed.empty(), "--swiftkv-layers is empty: give a layer index (e.g. {}) or a share of the layers "
              "(e.g. 50%)", n_layers / 2);
    if (trimmed.back() == '%') {
        const std::string_view number = trimmed.substr(0, trimmed.size() - 1);
        double percent = 0;
        const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), percent);
        SKV_CHECK(ec == std::errc() && end == number.data() + number.size() && std::isfinite(percent),
                  "--swiftkv-layers '{}' is not a percentage (e.g. 50%)", spec);
        SKV_CHECK(percent > 0 && percent <= 100, "--swiftkv-layers {} is out of range: give a share in (0%, 100%]",
                  spec);
        return std::llround(percent / 100.0 * double(n_layers));
    }
    int64_t layers = 0;
    const auto [end, ec] = std::from_chars(trimmed.data(), trimmed.data() + trimmed.size(), layers);
    SKV_CHECK(ec == std::errc() && end == trimmed.data() + trimmed.size(),
              "--swiftkv-layers '{}' is neither a layer index (e.g. {}) nor a share of the layers (e.g. 50%)", spec,
              n_layers / 2);
    return layers;
}

void validate_swiftkv_cut(int64_t L, int64_t g, int64_t N) {
    SKV_CHECK(N > 0, "the model has no layers");
    SKV_CHECK(L >= 1 && L <= N,
              "--swiftkv-layers {} is out of range: the model has {} layers, so the cut must be in 1..{} ({} = the "
              "base model unchanged; 50% = {})",
              L, N, N, N, (N + 1) / 2);
    SKV_CHECK(g >= 1 && g <= N, "--group {} is out of range: give a group size in 1..{}", g, N);
    if ((N - L) % g == 0) return;
    // The valid cuts for this group size are N - k*g; name the ones on either side of L.
    const int64_t below = N - ((N - L) / g + 1) * g;
    const int64_t above = N - ((N - L) / g) * g;
    std::vector<std::string> cuts;
    if (below >= 1) cuts.push_back(std::to_string(below));
    cuts.push_back(std::to_string(above));
    std::vector<int64_t> groups;
    for (int64_t d = 1; d <= N - L; ++d) {
        if ((N - L) % d == 0) groups.push_back(d);
    }
    SKV_THROW("--group {} does not divide the {} layers after the cut (the model has {} layers, --swiftkv-layers {}): "
              "the later layers must form whole groups. With --group {} use --swiftkv-layers {}; with "
              "--swiftkv-layers {} use --group {}",
              g, N - L, N, L, g, fmt::join(cuts, " or "), L, fmt::join(groups, ", "));
}

std::optional<RopeScaling> llama3_rope_scaling_from_divisors(const ModelConfig& config,
                                                             const std::vector<float>& divisors) {
    ModelConfig base = config;
    base.rope_scaling = RopeScaling{};
    const std::vector<float> plain = base.rope_inv_freq();
    if (divisors.size() != plain.size()) return std::nullopt;
    double factor = 0, smallest = INFINITY;
    for (float d : divisors) {
        if (!std::isfinite(d) || d <= 0) return std::nullopt;
        factor = std::max(factor, double(d));
        smallest = std::min(smallest, double(d));
    }
    if (factor - 1.0 < 1e-6 && 1.0 - smallest < 1e-6) return RopeScaling{};
    if (smallest < 1.0 - 1e-6) return std::nullopt;  // llama3 scaling only lowers frequencies
    // Between the two plateaus (divisor 1, divisor = factor) HF's llama3 rule blends the two with
    // smooth = (old_len / wavelen - low) / (high - low), linear in 1/wavelen = freq / 2pi:
    // smooth = a * x - b with a = old_len / (high - low), b = low / (high - low). Fit a and b.
    std::vector<std::pair<double, double>> points;
    for (size_t i = 0; i < divisors.size(); ++i) {
        const double d = divisors[i];
        if (d > 1.0 + 1e-4 && d < factor * (1.0 - 1e-4)) {
            const double smooth = (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor);
            points.emplace_back(double(plain[i]) / (2.0 * M_PI), smooth);
        }
    }
    if (points.size() < 2) return std::nullopt;
    double mx = 0, ms = 0;
    for (const auto& [x, s] : points) mx += x, ms += s;
    mx /= double(points.size());
    ms /= double(points.size());
    double sxx = 0, sxs = 0;
    for (const auto& [x, s] : points) sxx += (x - mx) * (x - mx), sxs += (x - mx) * (s - ms);
    if (!(sxx > 0)) return std::nullopt;
    const double a = sxs / sxx, b = a * mx - ms;
    if (!(a > 0)) return std::nullopt;
    // Only old_len / (high - low) and low / (high - low) are determined; old_len = 8192 (Llama 3.x's)
    // gives its published low = 1, high = 4, and any choice yields the same frequencies.
    RopeScaling r;
    r.type = RopeScaling::Type::Llama3;
    r.original_max_position = 8192;
    const double old_len = double(r.original_max_position);
    const double low = b * old_len / a, high = low + old_len / a;
    if (!(low > 0 && high > low)) return std::nullopt;
    // Prefer round values (the published configs use them) when they reproduce the divisors as well.
    for (const double step : {1.0, 1e-3, 0.0}) {
        r.factor = step > 0 ? round_to(factor, step) : factor;
        r.low_freq_factor = step > 0 ? round_to(low, step) : low;
        r.high_freq_factor = step > 0 ? round_to(high, step) : high;
        if (r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor && r.factor >= 1 &&
            rope_matches(base, r, plain, divisors)) {
            return r;
        }
    }
    return std::nullopt;
}

ConvertResult convert_to_swiftkv(const ConvertOptions& options) {
    SKV_CHECK(!options.model_path.empty(), "no base model given (--model)");
    const bool to_gguf = options.format == ConvertFormat::Gguf;
    SKV_CHECK(!options.out_dir.empty(), "no output {} given (--out)", to_gguf ? "file" : "directory");
    SKV_CHECK(options.max_shard_bytes > 0, "the shard size must be positive");
    SKV_CHECK(to_gguf || options.dtype != ConvertDType::Q8_0,
              "--dtype q8_0 needs --format gguf (Hugging Face directories hold f32 or bf16)");

    auto source = ModelSource::open(options.model_path);
    const std::string& src_path = source->path();
    ModelConfig config = source->config();
    for (const auto& [name, t] : source->tensors()) {
        SKV_CHECK(name.find("_swiftkv") == std::string::npos,
                  "'{}' is already a SwiftKV model (it has '{}'); convert its base model instead", src_path, name);
    }
    const int64_t N = config.n_layers;
    const int64_t L = parse_swiftkv_layers(options.num_kv_layers, N);
    const int64_t g = options.group_size;
    validate_swiftkv_cut(L, g, N);

    // llama.cpp's rope_freqs tensor becomes Hugging Face rope_scaling (GGUF output keeps the tensor).
    if (const SourceTensor* freqs = to_gguf ? nullptr : source->find("rope_freqs.weight")) {
        SKV_CHECK(freqs->shape == std::vector<int64_t>{config.head_dim / 2} && convertible_dtype(freqs->dtype),
                  "{}: rope_freqs has shape {}, expected [{}]", src_path, shape_text(freqs->shape), config.head_dim / 2);
        std::vector<float> divisors(size_t(config.head_dim / 2));
        read_source_rows_f32(*freqs, 0, 1, 0, divisors.data());
        auto scaling = llama3_rope_scaling_from_divisors(config, divisors);
        SKV_CHECK(scaling.has_value(),
                  "{}: its rope_freqs tensor (llama.cpp's RoPE frequency divisors) does not match Hugging Face's "
                  "llama3 rope scaling, so it cannot be written as a Hugging Face config",
                  src_path);
        config.rope_scaling = *scaling;
    }

    // The teacher: every tensor of the Llama model, shapes checked against the config.
    const int64_t H = config.hidden, qd = config.q_dim(), kvd = config.kv_dim(), F = config.ffn, V = config.vocab;
    std::vector<PlannedTensor> plan;
    auto teacher = [&](const std::string& name, std::vector<int64_t> shape) {
        const SourceTensor& t = source->require(name, shape);
        SKV_CHECK(convertible_dtype(t.dtype), "{}: tensor '{}' is {}, which convert cannot read", src_path,
                  t.file_name, dtype_name(t.dtype));
        plan.push_back({name, std::move(shape), {&t}});
        return &t;
    };
    auto swiftkv = [&](const std::string& name, std::vector<int64_t> shape, std::vector<const SourceTensor*> from) {
        plan.push_back({name, std::move(shape), std::move(from)});
    };
    const bool tied = config.tie_embeddings || source->find("lm_head.weight") == nullptr;
    config.tie_embeddings = tied;
    teacher("model.embed_tokens.weight", {V, H});
    // A group leader's k/v_proj_swiftkv averages the k/v_proj of layers planned after it.
    std::vector<const SourceTensor*> k_proj(N), v_proj(N);
    for (int64_t l = 0; l < N; ++l) {
        k_proj[l] = &source->require(layer_name(l, "self_attn.k_proj.weight"), {kvd, H});
        v_proj[l] = &source->require(layer_name(l, "self_attn.v_proj.weight"), {kvd, H});
    }
    std::vector<const SourceTensor*> input_norm(N);
    for (int64_t l = 0; l < N; ++l) {
        input_norm[l] = teacher(layer_name(l, "input_layernorm.weight"), {H});
        const SourceTensor* q = teacher(layer_name(l, "self_attn.q_proj.weight"), {qd, H});
        teacher(layer_name(l, "self_attn.k_proj.weight"), {kvd, H});
        teacher(layer_name(l, "self_attn.v_proj.weight"), {kvd, H});
        teacher(layer_name(l, "self_attn.o_proj.weight"), {H, qd});
        if (l >= L) swiftkv(layer_name(l, "self_attn.q_proj_swiftkv.weight"), {qd, H}, {q});
        if (l >= L && (l - L) % g == 0) {
            swiftkv(layer_name(l, "self_attn.k_proj_swiftkv.weight"), {kvd, H},
                    std::vector<const SourceTensor*>(k_proj.begin() + l, k_proj.begin() + l + g));
            swiftkv(layer_name(l, "self_attn.v_proj_swiftkv.weight"), {kvd, H},
                    std::vector<const SourceTensor*>(v_proj.begin() + l, v_proj.begin() + l + g));
        }
        teacher(layer_name(l, "post_attention_layernorm.weight"), {H});
        teacher(layer_name(l, "mlp.gate_proj.weight"), {F, H});
        teacher(layer_name(l, "mlp.up_proj.weight"), {F, H});
        teacher(layer_name(l, "mlp.down_proj.weight"), {H, F});
    }
    teacher("model.norm.weight", {H});
    if (L < N) swiftkv("model.norm_swiftkv.weight", {H}, {input_norm[L]});
    if (!tied) teacher("lm_head.weight", {V, H});

    DType out_dtype = options.dtype == ConvertDType::BF16   ? DType::BF16
                      : options.dtype == ConvertDType::Q8_0 ? DType::Q8_0
                                                            : DType::F32;
    if (options.dtype == ConvertDType::Auto) {
        bool all_bf16 = true;
        for (const PlannedTensor& t : plan) {
            if (t.shape.size() == 2) all_bf16 = all_bf16 && t.sources.front()->dtype == DType::BF16;
        }
        out_dtype = all_bf16 ? DType::BF16 : DType::F32;
    }

    ConvertResult result;
    result.dtype = out_dtype;
    std::vector<std::string> planned_names;
    for (const PlannedTensor& t : plan) planned_names.push_back(t.name);
    std::sort(planned_names.begin(), planned_names.end());
    for (const auto& [name, t] : source->tensors()) {
        if (name == "rope_freqs.weight" || (tied && name == "lm_head.weight")) continue;
        if (!std::binary_search(planned_names.begin(), planned_names.end(), name)) {
            result.skipped_tensors.push_back(t.file_name);
        }
    }

    config.architecture = "llama_swiftkv";
    config.num_kv_layers = L;
    config.kv_group_size = g;
    config.swiftkv_enabled = true;  // written as "swiftkv": true: the student loads as the student
    config.validate("the converted config");
    result.config = config;
    if (to_gguf) {
        convert_detail::write_gguf(*source, config, plan, out_dtype, options, result);
        return result;
    }

    // Side documents, prepared before anything is written so that problems surface early.
    nlohmann::json config_json = nlohmann::json::object();
    nlohmann::json generation = nullptr;
    std::vector<std::pair<std::string, nlohmann::json>> generated_docs;
    std::vector<std::string> copied;
    if (source->is_gguf()) {
        const TokenizerSpec spec = load_tokenizer(*source).spec();
        generated_docs.emplace_back("tokenizer.json", tokenizer_json_from_spec(spec));
        generated_docs.emplace_back("tokenizer_config.json",
                                    tokenizer_config_from_spec(spec, load_chat_template(*source), config.max_position));
        if (spec.bos_id >= 0) config_json["bos_token_id"] = spec.bos_id;
        if (spec.eos_id >= 0) config_json["eos_token_id"] = spec.eos_id;
        generation = nlohmann::json::object();
        if (spec.bos_id >= 0) generation["bos_token_id"] = spec.bos_id;
        if (spec.eos_ids.size() > 1) {
            generation["eos_token_id"] = spec.eos_ids;
        } else if (spec.eos_id >= 0) {
            generation["eos_token_id"] = spec.eos_id;
        }
    } else {
        config_json = source->hf_config();
        config_json.erase("auto_map");  // remote code of the base model does not apply to llama_swiftkv
        config_json.erase("_name_or_path");
        for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                 "generation_config.json", "chat_template.jinja", "chat_template.json", "vocab.json",
                                 "merges.txt"}) {
            if (fs::is_regular_file(fs::path(src_path) / name)) copied.push_back(name);
        }
        SKV_CHECK(options.allow_no_tokenizer || std::find(copied.begin(), copied.end(), "tokenizer.json") != copied.end(),
                  "'{}' has no tokenizer.json; the converted model would have no tokenizer (pass --no-tokenizer to "
                  "convert the weights alone)", src_path);
        if (std::find(copied.begin(), copied.end(), "generation_config.json") == copied.end()) {
            generation = nlohmann::json::object();
            for (const char* key : {"bos_token_id", "eos_token_id"}) {
                if (config_json.contains(key)) generation[key] = config_json[key];
            }
        }
    }
    const nlohmann::json swiftkv_config = config.to_hf_json();
    for (const auto& [key, value] : swiftkv_config.items()) config_json[key] = value;
    config_json["torch_dtype"] = out_dtype == DType::BF16 ? "bfloat16" : "float32";

    // Weights: one file, or shards of at most max_shard_bytes (a larger tensor gets its own shard).
    std::vector<SafetensorsEntry> entries;
    uint64_t total_bytes = 0;
    for (const PlannedTensor& t : plan) {
        entries.push_back({t.name, out_dtype, t.shape});
        total_bytes += safetensors_entry_bytes(entries.back());
    }
    std::vector<std::pair<size_t, size_t>> shards;  // [begin, end) into plan
    if (total_bytes <= options.max_shard_bytes) {
        shards.emplace_back(0, plan.size());
    } else {
        uint64_t in_shard = 0;
        for (size_t i = 0; i < plan.size(); ++i) {
            const uint64_t bytes = safetensors_entry_bytes(entries[i]);
            if (shards.empty() || (in_shard > 0 && in_shard + bytes > options.max_shard_bytes)) {
                shards.emplace_back(i, i);
                in_shard = 0;
            }
            shards.back().second = i + 1;
            in_shard += bytes;
        }
    }
    std::vector<std::string> shard_names;
    for (size_t s = 0; s < shards.size(); ++s) {
        shard_names.push_back(shards.size() == 1 ? std::string("model.safetensors")
                                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1,
                                                               shards.size()));
    }

    StagedDirectory out(options.out_dir, options.force, src_path);
    {
        std::error_code ec;
        const fs::space_info space = fs::space(out.dir(), ec);
        const uint64_t needed = total_bytes + (uint64_t(64) << 20);
        SKV_CHECK(ec || space.available >= needed,
                  "not enough disk space in '{}': the converted model needs {:.2f} GB, {:.2f} GB are free",
                  out.target().parent_path().string(), double(needed) / 1e9, double(space.available) / 1e9);
    }

    write_json_file(out.dir() / "config.json", config_json);
    result.other_files.push_back("config.json");
    for (const std::string& name : copied) {
        const fs::path from = fs::path(src_path) / name;
        std::ifstream in(from, std::ios::binary);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        SKV_CHECK(!in.bad(), "cannot read '{}'", from.string());
        write_text_file(out.dir() / name, text);
        result.other_files.push_back(name);
    }
    for (const auto& [name, doc] : generated_docs) {
        write_json_file(out.dir() / name, doc);
        result.other_files.push_back(name);
    }
    if (!generation.is_null()) {
        write_json_file(out.dir() / "generation_config.json", generation);
        result.other_files.push_back("generation_config.json");
    }

    ConvertProgress progress;
    progress.tensors_total = int64_t(plan.size());
    progress.bytes_total = total_bytes;
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
        const auto [begin, end] = shards[s];
        SafetensorsStreamWriter writer((out.dir() / shard_names[s]).string(),
                                       std::vector<SafetensorsEntry>(entries.begin() + begin, entries.begin() + end),
                                       {{"format", "pt"}});
        for (size_t i = begin; i < end; ++i) {
            write_tensor(writer, plan[i], out_dtype, config.head_dim);
            SKV_CHECK(writer.current() == i - begin + 1 || safetensors_entry_bytes(entries[i]) == 0,
                      "internal error: tensor '{}' was written incompletely", plan[i].name);
            weight_map[plan[i].name] = shard_names[s];
            ++progress.tensors_done;
            progress.bytes_done += safetensors_entry_bytes(entries[i]);
            progress.tensor = plan[i].name;
            if (options.on_progress) options.on_progress(progress);
        }
        writer.finish();
        result.weight_files.push_back(shard_names[s]);
    }
    if (shards.size() > 1) {
        const nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
        write_json_file(out.dir() / "model.safetensors.index.json", index);
        result.other_files.push_back("model.safetensors.index.json");
    }

    out.commit();
    result.out_dir = out.target().string();
    result.tensors = int64_t(plan.size());
    result.tensor_bytes = total_bytes;
    return result;
}

}  // namespace swiftkv
