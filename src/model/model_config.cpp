#include "model/model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf_reader.h"

namespace swiftkv {

namespace {

int64_t json_int(const nlohmann::json& j, const char* key, const std::string& source) {
    SKV_CHECK(j.contains(key), "{}: config key '{}' is missing", source, key);
    const auto& v = j.at(key);
    SKV_CHECK(v.is_number_integer(), "{}: config key '{}' must be an integer, got {}", source, key, v.dump());
    return v.get<int64_t>();
}

double json_num(const nlohmann::json& j, const char* key, double fallback, const std::string& source) {
    if (!j.contains(key) || j.at(key).is_null()) return fallback;
    const auto& v = j.at(key);
    SKV_CHECK(v.is_number(), "{}: config key '{}' must be a number, got {}", source, key, v.dump());
    return v.get<double>();
}

}  // namespace

std::vector<float> ModelConfig::rope_inv_freq() const {
    const int64_t half = head_dim / 2;
    std::vector<float> inv(half);
    for (int64_t i = 0; i < half; ++i) {
        // Hugging Face computes base ** (2i/d) in float32; do the same so positions match exactly.
        const float exponent = float(2 * i) / float(head_dim);
        inv[i] = 1.0f / std::pow(float(rope_theta), exponent);
    }
    if (rope_scaling.type == RopeScaling::Type::Linear) {
        for (auto& f : inv) f = float(f / rope_scaling.factor);
    } else if (rope_scaling.type == RopeScaling::Type::Llama3) {
        const double factor = rope_scaling.factor;
        const double low = rope_scaling.low_freq_factor, high = rope_scaling.high_freq_factor;
        const double old_len = double(rope_scaling.original_max_position);
        const double low_wavelen = old_len / low, high_wavelen = old_len / high;
        for (auto& f : inv) {
            const double wavelen = 2.0 * M_PI / f;
            if (wavelen < high_wavelen) continue;  // high frequency: unchanged
            if (wavelen > low_wavelen) {
                f = float(f / factor);
            } else {
                const double smooth = (old_len / wavelen - low) / (high - low);
                f = float((1.0 - smooth) * f / factor + smooth * f);
            }
        }
    }
    return inv;
}

double ModelConfig::prefill_flops_per_token(int64_t prompt_len) const {
    const double H = double(hidden), qd = double(q_dim()), kvd = double(kv_dim()), F = double(ffn);
    const double avg_context = (double(prompt_len) + 1.0) / 2.0;
    const double layer_matmul = 2.0 * (H * (qd + 2 * kvd) + qd * H + 3.0 * H * F);
    const double layer_attention = 2.0 * 2.0 * avg_context * qd;  // QK^T and PV
    const double groups = double(n_layers - num_kv_layers) / double(kv_group_size);
    return double(num_kv_layers) * (layer_matmul + layer_attention) + groups * 2.0 * H * 2.0 * kvd;
}

void ModelConfig::validate(const std::string& source) const {
    auto positive = [&](int64_t v, const char* name, int64_t max) {
        SKV_CHECK(v > 0 && v <= max, "{}: {} = {} is out of range (1..{})", source, name, v, max);
    };
    positive(n_layers, "num_hidden_layers", 1024);
    positive(hidden, "hidden_size", 1 << 17);
    positive(n_heads, "num_attention_heads", 1024);
    positive(n_kv_heads, "num_key_value_heads", 1024);
    positive(head_dim, "head_dim", 1024);
    positive(ffn, "intermediate_size", 1 << 20);
    positive(vocab, "vocab_size", 1 << 24);
    positive(max_position, "max_position_embeddings", 1 << 24);
    SKV_CHECK(n_heads % n_kv_heads == 0, "{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
              source, n_heads, n_kv_heads);
    SKV_CHECK(head_dim % 2 == 0, "{}: head_dim ({}) must be even for RoPE", source, head_dim);
    SKV_CHECK(rms_eps > 0 && rms_eps < 1, "{}: rms_norm_eps = {} is out of range", source, rms_eps);
    SKV_CHECK(rope_theta > 0, "{}: rope_theta = {} must be positive", source, rope_theta);
    SKV_CHECK(num_kv_layers > 0 && num_kv_layers <= n_layers,
              "{}: num_key_value_layers = {} must be in 1..num_hidden_layers ({})", source, num_kv_layers, n_layers);
    SKV_CHECK(kv_group_size >= 1, "{}: key_value_group_size = {} must be >= 1", source, kv_group_size);
    SKV_CHECK((n_layers - num_kv_layers) % kv_group_size == 0,
              "{}: key_value_group_size = {} must divide the {} layers after num_key_value_layers = {}", source,
              kv_group_size, n_layers - num_kv_layers, num_kv_layers);
}

ModelConfig ModelConfig::from_hf_json(const nlohmann::json& j, const std::string& source) {
    SKV_CHECK(j.is_object(), "{}: config.json must be a JSON object", source);
    ModelConfig c;
    const std::string model_type = j.value("model_type", std::string("llama"));
    SKV_CHECK(model_type == "llama" || model_type == "llama_swiftkv",
              "{}: model_type '{}' is not supported (swiftkv runs 'llama' and 'llama_swiftkv' models)", source,
              model_type);
    c.architecture = model_type;
    c.n_layers = json_int(j, "num_hidden_layers", source);
    c.hidden = json_int(j, "hidden_size", source);
    c.n_heads = json_int(j, "num_attention_heads", source);
    c.n_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? json_int(j, "num_key_value_heads", source) : c.n_heads;
    c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? json_int(j, "head_dim", source)
                                                                    : (c.n_heads > 0 ? c.hidden / c.n_heads : 0);
    c.ffn = json_int(j, "intermediate_size", source);
    c.vocab = json_int(j, "vocab_size", source);
    if (j.contains("max_position_embeddings")) c.max_position = json_int(j, "max_position_embeddings", source);
    c.rms_eps = json_num(j, "rms_norm_eps", 1e-6, source);
    c.rope_theta = json_num(j, "rope_theta", 10000.0, source);
    // transformers 5 writes RoPE settings as one "rope_parameters" object (theta and scaling together).
    const char* scaling_key = "rope_scaling";
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
        if (j["rope_parameters"].contains("rope_theta")) c.rope_theta = json_num(j["rope_parameters"], "rope_theta", 10000.0, source);
        if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) scaling_key = "rope_parameters";
    }
    c.tie_embeddings = j.value("tie_word_embeddings", false);
    SKV_CHECK(!j.value("attention_bias", false) && !j.value("mlp_bias", false),
              "{}: attention_bias / mlp_bias are not supported for Llama models", source);
    if (j.contains(scaling_key) && !j[scaling_key].is_null()) {
        const auto& rs = j[scaling_key];
        SKV_CHECK(rs.is_object(), "{}: {} must be an object", source, scaling_key);
        const std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
        if (type == "llama3") {
            c.rope_scaling.type = RopeScaling::Type::Llama3;
            c.rope_scaling.factor = json_num(rs, "factor", 8.0, source);
            c.rope_scaling.low_freq_factor = json_num(rs, "low_freq_factor", 1.0, source);
            c.rope_scaling.high_freq_factor = json_num(rs, "high_freq_factor", 4.0, source);
            c.rope_scaling.original_max_position =
                int64_t(json_num(rs, "original_max_position_embeddings", 8192, source));
            SKV_CHECK(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor,
                      "{}: rope_scaling high_freq_factor must exceed low_freq_factor", source);
        } else if (type == "linear") {
            c.rope_scaling.type = RopeScaling::Type::Linear;
            c.rope_scaling.factor = json_num(rs, "factor", 1.0, source);
        } else if (type != "default") {
            SKV_THROW("{}: rope_scaling type '{}' is not supported (supported: llama3, linear)", source, type);
        }
        SKV_CHECK(c.rope_scaling.factor > 0, "{}: rope_scaling factor must be positive", source);
    }
    c.num_kv_layers = c.n_layers;
    if (model_type == "llama_swiftkv") {
        c.num_kv_layers = json_int(j, "num_key_value_layers", source);
        c.kv_group_size = j.contains("key_value_group_size") ? json_int(j, "key_value_group_size", source) : 1;
        // Absent counts as true, unlike the default of Snowflake's config class (false): swiftkv has always
        // run such checkpoints as SwiftKV, and the published ones and `convert`'s output carry the key.
        if (j.contains("swiftkv") && !j["swiftkv"].is_null()) {
            SKV_CHECK(j["swiftkv"].is_boolean(), "{}: config key 'swiftkv' must be true or false, got {}", source,
                      j["swiftkv"].dump());
            c.swiftkv_enabled = j["swiftkv"].get<bool>();
        }
    }
    c.validate(source);
    return c;
}

