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

LlamaModel::~LlamaModel() { drop_graphs(); }

void LlamaModel::check_load_options(const LoadOptions& options) {
    const DType dt = options.weight_dtype;
    SKV_CHECK(dt == DType::F32 || dt == DType::BF16, "weight dtype {} is not supported (use f32 or bf16)",
              dtype_name(dt));
    SKV_CHECK(backend_.supports_weight_dtype(dt), "the {} backend cannot hold {} weights", backend_.name(),
              dtype_name(dt));
    act_dtype_ = backend_.act_dtype();
    act_bytes_ = size_t(dtype_row_bytes(act_dtype_, 1));
    use_graphs_ = options.graphs && backend_.supports_graphs();
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

void LlamaModel::drop_graphs() {
    if (!graphs_.empty()) backend_.synchronize();
    graphs_.clear();
}

namespace {

// Decode batches are padded up to one of these sizes so a handful of graphs covers every batch.
constexpr int64_t kMaxGraphBatch = 512;
int64_t graph_bucket(int64_t n) {
    static const int64_t small[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128};
    for (int64_t b : small)
        if (n <= b) return b;
    return (n + 63) / 64 * 64;
}
// Context-length bound baked into a graph (attention grids are sized from it).
int64_t context_bound(int64_t max_len, int64_t cap) {
    int64_t b = 256;
    while (b < max_len) b *= 2;
    return std::min(b, cap);
}

}  // namespace

void LlamaModel::reserve(int64_t max_tokens, int64_t max_seqs, int64_t max_blocks_per_seq) {
    SKV_CHECK(max_tokens > 0 && max_seqs > 0 && max_blocks_per_seq > 0, "reserve: bounds must be positive");
    reserved_seqs_ = std::max(reserved_seqs_, max_seqs);
    reserved_blocks_ = std::max(reserved_blocks_, max_blocks_per_seq);
    const int64_t padded_seqs = std::min(graph_bucket(max_seqs), std::max(kMaxGraphBatch, max_seqs));
    ensure_scratch(std::max(max_tokens, padded_seqs), std::max(max_seqs, padded_seqs));
}

void LlamaModel::ensure_scratch(int64_t T, int64_t K) {
    const ModelConfig& c = config_;
    const int64_t groups = (c.n_layers - c.num_kv_layers) / c.kv_group_size;
    const int64_t seqs = std::max({reserved_seqs_, T, int64_t(16)});
    const int64_t blocks = std::max<int64_t>(reserved_blocks_, 1);
    if (T > scratch_tokens_) {
        drop_graphs();
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
        auto ints = [&](int64_t count) { return DeviceBuffer(backend_, size_t(std::max<int64_t>(count, 1)) * 4); };
        tokens_dev_ = ints(n);
        positions_dev_ = ints(n);
        slots_dev_ = ints(n);
        query_start_dev_ = ints(std::max(n, seqs) + 1);
        seq_lens_dev_ = ints(std::max(n, seqs));
        logits_idx_dev_ = ints(n);
        scratch_tokens_ = n;
    }
    if (K > scratch_survivors_) {
        drop_graphs();
        const int64_t n = std::max<int64_t>(K, 16);
        res_surv_ = DeviceBuffer(backend_, size_t(n * c.hidden) * 4);
        delta_surv_ = DeviceBuffer(backend_, size_t(n * c.hidden) * act_bytes_);
        logits_dev_ = DeviceBuffer(backend_, size_t(n * c.vocab) * 4);
        surv_query_start_dev_ = DeviceBuffer(backend_, size_t(std::max(n, seqs) + 1) * 4);
        surv_positions_dev_ = DeviceBuffer(backend_, size_t(n) * 4);
        sample_params_dev_ = DeviceBuffer(backend_, size_t(n) * sizeof(SampleParams));
        sampled_dev_ = DeviceBuffer(backend_, size_t(n) * 4);
        // Poison-free start: padded graph rows read these before anything wrote them.
        backend_.fill_zero(res_surv_.get(), res_surv_.bytes());
        scratch_survivors_ = n;
    }
    const size_t table_bytes = size_t(std::max(seqs, scratch_tokens_) * blocks) * 4;
    if (block_tables_dev_.bytes() < table_bytes) {
        drop_graphs();
        block_tables_dev_ = DeviceBuffer(backend_, table_bytes);
    }
}

// One transformer layer on `rows` rows. On entry residual holds the stream and delta the previous
// layer's output not yet added (unless first); on exit delta holds this layer's MLP output.
void LlamaModel::run_layer(int64_t l, int64_t rows, bool swiftkv_layer, const AttentionBatch& ab,
                           const int32_t* positions, const KvCacheView& kv, float* residual, void* delta,
                           bool first) {
    const ModelConfig& c = config_;
    const LayerWeights& lw = layers_[l];
    const float eps = float(c.rms_eps);
    void* h = normed_.get();
    char* qkv = qkv_.as<char>();
    if (first) {
        backend_.rmsnorm(residual, lw.attn_norm, h, rows, c.hidden, eps);
    } else {
        backend_.add_rmsnorm(residual, delta, lw.attn_norm, h, rows, c.hidden, eps);
    }
    backend_.matmul(h, rows, lw.qkv, qkv, act_dtype_);
    const int64_t stride = lw.qkv.rows;
    const int64_t cache_layer = c.kv_cache_layer_of(l);
    if (!swiftkv_layer) {
        // Q and K heads are adjacent at the start of each row: one RoPE call covers both.
        backend_.rope(qkv, rows, stride, c.n_heads + c.n_kv_heads, c.head_dim, positions, inv_freq_.as<float>());
        backend_.kv_write(qkv + c.q_dim() * act_bytes_, qkv + (c.q_dim() + c.kv_dim()) * act_bytes_, rows, stride,
                          slots_dev_.as<int32_t>(), kv.layout, kv.k_layers[cache_layer], kv.v_layers[cache_layer]);
    } else {
        backend_.rope(qkv, rows, stride, c.n_heads, c.head_dim, positions, inv_freq_.as<float>());
    }
    void* attn = attn_out_.get();
    backend_.attention(qkv, stride, ab, kv.layout, kv.k_layers[cache_layer], kv.v_layers[cache_layer], c.n_heads,
                       1.0f / std::sqrt(float(c.head_dim)), attn);
    backend_.matmul(attn, rows, lw.o, delta, act_dtype_);
    backend_.add_rmsnorm(residual, delta, lw.ffn_norm, h, rows, c.hidden, eps);
    backend_.matmul(h, rows, lw.gate_up, gate_up_.get(), act_dtype_);
    backend_.silu_mul(gate_up_.get(), act_.get(), rows, c.ffn);
    backend_.matmul(act_.get(), rows, lw.down, delta, act_dtype_);
}

namespace {

// Grows an index buffer to hold `count` ints; returns true if it was reallocated.
bool fit_ints(Backend& backend, DeviceBuffer& buf, size_t count) {
    const size_t bytes = std::max<size_t>(count, 1) * 4;
    if (buf.bytes() >= bytes) return false;
    buf = DeviceBuffer(backend, bytes * 2);
    return true;
}

}  // namespace

// Host-side planning of one step: validation, cache slots, the survivors' layout, whether the step
// can run as a recorded graph, padding for it, and the uploads of every index array.
void LlamaModel::prepare(const ForwardBatch& batch, const KvCacheView& kv, StepShape& sh) {
    const ModelConfig& c = config_;
    const int64_t bs = kv.layout.block_size;
    batch.validate(bs, kv.layout.num_blocks);
    SKV_CHECK(int64_t(kv.k_layers.size()) == c.kv_cache_layers(), "KV cache has {} layers, model needs {}",
              kv.k_layers.size(), c.kv_cache_layers());
    for (int32_t tok : batch.tokens) {
        SKV_CHECK(tok >= 0 && tok < c.vocab, "token id {} is outside the vocabulary (0..{})", tok, c.vocab - 1);
    }
    const int64_t T = batch.num_tokens();
    const int64_t S = batch.num_seqs();
    const int64_t K = int64_t(batch.logits_indices.size());

    // Survivors' per-sequence layout; they must be a suffix of their sequence's rows.
    std::vector<int32_t> surv_count(size_t(S), 0);
    {
        int64_t s = 0;
        for (int64_t k = 0; k < K; ++k) {
            const int32_t row = batch.logits_indices[k];
            while (row >= batch.query_start[s + 1]) ++s;
            surv_count[size_t(s)]++;
        }
    }
    int64_t max_len = 0, max_q = 0, max_surv = 0;
    bool one_each = K == S;
    for (int64_t s = 0; s < S; ++s) {
        max_len = std::max<int64_t>(max_len, batch.seq_lens[s]);
        max_q = std::max<int64_t>(max_q, batch.query_start[s + 1] - batch.query_start[s]);
        max_surv = std::max<int64_t>(max_surv, surv_count[size_t(s)]);
        one_each = one_each && surv_count[size_t(s)] == 1;
    }

    // Graphs: decode steps whole; SwiftKV prefill steps for the survivors' later layers.
    sh.mode = GraphMode::kNone;
    if (use_graphs_ && S > 0 && S <= kMaxGraphBatch && reserved_blocks_ >= batch.max_blocks_per_seq && one_each) {
        if (max_q == 1 && T == S) {
            sh.mode = GraphMode::kWholeStep;
        } else if (c.is_swiftkv()) {
            sh.mode = GraphMode::kSurvivors;
        }
    }
    const bool graphed = sh.mode != GraphMode::kNone;
    const int64_t B = graphed ? graph_bucket(S) : S;
    const int64_t stride = graphed ? reserved_blocks_ : batch.max_blocks_per_seq;
    const int64_t bound = graphed ? context_bound(max_len, stride * bs) : max_len;
    const int64_t pad = B - S;
    const bool whole = sh.mode == GraphMode::kWholeStep;

    h_tokens_.assign(batch.tokens.begin(), batch.tokens.end());
    h_positions_.assign(batch.positions.begin(), batch.positions.end());
    h_slots_.resize(size_t(T));
    for (int64_t s = 0; s < S; ++s) {
        for (int32_t i = batch.query_start[s]; i < batch.query_start[s + 1]; ++i) {
            const int32_t pos = batch.positions[i];
            h_slots_[size_t(i)] =
                batch.block_tables[s * batch.max_blocks_per_seq + pos / bs] * int32_t(bs) + pos % int32_t(bs);
        }
    }
    h_query_start_.assign(batch.query_start.begin(), batch.query_start.end());
    h_seq_lens_.assign(batch.seq_lens.begin(), batch.seq_lens.end());
    h_logits_idx_.assign(batch.logits_indices.begin(), batch.logits_indices.end());
    h_surv_query_start_.assign(size_t(S) + 1, 0);
    for (int64_t s = 0; s < S; ++s) h_surv_query_start_[size_t(s) + 1] = h_surv_query_start_[size_t(s)] + surv_count[size_t(s)];
    h_surv_positions_.resize(size_t(K));
    for (int64_t k = 0; k < K; ++k) h_surv_positions_[size_t(k)] = batch.positions[batch.logits_indices[k]];
    for (int64_t s = 0; s < S; ++s) {
        const int32_t n = h_surv_query_start_[size_t(s) + 1] - h_surv_query_start_[size_t(s)];
        if (n > 0) {
            SKV_CHECK(batch.logits_indices[h_surv_query_start_[size_t(s) + 1] - 1] == batch.query_start[s + 1] - 1 &&
                          batch.logits_indices[h_surv_query_start_[size_t(s)]] == batch.query_start[s + 1] - n,
                      "batch: logits rows of sequence {} must be a suffix of its tokens", s);
        }
    }
    h_block_tables_.assign(size_t(B * std::max<int64_t>(stride, 1)), 0);
    for (int64_t s = 0; s < S; ++s) {
        std::copy_n(batch.block_tables.begin() + s * batch.max_blocks_per_seq, batch.max_blocks_per_seq,
                    h_block_tables_.begin() + s * stride);
    }
    // Padding rows: one token each at position 0, context 1, block table of zeros, no cache write.
    for (int64_t p = 0; p < pad; ++p) {
        if (whole) {
            h_tokens_.push_back(0);
            h_positions_.push_back(0);
            h_slots_.push_back(-1);
            h_query_start_.push_back(h_query_start_.back() + 1);
            h_logits_idx_.push_back(int32_t(T + p));
        } else {
            h_logits_idx_.push_back(0);
        }
        h_seq_lens_.push_back(1);
        h_surv_query_start_.push_back(h_surv_query_start_.back() + 1);
        h_surv_positions_.push_back(0);
    }

    sh.T = whole ? B : T;
    sh.S = B;
    sh.K = graphed ? B : K;
    sh.real_K = K;
    sh.blocks_per_seq = stride;
    ensure_scratch(sh.T, sh.K);
    bool grown = false;
    grown |= fit_ints(backend_, tokens_dev_, h_tokens_.size());
    grown |= fit_ints(backend_, positions_dev_, h_positions_.size());
    grown |= fit_ints(backend_, slots_dev_, h_slots_.size());
    grown |= fit_ints(backend_, query_start_dev_, h_query_start_.size());
    grown |= fit_ints(backend_, seq_lens_dev_, h_seq_lens_.size());
    grown |= fit_ints(backend_, block_tables_dev_, h_block_tables_.size());
    grown |= fit_ints(backend_, logits_idx_dev_, h_logits_idx_.size());
    grown |= fit_ints(backend_, surv_query_start_dev_, h_surv_query_start_.size());
    grown |= fit_ints(backend_, surv_positions_dev_, h_surv_positions_.size());
    if (grown) drop_graphs();
    auto up = [&](DeviceBuffer& buf, const std::vector<int32_t>& v) {
        if (!v.empty()) backend_.upload(buf.get(), v.data(), v.size() * 4);
    };
    up(tokens_dev_, h_tokens_);
    up(positions_dev_, h_positions_);
    up(slots_dev_, h_slots_);
    up(query_start_dev_, h_query_start_);
    up(seq_lens_dev_, h_seq_lens_);
    up(block_tables_dev_, h_block_tables_);
    up(logits_idx_dev_, h_logits_idx_);
    up(surv_query_start_dev_, h_surv_query_start_);
    up(surv_positions_dev_, h_surv_positions_);

    AttentionBatch& ab = sh.all;
    ab.num_seqs = whole ? B : S;
    ab.num_rows = sh.T;
    ab.query_start = query_start_dev_.as<int32_t>();
    ab.seq_lens = seq_lens_dev_.as<int32_t>();
    ab.block_tables = block_tables_dev_.as<int32_t>();
    ab.max_blocks_per_seq = stride;
    ab.max_seq_len = bound;
    ab.max_query_len = whole ? 1 : max_q;
    sh.survivors = ab;
    sh.survivors.num_seqs = B;
    sh.survivors.num_rows = sh.K;
    sh.survivors.query_start = surv_query_start_dev_.as<int32_t>();
    sh.survivors.max_query_len = graphed ? 1 : max_surv;
}

// Everything up to the survivors: the first L layers on every token, then (SwiftKV) the later layers'
// K/V for every token from one GEMM and one bulk cache write, and the survivors' residual rows.
void LlamaModel::run_front(const StepShape& sh, const KvCacheView& kv) {
    const ModelConfig& c = config_;
    const int64_t T = sh.T;
    float* residual = residual_.as<float>();
    const int64_t L = c.num_kv_layers;
    backend_.embedding(embedding_, tokens_dev_.as<int32_t>(), T, residual);
    for (int64_t l = 0; l < L; ++l) {
        run_layer(l, T, false, sh.all, positions_dev_.as<int32_t>(), kv, residual, delta_.get(), l == 0);
    }
    if (L < c.n_layers) {
        // SingleInputKV: every later group's K/V from norm_swiftkv(h_L), for all tokens, in one GEMM.
        const int64_t groups = (c.n_layers - L) / c.kv_group_size;
        const int64_t kvd = c.kv_dim();
        const int64_t stride = 2 * groups * kvd;
        char* kvs = kv_swiftkv_out_.as<char>();
        backend_.add_rmsnorm(residual, delta_.get(), norm_swiftkv_, normed_.get(), T, c.hidden, float(c.rms_eps));
        backend_.matmul(normed_.get(), T, kv_swiftkv_, kvs, act_dtype_);
        backend_.rope(kvs, T, stride, groups * c.n_kv_heads, c.head_dim, positions_dev_.as<int32_t>(),
                      inv_freq_.as<float>());
        const int64_t layer_elems = kv.layout.num_blocks * kv.layout.block_elems();
        backend_.kv_write_layers(kvs, kvs + groups * kvd * act_bytes_, T, stride, kvd, groups,
                                 slots_dev_.as<int32_t>(), kv.layout, kv.k_layers[L], kv.v_layers[L],
                                 groups > 1 ? (static_cast<char*>(kv.k_layers[L + 1]) -
                                               static_cast<char*>(kv.k_layers[L])) / int64_t(act_bytes_)
                                            : layer_elems);
        if (sh.K > 0) {
            backend_.gather_rows(residual, logits_idx_dev_.as<int32_t>(), sh.K, c.hidden * 4, res_surv_.get());
        }
    }
}

// From the survivors to the logits: the later layers on the survivors only (SwiftKV), the final
// norm, and the LM head at the requested rows.
void LlamaModel::run_back(const StepShape& sh, const KvCacheView& kv) {
    const ModelConfig& c = config_;
    const int64_t K = sh.K;
    const int64_t L = c.num_kv_layers;
    const float eps = float(c.rms_eps);
    if (K == 0) return;
    void* out_rows;
    if (L < c.n_layers) {
        float* res_s = res_surv_.as<float>();
        void* delta_s = delta_surv_.get();
        for (int64_t l = L; l < c.n_layers; ++l) {
            run_layer(l, K, true, sh.survivors, surv_positions_dev_.as<int32_t>(), kv, res_s, delta_s, l == L);
        }
        backend_.add_rmsnorm(res_s, delta_s, final_norm_, normed_.get(), K, c.hidden, eps);
        out_rows = normed_.get();
    } else {
        backend_.add_rmsnorm(residual_.as<float>(), delta_.get(), final_norm_, normed_.get(), sh.T, c.hidden, eps);
        backend_.gather_rows(normed_.get(), logits_idx_dev_.as<int32_t>(), K, c.hidden * int64_t(act_bytes_),
                             delta_.get());
        out_rows = delta_.get();
    }
    backend_.matmul(out_rows, K, lm_head_, logits_dev_.get(), DType::F32);
}

void LlamaModel::run_step(const StepShape& sh, const KvCacheView& kv) {
    if (sh.mode == GraphMode::kNone) {
        run_front(sh, kv);
        run_back(sh, kv);
        return;
    }
    if (sh.mode == GraphMode::kSurvivors) run_front(sh, kv);
    const auto key = std::make_tuple(int(sh.mode), sh.K, sh.all.max_seq_len, static_cast<const void*>(kv.k_layers[0]));
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
        backend_.replay(*it->second);
        ++graph_replays_;
        return;
    }
    // First time at this shape: run eagerly (sizing every workspace), then record for next time.
    const bool whole = sh.mode == GraphMode::kWholeStep;
    if (whole) run_front(sh, kv);
    run_back(sh, kv);
    graphs_[key] = backend_.capture([&] {
        if (whole) run_front(sh, kv);
        run_back(sh, kv);
    });
    ++graphs_recorded_;
}

