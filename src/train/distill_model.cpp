// DistillModel: the distillation forward (shared front, teacher, student), the losses and the student's
// hand-written backward pass over packed sequences. See distill_model.h for the dataflow.
#include "train/distill_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "backend/sampling_noise.h"
#include "core/error.h"
#include "model/model_source.h"

namespace swiftkv {

namespace {

std::string layer_name(int64_t layer, const char* suffix) { return fmt::format("model.layers.{}.{}", layer, suffix); }

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The workspace's buffers, in one place so that workspace_bytes() and reserve() agree. Sizes in bytes
// for T tokens and logits chunks of C rows.
struct WorkspacePlan {
    size_t ints_T, ints_S, f32_T;                                  // index arrays and row vectors
    size_t f32_TH, act_TH, act_Tqkv, act_Tqd, f32_Tnh, act_T2F, act_TF, act_Tkv;  // one-layer tensors
    size_t f32_CV, act_CV;
    int64_t later;
    bool mse, act_is_f32;

    WorkspacePlan(const ModelConfig& c, size_t act_bytes, int64_t T, int64_t C, bool hidden_mse) {
        const size_t t = size_t(std::max<int64_t>(T, 1));
        const int64_t groups = (c.n_layers - c.num_kv_layers) / c.kv_group_size;
        ints_T = t * 4;
        ints_S = (t + 1) * 4;
        f32_T = t * 4;
        f32_TH = t * size_t(c.hidden) * 4;
        act_TH = t * size_t(c.hidden) * act_bytes;
        act_Tqkv = t * size_t(c.q_dim() + 2 * c.kv_dim()) * act_bytes;
        act_Tqd = t * size_t(c.q_dim()) * act_bytes;
        f32_Tnh = t * size_t(c.n_heads) * 4;
        act_T2F = t * size_t(2 * c.ffn) * act_bytes;
        act_TF = t * size_t(c.ffn) * act_bytes;
        act_Tkv = t * size_t(2 * groups * c.kv_dim()) * act_bytes;
        f32_CV = size_t(C) * size_t(c.vocab) * 4;
        act_CV = act_bytes == 4 ? 0 : size_t(C) * size_t(c.vocab) * act_bytes;
        later = c.n_layers - c.num_kv_layers;
        mse = hidden_mse;
        act_is_f32 = act_bytes == 4;
    }
    size_t total() const {
        const size_t L = size_t(later);
        size_t b = 0;
        b += 2 * ints_T + ints_S + 4 * f32_T;                          // tokens, positions, cu_seqlens, weights, losses
        b += f32_TH + 2 * act_TH + act_Tqkv + act_Tqd + f32_Tnh + act_T2F + act_TF;  // front / teacher scratch
        b += f32_TH + act_TH + (mse ? f32_TH : 0);                     // h_L, teacher final normed, teacher h_{N-1}
        b += f32_TH + act_Tkv + act_TH;                                // student residual, K/V, final normed
        b += L * (2 * f32_TH + 2 * act_Tqd + f32_Tnh + act_T2F);       // saved per later layer
        b += f32_TH + (act_is_f32 ? 0 : act_TH) + act_TH + act_TF + act_T2F + 2 * act_Tqd + act_Tkv +
             (mse ? f32_TH : 0);                                       // backward scratch
        b += 3 * f32_CV + act_CV;                                      // logits chunk
        return b;
    }
};

}  // namespace

// ---- PackedBatch ------------------------------------------------------------------------------------------

void PackedBatch::add_segment(const int32_t* ids, int64_t n, const float* weights) {
    if (cu_seqlens.empty()) cu_seqlens.push_back(0);
    for (int64_t i = 0; i < n; ++i) {
        tokens.push_back(ids[i]);
        positions.push_back(int32_t(i));
        row_weights.push_back(weights ? weights[i] : 0.0f);
    }
    cu_seqlens.push_back(int32_t(tokens.size()));
}

void PackedBatch::validate(int64_t vocab, int64_t max_position) const {
    const int64_t T = num_tokens();
    SKV_CHECK(positions.size() == tokens.size(), "packed batch: {} positions for {} tokens", positions.size(), T);
    SKV_CHECK(row_weights.empty() || int64_t(row_weights.size()) == T, "packed batch: {} row weights for {} tokens",
              row_weights.size(), T);
    SKV_CHECK(!cu_seqlens.empty() && cu_seqlens.front() == 0 && cu_seqlens.back() == T,
              "packed batch: segment boundaries must run from 0 to {} tokens", T);
    for (size_t s = 0; s + 1 < cu_seqlens.size(); ++s) {
        SKV_CHECK(cu_seqlens[s + 1] >= cu_seqlens[s], "packed batch: segment boundaries decrease at segment {}", s);
        for (int32_t r = cu_seqlens[s]; r < cu_seqlens[s + 1]; ++r) {
            SKV_CHECK(positions[size_t(r)] == r - cu_seqlens[s], "packed batch: row {} has position {}, expected {}", r,
                      positions[size_t(r)], r - cu_seqlens[s]);
            SKV_CHECK(positions[size_t(r)] < max_position, "packed batch: position {} exceeds the model's {} positions",
                      positions[size_t(r)], max_position);
        }
    }
    for (int64_t r = 0; r < T; ++r)
        SKV_CHECK(tokens[size_t(r)] >= 0 && tokens[size_t(r)] < vocab, "packed batch: token id {} is outside the "
                  "vocabulary (0..{})", tokens[size_t(r)], vocab - 1);
    for (float w : row_weights) SKV_CHECK(std::isfinite(w) && w >= 0.0f, "packed batch: row weight {} is invalid", w);
}

int64_t TrainableTensor::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

// ---- workspace --------------------------------------------------------------------------------------------

struct DistillModel::Workspace {
    DeviceBuffer tokens, positions, cu_seqlens, row_w, row_w_mse, row_loss, row_loss_mse, unused;
    DeviceBuffer res, delta, normed, qkv, attn, lse, gate_up, mlp;  // front / teacher scratch (also student)
    DeviceBuffer h_L, t_final, t_last_in;
    DeviceBuffer s_res, kv, s_final;
    DeviceBuffer hin, amid, q, s_attn, s_lse, s_gate_up;  // saved, [later] slices
    DeviceBuffer d_res, d_res_act, d_normed, d_mlp, d_gate_up, d_attn, dq, d_kv, mse_grad;
    DeviceBuffer t_logits, s_logits, d_logits, d_logits_act;
};

size_t DistillModel::workspace_bytes(const ModelConfig& config, DType act_dtype, int64_t tokens, int64_t logits_chunk,
                                     bool hidden_mse) {
    const int64_t C = std::min(tokens, logits_chunk > 0 ? logits_chunk : default_logits_chunk(config));
    return WorkspacePlan(config, size_t(dtype_row_bytes(act_dtype, 1)), tokens, C, hidden_mse).total();
}

int64_t DistillModel::default_logits_chunk(const ModelConfig& config) {
    return std::max<int64_t>(16, (int64_t(32) << 20) / std::max<int64_t>(config.vocab, 1));
}

void DistillModel::reserve(int64_t T) {
    if (T <= capacity_) return;
    const ModelConfig& c = config_;
    const int64_t C = std::min(T, logits_chunk_);
    const WorkspacePlan p(c, act_bytes_, T, C, options_.hidden_mse);
    const size_t L = size_t(later_);
    ws_.reset();
    auto ws = std::make_unique<Workspace>();
    try {
        Backend& b = backend_;
        ws->tokens = DeviceBuffer(b, p.ints_T);
        ws->positions = DeviceBuffer(b, p.ints_T);
        ws->cu_seqlens = DeviceBuffer(b, p.ints_S);
        ws->row_w = DeviceBuffer(b, p.f32_T);
        ws->row_w_mse = DeviceBuffer(b, p.f32_T);
        ws->row_loss = DeviceBuffer(b, p.f32_T);
        ws->row_loss_mse = DeviceBuffer(b, p.f32_T);
        ws->res = DeviceBuffer(b, p.f32_TH);
        ws->delta = DeviceBuffer(b, p.act_TH);
        ws->normed = DeviceBuffer(b, p.act_TH);
        ws->qkv = DeviceBuffer(b, p.act_Tqkv);
        ws->attn = DeviceBuffer(b, p.act_Tqd);
        ws->lse = DeviceBuffer(b, p.f32_Tnh);
        ws->gate_up = DeviceBuffer(b, p.act_T2F);
        ws->mlp = DeviceBuffer(b, p.act_TF);
        ws->h_L = DeviceBuffer(b, p.f32_TH);
        ws->t_final = DeviceBuffer(b, p.act_TH);
        if (options_.hidden_mse) ws->t_last_in = DeviceBuffer(b, p.f32_TH);
        ws->s_res = DeviceBuffer(b, p.f32_TH);
        ws->kv = DeviceBuffer(b, p.act_Tkv);
        ws->s_final = DeviceBuffer(b, p.act_TH);
        ws->hin = DeviceBuffer(b, L * p.f32_TH);
        ws->amid = DeviceBuffer(b, L * p.f32_TH);
        ws->q = DeviceBuffer(b, L * p.act_Tqd);
        ws->s_attn = DeviceBuffer(b, L * p.act_Tqd);
        ws->s_lse = DeviceBuffer(b, L * p.f32_Tnh);
        ws->s_gate_up = DeviceBuffer(b, L * p.act_T2F);
        ws->d_res = DeviceBuffer(b, p.f32_TH);
        if (!p.act_is_f32) ws->d_res_act = DeviceBuffer(b, p.act_TH);
        ws->d_normed = DeviceBuffer(b, p.act_TH);
        ws->d_mlp = DeviceBuffer(b, p.act_TF);
        ws->d_gate_up = DeviceBuffer(b, p.act_T2F);
        ws->d_attn = DeviceBuffer(b, p.act_Tqd);
        ws->dq = DeviceBuffer(b, p.act_Tqd);
        ws->d_kv = DeviceBuffer(b, p.act_Tkv);
        if (options_.hidden_mse) ws->mse_grad = DeviceBuffer(b, p.f32_TH);
        ws->t_logits = DeviceBuffer(b, p.f32_CV);
        ws->s_logits = DeviceBuffer(b, p.f32_CV);
        ws->d_logits = DeviceBuffer(b, p.f32_CV);
        if (!p.act_is_f32) ws->d_logits_act = DeviceBuffer(b, p.act_CV);
    } catch (const Error& e) {
        SKV_THROW("out of memory for a distillation micro-batch of {} tokens ({:.2f} GiB of workspace on {}): {}; use "
                  "a smaller --batch-size or --seq-len", T, double(p.total()) / double(1ull << 30), backend_.name(),
                  e.what());
    }
    ws_ = std::move(ws);
    capacity_ = T;
}

// ---- construction -----------------------------------------------------------------------------------------

DistillModel::DistillModel(const ModelSource& source, Backend& backend, const DistillModelOptions& options)
    : config_(source.config()), backend_(backend), train_(training_ops(backend)), options_(options) {
    const ModelConfig& c = config_;
    SKV_CHECK(c.is_swiftkv(), "{} is not a SwiftKV student (num_key_value_layers = num_hidden_layers = {}); make one "
              "with `swiftkv convert --swiftkv-layers 50% ...` first", source.path(), c.n_layers);
    // The teacher is the same weights with SwiftKV off: the original q/k/v_proj of every later layer.
    for (int64_t j = c.num_kv_layers; j < c.n_layers; ++j) {
        for (const char* which : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}) {
            SKV_CHECK(source.find(layer_name(j, which)) != nullptr,
                      "{} has no teacher weights: '{}' is missing. Distillation needs the original q/k/v_proj of the "
                      "later layers next to the SwiftKV ones (what `swiftkv convert` writes)", source.path(),
                      layer_name(j, which));
        }
    }
    init(&source, 0);
}

