#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model_config.h"

using namespace swiftkv;

namespace {
nlohmann::json base_config() {
    return {{"model_type", "llama"}, {"num_hidden_layers", 8}, {"hidden_size", 64}, {"num_attention_heads", 4},
            {"num_key_value_heads", 2}, {"intermediate_size", 128}, {"vocab_size", 100}, {"rms_norm_eps", 1e-5}};
}
void expect_error_mentions(const nlohmann::json& j, const std::string& needle) {
    try {
        ModelConfig::from_hf_json(j, "config.json");
        FAIL() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}
}  // namespace

TEST(ModelConfig, ParsesLlama) {
    auto c = ModelConfig::from_hf_json(base_config(), "config.json");
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.kv_cache_layers(), 8);
    EXPECT_FALSE(c.is_swiftkv());
}

TEST(ModelConfig, ParsesSwiftKVAndCountsCacheLayers) {
    auto j = base_config();
    j["model_type"] = "llama_swiftkv";
    j["num_key_value_layers"] = 4;
    j["key_value_group_size"] = 2;
    auto c = ModelConfig::from_hf_json(j, "config.json");
    EXPECT_TRUE(c.is_swiftkv());
    EXPECT_EQ(c.kv_cache_layers(), 6);
    EXPECT_EQ(c.kv_cache_layer_of(3), 3);
    EXPECT_EQ(c.kv_cache_layer_of(4), 4);
    EXPECT_EQ(c.kv_cache_layer_of(5), 4);
    EXPECT_EQ(c.kv_cache_layer_of(7), 5);
}

// Snowflake's llama_swiftkv config key `swiftkv`: false asks for the teacher. It is the default run mode
// only; the structure (L, g) stays what the checkpoint holds, so --swiftkv on can still run the student.
TEST(ModelConfig, SwiftKVKeyIsTheDefaultRunMode) {
    auto j = base_config();
    j["model_type"] = "llama_swiftkv";
    j["num_key_value_layers"] = 4;
    j["key_value_group_size"] = 2;
    EXPECT_TRUE(ModelConfig::from_hf_json(j, "config.json").swiftkv_enabled);  // absent: SwiftKV
    j["swiftkv"] = nullptr;
    EXPECT_TRUE(ModelConfig::from_hf_json(j, "config.json").swiftkv_enabled);
    j["swiftkv"] = true;
    EXPECT_TRUE(ModelConfig::from_hf_json(j, "config.json").swiftkv_enabled);

    j["swiftkv"] = false;
    const auto c = ModelConfig::from_hf_json(j, "config.json");
    EXPECT_FALSE(c.swiftkv_enabled);
    EXPECT_TRUE(c.is_swiftkv());
    EXPECT_EQ(c.num_kv_layers, 4);
    EXPECT_EQ(c.kv_group_size, 2);
    EXPECT_EQ(c.to_hf_json()["swiftkv"], false);  // inspect and convert write back what was read

    j["swiftkv"] = "false";
    expect_error_mentions(j, "'swiftkv'");
    j["swiftkv"] = 0;
    expect_error_mentions(j, "'swiftkv'");
}

TEST(ModelConfig, RejectsBadValuesWithTheKeyName) {
    auto j = base_config();
    j.erase("hidden_size");
    expect_error_mentions(j, "hidden_size");
    j = base_config();
    j["num_attention_heads"] = 3;
    expect_error_mentions(j, "num_key_value_heads");
    j = base_config();
    j["vocab_size"] = "many";
    expect_error_mentions(j, "vocab_size");
    j = base_config();
    j["model_type"] = "mistral_moe";
    expect_error_mentions(j, "mistral_moe");
    j = base_config();
    j["model_type"] = "llama_swiftkv";
    j["num_key_value_layers"] = 5;
    j["key_value_group_size"] = 2;  // 3 later layers are not a multiple of 2
    expect_error_mentions(j, "key_value_group_size");
    j["num_key_value_layers"] = 9;
    expect_error_mentions(j, "num_key_value_layers");
    j = base_config();
    j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
    expect_error_mentions(j, "yarn");
}

TEST(ModelConfig, TransformersV5RopeParametersAreRead) {
    // transformers 5 writes {"rope_parameters": {"rope_type": ..., "rope_theta": ..., scaling...}}.
    auto j = base_config();
    j["hidden_size"] = 512;
    j["num_attention_heads"] = 4;
    j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                            {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
    auto c = ModelConfig::from_hf_json(j, "config.json");
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
    EXPECT_EQ(c.rope_scaling.factor, 8.0);
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 123.0}};
    c = ModelConfig::from_hf_json(j, "config.json");
    EXPECT_EQ(c.rope_theta, 123.0);
    EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
}

TEST(ModelConfig, Llama3RopeScalingMatchesPublishedFrequencies) {
    // Llama-3.1-8B: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192.
    auto j = base_config();
    j["hidden_size"] = 512;
    j["num_attention_heads"] = 4;
    j["rope_theta"] = 500000.0;
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
    auto c = ModelConfig::from_hf_json(j, "config.json");
    auto inv = c.rope_inv_freq();
    ASSERT_EQ(inv.size(), 64u);
    EXPECT_FLOAT_EQ(inv[0], 1.0f);                                    // high frequency: unchanged
    EXPECT_NEAR(inv[63], 1.0 / std::pow(500000.0, 126.0 / 128) / 8, 1e-12);  // low frequency: divided by 8
}
