#include "runner/model_runner.h"

#include <algorithm>

#include "core/error.h"

namespace swiftkv {

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

// Grows a device buffer to hold `bytes`; returns true if it was reallocated.
bool fit(Backend& backend, DeviceBuffer& buf, size_t bytes) {
    bytes = std::max<size_t>(bytes, 4);
    if (buf.bytes() >= bytes) return false;
    buf = DeviceBuffer(backend, bytes * 2);
    return true;
}

}  // namespace

ModelRunner::ModelRunner(LlamaModel& model, const RunnerOptions& options)
    : model_(model), backend_(model.backend()), use_graphs_(options.graphs && model.backend().supports_graphs()) {}

ModelRunner::~ModelRunner() { drop_graphs(); }

void ModelRunner::drop_graphs() {
    if (!graphs_.empty()) backend_.synchronize();
    graphs_.clear();
}

// Sizes the index arrays for steps of `rows` token rows (survivors included), `seqs` sequences (graph
// padding included) and `table_entries` block-table entries; growing drops recorded graphs.
void ModelRunner::ensure_index_buffers(int64_t rows, int64_t seqs, int64_t table_entries) {
    const size_t n = size_t(std::max<int64_t>(rows, 16)), s = size_t(std::max<int64_t>(seqs, 16));
    bool grown = false;
    for (DeviceBuffer* b :
         {&tokens_dev_, &positions_dev_, &slots_dev_, &logits_idx_dev_, &surv_positions_dev_, &sampled_dev_}) {
        grown |= fit(backend_, *b, n * 4);
    }
    grown |= fit(backend_, seq_lens_dev_, s * 4);
    grown |= fit(backend_, query_start_dev_, (s + 1) * 4);
    grown |= fit(backend_, surv_query_start_dev_, (s + 1) * 4);
    grown |= fit(backend_, block_tables_dev_, size_t(std::max<int64_t>(table_entries, 1)) * 4);
    grown |= fit(backend_, sample_params_dev_, n * sizeof(SampleParams));
    if (grown) drop_graphs();
}

void ModelRunner::reserve(int64_t max_tokens, int64_t max_seqs, int64_t max_blocks_per_seq) {
    SKV_CHECK(max_tokens > 0 && max_seqs > 0 && max_blocks_per_seq > 0, "reserve: bounds must be positive");
    reserved_blocks_ = std::max(reserved_blocks_, max_blocks_per_seq);
    const int64_t padded_seqs = std::min(graph_bucket(max_seqs), std::max(kMaxGraphBatch, max_seqs));
    const int64_t rows = std::max(max_tokens, padded_seqs);
    if (model_.reserve_workspace(rows, std::max(max_seqs, padded_seqs))) drop_graphs();
    ensure_index_buffers(rows, padded_seqs, padded_seqs * reserved_blocks_);
}