DistillModel::DistillModel(const ModelConfig& config, Backend& backend, const DistillModelOptions& options, uint64_t seed)
    : config_(config), backend_(backend), train_(training_ops(backend)), options_(options) {
    SKV_CHECK(config.is_swiftkv(), "a random-weight distillation model needs a SwiftKV cut (num_key_value_layers < {})",
              config.n_layers);
    init(nullptr, seed);
}

void DistillModel::init(const ModelSource* source, uint64_t seed) {
    const DistillModelOptions& options = options_;
    Backend& backend = backend_;
    const ModelConfig& c = config_;
    SKV_CHECK(options.weight_dtype == DType::F32 || options.weight_dtype == DType::BF16,
              "distillation weights must be f32 or bf16, not {}", dtype_name(options.weight_dtype));
    SKV_CHECK(options.max_tokens > 0, "micro-batch capacity must be positive, got {}", options.max_tokens);
    act_dtype_ = backend.act_dtype();
    act_bytes_ = size_t(dtype_row_bytes(act_dtype_, 1));
    compute_dtype_ = options.weight_dtype;
    later_ = c.n_layers - c.num_kv_layers;
    groups_ = later_ / c.kv_group_size;
    logits_chunk_ = options.logits_chunk > 0 ? options.logits_chunk : default_logits_chunk(c);

    LoadOptions lo;
    lo.weight_dtype = options.weight_dtype;
    lo.swiftkv = false;  // the teacher
    teacher_ = source ? std::make_unique<LlamaModel>(*source, backend, lo)
                      : std::make_unique<LlamaModel>(c, backend, lo, seed);
    // Trainable tensors: norm_swiftkv, the fused K/V block, q_proj_swiftkv of every later layer.
    const int64_t H = c.hidden, kvd = c.kv_dim(), qd = c.q_dim(), L = c.num_kv_layers;
    int64_t off = 0;
    auto place = [&](int64_t n) {
        const int64_t at = off;
        off += round_up(n, 16);  // 64-byte aligned tensors
        return at;
    };
    off_norm_ = place(H);
    trainables_.push_back({"model.norm_swiftkv.weight", {H}, off_norm_, -1});
    off_kv_ = place(2 * groups_ * kvd * H);
    for (int64_t g = 0; g < groups_; ++g) {
        const int64_t leader = L + g * c.kv_group_size;
        trainables_.push_back({layer_name(leader, "self_attn.k_proj_swiftkv.weight"), {kvd, H},
                               off_kv_ + g * kvd * H, g * kvd});
    }
    for (int64_t g = 0; g < groups_; ++g) {
        const int64_t leader = L + g * c.kv_group_size;
        trainables_.push_back({layer_name(leader, "self_attn.v_proj_swiftkv.weight"), {kvd, H},
                               off_kv_ + (groups_ + g) * kvd * H, (groups_ + g) * kvd});
    }
    for (int64_t j = L; j < c.n_layers; ++j) {
        off_q_.push_back(place(qd * H));
        trainables_.push_back({layer_name(j, "self_attn.q_proj_swiftkv.weight"), {qd, H}, off_q_.back(), -1});
    }
    num_params_ = off;

    // Initial values from the student, or random ones (uniform with std 0.02, norm 1) for benchmarks.
    std::vector<float> host(size_t(num_params_), 0.0f);
    for (const TrainableTensor& t : trainables_) {
        if (source == nullptr) {
            float* dst = host.data() + t.offset;
            if (t.shape.size() == 1) {
                std::fill(dst, dst + t.numel(), 1.0f);
                continue;
            }
            const float a = 0.02f * 1.7320508f;  // uniform in [-a, a] has std 0.02
            for (int64_t i = 0; i < t.numel(); ++i) dst[i] = a * (2.0f * noise_uniform(seed, uint64_t(t.offset), uint64_t(i)) - 1.0f);
            continue;
        }
        const SourceTensor& st = source->require(t.name, t.shape);
        const int64_t rows = t.shape.size() == 1 ? 1 : t.shape[0];
        read_source_rows_f32(st, 0, rows, c.head_dim, host.data() + t.offset);
    }
    params_ = DeviceBuffer(backend, size_t(num_params_) * 4);
    grads_ = DeviceBuffer(backend, size_t(num_params_) * 4);
    if (compute_dtype_ != DType::F32) compute_ = DeviceBuffer(backend, size_t(num_params_) * size_t(dtype_row_bytes(compute_dtype_, 1)));
    upload_params(host);
    zero_grads();
    reserve(options.max_tokens);
}