ModelConfig ModelConfig::from_gguf(const GgufFile& g) {
    const std::string source = g.path();
    const std::string arch = g.get_string("general.architecture");
    SKV_CHECK(arch == "llama" || arch == "llama_swiftkv",
              "{}: architecture '{}' is not supported (swiftkv runs 'llama' and 'llama_swiftkv' models)", source,
              arch);
    const std::string p = arch + ".";
    ModelConfig c;
    c.architecture = arch;
    c.n_layers = g.get_int(p + "block_count");
    c.hidden = g.get_int(p + "embedding_length");
    c.n_heads = g.get_int(p + "attention.head_count");
    c.n_kv_heads = g.find_int(p + "attention.head_count_kv").value_or(c.n_heads);
    c.head_dim = g.find_int(p + "attention.key_length").value_or(c.n_heads > 0 ? c.hidden / c.n_heads : 0);
    c.ffn = g.get_int(p + "feed_forward_length");
    c.max_position = g.find_int(p + "context_length").value_or(2048);
    c.rms_eps = g.find_float(p + "attention.layer_norm_rms_epsilon").value_or(1e-5);
    c.rope_theta = g.find_float(p + "rope.freq_base").value_or(10000.0);
    if (auto v = g.find_int(p + "vocab_size")) {
        c.vocab = *v;
    } else if (g.has("tokenizer.ggml.tokens")) {
        c.vocab = int64_t(g.get_string_array("tokenizer.ggml.tokens").size());
    }
    if (auto t = g.find_string(p + "rope.scaling.type"); t && *t == "linear") {
        c.rope_scaling.type = RopeScaling::Type::Linear;
        c.rope_scaling.factor = g.find_float(p + "rope.scaling.factor").value_or(1.0);
    }
    // Llama-3 style scaling arrives as a rope_freqs tensor in GGUF; the loader applies it.
    c.tie_embeddings = g.find_tensor("output.weight") == nullptr;
    c.num_kv_layers = c.n_layers;
    if (arch == "llama_swiftkv") {
        c.num_kv_layers = g.get_int(p + "swiftkv.num_key_value_layers");
        c.kv_group_size = g.find_int(p + "swiftkv.key_value_group_size").value_or(1);
    }
    c.validate(source);
    return c;
}

