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

void upload_ints(Backend& backend, DeviceBuffer& buf, const std::vector<int32_t>& v) {
    const size_t bytes = std::max<size_t>(v.size(), 1) * sizeof(int32_t);
    if (buf.bytes() < bytes) buf = DeviceBuffer(backend, bytes * 2);
    if (!v.empty()) backend.upload(buf.get(), v.data(), v.size() * sizeof(int32_t));
}

}  // namespace

LlamaModel::LlamaModel(const ModelSource& source, Backend& backend, const LoadOptions& options)
    : config_(source.config()), backend_(backend) {
    load(source, options);
}

LlamaModel::~LlamaModel() = default;

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
    SKV_CHECK(dt == DType::F32 || dt == DType::BF16, "weight dtype {} is not supported (use f32 or bf16)",
              dtype_name(dt));
    SKV_CHECK(backend_.supports_weight_dtype(dt), "the {} backend cannot hold {} weights", backend_.name(),
              dtype_name(dt));
    if (!options.swiftkv) config_.swiftkv_layers = config_.n_layers, config_.kv_group_size = 1;
    const ModelConfig& c = config_;
    const int64_t H = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), F = c.ffn, V = c.vocab;
    const int64_t L = c.swiftkv_layers;

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

void LlamaModel::ensure_scratch(int64_t T, int64_t K) {
    const ModelConfig& c = config_;
    const int64_t groups = (c.n_layers - c.swiftkv_layers) / c.kv_group_size;
    if (T > scratch_tokens_) {
        const int64_t n = std::max<int64_t>(T, 16);
        auto f = [&](int64_t cols) { return DeviceBuffer(backend_, size_t(n * cols) * 4); };
        residual_ = f(c.hidden);
        delta_ = f(c.hidden);
        normed_ = f(c.hidden);
        qkv_ = f(c.q_dim() + 2 * c.kv_dim());
        attn_out_ = f(c.q_dim());
        gate_up_ = f(2 * c.ffn);
        act_ = f(c.ffn);
        if (groups > 0) kv_swiftkv_out_ = f(2 * groups * c.kv_dim());
        scratch_tokens_ = n;
    }
    if (K > scratch_survivors_) {
        const int64_t n = std::max<int64_t>(K, 16);
        res_surv_ = DeviceBuffer(backend_, size_t(n * c.hidden) * 4);
        delta_surv_ = DeviceBuffer(backend_, size_t(n * c.hidden) * 4);
        logits_dev_ = DeviceBuffer(backend_, size_t(n * c.vocab) * 4);
        scratch_survivors_ = n;
    }
}

// One transformer layer on `rows` rows. On entry residual holds the stream and delta the previous
// layer's output not yet added (unless first); on exit delta holds this layer's MLP output.
void LlamaModel::run_layer(int64_t l, int64_t rows, bool swiftkv_layer, const AttentionBatch& ab,
                           const int32_t* positions, const KvCacheView& kv, float* residual, float* delta,
                           bool first) {
    const ModelConfig& c = config_;
    const LayerWeights& lw = layers_[l];
    const float eps = float(c.rms_eps);
    float* h = normed_.as<float>();
    float* qkv = qkv_.as<float>();
    if (first) {
        backend_.rmsnorm(residual, lw.attn_norm, h, rows, c.hidden, eps);
    } else {
        backend_.add_rmsnorm(residual, delta, lw.attn_norm, h, rows, c.hidden, eps);
    }
    backend_.matmul(h, rows, lw.qkv, qkv);
    const int64_t stride = lw.qkv.rows;
    const int64_t cache_layer = c.kv_cache_layer_of(l);
    if (!swiftkv_layer) {
        // Q and K heads are adjacent at the start of each row: one RoPE call covers both.
        backend_.rope(qkv, rows, stride, c.n_heads + c.n_kv_heads, c.head_dim, positions, inv_freq_.as<float>());
        backend_.kv_write(qkv + c.q_dim(), qkv + c.q_dim() + c.kv_dim(), rows, stride, slots_dev_.as<int32_t>(),
                          kv.layout, kv.k_layers[cache_layer], kv.v_layers[cache_layer]);
    } else {
        backend_.rope(qkv, rows, stride, c.n_heads, c.head_dim, positions, inv_freq_.as<float>());
    }
    float* attn = attn_out_.as<float>();
    backend_.attention(qkv, stride, ab, kv.layout, kv.k_layers[cache_layer], kv.v_layers[cache_layer], c.n_heads,
                       1.0f / std::sqrt(float(c.head_dim)), attn);
    backend_.matmul(attn, rows, lw.o, delta);
    backend_.add_rmsnorm(residual, delta, lw.ffn_norm, h, rows, c.hidden, eps);
    backend_.matmul(h, rows, lw.gate_up, gate_up_.as<float>());
    backend_.silu_mul(gate_up_.as<float>(), act_.as<float>(), rows, c.ffn);
    backend_.matmul(act_.as<float>(), rows, lw.down, delta);
}