DistillModel::~DistillModel() = default;

void DistillModel::zero_grads() { backend_.fill_zero(grads_.get(), size_t(num_params_) * 4); }

void DistillModel::params_updated() {
    if (compute_dtype_ != DType::F32) train_.convert_from_f32(params_.as<float>(), compute_.get(), num_params_, compute_dtype_);
}

std::vector<float> DistillModel::download_params() const {
    std::vector<float> host(static_cast<size_t>(num_params_));
    backend_.download(host.data(), params_.get(), host.size() * 4);
    return host;
}

void DistillModel::upload_params(const std::vector<float>& host) {
    SKV_CHECK(int64_t(host.size()) == num_params_, "upload_params: {} values for {} parameters", host.size(), num_params_);
    backend_.upload(params_.get(), host.data(), host.size() * 4);
    params_updated();
}

std::vector<float> DistillModel::download_grads() const {
    std::vector<float> host(static_cast<size_t>(num_params_));
    backend_.download(host.data(), grads_.get(), host.size() * 4);
    return host;
}

// ---- forward ----------------------------------------------------------------------------------------------

void DistillModel::upload_batch(const PackedBatch& batch) {
    const int64_t T = batch.num_tokens();
    batch.validate(config_.vocab, config_.max_position);
    reserve(T);
    Workspace& w = *ws_;
    backend_.upload(w.tokens.get(), batch.tokens.data(), size_t(T) * 4);
    backend_.upload(w.positions.get(), batch.positions.data(), size_t(T) * 4);
    backend_.upload(w.cu_seqlens.get(), batch.cu_seqlens.data(), batch.cu_seqlens.size() * 4);
    host_weights_ = batch.row_weights;
    host_weights_.resize(size_t(T), 0.0f);
    backend_.upload(w.row_w.get(), host_weights_.data(), size_t(T) * 4);
    seqs_.num_seqs = int64_t(batch.cu_seqlens.size()) - 1;
    seqs_.num_rows = T;
    seqs_.cu_seqlens = w.cu_seqlens.as<int32_t>();
    seqs_.max_seq_len = 0;
    for (size_t s = 0; s + 1 < batch.cu_seqlens.size(); ++s)
        seqs_.max_seq_len = std::max<int64_t>(seqs_.max_seq_len, batch.cu_seqlens[s + 1] - batch.cu_seqlens[s]);
}

