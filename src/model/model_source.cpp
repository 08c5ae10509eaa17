#include "model/model_source.h"

#include <filesystem>
#include <fstream>
#include <fmt/ranges.h>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/safetensors_reader.h"
#include "model/swiftkv_overlay.h"

namespace swiftkv {

namespace fs = std::filesystem;

namespace {

// (GGUF per-layer suffix, Hugging Face per-layer suffix)
const std::pair<const char*, const char*> kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    // SwiftKV tensors (swiftkv's own GGUF names; see docs/swiftkv-gguf.md).
    {"attn_q_swiftkv.weight", "self_attn.q_proj_swiftkv.weight"},
    {"attn_k_swiftkv.weight", "self_attn.k_proj_swiftkv.weight"},
    {"attn_v_swiftkv.weight", "self_attn.v_proj_swiftkv.weight"},
};

const std::pair<const char*, const char*> kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
    {"swiftkv_norm.weight", "model.norm_swiftkv.weight"},
    {"rope_freqs.weight", "rope_freqs.weight"},
};

}  // namespace

int64_t SourceTensor::numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

void read_source_rows_f32(const SourceTensor& t, int64_t row_begin, int64_t row_end, int64_t head_dim, float* dst) {
    const int64_t cols = t.shape.size() == 1 ? t.shape[0] : t.shape[1];
    const int64_t row_bytes = dtype_row_bytes(t.dtype, cols);
    const int64_t half = head_dim / 2;
    for (int64_t r = row_begin; r < row_end; ++r) {
        int64_t src_row = r;
        if (t.gguf_rope_permuted) {
            const int64_t head = r / head_dim, within = r % head_dim;
            const int64_t a = within / half, b = within % half;
            src_row = head * head_dim + 2 * b + a;
        }
        dequantize_to_f32(t.dtype, t.data + src_row * row_bytes, dst + (r - row_begin) * cols, cols);
    }
}

std::optional<std::string> canonical_name_from_gguf(const std::string& g) {
    for (const auto& [gg, hf] : kGlobalNames) {
        if (g == gg) return std::string(hf);
    }
    if (g.rfind("blk.", 0) == 0) {
        const size_t dot = g.find('.', 4);
        if (dot == std::string::npos) return std::nullopt;
        const std::string layer = g.substr(4, dot - 4);
        if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
        const std::string rest = g.substr(dot + 1);
        for (const auto& [gg, hf] : kLayerNames) {
            if (rest == gg) return "model.layers." + layer + "." + hf;
        }
    }
    return std::nullopt;
}

std::string gguf_name_from_canonical(const std::string& c) {
    for (const auto& [gg, hf] : kGlobalNames) {
        if (c == hf) return gg;
    }
    static const std::string prefix = "model.layers.";
    if (c.rfind(prefix, 0) == 0) {
        const size_t dot = c.find('.', prefix.size());
        const std::string layer = c.substr(prefix.size(), dot - prefix.size());
        const std::string rest = c.substr(dot + 1);
        for (const auto& [gg, hf] : kLayerNames) {
            if (rest == hf) return "blk." + layer + "." + gg;
        }
    }
    SKV_THROW("tensor '{}' has no GGUF name", c);
}

nlohmann::json read_json_file(const std::string& path) {
    std::ifstream in(path);
    SKV_CHECK(in.good(), "cannot read '{}'", path);
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        SKV_THROW("'{}' is not valid JSON: {}", path, e.what());
    }
}

std::unique_ptr<ModelSource> ModelSource::open(const std::string& path) {
    std::error_code ec;
    SKV_CHECK(fs::exists(path, ec), "model path '{}' does not exist", path);
    std::unique_ptr<ModelSource> src(new ModelSource());
    src->path_ = path;
    if (fs::is_directory(path, ec)) {
        src->open_hf_dir(path);
    } else if (fs::path(path).extension() == ".json") {
        src->open_overlay(path);
    } else {
        src->open_gguf(path);
    }
    return src;
}

