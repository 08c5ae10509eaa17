#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "model/model_source.h"

namespace swiftkv {

namespace {

std::string layer_name(int64_t layer, const char* suffix) {
    return fmt::format("model.layers.{}.{}", layer, suffix);
}


}  // namespace

LlamaModel::LlamaModel(const ModelSource& source, Backend& backend, const LoadOptions& options)
    : config_(source.config()), backend_(backend) {
    check_load_options(options);
    load(source, options);
}

LlamaModel::LlamaModel(const ModelConfig& config, Backend& backend, const LoadOptions& options, uint64_t seed)
    : config_(config), backend_(backend) {
    check_load_options(options);
    init_random(options, seed);
}

void LlamaModel::check_load_options(const LoadOptions& options) {
    const DType dt = options.weight_dtype;
    SKV_CHECK(dt == DType::F32 || dt == DType::BF16, "weight dtype {} is not supported (use f32 or bf16)",
              dtype_name(dt));
    SKV_CHECK(backend_.supports_weight_dtype(dt), "the {} backend cannot hold {} weights", backend_.name(),
              dtype_name(dt));
    act_dtype_ = backend_.act_dtype();
    act_bytes_ = size_t(dtype_row_bytes(act_dtype_, 1));
    // The run mode: the caller's choice, else the checkpoint's `swiftkv` key. Off, the model is its
    // teacher: config() then describes the plain base model that runs (L = N, no AcrossKV groups).
    config_.swiftkv_enabled = options.swiftkv.value_or(config_.swiftkv_enabled);
    if (!config_.swiftkv_enabled) config_.num_kv_layers = config_.n_layers, config_.kv_group_size = 1;
}

WeightMatrix LlamaModel::upload_matrix(const ModelSource& source, const std::vector<std::string>& names,
                                       const std::vector<std::vector<int64_t>>& shapes, int64_t cols, DType dtype) {
    int64_t rows = 0;
    std::vector<const SourceTensor*> parts;
    for (size_t i = 0; i < names.size(); ++i) {
        parts.push_back(&source.require(names[i], shapes[i]));
        rows += shapes[i][0];
    }
    const size_t elem = dtype == DType::BF16 ? 2 : 4;
    DeviceBuffer buf(backend_, size_t(rows * cols) * elem);
    // Convert in chunks of rows through a host staging buffer.
    const int64_t chunk_rows = std::max<int64_t>(1, (int64_t(8) << 20) / (cols * 4));
    std::vector<float> staging(size_t(chunk_rows * cols));
    std::vector<uint16_t> staging_bf16(dtype == DType::BF16 ? staging.size() : 0);
    int64_t out_row = 0;
    for (const SourceTensor* t : parts) {
        for (int64_t r = 0; r < t->shape[0]; r += chunk_rows) {
            const int64_t n = std::min(chunk_rows, t->shape[0] - r);
            read_source_rows_f32(*t, r, r + n, config_.head_dim, staging.data());
            char* dst = buf.as<char>() + size_t(out_row * cols) * elem;
            if (dtype == DType::BF16) {
                for (int64_t i = 0; i < n * cols; ++i) staging_bf16[i] = f32_to_bf16(staging[i]);
                backend_.upload(dst, staging_bf16.data(), size_t(n * cols) * 2);
            } else {
                backend_.upload(dst, staging.data(), size_t(n * cols) * 4);
            }
            out_row += n;
        }
    }
    WeightMatrix w{dtype, rows, cols, buf.get()};
    weight_bytes_ += buf.bytes();
    storage_.push_back(std::move(buf));
    return w;
}

const float* LlamaModel::upload_vector(const ModelSource& source, const std::string& name, int64_t n) {
    const SourceTensor& t = source.require(name, {n});
    std::vector<float> host(n);
    read_source_rows_f32(t, 0, 1, 0, host.data());
    DeviceBuffer buf(backend_, size_t(n) * 4);
    backend_.upload(buf.get(), host.data(), size_t(n) * 4);
    const float* p = buf.as<float>();
    weight_bytes_ += buf.bytes();
    storage_.push_back(std::move(buf));
    return p;
}

void LlamaModel::load(const ModelSource& source, const LoadOptions& options) {
    const DType dt = options.weight_dtype;
    const ModelConfig& c = config_;
    const int64_t H = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), F = c.ffn, V = c.vocab;
    const int64_t L = c.num_kv_layers;