const void* DistillModel::as_act(const float* x, int64_t n, void* scratch) {
    if (act_dtype_ == DType::F32) return x;
    train_.convert_from_f32(x, scratch, n, act_dtype_);
    return scratch;
}

// A frozen layer over T rows (front and teacher), through the one decoder layer: each layer attends
// causally over its own K/V within each packed sequence. The residual entering layer L (h_L) and, for
// the MSE term, the one entering the last layer are copied out.
void DistillModel::run_frozen_layer(int64_t l, int64_t T, bool first) {
    const ModelConfig& c = config_;
    Workspace& w = *ws_;
    DecoderLayerIO io;
    io.rows = T;
    io.residual = w.res.as<float>();
    io.delta = w.delta.get();
    io.first = first;
    io.positions = w.positions.as<int32_t>();
    io.rope_inv_freq = teacher_->rope_inv_freq();
    io.normed = w.normed.get();
    io.qkv = w.qkv.get();
    io.attn = w.attn.get();
    io.gate_up = w.gate_up.get();
    io.mlp = w.mlp.get();
    if (l == c.num_kv_layers) io.save_input = w.h_L.as<float>();
    else if (l == c.n_layers - 1 && options_.hidden_mse) io.save_input = w.t_last_in.as<float>();
    const float scale = 1.0f / std::sqrt(float(c.head_dim));
    decoder_layer_forward(backend_, c, teacher_->layer_weights(l), io, [&](char* qkv, int64_t stride, void* out) {
        train_.attention_forward_train(qkv, stride, qkv + c.q_dim() * act_bytes_,
                                         qkv + (c.q_dim() + c.kv_dim()) * act_bytes_, stride, seqs_, c.n_heads,
                                         c.n_kv_heads, c.head_dim, scale, out, w.lse.as<float>());
    });
    // With one later layer (L = N-1) the stream entering it is h_L itself.
    if (l == c.num_kv_layers && l == c.n_layers - 1 && options_.hidden_mse) {
        backend_.copy(w.t_last_in.get(), w.h_L.get(), size_t(T * c.hidden) * 4);
    }
}