nlohmann::json ModelConfig::to_hf_json() const {
    nlohmann::json j;
    j["model_type"] = architecture;
    j["architectures"] = {architecture == "llama_swiftkv" ? "LlamaSwiftKVForCausalLM" : "LlamaForCausalLM"};
    j["num_hidden_layers"] = n_layers;
    j["hidden_size"] = hidden;
    j["num_attention_heads"] = n_heads;
    j["num_key_value_heads"] = n_kv_heads;
    j["head_dim"] = head_dim;
    j["intermediate_size"] = ffn;
    j["vocab_size"] = vocab;
    j["max_position_embeddings"] = max_position;
    j["rms_norm_eps"] = rms_eps;
    j["rope_theta"] = rope_theta;
    j["tie_word_embeddings"] = tie_embeddings;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    if (rope_scaling.type == RopeScaling::Type::Llama3) {
        j["rope_scaling"] = {{"rope_type", "llama3"},
                             {"factor", rope_scaling.factor},
                             {"low_freq_factor", rope_scaling.low_freq_factor},
                             {"high_freq_factor", rope_scaling.high_freq_factor},
                             {"original_max_position_embeddings", rope_scaling.original_max_position}};
    } else if (rope_scaling.type == RopeScaling::Type::Linear) {
        j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
    } else {
        j["rope_scaling"] = nullptr;
    }
    if (architecture == "llama_swiftkv") {
        j["num_key_value_layers"] = num_kv_layers;
        j["key_value_group_size"] = kv_group_size;
        j["swiftkv"] = swiftkv_enabled;
    }
    return j;
}

