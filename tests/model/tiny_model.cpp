#include "tiny_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/safetensors_reader.h"

using namespace swiftkv;

TinyModel make_tiny_model(const TinySpec& s) {
    TinyModel m;
    m.spec = s;
    std::mt19937 rng(s.seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float offset = 0.0f) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(n);
        for (auto& x : v) x = offset + scale * nd(rng);
        m.tensors[name] = v;
        m.shapes[name] = shape;
    };
    const int q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
    add("model.embed_tokens.weight", {s.vocab, s.hidden}, 1.0f);
    add("model.norm.weight", {s.hidden}, 0.1f, 1.0f);
    if (!s.tie) add("lm_head.weight", {s.vocab, s.hidden}, 0.3f);
    for (int l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        add(p + "input_layernorm.weight", {s.hidden}, 0.1f, 1.0f);
        add(p + "post_attention_layernorm.weight", {s.hidden}, 0.1f, 1.0f);
        add(p + "self_attn.q_proj.weight", {q, s.hidden}, 0.3f);
        add(p + "self_attn.k_proj.weight", {kv, s.hidden}, 0.3f);
        add(p + "self_attn.v_proj.weight", {kv, s.hidden}, 0.3f);
        add(p + "self_attn.o_proj.weight", {s.hidden, q}, 0.3f);
        add(p + "mlp.gate_proj.weight", {s.ffn, s.hidden}, 0.3f);
        add(p + "mlp.up_proj.weight", {s.ffn, s.hidden}, 0.3f);
        add(p + "mlp.down_proj.weight", {s.hidden, s.ffn}, 0.3f);
    }
    m.config = {{"model_type", "llama"}, {"architectures", {"LlamaForCausalLM"}}, {"num_hidden_layers", s.layers},
                {"hidden_size", s.hidden}, {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads},
                {"head_dim", s.head_dim}, {"intermediate_size", s.ffn}, {"vocab_size", s.vocab},
                {"max_position_embeddings", 4096}, {"rms_norm_eps", s.eps}, {"rope_theta", s.theta},
                {"tie_word_embeddings", s.tie}, {"hidden_act", "silu"}};
    if (s.llama3_scaling) {
        m.config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                    {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
    }
    return m;
}

void write_tiny_model(const TinyModel& m, const std::string& dir) {
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << m.config.dump(2);
    std::vector<SafetensorsWriteItem> items;
    for (const auto& [name, v] : m.tensors) items.push_back({name, DType::F32, m.shapes.at(name), v.data()});
    write_safetensors(dir + "/model.safetensors", items);
}

namespace {

// Inverse frequencies exactly as Hugging Face computes them, in double.
std::vector<double> inv_freq(const TinyModel& m) {
    const auto& s = m.spec;
    std::vector<double> inv(s.head_dim / 2);
    for (int i = 0; i < s.head_dim / 2; ++i) inv[i] = 1.0 / std::pow(s.theta, double(2 * i) / s.head_dim);
    if (s.llama3_scaling) {
        const double factor = 8, low = 1, high = 4, old_len = 64;
        for (auto& f : inv) {
            const double wl = 2 * M_PI / f;
            if (wl < old_len / high) continue;
            if (wl > old_len / low) {
                f /= factor;
            } else {
                const double smooth = (old_len / wl - low) / (high - low);
                f = (1 - smooth) * f / factor + smooth * f;
            }
        }
    }
    return inv;
}

std::vector<double> matvec(const std::vector<float>& w, int rows, int cols, const std::vector<double>& x) {
    std::vector<double> y(rows, 0.0);
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) y[r] += double(w[size_t(r) * cols + c]) * x[c];
    }
    return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<float>& w, double eps) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
    return y;
}

void rope(std::vector<double>& v, int heads, int hd, int pos, const std::vector<double>& inv) {
    const int half = hd / 2;
    for (int h = 0; h < heads; ++h) {
        double* x = v.data() + h * hd;
        for (int i = 0; i < half; ++i) {
            const double a = pos * inv[i], c = std::cos(a), s = std::sin(a);
            const double x0 = x[i], x1 = x[i + half];
            x[i] = x0 * c - x1 * s;
            x[i + half] = x1 * c + x0 * s;
        }
    }
}

}  // namespace

std::vector<double> reference_logits(const TinyModel& m, const std::vector<int>& tokens) {
    const auto& s = m.spec;
    const int n = int(tokens.size()), H = s.hidden, hd = s.head_dim, q = s.heads * hd, kv = s.kv_heads * hd;
    const auto inv = inv_freq(m);
    auto T = [&](const std::string& name) -> const std::vector<float>& { return m.tensors.at(name); };
    std::vector<std::vector<double>> x(n, std::vector<double>(H));
    for (int t = 0; t < n; ++t) {
        for (int i = 0; i < H; ++i) x[t][i] = T("model.embed_tokens.weight")[size_t(tokens[t]) * H + i];
    }
    for (int l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        std::vector<std::vector<double>> Q(n), K(n), V(n);
        for (int t = 0; t < n; ++t) {
            auto h = rmsnorm(x[t], T(p + "input_layernorm.weight"), s.eps);
            Q[t] = matvec(T(p + "self_attn.q_proj.weight"), q, H, h);
            K[t] = matvec(T(p + "self_attn.k_proj.weight"), kv, H, h);
            V[t] = matvec(T(p + "self_attn.v_proj.weight"), kv, H, h);
            rope(Q[t], s.heads, hd, t, inv);
            rope(K[t], s.kv_heads, hd, t, inv);
        }
        for (int t = 0; t < n; ++t) {
            std::vector<double> att(q, 0.0);
            for (int h = 0; h < s.heads; ++h) {
                const int kh = h / (s.heads / s.kv_heads);
                std::vector<double> sc(t + 1);
                double mx = -1e300;
                for (int j = 0; j <= t; ++j) {
                    double d = 0;
                    for (int i = 0; i < hd; ++i) d += Q[t][h * hd + i] * K[j][kh * hd + i];
                    sc[j] = d / std::sqrt(double(hd));
                    mx = std::max(mx, sc[j]);
                }
                double sum = 0;
                for (auto& v : sc) sum += (v = std::exp(v - mx));
                for (int j = 0; j <= t; ++j) {
                    for (int i = 0; i < hd; ++i) att[h * hd + i] += sc[j] / sum * V[j][kh * hd + i];
                }
            }
            auto o = matvec(T(p + "self_attn.o_proj.weight"), H, q, att);
            for (int i = 0; i < H; ++i) x[t][i] += o[i];
            auto h2 = rmsnorm(x[t], T(p + "post_attention_layernorm.weight"), s.eps);
            auto g = matvec(T(p + "mlp.gate_proj.weight"), s.ffn, H, h2);
            auto u = matvec(T(p + "mlp.up_proj.weight"), s.ffn, H, h2);
            for (int i = 0; i < s.ffn; ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
            auto d = matvec(T(p + "mlp.down_proj.weight"), H, s.ffn, g);
            for (int i = 0; i < H; ++i) x[t][i] += d[i];
        }
    }
    std::vector<double> logits;
    const auto& head = s.tie ? T("model.embed_tokens.weight") : T("lm_head.weight");
    for (int t = 0; t < n; ++t) {
        auto h = rmsnorm(x[t], T("model.norm.weight"), s.eps);
        auto l = matvec(head, s.vocab, H, h);
        logits.insert(logits.end(), l.begin(), l.end());
    }
    return logits;
}
