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

BpeTokenizer load_tokenizer(const ModelSource& source) {
    if (source.is_gguf()) return BpeTokenizer(tokenizer_spec_from_gguf(*source.gguf()));
    SKV_CHECK(!source.tokenizer_json().empty(), "{}: tokenizer.json is missing", source.path());
    // tokenizer_config.json names BOS/EOS and whether BOS is added.
    const auto& tc = source.tokenizer_config();
    return BpeTokenizer::from_tokenizer_json(source.tokenizer_json(), tc.empty() ? nullptr : &tc);
}

std::optional<std::string> load_chat_template(const ModelSource& source) {
    if (source.is_gguf()) return chat_template_from_gguf(*source.gguf());
    const auto& tc = source.tokenizer_config();
    if (tc.contains("chat_template")) {
        const auto& t = tc["chat_template"];
        if (t.is_string()) return t.get<std::string>();
        if (t.is_array()) {  // named templates: use "default"
            for (const auto& item : t) {
                if (item.value("name", "") == "default") return item.value("template", "");
            }
        }
    }
    return std::nullopt;
}

Engine::Engine(const EngineOptions& options) : options_(options) {
    SKV_CHECK(options_.synthetic.empty(), "random-weight (--synthetic) models run with continuous batching only");
    if (options_.threads > 0) ThreadPool::set_global_threads(options_.threads);
    auto source = ModelSource::open(options_.model_path);
    backend_ = make_backend(options_.device, options_.threads);
    LoadOptions lo;
    lo.weight_dtype = options_.weight_dtype.value_or(backend_->supports_weight_dtype(DType::F32) ? DType::F32
                                                                                                 : DType::BF16);
    lo.swiftkv = options_.swiftkv;
    lo.graphs = options_.graphs;
    model_ = std::make_unique<LlamaModel>(*source, *backend_, lo);
    if (options_.load_tokenizer) {
        tokenizer_ = std::make_unique<BpeTokenizer>(load_tokenizer(*source));
        SKV_CHECK(tokenizer_->vocab_size() <= model_->config().vocab,
                  "{}: the tokenizer has {} tokens but the model's vocabulary is {}", options_.model_path,
                  tokenizer_->vocab_size(), model_->config().vocab);
        chat_ = load_chat_format(*source, *tokenizer_);
    }
    generation_defaults_ = source->generation_config();

    context_length_ = options_.context_length > 0 ? options_.context_length
                                                  : std::min<int64_t>(model_->config().max_position, 8192);
    SKV_CHECK(context_length_ > 0 && context_length_ <= model_->config().max_position,
              "context length {} is out of range (1..{})", context_length_, model_->config().max_position);
    SKV_CHECK(options_.block_size > 0 && options_.block_size <= 1024, "KV block size {} is out of range (1..1024)",
              options_.block_size);
    SKV_CHECK(options_.prefill_chunk > 0, "prefill chunk must be positive, got {}", options_.prefill_chunk);
    const int64_t blocks_per_seq = (context_length_ + options_.block_size - 1) / options_.block_size;
    // The workspace, sized once: prefill chunks of up to prefill_chunk tokens, and evaluation batches.
    model_->reserve(options_.prefill_chunk, 1, blocks_per_seq);
    int64_t blocks = 0;
    if (options_.kv_cache_tokens > 0) {
        blocks = (options_.kv_cache_tokens + options_.block_size - 1) / options_.block_size;
    } else if (backend_->supports_graphs()) {
        // A device backend: the KV pool takes a fraction of what the weights and workspace left free.
        SKV_CHECK(options_.gpu_memory_fraction > 0.0 && options_.gpu_memory_fraction <= 1.0,
                  "gpu memory fraction {} must be in (0, 1]", options_.gpu_memory_fraction);
        size_t free_b = 0, total_b = 0;
        backend_->memory_info(&free_b, &total_b);
        const int64_t budget = int64_t(double(free_b) * options_.gpu_memory_fraction) - (int64_t(256) << 20);
        blocks = PagedKvCache::blocks_for_bytes(model_->config(), std::max<int64_t>(budget, 0), options_.block_size,
                                                backend_->act_dtype());
        SKV_CHECK(blocks >= blocks_per_seq,
                  "the KV cache cannot hold one sequence of {} tokens: {:.0f} MiB of {} memory is free after the "
                  "weights, room for {} tokens at {} bytes/token; lower --ctx or use a smaller model",
                  context_length_, double(free_b) / (1 << 20), backend_->name(), blocks * options_.block_size,
                  PagedKvCache::bytes_per_token(model_->config(), backend_->act_dtype()));
    } else {
        blocks = blocks_per_seq;
    }
    kv_cache_ = std::make_unique<PagedKvCache>(*backend_, model_->config(), blocks, options_.block_size);
}

Engine::~Engine() = default;

std::string Engine::apply_chat_template(const nlohmann::json& messages, bool add_generation_prompt) const {
    return chat_.render(messages, add_generation_prompt);
}

ChatFormat load_chat_format(const ModelSource& source, const BpeTokenizer& tokenizer) {
    ChatFormat f;
    f.model_path = source.path();
    if (auto tmpl = load_chat_template(source)) f.tmpl = std::make_unique<ChatTemplate>(*tmpl);
    const auto& spec = tokenizer.spec();
    if (spec.bos_id >= 0) f.bos_text = tokenizer.token_bytes(spec.bos_id);
    if (spec.eos_id >= 0) f.eos_text = tokenizer.token_bytes(spec.eos_id);
    return f;
}

std::string ChatFormat::render(const nlohmann::json& messages, bool add_generation_prompt) const {
    SKV_CHECK(tmpl != nullptr, "{} has no chat template", model_path);
    nlohmann::json ctx = {{"messages", messages},
                          {"add_generation_prompt", add_generation_prompt},
                          {"bos_token", bos_text},
                          {"eos_token", eos_text}};
    return tmpl->render(ctx);
}

const BpeTokenizer& Engine::tokenizer() const {
    SKV_CHECK(tokenizer_ != nullptr, "{}: this engine was opened without its tokenizer", options_.model_path);
    return *tokenizer_;
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
    SKV_CHECK(tokenizer_ != nullptr, "{}: generation needs the tokenizer, which was not loaded", options_.model_path);
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
    StreamDecoder decoder(*tokenizer_);
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
        model_->forward(batch, kv_cache_->view(), logits);
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
                model_->forward_sample(batch, kv_cache_->view(), device_params, sampled);
                next = sampled[0];
            } else {
                model_->forward(batch, kv_cache_->view(), logits);
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
            (!req.ignore_eos && tokenizer_->is_eos(next)) ||
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
            model_->forward(batch, kv_cache_->view(), logits);
            continue;
        }
        const int32_t first_row = options_.full_student ? 0 : *lo - int32_t(start);
        for (int32_t r = first_row; r < count; ++r) batch.logits_indices.push_back(r);
        model_->forward(batch, kv_cache_->view(), logits);
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
    model_->forward(batch, kv_cache_->view(), logits);
    std::vector<std::vector<float>> out(prompts.size());
    const int64_t V = config().vocab;
    for (size_t i = 0; i < prompts.size(); ++i) out[i].assign(logits.begin() + i * V, logits.begin() + (i + 1) * V);
    return out;
}

}  // namespace swiftkv
