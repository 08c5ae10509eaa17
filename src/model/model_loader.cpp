#include "model/model_loader.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/gguf_vocab.h"

namespace swiftkv {

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

ChatFormat load_chat_format(const ModelSource& source, const BpeTokenizer& tokenizer) {
    ChatFormat f;
    f.model_path = source.path();
    if (auto tmpl = load_chat_template(source)) f.tmpl = std::make_unique<ChatTemplate>(*tmpl);
    const auto& spec = tokenizer.spec();
    if (spec.bos_id >= 0) f.bos_text = tokenizer.token_bytes(spec.bos_id);
    if (spec.eos_id >= 0) f.eos_text = tokenizer.token_bytes(spec.eos_id);
    return f;
}

const BpeTokenizer& OpenedModel::require_tokenizer() const {
    SKV_CHECK(tokenizer != nullptr, "{}: this model was opened without its tokenizer", path);
    return *tokenizer;
}

int64_t OpenedModel::context_length(int64_t requested) const {
    const int64_t max_position = config().max_position;
    const int64_t ctx = requested > 0 ? requested : std::min<int64_t>(max_position, 8192);
    SKV_CHECK(ctx > 0 && ctx <= max_position, "context length {} is out of range (1..{})", ctx, max_position);
    return ctx;
}

OpenedModel open_model(const OpenModelOptions& options, Backend& backend) {
    OpenedModel m;
    m.weight_dtype = options.weight_dtype.value_or(backend.supports_weight_dtype(DType::F32) ? DType::F32 : DType::BF16);
    SKV_CHECK(backend.supports_weight_dtype(m.weight_dtype), "the {} backend cannot hold {} weights", backend.name(),
              dtype_name(m.weight_dtype));
    LoadOptions lo;
    lo.weight_dtype = m.weight_dtype;
    lo.swiftkv = options.swiftkv;
    if (!options.synthetic.empty()) {
        const ModelConfig c = ModelConfig::synthetic(options.synthetic, options.synthetic_swiftkv);
        m.path = "synthetic:" + options.synthetic + (options.synthetic_swiftkv.empty() ? "" : "@" + options.synthetic_swiftkv);
        m.model = std::make_unique<LlamaModel>(c, backend, lo, /*seed=*/1234);
        if (options.load_tokenizer) m.tokenizer = std::make_unique<BpeTokenizer>(synthetic_tokenizer_spec(c.vocab));
        m.chat.model_path = m.path;
        return m;
    }
    SKV_CHECK(options.synthetic_swiftkv.empty(), "a SwiftKV cut for a random-weight model needs a synthetic shape");
    m.path = options.path;
    m.source = ModelSource::open(options.path);
    m.model = std::make_unique<LlamaModel>(*m.source, backend, lo);
    if (options.load_tokenizer) {
        m.tokenizer = std::make_unique<BpeTokenizer>(load_tokenizer(*m.source));
        SKV_CHECK(m.tokenizer->vocab_size() <= m.config().vocab,
                  "{}: the tokenizer has {} tokens but the model's vocabulary is {}", options.path,
                  m.tokenizer->vocab_size(), m.config().vocab);
        m.chat = load_chat_format(*m.source, *m.tokenizer);
    }
    m.generation_defaults = m.source->generation_config();
    if (!m.generation_defaults.is_object()) m.generation_defaults = nlohmann::json::object();
    return m;
}

void check_kv_block_size(int64_t block_size) {
    SKV_CHECK(block_size > 0 && block_size <= kMaxKvBlockSize, "KV block size {} is out of range (1..{})", block_size,
              kMaxKvBlockSize);
}

int64_t kv_cache_blocks(const ModelConfig& config, Backend& backend, int64_t context_length, const KvCacheSizing& sizing) {
    const int64_t bs = sizing.block_size;
    check_kv_block_size(bs);
    const int64_t blocks_per_seq = (context_length + bs - 1) / bs;
    const int64_t bytes_per_token = config.kv_bytes_per_token(backend.act_dtype());
    int64_t blocks = 0;
    if (sizing.kv_cache_tokens > 0) {
        blocks = (sizing.kv_cache_tokens + bs - 1) / bs;
    } else if (backend.supports_graphs()) {
        // A device backend: the KV pool takes a share of what the weights and workspace left free.
        SKV_CHECK(sizing.gpu_memory_fraction > 0.0 && sizing.gpu_memory_fraction <= 1.0,
                  "gpu memory fraction {} must be in (0, 1]", sizing.gpu_memory_fraction);
        size_t free_b = 0, total_b = 0;
        backend.memory_info(&free_b, &total_b);
        const int64_t budget = int64_t(double(free_b) * sizing.gpu_memory_fraction) - (int64_t(256) << 20);
        blocks = std::max<int64_t>(budget, 0) / (bytes_per_token * bs);
        SKV_CHECK(blocks >= blocks_per_seq,
                  "the KV cache cannot hold one sequence of {} tokens: {:.0f} MiB of {} memory is free after the "
                  "weights, room for {} tokens at {} bytes/token; lower --ctx or use a smaller model",
                  context_length, double(free_b) / (1 << 20), backend.name(), blocks * bs, bytes_per_token);
    } else {
        blocks = (std::max(sizing.host_tokens, context_length) + bs - 1) / bs;
    }
    SKV_CHECK(blocks >= blocks_per_seq,
              "the KV cache ({} tokens) cannot hold one sequence of {} tokens; lower --ctx or raise --kv-cache-tokens",
              blocks * bs, context_length);
    return blocks;
}

}  // namespace swiftkv