    embedding_ = upload_matrix(source, {"model.embed_tokens.weight"}, {{V, H}}, H, dt);
    if (c.tie_embeddings || source.find("lm_head.weight") == nullptr) {
        lm_head_ = embedding_;
    } else {
        lm_head_ = upload_matrix(source, {"lm_head.weight"}, {{V, H}}, H, dt);
    }
    final_norm_ = upload_vector(source, "model.norm.weight", H);

    layers_.resize(c.n_layers);
    for (int64_t l = 0; l < c.n_layers; ++l) {
        LayerWeights& lw = layers_[l];
        lw.attn_norm = upload_vector(source, layer_name(l, "input_layernorm.weight"), H);
        lw.ffn_norm = upload_vector(source, layer_name(l, "post_attention_layernorm.weight"), H);
        if (l < L) {
            lw.qkv = upload_matrix(source,
                                   {layer_name(l, "self_attn.q_proj.weight"), layer_name(l, "self_attn.k_proj.weight"),
                                    layer_name(l, "self_attn.v_proj.weight")},
                                   {{qd, H}, {kvd, H}, {kvd, H}}, H, dt);
        } else {
            lw.qkv = upload_matrix(source, {layer_name(l, "self_attn.q_proj_swiftkv.weight")}, {{qd, H}}, H, dt);
        }
        lw.o = upload_matrix(source, {layer_name(l, "self_attn.o_proj.weight")}, {{H, qd}}, qd, dt);
        lw.gate_up = upload_matrix(source, {layer_name(l, "mlp.gate_proj.weight"), layer_name(l, "mlp.up_proj.weight")},
                                   {{F, H}, {F, H}}, H, dt);
        lw.down = upload_matrix(source, {layer_name(l, "mlp.down_proj.weight")}, {{H, F}}, F, dt);
    }
    if (c.is_swiftkv()) {
        norm_swiftkv_ = upload_vector(source, "model.norm_swiftkv.weight", H);
        std::vector<std::string> names;
        std::vector<std::vector<int64_t>> shapes;
        for (const char* which : {"self_attn.k_proj_swiftkv.weight", "self_attn.v_proj_swiftkv.weight"}) {
            for (int64_t leader = L; leader < c.n_layers; leader += c.kv_group_size) {
                names.push_back(layer_name(leader, which));
                shapes.push_back({kvd, H});
            }
        }
        kv_swiftkv_ = upload_matrix(source, names, shapes, H, dt);
    }

    std::vector<float> inv = c.rope_inv_freq();
    if (const SourceTensor* freqs = source.find("rope_freqs.weight")) {
        // llama.cpp stores Llama-3 rope scaling as per-frequency divisors.
        SKV_CHECK(freqs->shape == std::vector<int64_t>{c.head_dim / 2}, "{}: rope_freqs has shape [{}], expected [{}]",
                  source.path(), freqs->shape.empty() ? 0 : freqs->shape[0], c.head_dim / 2);
        std::vector<float> div(c.head_dim / 2);
        read_source_rows_f32(*freqs, 0, 1, 0, div.data());
        for (size_t i = 0; i < inv.size(); ++i) inv[i] /= div[i];
    }
    inv_freq_ = DeviceBuffer(backend_, inv.size() * 4);
    backend_.upload(inv_freq_.get(), inv.data(), inv.size() * 4);
}

WeightMatrix LlamaModel::random_matrix(int64_t rows, int64_t cols, DType dtype, uint64_t seed) {
    const size_t elem = dtype == DType::BF16 ? 2 : 4;
    DeviceBuffer buf(backend_, size_t(rows * cols) * elem);
    // Uniform(-a, a) with a = 0.02 * sqrt(3): standard deviation 0.02, Llama's initializer range.
    backend_.fill_random(buf.get(), rows * cols, dtype, seed, 0.02f * std::sqrt(3.0f));
    WeightMatrix w{dtype, rows, cols, buf.get()};
    weight_bytes_ += buf.bytes();
    storage_.push_back(std::move(buf));
    return w;
}