void DistillModel::run_front_and_teacher(int64_t T) {
    const ModelConfig& c = config_;
    Workspace& w = *ws_;
    backend_.embedding(teacher_->embedding_weights(), w.tokens.as<int32_t>(), T, w.res.as<float>());
    for (int64_t l = 0; l < c.n_layers; ++l) run_frozen_layer(l, T, l == 0);
    backend_.add_rmsnorm(w.res.as<float>(), w.delta.get(), teacher_->final_norm_weights(), w.t_final.get(), T, c.hidden,
                         float(c.rms_eps));
}

// The student: SingleInputKV from h_L, then the later layers through the one decoder layer with the
// trainable q_proj_swiftkv, each attending over its group's shared K/V; every activation the
// backward needs is kept per layer (hin, amid, q, s_attn, s_lse, s_gate_up).
void DistillModel::run_student_forward(int64_t T) {
    const ModelConfig& c = config_;
    Workspace& w = *ws_;
    const int64_t H = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), L = c.num_kv_layers;
    const float scale = 1.0f / std::sqrt(float(c.head_dim));
    const int64_t kv_stride = 2 * groups_ * kvd;
    const char* compute = compute_dtype_ == DType::F32 ? params_.as<char>() : compute_.as<char>();
    const size_t cbytes = size_t(dtype_row_bytes(compute_dtype_, 1));
    const float* inv_freq = teacher_->rope_inv_freq();
    const int32_t* pos = w.positions.as<int32_t>();
    float* res = w.s_res.as<float>();
    char* kv = w.kv.as<char>();

    backend_.copy(res, w.h_L.get(), size_t(T * H) * 4);
    const WeightMatrix w_kv{compute_dtype_, 2 * groups_ * kvd, H, compute + size_t(off_kv_) * cbytes};
    single_input_kv(backend_, c, params_.as<float>() + off_norm_, w_kv, T, res, nullptr, pos, inv_freq, w.normed.get(),
                    kv);

    for (int64_t j = L; j < c.n_layers; ++j) {
        const int64_t i = j - L, g = i / c.kv_group_size;
        const WeightMatrix w_q{compute_dtype_, qd, H, compute + size_t(off_q_[size_t(i)]) * cbytes};
        DecoderLayerIO io;
        io.rows = T;
        io.residual = res;
        io.delta = w.delta.get();
        io.first = j == L;
        io.positions = pos;
        io.rope_inv_freq = inv_freq;
        io.q_weight = &w_q;
        io.normed = w.normed.get();
        io.qkv = w.q.as<char>() + size_t(i * T * qd) * act_bytes_;
        io.attn = w.s_attn.as<char>() + size_t(i * T * qd) * act_bytes_;
        io.gate_up = w.s_gate_up.as<char>() + size_t(i * T * 2 * c.ffn) * act_bytes_;
        io.mlp = w.mlp.get();
        io.save_input = w.hin.as<float>() + i * T * H;
        io.save_mid = w.amid.as<float>() + i * T * H;
        float* lse = w.s_lse.as<float>() + i * T * c.n_heads;
        decoder_layer_forward(backend_, c, teacher_->layer_weights(j), io, [&](char* q, int64_t stride, void* out) {
            train_.attention_forward_train(q, stride, kv + size_t(g * kvd) * act_bytes_,
                                             kv + size_t((groups_ + g) * kvd) * act_bytes_, kv_stride, seqs_, c.n_heads,
                                             c.n_kv_heads, c.head_dim, scale, out, lse);
        });
    }
    // res becomes h_N (kept for the final norm's backward).
    backend_.add_rmsnorm(res, w.delta.get(), teacher_->final_norm_weights(), w.s_final.get(), T, H, float(c.rms_eps));
}