ModelConfig ModelConfig::synthetic(const std::string& spec, const std::string& swiftkv_cut) {
    const size_t colon = spec.find(':');
    const std::string name = spec.substr(0, colon);
    ModelConfig c;
    if (name == "llama-3.1-8b") {
        c.n_layers = 32, c.hidden = 4096, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128, c.ffn = 14336;
        c.vocab = 128256, c.max_position = 131072, c.rms_eps = 1e-5, c.rope_theta = 500000.0;
        c.rope_scaling.type = RopeScaling::Type::Llama3;
        c.rope_scaling.factor = 8.0, c.rope_scaling.low_freq_factor = 1.0, c.rope_scaling.high_freq_factor = 4.0;
        c.rope_scaling.original_max_position = 8192;
    } else if (name == "smollm2-135m") {
        c.n_layers = 30, c.hidden = 576, c.n_heads = 9, c.n_kv_heads = 3, c.head_dim = 64, c.ffn = 1536;
        c.vocab = 49152, c.max_position = 8192, c.rms_eps = 1e-5, c.rope_theta = 100000.0, c.tie_embeddings = true;
    } else {
        SKV_THROW("unknown synthetic shape '{}' (llama-3.1-8b[:layers] or smollm2-135m[:layers])", name);
    }
    auto parse_int = [&](const std::string& s, const char* what) {
        size_t used = 0;
        long long v = -1;
        try {
            v = std::stoll(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        SKV_CHECK(used == s.size() && v > 0, "synthetic model: bad {} '{}'", what, s);
        return int64_t(v);
    };
    if (colon != std::string::npos) c.n_layers = parse_int(spec.substr(colon + 1), "layer count");
    c.num_kv_layers = c.n_layers;
    if (!swiftkv_cut.empty()) {
        const size_t gc = swiftkv_cut.find(':');
        const std::string cut = swiftkv_cut.substr(0, gc);
        SKV_CHECK(!cut.empty(), "synthetic model: empty SwiftKV cut");
        c.num_kv_layers = cut.back() == '%'
                               ? int64_t(std::llround(double(c.n_layers) * double(parse_int(cut.substr(0, cut.size() - 1),
                                                                                              "SwiftKV share")) / 100.0))
                               : parse_int(cut, "SwiftKV cut");
        if (gc != std::string::npos) c.kv_group_size = parse_int(swiftkv_cut.substr(gc + 1), "AcrossKV group size");
        SKV_CHECK(c.num_kv_layers >= 1 && c.num_kv_layers <= c.n_layers, "synthetic model: SwiftKV cut {} is outside 1..{}",
                  c.num_kv_layers, c.n_layers);
        if (c.is_swiftkv()) c.architecture = "llama_swiftkv";
    }
    c.validate("synthetic " + spec + (swiftkv_cut.empty() ? "" : " @" + swiftkv_cut));
    return c;
}

}  // namespace swiftkv