const float* LlamaModel::constant_vector(int64_t n, float value) {
    std::vector<float> host(size_t(n), value);
    DeviceBuffer buf(backend_, size_t(n) * 4);
    backend_.upload(buf.get(), host.data(), size_t(n) * 4);
    const float* p = buf.as<float>();
    weight_bytes_ += buf.bytes();
    storage_.push_back(std::move(buf));
    return p;
}

void LlamaModel::init_random(const LoadOptions& options, uint64_t seed) {
    const DType dt = options.weight_dtype;
    const ModelConfig& c = config_;
    const int64_t H = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), F = c.ffn, V = c.vocab;
    const int64_t L = c.num_kv_layers;
    uint64_t next = seed * 1000003u;
    embedding_ = random_matrix(V, H, dt, ++next);
    lm_head_ = c.tie_embeddings ? embedding_ : random_matrix(V, H, dt, ++next);
    final_norm_ = constant_vector(H, 1.0f);
    layers_.resize(c.n_layers);
    for (int64_t l = 0; l < c.n_layers; ++l) {
        LayerWeights& lw = layers_[l];
        lw.attn_norm = constant_vector(H, 1.0f);
        lw.ffn_norm = constant_vector(H, 1.0f);
        lw.qkv = random_matrix(l < L ? qd + 2 * kvd : qd, H, dt, ++next);
        lw.o = random_matrix(H, qd, dt, ++next);
        lw.gate_up = random_matrix(2 * F, H, dt, ++next);
        lw.down = random_matrix(H, F, dt, ++next);
    }
    if (c.is_swiftkv()) {
        norm_swiftkv_ = constant_vector(H, 1.0f);
        kv_swiftkv_ = random_matrix(2 * ((c.n_layers - L) / c.kv_group_size) * kvd, H, dt, ++next);
    }
    const std::vector<float> inv = c.rope_inv_freq();
    inv_freq_ = DeviceBuffer(backend_, inv.size() * 4);
    backend_.upload(inv_freq_.get(), inv.data(), inv.size() * 4);
    backend_.synchronize();
}

bool LlamaModel::reserve_workspace(int64_t T, int64_t K) {
    const ModelConfig& c = config_;
    const int64_t groups = (c.n_layers - c.num_kv_layers) / c.kv_group_size;
    bool grown = false;
    if (T > ws_tokens_) {
        const int64_t n = std::max<int64_t>(T, 16);
        auto act = [&](int64_t cols) { return DeviceBuffer(backend_, size_t(n * cols) * act_bytes_); };
        residual_ = DeviceBuffer(backend_, size_t(n * c.hidden) * 4);
        delta_ = act(c.hidden);
        normed_ = act(c.hidden);
        qkv_ = act(c.q_dim() + 2 * c.kv_dim());
        attn_out_ = act(c.q_dim());
        gate_up_ = act(2 * c.ffn);
        act_ = act(c.ffn);
        if (groups > 0) kv_swiftkv_out_ = act(2 * groups * c.kv_dim());
        ws_tokens_ = n;
        grown = true;
    }
    if (K > ws_survivors_) {
        const int64_t n = std::max<int64_t>(K, 16);
        res_surv_ = DeviceBuffer(backend_, size_t(n * c.hidden) * 4);
        delta_surv_ = DeviceBuffer(backend_, size_t(n * c.hidden) * act_bytes_);
        logits_dev_ = DeviceBuffer(backend_, size_t(n * c.vocab) * 4);
        // Poison-free start: padded graph rows read these before anything wrote them.
        backend_.fill_zero(res_surv_.get(), res_surv_.bytes());
        ws_survivors_ = n;
        grown = true;
    }
    return grown;
}