void LlamaModel::forward(const ForwardBatch& batch, const KvCacheView& kv, std::vector<float>& logits) {
    const ModelConfig& c = config_;
    const int64_t bs = kv.layout.block_size;
    batch.validate(bs, kv.layout.num_blocks);
    SKV_CHECK(int64_t(kv.k_layers.size()) == c.kv_cache_layers(), "KV cache has {} layers, model needs {}",
              kv.k_layers.size(), c.kv_cache_layers());
    const int64_t T = batch.num_tokens();
    const int64_t S = batch.num_seqs();
    const int64_t K = int64_t(batch.logits_indices.size());
    logits.assign(size_t(K * c.vocab), 0.0f);
    if (T == 0) return;
    for (int32_t tok : batch.tokens) {
        SKV_CHECK(tok >= 0 && tok < c.vocab, "token id {} is outside the vocabulary (0..{})", tok, c.vocab - 1);
    }
    ensure_scratch(T, K);

    // Host-side planning: cache slots for every token, survivors' per-sequence layout.
    std::vector<int32_t> slots(T);
    std::vector<int32_t> surv_query_start(S + 1, 0), surv_positions(K);
    int64_t max_len = 0;
    for (int64_t s = 0; s < S; ++s) {
        max_len = std::max<int64_t>(max_len, batch.seq_lens[s]);
        for (int32_t i = batch.query_start[s]; i < batch.query_start[s + 1]; ++i) {
            const int32_t pos = batch.positions[i];
            slots[i] = batch.block_tables[s * batch.max_blocks_per_seq + pos / bs] * int32_t(bs) + pos % int32_t(bs);
        }
    }
    {
        int64_t s = 0;
        for (int64_t k = 0; k < K; ++k) {
            const int32_t row = batch.logits_indices[k];
            while (row >= batch.query_start[s + 1]) ++s;
            surv_query_start[s + 1]++;
            surv_positions[k] = batch.positions[row];
        }
        for (int64_t i = 0; i < S; ++i) surv_query_start[i + 1] += surv_query_start[i];
        // Survivors must be a suffix of their sequence's rows (bottom-right aligned attention).
        for (int64_t i = 0; i < S; ++i) {
            const int32_t n = surv_query_start[i + 1] - surv_query_start[i];
            if (n > 0) {
                SKV_CHECK(batch.logits_indices[surv_query_start[i + 1] - 1] == batch.query_start[i + 1] - 1 &&
                              batch.logits_indices[surv_query_start[i]] == batch.query_start[i + 1] - n,
                          "batch: logits rows of sequence {} must be a suffix of its tokens", i);
            }
        }
    }
    upload_ints(backend_, tokens_dev_, batch.tokens);
    upload_ints(backend_, positions_dev_, batch.positions);
    upload_ints(backend_, slots_dev_, slots);
    upload_ints(backend_, query_start_dev_, batch.query_start);
    upload_ints(backend_, seq_lens_dev_, batch.seq_lens);
    upload_ints(backend_, block_tables_dev_, batch.block_tables);
    upload_ints(backend_, logits_idx_dev_, batch.logits_indices);
    upload_ints(backend_, surv_query_start_dev_, surv_query_start);
    upload_ints(backend_, surv_positions_dev_, surv_positions);

    AttentionBatch ab;
    ab.num_seqs = S;
    ab.query_start = query_start_dev_.as<int32_t>();
    ab.seq_lens = seq_lens_dev_.as<int32_t>();
    ab.block_tables = block_tables_dev_.as<int32_t>();
    ab.max_blocks_per_seq = batch.max_blocks_per_seq;
    ab.max_seq_len = max_len;

    float* residual = residual_.as<float>();
    float* delta = delta_.as<float>();
    float* h = normed_.as<float>();
    const float eps = float(c.rms_eps);
    const int64_t L = c.swiftkv_layers;

    backend_.embedding(embedding_, tokens_dev_.as<int32_t>(), T, residual);
    for (int64_t l = 0; l < L; ++l) {
        run_layer(l, T, false, ab, positions_dev_.as<int32_t>(), kv, residual, delta, l == 0);
    }

    float* out_rows;  // normalised final hidden states of the K survivors
    if (L < c.n_layers) {
        // SingleInputKV: every later group's K/V from norm_swiftkv(h_L), for all tokens, in one GEMM.
        const int64_t groups = (c.n_layers - L) / c.kv_group_size;
        const int64_t kvd = c.kv_dim();
        const int64_t stride = 2 * groups * kvd;
        float* kvs = kv_swiftkv_out_.as<float>();
        backend_.add_rmsnorm(residual, delta, norm_swiftkv_, h, T, c.hidden, eps);  // residual is now h_L
        backend_.matmul(h, T, kv_swiftkv_, kvs);
        backend_.rope(kvs, T, stride, groups * c.n_kv_heads, c.head_dim, positions_dev_.as<int32_t>(),
                      inv_freq_.as<float>());
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t cache_layer = L + g;
            backend_.kv_write(kvs + g * kvd, kvs + groups * kvd + g * kvd, T, stride, slots_dev_.as<int32_t>(),
                              kv.layout, kv.k_layers[cache_layer], kv.v_layers[cache_layer]);
        }
        if (K == 0) return;
        // Only the survivors run the later layers, attending over the full cached context.
        float* res_s = res_surv_.as<float>();
        float* delta_s = delta_surv_.as<float>();
        backend_.gather_rows(residual, logits_idx_dev_.as<int32_t>(), K, c.hidden, res_s);
        AttentionBatch sb = ab;
        sb.query_start = surv_query_start_dev_.as<int32_t>();
        for (int64_t l = L; l < c.n_layers; ++l) {
            run_layer(l, K, true, sb, surv_positions_dev_.as<int32_t>(), kv, res_s, delta_s, l == L);
        }
        backend_.add_rmsnorm(res_s, delta_s, final_norm_, h, K, c.hidden, eps);
        out_rows = h;
    } else {
        if (K == 0) return;
        backend_.add_rmsnorm(residual, delta, final_norm_, h, T, c.hidden, eps);
        backend_.gather_rows(h, logits_idx_dev_.as<int32_t>(), K, c.hidden, delta);
        out_rows = delta;
    }
    backend_.matmul(out_rows, K, lm_head_, logits_dev_.as<float>());
    backend_.download(logits.data(), logits_dev_.get(), size_t(K * c.vocab) * 4);
}

}  // namespace swiftkv