// Host-side planning of one step: validation, cache slots, the survivors' layout, whether the step
// can run as a recorded graph, padding for it, and the uploads of every index array.
void ModelRunner::prepare(const ForwardBatch& batch, const KvCacheView& kv, Step& step) {
    const ModelConfig& c = model_.config();
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

    // The survivors of each sequence: they must be a suffix of its rows.
    std::vector<int32_t> surv_count(size_t(S), 0);
    {
        int64_t s = 0;
        for (int64_t k = 0; k < K; ++k) {
            const int32_t row = batch.logits_indices[size_t(k)];
            while (row >= batch.query_start[size_t(s) + 1]) ++s;
            surv_count[size_t(s)]++;
        }
    }
    int64_t max_len = 0, max_q = 0, max_surv = 0;
    bool one_each = K == S;
    for (int64_t s = 0; s < S; ++s) {
        max_len = std::max<int64_t>(max_len, batch.seq_lens[size_t(s)]);
        max_q = std::max<int64_t>(max_q, batch.query_start[size_t(s) + 1] - batch.query_start[size_t(s)]);
        max_surv = std::max<int64_t>(max_surv, surv_count[size_t(s)]);
        one_each = one_each && surv_count[size_t(s)] == 1;
    }

    // Graphs: decode steps whole; SwiftKV prefill steps for the survivors' later layers.
    step.mode = GraphMode::kNone;
    if (use_graphs_ && S > 0 && S <= kMaxGraphBatch && reserved_blocks_ >= batch.max_blocks_per_seq && one_each) {
        if (max_q == 1 && T == S) {
            step.mode = GraphMode::kWholeStep;
        } else if (c.is_swiftkv()) {
            step.mode = GraphMode::kSurvivors;
        }
    }
    const bool graphed = step.mode != GraphMode::kNone;
    const bool whole = step.mode == GraphMode::kWholeStep;
    const int64_t B = graphed ? graph_bucket(S) : S;
    const int64_t stride = graphed ? reserved_blocks_ : batch.max_blocks_per_seq;
    const int64_t bound = graphed ? context_bound(max_len, stride * bs) : max_len;
    const int64_t pad = B - S;

    h_tokens_.assign(batch.tokens.begin(), batch.tokens.end());
    h_positions_.assign(batch.positions.begin(), batch.positions.end());
    h_slots_.resize(size_t(T));
    for (int64_t s = 0; s < S; ++s) {
        for (int32_t i = batch.query_start[size_t(s)]; i < batch.query_start[size_t(s) + 1]; ++i) {
            const int32_t pos = batch.positions[size_t(i)];
            h_slots_[size_t(i)] =
                batch.block_tables[size_t(s * batch.max_blocks_per_seq + pos / bs)] * int32_t(bs) + pos % int32_t(bs);
        }
    }
    h_query_start_.assign(batch.query_start.begin(), batch.query_start.end());
    h_seq_lens_.assign(batch.seq_lens.begin(), batch.seq_lens.end());
    h_logits_idx_.assign(batch.logits_indices.begin(), batch.logits_indices.end());
    h_surv_query_start_.assign(size_t(S) + 1, 0);
    for (int64_t s = 0; s < S; ++s) {
        h_surv_query_start_[size_t(s) + 1] = h_surv_query_start_[size_t(s)] + surv_count[size_t(s)];
    }
    h_surv_positions_.resize(size_t(K));
    for (int64_t k = 0; k < K; ++k) {
        h_surv_positions_[size_t(k)] = batch.positions[size_t(batch.logits_indices[size_t(k)])];
    }
    for (int64_t s = 0; s < S; ++s) {
        const int32_t n = h_surv_query_start_[size_t(s) + 1] - h_surv_query_start_[size_t(s)];
        if (n > 0) {
            SKV_CHECK(batch.logits_indices[size_t(h_surv_query_start_[size_t(s) + 1] - 1)] ==
                              batch.query_start[size_t(s) + 1] - 1 &&
                          batch.logits_indices[size_t(h_surv_query_start_[size_t(s)])] ==
                              batch.query_start[size_t(s) + 1] - n,
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

    const int64_t rows = whole ? B : T;
    const int64_t survivors = graphed ? B : K;
    if (model_.reserve_workspace(rows, survivors)) drop_graphs();
    ensure_index_buffers(std::max(rows, survivors), B, int64_t(h_block_tables_.size()));
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

    StepInputs& in = step.in;
    in.num_tokens = rows;
    in.num_survivors = survivors;
    in.tokens = tokens_dev_.as<int32_t>();
    in.positions = positions_dev_.as<int32_t>();
    in.slots = slots_dev_.as<int32_t>();
    in.survivor_rows = logits_idx_dev_.as<int32_t>();
    in.survivor_positions = surv_positions_dev_.as<int32_t>();
    AttentionBatch& ab = in.all;
    ab.num_seqs = whole ? B : S;
    ab.num_rows = rows;
    ab.query_start = query_start_dev_.as<int32_t>();
    ab.seq_lens = seq_lens_dev_.as<int32_t>();
    ab.block_tables = block_tables_dev_.as<int32_t>();
    ab.max_blocks_per_seq = stride;
    ab.max_seq_len = bound;
    ab.max_query_len = whole ? 1 : max_q;
    in.survivors = ab;
    in.survivors.num_seqs = B;
    in.survivors.num_rows = survivors;
    in.survivors.query_start = surv_query_start_dev_.as<int32_t>();
    in.survivors.max_query_len = graphed ? 1 : max_surv;
    step.real_survivors = K;
}

void ModelRunner::run(const Step& step, const KvCacheView& kv) {
    const StepInputs& in = step.in;
    if (step.mode == GraphMode::kNone) {
        model_.forward_front(in, kv);
        model_.forward_back(in, kv);
        return;
    }
    if (step.mode == GraphMode::kSurvivors) model_.forward_front(in, kv);
    const auto key = std::make_tuple(int(step.mode), in.num_survivors, in.all.max_seq_len,
                                     static_cast<const void*>(kv.k_layers[0]));
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
        backend_.replay(*it->second);
        ++graph_replays_;
        return;
    }
    // First time at this shape: run eagerly (sizing every workspace), then record for next time.
    const bool whole = step.mode == GraphMode::kWholeStep;
    if (whole) model_.forward_front(in, kv);
    model_.forward_back(in, kv);
    graphs_[key] = backend_.capture([&] {
        if (whole) model_.forward_front(in, kv);
        model_.forward_back(in, kv);
    });
    ++graphs_recorded_;
}

void ModelRunner::forward(const ForwardBatch& batch, const KvCacheView& kv, std::vector<float>& logits) {
    const int64_t V = model_.config().vocab;
    Step step;
    prepare(batch, kv, step);
    logits.assign(size_t(step.real_survivors * V), 0.0f);
    if (batch.num_tokens() == 0) return;
    run(step, kv);
    if (step.real_survivors > 0) {
        backend_.download(logits.data(), model_.logits(), size_t(step.real_survivors * V) * 4);
    }
}

void ModelRunner::forward_sample(const ForwardBatch& batch, const KvCacheView& kv,
                                 const std::vector<SampleParams>& params, std::vector<int32_t>& tokens) {
    forward_sample_launch(batch, kv, params);
    forward_sample_wait(tokens);
}

void ModelRunner::forward_sample_launch(const ForwardBatch& batch, const KvCacheView& kv,
                                        const std::vector<SampleParams>& params) {
    SKV_CHECK(pending_samples_ < 0, "forward_sample_launch: the previous step was not waited for");
    SKV_CHECK(params.size() == batch.logits_indices.size(), "forward_sample: {} sampling rows for {} logits rows",
              params.size(), batch.logits_indices.size());
    Step step;
    prepare(batch, kv, step);
    const int64_t k = batch.num_tokens() == 0 ? 0 : step.real_survivors;
    // A step of prefill chunks alone samples nothing, but its K/V must still be written.
    if (batch.num_tokens() > 0) run(step, kv);
    if (k > 0) {
        backend_.upload(sample_params_dev_.get(), params.data(), params.size() * sizeof(SampleParams));
        backend_.sample(model_.logits(), k, model_.config().vocab, sample_params_dev_.as<SampleParams>(),
                        sampled_dev_.as<int32_t>());
    }
    pending_samples_ = k;  // set last: a launch that threw leaves nothing pending
}

void ModelRunner::forward_sample_wait(std::vector<int32_t>& tokens) {
    SKV_CHECK(pending_samples_ >= 0, "forward_sample_wait: no step was launched");
    const int64_t k = pending_samples_;
    pending_samples_ = -1;
    tokens.assign(size_t(k), 0);
    if (k > 0) backend_.download(tokens.data(), sampled_dev_.get(), size_t(k) * 4);
}

}  // namespace swiftkv