void LlamaModel::run_layer(int64_t l, int64_t rows, const AttentionBatch& ab, const int32_t* positions,
                           const StepInputs& in, const KvCacheView& kv, float* residual, void* delta, bool first) {
    const ModelConfig& c = config_;
    DecoderLayerIO io;
    io.rows = rows;
    io.residual = residual;
    io.delta = delta;
    io.first = first;
    io.positions = positions;
    io.rope_inv_freq = inv_freq_.as<float>();
    io.normed = normed_.get();
    io.qkv = qkv_.get();
    io.attn = attn_out_.get();
    io.gate_up = gate_up_.get();
    io.mlp = act_.get();
    const int64_t cache_layer = c.kv_cache_layer_of(l);
    void* k_cache = kv.k_layers[size_t(cache_layer)];
    void* v_cache = kv.v_layers[size_t(cache_layer)];
    const bool own_kv = l < c.num_kv_layers;
    decoder_layer_forward(backend_, c, layers_[size_t(l)], io, [&](char* qkv, int64_t stride, void* out) {
        if (own_kv) {
            backend_.kv_write(qkv + c.q_dim() * act_bytes_, qkv + (c.q_dim() + c.kv_dim()) * act_bytes_, rows, stride,
                              in.slots, kv.layout, k_cache, v_cache);
        }
        backend_.attention(qkv, stride, ab, kv.layout, k_cache, v_cache, c.n_heads, 1.0f / std::sqrt(float(c.head_dim)),
                           out);
    });
}

// The front half: layers 0..L-1 on every row, then SingleInputKV (the later layers' K/V of every row
// from one GEMM and one bulk cache write) and the survivors' residual rows.
void LlamaModel::forward_front(const StepInputs& in, const KvCacheView& kv) {
    const ModelConfig& c = config_;
    const int64_t T = in.num_tokens;
    const int64_t L = c.num_kv_layers;
    float* residual = residual_.as<float>();
    backend_.embedding(embedding_, in.tokens, T, residual);
    for (int64_t l = 0; l < L; ++l) run_layer(l, T, in.all, in.positions, in, kv, residual, delta_.get(), l == 0);
    if (L == c.n_layers) return;
    const int64_t groups = (c.n_layers - L) / c.kv_group_size;
    const int64_t kvd = c.kv_dim();
    char* kvs = kv_swiftkv_out_.as<char>();
    single_input_kv(backend_, c, norm_swiftkv_, kv_swiftkv_, T, residual, delta_.get(), in.positions,
                    inv_freq_.as<float>(), normed_.get(), kvs);
    const int64_t layer_elems = kv.layout.num_blocks * kv.layout.block_elems();
    backend_.kv_write_layers(kvs, kvs + groups * kvd * act_bytes_, T, 2 * groups * kvd, kvd, groups, in.slots,
                             kv.layout, kv.k_layers[size_t(L)], kv.v_layers[size_t(L)],
                             groups > 1 ? (static_cast<char*>(kv.k_layers[size_t(L) + 1]) -
                                           static_cast<char*>(kv.k_layers[size_t(L)])) / int64_t(act_bytes_)
                                        : layer_elems);
    if (in.num_survivors > 0) {
        backend_.gather_rows(residual, in.survivor_rows, in.num_survivors, c.hidden * 4, res_surv_.get());
    }
}

// The back half: layers L..N-1 on the survivors only (SwiftKV), the final norm and the LM head.
void LlamaModel::forward_back(const StepInputs& in, const KvCacheView& kv) {
    const ModelConfig& c = config_;
    const int64_t K = in.num_survivors;
    const int64_t L = c.num_kv_layers;
    const float eps = float(c.rms_eps);
    if (K == 0) return;
    void* out_rows;
    if (L < c.n_layers) {
        float* res_s = res_surv_.as<float>();
        void* delta_s = delta_surv_.get();
        for (int64_t l = L; l < c.n_layers; ++l) {
            run_layer(l, K, in.survivors, in.survivor_positions, in, kv, res_s, delta_s, l == L);
        }
        backend_.add_rmsnorm(res_s, delta_s, final_norm_, normed_.get(), K, c.hidden, eps);
        out_rows = normed_.get();
    } else {
        backend_.add_rmsnorm(residual_.as<float>(), delta_.get(), final_norm_, normed_.get(), in.num_tokens, c.hidden,
                             eps);
        backend_.gather_rows(normed_.get(), in.survivor_rows, K, c.hidden * int64_t(act_bytes_), delta_.get());
        out_rows = delta_.get();
    }
    backend_.matmul(out_rows, K, lm_head_, logits_dev_.get(), DType::F32);
}

}  // namespace swiftkv
