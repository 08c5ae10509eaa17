#include "train_test_util.h"

#include <unistd.h>

#include <filesystem>

namespace fs = std::filesystem;

TinyModel write_tiny_student(const TinyStudentSpec& s, const std::string& dir) {
    TinyModel m = make_tiny_model(s.base);
    const TinySpec& b = s.base;
    const int64_t H = b.hidden, q = b.heads * b.head_dim, kv = b.kv_heads * b.head_dim;
    std::mt19937 rng(b.seed * 7919u + 17u);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto noisy = [&](const std::vector<float>& src) {
        std::vector<float> v = src;
        for (auto& x : v) x += s.swiftkv_noise * nd(rng);
        return v;
    };
    auto layer = [](int l, const char* suffix) { return "model.layers." + std::to_string(l) + "." + suffix; };
    m.tensors["model.norm_swiftkv.weight"] = noisy(m.tensors.at(layer(s.cut, "input_layernorm.weight")));
    m.shapes["model.norm_swiftkv.weight"] = {H};
    for (int j = s.cut; j < b.layers; ++j) {
        m.tensors[layer(j, "self_attn.q_proj_swiftkv.weight")] = noisy(m.tensors.at(layer(j, "self_attn.q_proj.weight")));
        m.shapes[layer(j, "self_attn.q_proj_swiftkv.weight")] = {q, H};
        if ((j - s.cut) % s.group == 0) {
            for (const char* which : {"k", "v"}) {
                std::vector<float> mean(size_t(kv * H), 0.0f);
                for (int l = j; l < j + s.group; ++l) {
                    const auto& src = m.tensors.at(layer(l, (std::string("self_attn.") + which + "_proj.weight").c_str()));
                    for (size_t i = 0; i < mean.size(); ++i) mean[i] += src[i] / float(s.group);
                }
                const std::string name = layer(j, (std::string("self_attn.") + which + "_proj_swiftkv.weight").c_str());
                m.tensors[name] = noisy(mean);
                m.shapes[name] = {kv, H};
            }
        }
    }
    m.config["model_type"] = "llama_swiftkv";
    m.config["architectures"] = {"LlamaSwiftKVForCausalLM"};
    m.config["num_key_value_layers"] = s.cut;
    m.config["key_value_group_size"] = s.group;
    m.config["swiftkv"] = true;
    write_tiny_model(m, dir);
    return m;
}

swiftkv::PackedBatch random_packed_batch(std::mt19937& rng, const std::vector<int>& lengths, int vocab) {
    swiftkv::PackedBatch batch;
    int total = 0;
    for (int n : lengths) total += n;
    std::uniform_int_distribution<int> tok(0, vocab - 1);
    std::uniform_real_distribution<float> uw(0.0f, 1.0f);
    for (int n : lengths) {
        std::vector<int32_t> ids(static_cast<size_t>(n));
        std::vector<float> w(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) {
            ids[size_t(i)] = tok(rng);
            w[size_t(i)] = uw(rng) / float(total);
        }
        batch.add_segment(ids.data(), n, w.data());
    }
    return batch;
}

std::string test_temp_dir(const std::string& name) {
    const fs::path d = fs::temp_directory_path() / ("swiftkv_train_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d.string();
}

swiftkv::DistillTextCodec byte_codec() {
    swiftkv::DistillTextCodec c;
    c.encode = [](const std::string& text, bool add_bos) {
        std::vector<int32_t> ids;
        if (add_bos) ids.push_back(256);
        static const std::string start = "<|im_start|>", end = "<|im_end|>";
        for (size_t i = 0; i < text.size();) {
            if (text.compare(i, start.size(), start) == 0) {
                ids.push_back(257);
                i += start.size();
            } else if (text.compare(i, end.size(), end) == 0) {
                ids.push_back(258);
                i += end.size();
            } else {
                ids.push_back(int32_t(uint8_t(text[i++])));
            }
        }
        return ids;
    };
    c.render_chat = [](const nlohmann::json& messages, bool gen) {
        std::string out;
        for (const auto& m : messages)
            out += "<|im_start|>" + m["role"].get<std::string>() + "\n" + m["content"].get<std::string>() + "<|im_end|>\n";
        if (gen) out += "<|im_start|>assistant\n";
        return out;
    };
    return c;
}
