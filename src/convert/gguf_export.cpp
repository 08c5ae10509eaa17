// SwiftKV student -> one GGUF file (see gguf_export.h and docs/swiftkv-gguf.md).
#include "convert/gguf_export.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model_loader.h"
#include "io/gguf_reader.h"

namespace swiftkv::convert_detail {

namespace fs = std::filesystem;

namespace {

// llama.cpp's llama_ftype of a file whose matrices are `dtype`.
uint32_t llama_file_type(DType dtype) {
    switch (dtype) {
        case DType::F16: return 1;
        case DType::Q8_0: return 7;
        case DType::BF16: return 32;
        default: return 0;  // ALL_F32
    }
}

const char* pre_tokenizer_name(PreTokenizer pre) {
    switch (pre) {
        case PreTokenizer::SmolLM: return "smollm";
        case PreTokenizer::Llama3: return "llama-bpe";
        case PreTokenizer::Gpt2: break;
    }
    return "gpt2";
}

// The dtype a planned tensor is stored with: vectors stay F32 (as llama.cpp's converter keeps
// norms), matrices take out_dtype, except Q8_0 rows that are not whole blocks.
DType stored_dtype(const PlannedTensor& t, DType out_dtype) {
    if (t.shape.size() != 2) return DType::F32;
    if (out_dtype == DType::Q8_0 && t.shape[1] % 32 != 0) return DType::F32;
    return out_dtype;
}

void write_data(GgufWriter& writer, const PlannedTensor& t, DType dtype, int64_t head_dim) {
    const bool rope_order = is_rope_permuted_name(t.name);
    const SourceTensor& first = *t.sources.front();
    if (t.sources.size() == 1 && first.dtype == dtype && first.gguf_rope_permuted == rope_order) {
        // Same dtype and the same row order (a GGUF source's Q/K are already interleaved): copy.
        const size_t total = size_t(dtype_row_bytes(dtype, first.numel()));
        constexpr size_t kPiece = size_t(64) << 20;
        for (size_t done = 0; done < total; done += kPiece) writer.append(first.data + done, std::min(kPiece, total - done));
        return;
    }
    const int64_t cols = t.shape.back();
    std::vector<uint8_t> encoded;
    for_each_f32_chunk(t, head_dim, rope_order, [&](const float* values, int64_t rows) {
        const size_t count = size_t(rows * cols);
        if (dtype == DType::F32) {
            writer.append(values, count * 4);
            return;
        }
        encoded.resize(size_t(dtype_row_bytes(dtype, int64_t(count))));
        if (dtype == DType::Q8_0) {
            quantize_q8_0(values, encoded.data(), int64_t(count));
        } else {
            auto* out = reinterpret_cast<uint16_t*>(encoded.data());
            for (size_t i = 0; i < count; ++i) out[i] = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
        }
        writer.append(encoded.data(), encoded.size());
    });
}

}  // namespace

void add_tokenizer_metadata(GgufWriter& w, const TokenizerSpec& spec, const std::optional<std::string>& chat_template) {
    const size_t n = spec.tokens.size();
    SKV_CHECK(n > 0, "the tokenizer has no tokens");
    SKV_CHECK(spec.kinds.empty() || spec.kinds.size() == n, "the tokenizer has {} tokens but {} token kinds", n,
              spec.kinds.size());
    SKV_CHECK(std::all_of(spec.added_strip.begin(), spec.added_strip.end(), [](uint8_t s) { return s == 0; }),
              "the tokenizer has added tokens with lstrip/rstrip, which GGUF tokenizer metadata cannot express; "
              "convert to a Hugging Face directory instead (--format hf)");
    SKV_CHECK(spec.ignore_merges == (spec.pre == PreTokenizer::Llama3),
              "the tokenizer's ignore_merges ({}) differs from what llama.cpp assumes for the '{}' pre-tokenizer; "
              "convert to a Hugging Face directory instead (--format hf)",
              spec.ignore_merges, pre_tokenizer_name(spec.pre));
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", pre_tokenizer_name(spec.pre));
    w.add_string_array("tokenizer.ggml.tokens", spec.tokens);
    std::vector<int64_t> types(n, int64_t(TokenKind::Normal));
    for (size_t i = 0; i < spec.kinds.size(); ++i) types[i] = int64_t(spec.kinds[i]);
    w.add_int_array("tokenizer.ggml.token_type", GgufType::I32, types);
    w.add_string_array("tokenizer.ggml.merges", spec.merges);
    auto add_id = [&](const char* key, int32_t id) {
        if (id < 0) return;
        SKV_CHECK(size_t(id) < n, "the tokenizer's {} ({}) is outside its {} tokens", key, id, n);
        w.add_u32(key, uint32_t(id));
    };
    add_id("tokenizer.ggml.bos_token_id", spec.bos_id);
    add_id("tokenizer.ggml.eos_token_id", spec.eos_id);
    add_id("tokenizer.ggml.unknown_token_id", spec.unk_id);
    add_id("tokenizer.ggml.padding_token_id", spec.pad_id);
    w.add_bool("tokenizer.ggml.add_bos_token", spec.add_bos);
    if (chat_template) w.add_string("tokenizer.chat_template", *chat_template);
}

void write_gguf(const ModelSource& source, const ModelConfig& config, const std::vector<PlannedTensor>& plan,
                DType out_dtype, const ConvertOptions& options, ConvertResult& result) {
    const fs::path target = fs::absolute(fs::path(options.out_dir)).lexically_normal();
    {
        std::error_code ec;
        SKV_CHECK(!fs::exists(target, ec) || !fs::equivalent(target, fs::path(source.path()), ec),
                  "the output '{}' is the base model itself; choose another --out", target.string());
    }
    const GgufFile* src_gguf = source.gguf();
    const bool swiftkv = config.is_swiftkv();
    const std::string arch = swiftkv ? "llama_swiftkv" : "llama";
    const std::string p = arch + ".";
    const int64_t hd = config.head_dim;

    // The tensors: the plan, plus llama.cpp's rope_freqs for Llama-3 RoPE scaling (copied from a
    // GGUF source; computed from a Hugging Face rope_scaling as per-frequency divisors).
    std::vector<PlannedTensor> tensors = plan;
    std::vector<float> divisors;
    SourceTensor computed_freqs;
    if (const SourceTensor* freqs = source.find("rope_freqs.weight")) {
        SKV_CHECK(freqs->shape == std::vector<int64_t>{hd / 2}, "{}: rope_freqs has shape [{}], expected [{}]",
                  source.path(), freqs->shape.empty() ? 0 : freqs->shape[0], hd / 2);
        tensors.push_back({"rope_freqs.weight", {hd / 2}, {freqs}});
    } else if (config.rope_scaling.type == RopeScaling::Type::Llama3) {
        ModelConfig plain = config;
        plain.rope_scaling = RopeScaling{};
        const std::vector<float> base = plain.rope_inv_freq(), scaled = config.rope_inv_freq();
        divisors.resize(base.size());
        for (size_t i = 0; i < base.size(); ++i) divisors[i] = float(double(base[i]) / double(scaled[i]));
        computed_freqs = {"rope_freqs.weight", "rope_freqs.weight", DType::F32, {hd / 2},
                          reinterpret_cast<const uint8_t*>(divisors.data()), false};
        tensors.push_back({"rope_freqs.weight", {hd / 2}, {&computed_freqs}});
    }

    GgufWriterOptions wo;
    wo.overwrite = options.force;
    GgufWriter w(target.string(), wo);

    // general.*: ours, then the source's descriptive keys (a GGUF source's; quantization keys of the
    // source no longer apply).
    w.add_string("general.architecture", arch);
    std::string name = target.stem().string();
    if (src_gguf) name = src_gguf->find_string("general.name").value_or(name);
    w.add_string("general.name", name);
    w.add_u32("general.file_type", llama_file_type(out_dtype));
    w.add_u32("general.quantization_version", 2);
    if (src_gguf) {
        for (const auto& [key, value] : src_gguf->metadata()) {
            if (key.rfind("general.", 0) == 0 && key != "general.alignment" && !w.has_key(key)) w.add_value(key, value);
        }
    }

    // The model hyper-parameters, as llama.cpp's converter writes them for "llama".
    w.add_u32(p + "block_count", uint32_t(config.n_layers));
    w.add_u32(p + "context_length", uint32_t(config.max_position));
    w.add_u32(p + "embedding_length", uint32_t(config.hidden));
    w.add_u32(p + "feed_forward_length", uint32_t(config.ffn));
    w.add_u32(p + "attention.head_count", uint32_t(config.n_heads));
    w.add_u32(p + "attention.head_count_kv", uint32_t(config.n_kv_heads));
    w.add_u32(p + "attention.key_length", uint32_t(hd));
    w.add_u32(p + "attention.value_length", uint32_t(hd));
    w.add_f32(p + "attention.layer_norm_rms_epsilon", float(config.rms_eps));
    w.add_f32(p + "rope.freq_base", float(config.rope_theta));
    w.add_u32(p + "rope.dimension_count", uint32_t(hd));
    w.add_u32(p + "vocab_size", uint32_t(config.vocab));
    if (config.rope_scaling.type == RopeScaling::Type::Linear) {
        w.add_string(p + "rope.scaling.type", "linear");
        w.add_f32(p + "rope.scaling.factor", float(config.rope_scaling.factor));
    }
    if (swiftkv) {
        w.add_u32(p + "swiftkv.num_key_value_layers", uint32_t(config.num_kv_layers));
        w.add_u32(p + "swiftkv.key_value_group_size", uint32_t(config.kv_group_size));
    }
    if (src_gguf) {
        // Other llama.* keys of the source (e.g. llama.expert_count) keep their values and types.
        const std::string src_prefix = src_gguf->get_string("general.architecture") + ".";
        for (const auto& [key, value] : src_gguf->metadata()) {
            if (key.rfind(src_prefix, 0) != 0) continue;
            const std::string renamed = p + key.substr(src_prefix.size());
            if (!w.has_key(renamed)) w.add_value(renamed, value);
        }
    }

    // Tokenizer: a GGUF source's tokenizer.* keys are copied as they are; a Hugging Face source's
    // tokenizer is written the way llama.cpp's converter writes a byte-level BPE vocabulary.
    if (src_gguf) {
        for (const auto& [key, value] : src_gguf->metadata()) {
            if (key.rfind("tokenizer.", 0) == 0) w.add_value(key, value);
        }
    } else {
        // tokenizer_config.json names bos/eos/pad and add_bos_token, as Hugging Face uses them.
        SKV_CHECK(!source.tokenizer_json().empty(), "{}: tokenizer.json is missing", source.path());
        const nlohmann::json& tc = source.tokenizer_config();
        const BpeTokenizer tokenizer =
            BpeTokenizer::from_tokenizer_json(source.tokenizer_json(), tc.empty() ? nullptr : &tc);
        add_tokenizer_metadata(w, tokenizer.spec(), load_chat_template(source));
    }

    std::vector<DType> dtypes;
    uint64_t total_bytes = 0;
    for (const PlannedTensor& t : tensors) {
        dtypes.push_back(stored_dtype(t, out_dtype));
        w.add_tensor(gguf_name_from_canonical(t.name), dtypes.back(), t.shape);
        total_bytes += w.tensor_bytes(w.tensor_count() - 1);
    }
    {
        std::error_code ec;
        const fs::space_info space = fs::space(target.parent_path(), ec);
        const uint64_t needed = w.file_bytes() + (uint64_t(64) << 20);
        SKV_CHECK(ec || space.available >= needed,
                  "not enough disk space in '{}': the converted model needs {:.2f} GB, {:.2f} GB are free",
                  target.parent_path().string(), double(needed) / 1e9, double(space.available) / 1e9);
    }

    ConvertProgress progress;
    progress.tensors_total = int64_t(tensors.size());
    progress.bytes_total = total_bytes;
    for (size_t i = 0; i < tensors.size(); ++i) {
        write_data(w, tensors[i], dtypes[i], hd);
        SKV_CHECK(w.current() == i + 1, "internal error: tensor '{}' was written incompletely", tensors[i].name);
        ++progress.tensors_done;
        progress.bytes_done += w.tensor_bytes(i);
        progress.tensor = tensors[i].name;
        if (options.on_progress) options.on_progress(progress);
    }
    w.finish();

    result.out_dir = target.string();
    result.config = config;
    result.config.architecture = arch;
    result.weight_files = {target.filename().string()};
    result.tensors = int64_t(tensors.size());
    result.tensor_bytes = total_bytes;
}

}  // namespace swiftkv::convert_detail
