#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/stop_filter.h"
#include "io/gguf_reader.h"
#include "model/model_source.h"
#include "tokenizer/gguf_vocab.h"

namespace swiftkv {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One sequence's step: appends `count` tokens starting at `start` of `tokens` to the batch.
void append_sequence(ForwardBatch& batch, const std::vector<int32_t>& tokens, int64_t start, int64_t count,
                     const std::vector<int32_t>& blocks) {
    const int64_t s = batch.num_seqs();
    (void)s;
    for (int64_t i = start; i < start + count; ++i) {
        batch.tokens.push_back(tokens[i]);
        batch.positions.push_back(int32_t(i));
    }
    batch.query_start.push_back(int32_t(batch.tokens.size()));
    batch.seq_lens.push_back(int32_t(start + count));
    for (int32_t b : blocks) batch.block_tables.push_back(b);
    for (int64_t b = int64_t(blocks.size()); b < batch.max_blocks_per_seq; ++b) batch.block_tables.push_back(0);
}

ForwardBatch single_sequence_batch(const std::vector<int32_t>& tokens, int64_t start, int64_t count,
                                   const std::vector<int32_t>& blocks) {
    ForwardBatch batch;
    batch.query_start.push_back(0);
    batch.max_blocks_per_seq = int32_t(blocks.size());
    append_sequence(batch, tokens, start, count, blocks);
    return batch;
}


}  // namespace

OpenModelOptions EngineOptions::open_options() const {
    OpenModelOptions o;
    o.path = model_path;
    o.synthetic = synthetic;
    o.synthetic_swiftkv = synthetic_swiftkv;
    o.weight_dtype = weight_dtype;
    o.swiftkv = swiftkv;
    o.graphs = graphs;
    o.load_tokenizer = load_tokenizer;
    return o;
}

Engine::Engine(const EngineOptions& options) : options_(options) {
    SKV_CHECK(options_.synthetic.empty(), "random-weight (--synthetic) models run with continuous batching only");
    if (options_.threads > 0) ThreadPool::set_global_threads(options_.threads);
    backend_ = make_backend(options_.device, options_.threads);
    model_ = open_model(options_.open_options(), *backend_);
    context_length_ = model_.context_length(options_.context_length);
    SKV_CHECK(options_.prefill_chunk > 0, "prefill chunk must be positive, got {}", options_.prefill_chunk);
    KvCacheSizing kv;
    kv.block_size = options_.block_size;
    kv.kv_cache_tokens = options_.kv_cache_tokens;
    kv.gpu_memory_fraction = options_.gpu_memory_fraction;
    // The workspace, sized once: prefill chunks of up to prefill_chunk tokens, and evaluation batches.
    model_.model->reserve(options_.prefill_chunk, 1, (context_length_ + kv.block_size - 1) / std::max<int64_t>(kv.block_size, 1));
    const int64_t blocks = kv_cache_blocks(config(), *backend_, context_length_, kv);
    kv_cache_ = std::make_unique<PagedKvCache>(*backend_, config(), blocks, options_.block_size);
}

Engine::~Engine() = default;

std::string Engine::apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const {
    return model_.chat.render(messages, add_generation_prompt);
}

namespace {

// log-softmax of logits at `token` and the k largest entries, without modifying logits.
TokenLogprobs token_logprobs(const float* logits, int64_t vocab, int32_t token, int32_t k) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - mx));
    const float lse = mx + float(std::log(sum));
    TokenLogprobs out;
    out.token = token;
    out.logprob = logits[token] - lse;
    if (k > 0) {
        const int64_t kk = std::min<int64_t>(k, vocab);
        std::vector<int32_t> idx(static_cast<size_t>(vocab));
        for (int64_t i = 0; i < vocab; ++i) idx[size_t(i)] = int32_t(i);
        std::partial_sort(idx.begin(), idx.begin() + kk, idx.end(),
                          [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
        for (int64_t i = 0; i < kk; ++i) out.top.emplace_back(idx[size_t(i)], logits[idx[size_t(i)]] - lse);
    }
    return out;
}

}  // namespace