// ---- loss and backward ------------------------------------------------------------------------------------

LossParts DistillModel::loss_and_head_backward(int64_t T, const LossOptions& loss, bool backward) {
    const ModelConfig& c = config_;
    Workspace& w = *ws_;
    const int64_t H = c.hidden, V = c.vocab;
    const WeightMatrix& head = teacher_->lm_head_weights();
    for (int64_t c0 = 0; c0 < T; c0 += logits_chunk_) {
        const int64_t n = std::min(logits_chunk_, T - c0);
        backend_.matmul(w.t_final.as<char>() + size_t(c0 * H) * act_bytes_, n, head, w.t_logits.get(), DType::F32);
        backend_.matmul(w.s_final.as<char>() + size_t(c0 * H) * act_bytes_, n, head, w.s_logits.get(), DType::F32);
        train_.kl_div_loss(w.t_logits.as<float>(), w.s_logits.as<float>(), w.row_w.as<float>() + c0, n, V,
                             loss.temperature, w.row_loss.as<float>() + c0, backward ? w.d_logits.as<float>() : nullptr);
        if (backward) {
            const void* dl = as_act(w.d_logits.as<float>(), n * V, w.d_logits_act.get());
            train_.linear_backward_input(dl, n, head, w.d_normed.as<char>() + size_t(c0 * H) * act_bytes_, false);
        }
    }
    LossParts parts;
    std::vector<float> row_loss(static_cast<size_t>(T));
    backend_.download(row_loss.data(), w.row_loss.get(), size_t(T) * 4);
    for (int64_t r = 0; r < T; ++r) parts.kl += double(host_weights_[size_t(r)]) * double(row_loss[size_t(r)]);
    if (loss.hidden_mse_weight > 0.0f) {
        std::vector<float> wm(static_cast<size_t>(T));
        for (int64_t r = 0; r < T; ++r) wm[size_t(r)] = host_weights_[size_t(r)] * loss.hidden_mse_weight;
        backend_.upload(w.row_w_mse.get(), wm.data(), size_t(T) * 4);
        const float* student_last_in = w.hin.as<float>() + (later_ - 1) * T * H;
        train_.mse_loss(student_last_in, w.t_last_in.as<float>(), w.row_w_mse.as<float>(), T, H,
                          w.row_loss_mse.as<float>(), backward ? w.mse_grad.as<float>() : nullptr);
        backend_.download(row_loss.data(), w.row_loss_mse.get(), size_t(T) * 4);
        for (int64_t r = 0; r < T; ++r) parts.mse += double(host_weights_[size_t(r)]) * double(row_loss[size_t(r)]);
    }
    parts.loss = parts.kl + double(loss.hidden_mse_weight) * parts.mse;
    return parts;
}

