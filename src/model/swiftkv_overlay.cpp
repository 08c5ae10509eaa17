// SwiftKV overlay: the descriptor checks, the base fingerprint and the writer (see swiftkv_overlay.h). The
// reading side lives in ModelSource::open_overlay (model_source.cpp), next to the other source formats.
#include "model/swiftkv_overlay.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include <fmt/format.h>

#include "core/error.h"
#include "io/safetensors_reader.h"
#include "model/model_source.h"

namespace swiftkv {

namespace fs = std::filesystem;

bool is_swiftkv_overlay_descriptor(const std::string& path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec) || fs::path(path).extension() != ".json") return false;
    std::ifstream in(path);
    if (!in.good()) return false;
    try {
        const nlohmann::json j = nlohmann::json::parse(in);
        return j.is_object() && j.value("format", "") == kSwiftKVOverlayFormat;
    } catch (const nlohmann::json::exception&) {
        return false;
    }
}

nlohmann::json overlay_base_config(const ModelConfig& c) {
    return {{"num_hidden_layers", c.n_layers}, {"hidden_size", c.hidden},       {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads}, {"head_dim", c.head_dim}, {"intermediate_size", c.ffn},
            {"vocab_size", c.vocab}};
}

std::string model_fingerprint(const ModelSource& source) {
    const ModelConfig& c = source.config();
    uint64_t h = 1469598103934665603ull;  // FNV-1a 64
    auto mix = [&h](const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    };
    std::vector<float> row(size_t(c.hidden));
    auto add = [&](const std::string& name) {
        const SourceTensor& t = source.require(name, {c.hidden});
        read_source_rows_f32(t, 0, 1, 0, row.data());
        mix(name.data(), name.size());
        for (float v : row) {
            const uint16_t b = f32_to_bf16(v);
            mix(&b, 2);
        }
    };
    add("model.norm.weight");
    for (int64_t l = 0; l < c.n_layers; ++l) {
        add(fmt::format("model.layers.{}.input_layernorm.weight", l));
        add(fmt::format("model.layers.{}.post_attention_layernorm.weight", l));
    }
    return fmt::format("{:016x}", h);
}

std::vector<OverlayTensorSpec> swiftkv_tensor_specs(const ModelConfig& c) {
    std::vector<OverlayTensorSpec> out;
    const int64_t L = c.num_kv_layers;
    out.push_back({"model.norm_swiftkv.weight", {c.hidden}});
    for (int64_t j = L; j < c.n_layers; ++j) {
        out.push_back({fmt::format("model.layers.{}.self_attn.q_proj_swiftkv.weight", j), {c.q_dim(), c.hidden}});
        if ((j - L) % c.kv_group_size == 0) {
            out.push_back({fmt::format("model.layers.{}.self_attn.k_proj_swiftkv.weight", j), {c.kv_dim(), c.hidden}});
            out.push_back({fmt::format("model.layers.{}.self_attn.v_proj_swiftkv.weight", j), {c.kv_dim(), c.hidden}});
        }
    }
    return out;
}

std::string write_swiftkv_overlay(const std::string& dir, const std::string& stem, const std::string& base_path,
                                  const ModelSource& base, const ModelConfig& config,
                                  const std::vector<OverlayTensor>& tensors, DType dtype) {
    SKV_CHECK(dtype == DType::F32 || dtype == DType::BF16, "overlay tensors are stored as f32 or bf16, not {}",
              dtype_name(dtype));
    SKV_CHECK(config.is_swiftkv(), "an overlay needs a SwiftKV config (num_key_value_layers < num_hidden_layers)");
    const auto specs = swiftkv_tensor_specs(config);
    std::vector<std::vector<uint16_t>> bf16(tensors.size());
    std::vector<SafetensorsWriteItem> items;
    for (const auto& spec : specs) {
        const OverlayTensor* t = nullptr;
        for (const auto& cand : tensors)
            if (cand.name == spec.name) t = &cand;
        SKV_CHECK(t != nullptr, "overlay: tensor '{}' is missing", spec.name);
        SKV_CHECK(t->shape == spec.shape, "overlay: tensor '{}' has the wrong shape", spec.name);
        if (dtype == DType::BF16) {
            int64_t n = 1;
            for (int64_t d : t->shape) n *= d;
            auto& buf = bf16[size_t(t - tensors.data())];
            buf.resize(size_t(n));
            for (int64_t i = 0; i < n; ++i) buf[size_t(i)] = f32_to_bf16(t->data[i]);
            items.push_back({t->name, DType::BF16, t->shape, buf.data()});
        } else {
            items.push_back({t->name, DType::F32, t->shape, t->data});
        }
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    const std::string tensors_file = stem + ".safetensors";
    write_safetensors((fs::path(dir) / tensors_file).string(), items, {{"format", "pt"}});

    // Relative to the descriptor's folder when the two share a folder below the root (so a repository can
    // commit the descriptor next to its base), else absolute.
    std::string base_rel = base_path;
    if (!fs::path(base_path).is_absolute()) {
        const fs::path abs_base = fs::weakly_canonical(fs::absolute(base_path, ec), ec);
        const fs::path abs_dir = fs::weakly_canonical(fs::absolute(dir, ec), ec);
        auto b = abs_base.begin(), d = abs_dir.begin();
        int shared = 0;
        for (; b != abs_base.end() && d != abs_dir.end() && *b == *d; ++b, ++d) ++shared;
        base_rel = abs_base.string();
        if (shared >= 2) {  // more than the root in common
            const std::string rel = fs::relative(abs_base, abs_dir, ec).string();
            if (!ec && !rel.empty()) base_rel = rel;
        }
    }
    const nlohmann::json desc = {{"format", kSwiftKVOverlayFormat},
                                 {"version", 1},
                                 {"base", base_rel},
                                 {"tensors", tensors_file},
                                 {"num_key_value_layers", config.num_kv_layers},
                                 {"key_value_group_size", config.kv_group_size},
                                 {"base_config", overlay_base_config(base.config())},
                                 {"base_fingerprint", model_fingerprint(base)}};
    const std::string path = (fs::path(dir) / (stem + ".json")).string();
    {
        std::ofstream out(path + ".tmp");
        out << desc.dump(2) << "\n";
        out.close();
        SKV_CHECK(out.good(), "cannot write '{}'", path + ".tmp");
    }
    fs::rename(path + ".tmp", path, ec);
    SKV_CHECK(!ec, "cannot rename '{}' to '{}': {}", path + ".tmp", path, ec.message());
    return path;
}

}  // namespace swiftkv