GenerationResult Engine::generate(const GenerationRequest& req, const std::function<bool(std::string_view)>& on_text,
                                  const std::function<void(const TokenLogprobs&)>& on_token) {
    const BpeTokenizer& tok = tokenizer();
    req.sampling.validate();
    SKV_CHECK(!req.prompt.empty(), "the prompt is empty");
    SKV_CHECK(req.max_tokens >= 0, "max_tokens must be >= 0, got {}", req.max_tokens);
    const int64_t n_prompt = int64_t(req.prompt.size());
    SKV_CHECK(n_prompt < context_length_,
              "the prompt has {} tokens but the context holds {}; shorten the prompt or raise --ctx", n_prompt,
              context_length_);
    for (int32_t t : req.prompt) {
        SKV_CHECK(t >= 0 && t < config().vocab, "prompt token id {} is outside the vocabulary", t);
    }
    const int64_t max_new = std::min<int64_t>(req.max_tokens, context_length_ - n_prompt);
    GenerationResult result;
    result.prompt_tokens = n_prompt;
    result.finish_reason = "length";

    SequenceBlocks blocks(kv_cache_->allocator(), kv_cache_->block_size());
    SKV_CHECK(blocks.reserve(n_prompt + max_new), "the KV cache cannot hold {} tokens; raise --kv-cache-tokens",
              n_prompt + max_new);
    std::vector<int32_t> tokens = req.prompt;
    Sampler sampler(req.sampling, req.prompt);
    StreamDecoder decoder(tok);
    StopStringFilter stop_filter(req.stop);
    std::vector<float> logits;
    const int64_t vocab = config().vocab;

    const auto t0 = std::chrono::steady_clock::now();
    // Prefill in chunks; only the last chunk asks for logits (its last token).
    for (int64_t start = 0; start < n_prompt; start += options_.prefill_chunk) {
        const int64_t count = std::min(options_.prefill_chunk, n_prompt - start);
        ForwardBatch batch = single_sequence_batch(tokens, start, count, blocks.blocks());
        const bool last_chunk = start + count == n_prompt;
        const int32_t first_row = options_.full_student ? 0 : int32_t(count - 1);
        if (last_chunk || options_.full_student) {
            for (int32_t r = first_row; r < count; ++r) batch.logits_indices.push_back(r);
        }
        model_.model->forward(batch, kv_cache_->view(), logits);
        if (last_chunk && options_.full_student) logits.erase(logits.begin(), logits.end() - config().vocab);
    }
    result.prefill_seconds = seconds_since(t0);
    if (max_new == 0) return result;

    const auto t1 = std::chrono::steady_clock::now();
    bool stopped = false;       // by the caller or a stop string: nothing more is emitted
    auto emit = [&](const std::string& text) {
        if (text.empty() || stopped) return;
        result.text += text;
        if (on_text && !on_text(text)) stopped = true;
    };
    auto emit_filtered = [&](const std::string& text) {
        auto [safe, hit] = stop_filter.push(text);
        emit(safe);
        if (hit) {
            result.finish_reason = "stop";
            stopped = true;
        }
    };
    // On a device backend, plain sampling (no penalties) runs on the device and only the token id
    // comes back; the first token's logits are already on the host from the prefill.
    const bool want_logprobs = req.logprobs >= 0 && on_token;
    const bool device_sampling = backend_->supports_graphs() && !req.sampling.needs_history() && !want_logprobs;
    std::vector<SampleParams> device_params(1);
    device_params[0].temperature = req.sampling.temperature;
    device_params[0].top_k = req.sampling.top_k;
    device_params[0].top_p = req.sampling.top_p;
    device_params[0].min_p = req.sampling.min_p;
    device_params[0].seed = req.sampling.seed ? *req.sampling.seed : std::random_device{}() * 0x100000001ull;
    std::vector<int32_t> sampled;
    for (int64_t step = 0; step < max_new && !stopped; ++step) {
        int32_t next = -1;
        if (step > 0) {
            ForwardBatch batch = single_sequence_batch(tokens, int64_t(tokens.size()) - 1, 1, blocks.blocks());
            batch.logits_indices.push_back(0);
            if (device_sampling) {
                device_params[0].offset = uint64_t(step);
                model_.model->forward_sample(batch, kv_cache_->view(), device_params, sampled);
                next = sampled[0];
            } else {
                model_.model->forward(batch, kv_cache_->view(), logits);
            }
        }
        TokenLogprobs lp;
        if (next < 0) {
            // Logprobs come from the raw logits: compute the distribution before sample() modifies them.
            std::vector<float> raw;
            if (want_logprobs) raw.assign(logits.begin(), logits.begin() + vocab);
            next = sampler.sample(logits.data(), vocab);
            if (want_logprobs) lp = token_logprobs(raw.data(), vocab, next, req.logprobs);
        }
        sampler.accept(next);
        tokens.push_back(next);
        result.tokens.push_back(next);
        // Every generated token has a logprob entry, a stop token included (as in OpenAI's API and vLLM:
        // clients such as lm-eval count on one entry per generated token).
        if (want_logprobs) on_token(lp);
        const bool is_stop_token =
            (!req.ignore_eos && tok.is_eos(next)) ||
            std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), next) != req.stop_token_ids.end();
        if (is_stop_token) {
            result.finish_reason = "stop";
            break;
        }
        emit_filtered(decoder.push(next));
    }
    emit_filtered(decoder.finish());
    emit(stop_filter.finish());
    result.decode_seconds = seconds_since(t1);
    return result;
}