ModelSource::~ModelSource() = default;

void ModelSource::open_gguf(const std::string& path) {
    gguf_ = std::make_unique<GgufFile>(path);
    config_ = ModelConfig::from_gguf(*gguf_);
    for (const auto& t : gguf_->tensors()) {
        auto canonical = canonical_name_from_gguf(t.name);
        if (!canonical) continue;
        SourceTensor st;
        st.name = *canonical;
        st.file_name = t.name;
        st.dtype = t.dtype;
        st.shape = t.shape;
        st.data = t.data;
        const bool is_q = st.name.ends_with("self_attn.q_proj.weight") || st.name.ends_with("q_proj_swiftkv.weight");
        const bool is_k = st.name.ends_with("self_attn.k_proj.weight") || st.name.ends_with("k_proj_swiftkv.weight");
        st.gguf_rope_permuted = is_q || is_k;
        tensors_.emplace(st.name, std::move(st));
    }
}

void ModelSource::open_hf_dir(const std::string& dir) {
    const fs::path d(dir);
    SKV_CHECK(fs::exists(d / "config.json"), "'{}' has no config.json (expected a Hugging Face model directory or a .gguf file)", dir);
    hf_config_ = read_json_file((d / "config.json").string());
    config_ = ModelConfig::from_hf_json(hf_config_, (d / "config.json").string());
    if (fs::exists(d / "tokenizer.json")) tokenizer_json_ = read_json_file((d / "tokenizer.json").string());
    if (fs::exists(d / "tokenizer_config.json")) tokenizer_config_ = read_json_file((d / "tokenizer_config.json").string());
    if (fs::exists(d / "generation_config.json")) generation_config_ = read_json_file((d / "generation_config.json").string());
    safetensors_ = std::make_unique<SafetensorsModel>(dir);
    for (const auto& [name, t] : safetensors_->tensors()) {
        SourceTensor st;
        st.name = name;
        st.file_name = name;
        st.dtype = t.dtype;
        st.shape = t.shape;
        st.data = t.data;
        tensors_.emplace(name, std::move(st));
    }
}