void DistillModel::run_student_backward(int64_t T, bool with_mse) {
    const ModelConfig& c = config_;
    Workspace& w = *ws_;
    const int64_t H = c.hidden, qd = c.q_dim(), kvd = c.kv_dim(), F = c.ffn, L = c.num_kv_layers;
    const float eps = float(c.rms_eps);
    const float scale = 1.0f / std::sqrt(float(c.head_dim));
    const int64_t kv_stride = 2 * groups_ * kvd;
    const char* compute = compute_dtype_ == DType::F32 ? params_.as<char>() : compute_.as<char>();
    const size_t cbytes = size_t(dtype_row_bytes(compute_dtype_, 1));
    const float* inv_freq = teacher_->rope_inv_freq();
    const int32_t* pos = w.positions.as<int32_t>();
    float* d_res = w.d_res.as<float>();
    const char* kv = w.kv.as<char>();
    char* d_kv = w.d_kv.as<char>();
    float* grads = grads_.as<float>();

    // Final norm: d h_N from d(normed h_N), which the LM head's backward left in d_normed.
    train_.rmsnorm_backward(w.s_res.as<float>(), teacher_->final_norm_weights(), w.d_normed.get(), d_res, nullptr, T,
                              H, eps, false);
    backend_.fill_zero(d_kv, size_t(T * kv_stride) * act_bytes_);
    for (int64_t j = c.n_layers - 1; j >= L; --j) {
        const int64_t i = j - L, g = i / c.kv_group_size;
        const auto& lw = teacher_->layer_weights(j);
        const float* hin = w.hin.as<float>() + i * T * H;
        const float* amid = w.amid.as<float>() + i * T * H;
        // MLP: out = amid + down(silu_mul(gate_up(ffn_norm(amid)))).
        const void* dy = as_act(d_res, T * H, w.d_res_act.get());
        train_.linear_backward_input(dy, T, lw.down, w.d_mlp.get(), false);
        const char* gate_up = w.s_gate_up.as<char>() + size_t(i * T * 2 * F) * act_bytes_;
        train_.silu_mul_backward(gate_up, w.d_mlp.get(), w.d_gate_up.get(), T, F);
        train_.linear_backward_input(w.d_gate_up.get(), T, lw.gate_up, w.d_normed.get(), false);
        train_.rmsnorm_backward(amid, lw.ffn_norm, w.d_normed.get(), d_res, nullptr, T, H, eps, true);
        // Attention: amid = hin + o(attention(rope(q_proj_swiftkv(attn_norm(hin))), K_g, V_g)).
        dy = as_act(d_res, T * H, w.d_res_act.get());
        train_.linear_backward_input(dy, T, lw.o, w.d_attn.get(), false);
        const char* q = w.q.as<char>() + size_t(i * T * qd) * act_bytes_;
        const char* attn = w.s_attn.as<char>() + size_t(i * T * qd) * act_bytes_;
        backend_.fill_zero(w.dq.get(), size_t(T * qd) * act_bytes_);
        train_.attention_backward(q, qd, kv + size_t(g * kvd) * act_bytes_, kv + size_t((groups_ + g) * kvd) * act_bytes_,
                                    kv_stride, attn, w.s_lse.as<float>() + i * T * c.n_heads, w.d_attn.get(), seqs_,
                                    c.n_heads, c.n_kv_heads, c.head_dim, scale, w.dq.get(),
                                    d_kv + size_t(g * kvd) * act_bytes_, d_kv + size_t((groups_ + g) * kvd) * act_bytes_,
                                    true);
        train_.rope_backward(w.dq.get(), T, qd, c.n_heads, c.head_dim, pos, inv_freq);
        backend_.rmsnorm(hin, lw.attn_norm, w.normed.get(), T, H, eps);  // q_proj's input, recomputed
        train_.linear_backward_weight(w.dq.get(), w.normed.get(), T, qd, H, grads + off_q_[size_t(i)]);
        if (j > L) {  // h_L itself does not depend on anything trainable
            const WeightMatrix w_q{compute_dtype_, qd, H, compute + size_t(off_q_[size_t(i)]) * cbytes};
            train_.linear_backward_input(w.dq.get(), T, w_q, w.d_normed.get(), false);
            train_.rmsnorm_backward(hin, lw.attn_norm, w.d_normed.get(), d_res, nullptr, T, H, eps, true);
            if (with_mse && j == c.n_layers - 1) train_.add_f32(d_res, w.mse_grad.as<float>(), T * H, 1.0f);
        }
    }
    // K/V of every group: RoPE, the fused projection, norm_swiftkv.
    train_.rope_backward(d_kv, T, kv_stride, groups_ * c.n_kv_heads, c.head_dim, pos, inv_freq);
    const float* h_L = w.h_L.as<float>();
    const float* norm_w = params_.as<float>() + off_norm_;
    backend_.rmsnorm(h_L, norm_w, w.normed.get(), T, H, eps);
    train_.linear_backward_weight(d_kv, w.normed.get(), T, kv_stride, H, grads + off_kv_);
    const WeightMatrix w_kv{compute_dtype_, kv_stride, H, compute + size_t(off_kv_) * cbytes};
    train_.linear_backward_input(d_kv, T, w_kv, w.d_normed.get(), false);
    train_.rmsnorm_backward(h_L, norm_w, w.d_normed.get(), d_res, grads + off_norm_, T, H, eps, false);
}