std::vector<float> Engine::prompt_logits(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions) {
    const int64_t n = int64_t(tokens.size());
    SKV_CHECK(n > 0 && n <= context_length_, "prompt of {} tokens does not fit the context of {}", n, context_length_);
    SequenceBlocks blocks(kv_cache_->allocator(), kv_cache_->block_size());
    SKV_CHECK(blocks.reserve(n), "the KV cache cannot hold {} tokens", n);
    std::vector<int32_t> wanted = positions;
    if (wanted.empty()) {
        wanted.resize(n);
        for (int64_t i = 0; i < n; ++i) wanted[i] = int32_t(i);
    }
    std::vector<float> out;
    out.reserve(wanted.size() * size_t(config().vocab));
    std::vector<float> logits;
    for (int64_t start = 0; start < n; start += options_.prefill_chunk) {
        const int64_t count = std::min(options_.prefill_chunk, n - start);
        ForwardBatch batch = single_sequence_batch(tokens, start, count, blocks.blocks());
        // Rows wanted in this chunk: a suffix of the chunk is required by the forward contract, so
        // compute from the first wanted row to the end and keep the wanted ones.
        auto lo = std::lower_bound(wanted.begin(), wanted.end(), int32_t(start));
        auto hi = std::lower_bound(wanted.begin(), wanted.end(), int32_t(start + count));
        if (lo == hi) {
            if (options_.full_student) {
                for (int32_t r = 0; r < count; ++r) batch.logits_indices.push_back(r);
            }
            model_.model->forward(batch, kv_cache_->view(), logits);
            continue;
        }
        const int32_t first_row = options_.full_student ? 0 : *lo - int32_t(start);
        for (int32_t r = first_row; r < count; ++r) batch.logits_indices.push_back(r);
        model_.model->forward(batch, kv_cache_->view(), logits);
        for (auto it = lo; it != hi; ++it) {
            const int64_t row = *it - int32_t(start) - first_row;
            out.insert(out.end(), logits.begin() + row * config().vocab, logits.begin() + (row + 1) * config().vocab);
        }
    }
    return out;
}

std::vector<std::vector<float>> Engine::batch_last_logits(const std::vector<std::vector<int32_t>>& prompts) {
    std::vector<SequenceBlocks> blocks;
    ForwardBatch batch;
    batch.query_start.push_back(0);
    int64_t max_blocks = 0;
    for (const auto& p : prompts) {
        SKV_CHECK(!p.empty() && int64_t(p.size()) <= context_length_, "each prompt needs 1..{} tokens", context_length_);
        blocks.emplace_back(kv_cache_->allocator(), kv_cache_->block_size());
        SKV_CHECK(blocks.back().reserve(int64_t(p.size())), "the KV cache cannot hold this batch");
        max_blocks = std::max<int64_t>(max_blocks, int64_t(blocks.back().blocks().size()));
    }
    batch.max_blocks_per_seq = int32_t(max_blocks);
    for (size_t i = 0; i < prompts.size(); ++i) {
        append_sequence(batch, prompts[i], 0, int64_t(prompts[i].size()), blocks[i].blocks());
        batch.logits_indices.push_back(batch.query_start.back() - 1);
    }
    std::vector<float> logits;
    model_.model->forward(batch, kv_cache_->view(), logits);
    std::vector<std::vector<float>> out(prompts.size());
    const int64_t V = config().vocab;
    for (size_t i = 0; i < prompts.size(); ++i) out[i].assign(logits.begin() + i * V, logits.begin() + (i + 1) * V);
    return out;
}

}  // namespace swiftkv