// A SwiftKV overlay (model/swiftkv_overlay.h): open the base, check that it is the overlay's base, then
// add the overlay's tensors and SwiftKV keys. Every check names the descriptor and says what differs.
void ModelSource::open_overlay(const std::string& descriptor) {
    const nlohmann::json desc = read_json_file(descriptor);
    SKV_CHECK(desc.is_object() && desc.value("format", "") == kSwiftKVOverlayFormat,
              "'{}' is not a model: a .json model path must be a SwiftKV overlay descriptor with \"format\": \"{}\"",
              descriptor, kSwiftKVOverlayFormat);
    SKV_CHECK(desc.value("version", 0) == 1, "{}: overlay version {} is not supported (this swiftkv reads version 1)",
              descriptor, desc.value("version", 0));
    for (const char* key : {"base", "tensors"})
        SKV_CHECK(desc.contains(key) && desc[key].is_string() && !desc[key].get<std::string>().empty(),
                  "{}: \"{}\" must be a non-empty path", descriptor, key);
    for (const char* key : {"num_key_value_layers", "key_value_group_size"})
        SKV_CHECK(desc.contains(key) && desc[key].is_number_integer(), "{}: \"{}\" must be an integer", descriptor,
                  key);
    const fs::path here = fs::path(descriptor).parent_path();
    auto resolve = [&](const std::string& p) {
        const fs::path q(p);
        return (q.is_absolute() ? q : here / q).lexically_normal().string();
    };
    const std::string base = resolve(desc["base"].get<std::string>());
    std::error_code ec;
    SKV_CHECK(fs::exists(base, ec), "{}: its base model '{}' does not exist (edit \"base\" to point at the GGUF file "
              "or Hugging Face directory the overlay was distilled from)", descriptor, base);
    SKV_CHECK(fs::path(base).extension() != ".json", "{}: the base '{}' must be a GGUF file or a Hugging Face "
              "directory, not another overlay", descriptor, base);
    if (fs::is_directory(base, ec)) {
        open_hf_dir(base);
    } else {
        open_gguf(base);
    }
    overlay_base_ = base;

    // The base must be the one the overlay was made for.
    if (desc.contains("base_config")) {
        const nlohmann::json want = desc["base_config"];
        const nlohmann::json have = overlay_base_config(config_);
        for (const auto& [key, value] : have.items()) {
            SKV_CHECK(!want.contains(key) || want[key] == value,
                      "{}: the overlay was made for a base with {} = {}, but '{}' has {} = {}; point \"base\" at the "
                      "model it was distilled from", descriptor, key, want[key].dump(), base, key, value.dump());
        }
    }
    if (desc.contains("base_fingerprint") && desc["base_fingerprint"].is_string()) {
        const std::string fp = model_fingerprint(*this);
        SKV_CHECK(fp == desc["base_fingerprint"].get<std::string>(),
                  "{}: '{}' has the right shape but different weights than the base the overlay was distilled from "
                  "(fingerprint {} instead of {}); point \"base\" at that model", descriptor, base, fp,
                  desc["base_fingerprint"].get<std::string>());
    }

    config_.num_kv_layers = desc["num_key_value_layers"].get<int64_t>();
    config_.kv_group_size = desc["key_value_group_size"].get<int64_t>();
    config_.architecture = config_.is_swiftkv() ? "llama_swiftkv" : "llama";
    // An overlay is a distilled student: it runs as SwiftKV whatever the base's config.json says (distill
    // records an HF student directory as the base, and that one may say "swiftkv": false).
    config_.swiftkv_enabled = true;
    config_.validate(descriptor);
    if (!hf_config_.empty()) {
        hf_config_["model_type"] = config_.architecture;
        hf_config_["architectures"] = {config_.is_swiftkv() ? "LlamaSwiftKVForCausalLM" : "LlamaForCausalLM"};
        hf_config_["num_key_value_layers"] = config_.num_kv_layers;
        hf_config_["key_value_group_size"] = config_.kv_group_size;
        hf_config_["swiftkv"] = true;
    }

    const std::string tensors_path = resolve(desc["tensors"].get<std::string>());
    SKV_CHECK(fs::exists(tensors_path, ec), "{}: its tensor file '{}' does not exist", descriptor, tensors_path);
    overlay_file_ = std::make_unique<SafetensorsFile>(tensors_path);
    for (const auto& t : overlay_file_->tensors()) {
        SourceTensor st;
        st.name = t.name;
        st.file_name = t.name;
        st.dtype = t.dtype;
        st.shape = t.shape;
        st.data = t.data;
        tensors_[t.name] = std::move(st);
    }
    for (const auto& spec : swiftkv_tensor_specs(config_)) {
        SKV_CHECK(overlay_file_->find(spec.name) != nullptr, "{}: tensor '{}' is missing from '{}'", descriptor,
                  spec.name, tensors_path);
        require(spec.name, spec.shape);
    }
}

const SourceTensor* ModelSource::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

const SourceTensor& ModelSource::require(const std::string& name, const std::vector<int64_t>& shape) const {
    const SourceTensor* t = find(name);
    if (t == nullptr) {
        std::string in_file;
        if (is_gguf()) {
            try {
                in_file = fmt::format(" (GGUF name '{}')", gguf_name_from_canonical(name));
            } catch (const Error&) {
            }
        }
        SKV_THROW("{}: tensor '{}'{} is missing", path_, name, in_file);
    }
    auto fmt_shape = [](const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); };
    SKV_CHECK(t->shape == shape, "{}: tensor '{}' ({}) has shape {}, but the config implies {}", path_, name,
              t->file_name, fmt_shape(t->shape), fmt_shape(shape));
    return *t;
}

}  // namespace swiftkv