LossParts DistillModel::forward_backward(const PackedBatch& batch, const LossOptions& loss, bool backward) {
    SKV_CHECK(loss.temperature > 0.0f && std::isfinite(loss.temperature), "temperature {} must be positive",
              loss.temperature);
    SKV_CHECK(loss.hidden_mse_weight >= 0.0f, "hidden-state MSE weight {} must be >= 0", loss.hidden_mse_weight);
    SKV_CHECK(loss.hidden_mse_weight == 0.0f || options_.hidden_mse,
              "the hidden-state MSE term needs DistillModelOptions::hidden_mse");
    const int64_t T = batch.num_tokens();
    if (T == 0) return {};
    upload_batch(batch);
    run_front_and_teacher(T);
    run_student_forward(T);
    LossParts parts = loss_and_head_backward(T, loss, backward);
    if (backward) run_student_backward(T, loss.hidden_mse_weight > 0.0f);
    return parts;
}

std::vector<float> DistillModel::logits_of(const PackedBatch& batch, bool student) {
    const int64_t T = batch.num_tokens();
    const int64_t H = config_.hidden, V = config_.vocab;
    std::vector<float> out(static_cast<size_t>(T * V));
    if (T == 0) return out;
    upload_batch(batch);
    run_front_and_teacher(T);
    if (student) run_student_forward(T);
    Workspace& w = *ws_;
    const char* fin = student ? w.s_final.as<char>() : w.t_final.as<char>();
    for (int64_t c0 = 0; c0 < T; c0 += logits_chunk_) {
        const int64_t n = std::min(logits_chunk_, T - c0);
        backend_.matmul(fin + size_t(c0 * H) * act_bytes_, n, teacher_->lm_head_weights(), w.t_logits.get(), DType::F32);
        backend_.download(out.data() + c0 * V, w.t_logits.get(), size_t(n * V) * 4);
    }
    return out;
}

std::vector<float> DistillModel::student_logits(const PackedBatch& batch) { return logits_of(batch, true); }
std::vector<float> DistillModel::teacher_logits(const PackedBatch& batch) { return logits_of(batch, false); }

double DistillModel::step_flops(const PackedBatch& batch, bool backward) const {
    const ModelConfig& c = config_;
    const double T = double(batch.num_tokens());
    const double H = double(c.hidden), qd = double(c.q_dim()), kvd = double(c.kv_dim()), F = double(c.ffn),
                 V = double(c.vocab);
    const double N = double(c.n_layers), later = double(later_);
    double pairs = 0;  // causal (query, key) pairs summed over segments
    for (size_t s = 0; s + 1 < batch.cu_seqlens.size(); ++s) {
        const double n = double(batch.cu_seqlens[s + 1] - batch.cu_seqlens[s]);
        pairs += n * (n + 1) / 2;
    }
    const double attn_fwd = 4.0 * pairs * double(c.head_dim) * double(c.n_heads);  // QK^T and PV
    const double mlp = 2.0 * H * 2.0 * F + 2.0 * F * H, o = 2.0 * qd * H;
    const double full_layer = T * (2.0 * H * (qd + 2.0 * kvd) + o + mlp) + attn_fwd;
    double flops = N * full_layer + 2.0 * T * H * V;                           // front + teacher, teacher head
    flops += T * 2.0 * H * 2.0 * double(groups_) * kvd;                       // student K/V
    flops += later * (T * (2.0 * H * qd + o + mlp) + attn_fwd) + 2.0 * T * H * V;  // student layers, head
    if (backward) {
        flops += 2.0 * T * H * V;                                             // head dX
        flops += later * (T * (mlp + o) + 2.5 * attn_fwd);                    // frozen dX, attention backward
        flops += later * T * 2.0 * H * qd + (later - 1) * T * 2.0 * H * qd;   // q_proj dW, dX (not at layer L)
        flops += 2.0 * T * 2.0 * H * 2.0 * double(groups_) * kvd;             // K/V dW and dX
    }
    return flops;
}

}  // namespace swiftkv