void LlamaModel::forward(const ForwardBatch& batch, const KvCacheView& kv, std::vector<float>& logits) {
    const int64_t V = config_.vocab;
    StepShape sh;
    prepare(batch, kv, sh);
    logits.assign(size_t(sh.real_K * V), 0.0f);
    if (batch.num_tokens() == 0) return;
    run_step(sh, kv);
    if (sh.real_K > 0) backend_.download(logits.data(), logits_dev_.get(), size_t(sh.real_K * V) * 4);
}

void LlamaModel::forward_sample(const ForwardBatch& batch, const KvCacheView& kv,
                                const std::vector<SampleParams>& params, std::vector<int32_t>& tokens) {
    SKV_CHECK(params.size() == batch.logits_indices.size(), "forward_sample: {} sampling rows for {} logits rows",
              params.size(), batch.logits_indices.size());
    forward_sample_launch(batch, kv, params);
    forward_sample_wait(tokens);
}

void LlamaModel::forward_sample_launch(const ForwardBatch& batch, const KvCacheView& kv,
                                       const std::vector<SampleParams>& params) {
    SKV_CHECK(pending_samples_ < 0, "forward_sample_launch: the previous step was not waited for");
    SKV_CHECK(params.size() == batch.logits_indices.size(), "forward_sample: {} sampling rows for {} logits rows",
              params.size(), batch.logits_indices.size());
    StepShape sh;
    prepare(batch, kv, sh);
    const int64_t k = (batch.num_tokens() == 0) ? 0 : sh.real_K;
    // A step of prefill chunks alone samples nothing, but its K/V must still be written.
    if (batch.num_tokens() > 0) run_step(sh, kv);
    if (k > 0) {
        backend_.upload(sample_params_dev_.get(), params.data(), params.size() * sizeof(SampleParams));
        backend_.sample(logits_dev_.as<float>(), sh.real_K, config_.vocab, sample_params_dev_.as<SampleParams>(),
                        sampled_dev_.as<int32_t>());
    }
    pending_samples_ = k;  // set last: a launch that threw leaves nothing pending
}

void LlamaModel::forward_sample_wait(std::vector<int32_t>& tokens) {
    SKV_CHECK(pending_samples_ >= 0, "forward_sample_wait: no step was launched");
    tokens.assign(size_t(pending_samples_), 0);
    const int64_t k = pending_samples_;
    pending_samples_ = -1;
    if (k > 0) backend_.download(tokens.data(), sampled_dev_.get(), size_t(k) * 4);
}

}  // namespace swiftkv
