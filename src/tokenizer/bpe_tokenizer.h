// BpeTokenizer — byte-level BPE as used by GPT-2, SmolLM2 and Llama-3: a pre-tokenizer regex with
// Unicode classes (PCRE2, UCP), the GPT-2 byte-to-unicode map, merges applied by rank, special and
// added tokens matched before pre-tokenization. Built from GGUF metadata (tokenizer.ggml.*) or from a
// Hugging Face tokenizer.json.
//
// Invalid UTF-8 input rule: each byte that is not part of a valid UTF-8 sequence is replaced by
// U+FFFD before pre-tokenization, exactly as Rust's String::from_utf8_lossy (which the Hugging Face
// tokenizers Python binding applies to bytes) does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace swiftkv {

enum class PreTokenizer {
    Gpt2,     // GPT-2's regex ('s|'t|... ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)
    SmolLM,   // each digit split individually, then the GPT-2 regex (SmolLM / SmolLM2 / StarCoder)
    Llama3,   // Llama-3's regex (case-insensitive contractions, \p{N}{1,3}, ...)
};

enum class TokenKind : uint8_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct TokenizerSpec {
    std::vector<std::string> tokens;            // id -> token string (byte-level unicode form)
    std::vector<TokenKind> kinds;               // id -> kind (Control/UserDefined are "special")
    std::vector<std::string> merges;            // "left right", by rank
    PreTokenizer pre = PreTokenizer::Gpt2;
    int32_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;
    bool add_bos = false;                       // prepend BOS in encode(..., add_special=true)
    std::vector<int32_t> eos_ids;               // all end-of-generation ids (eos, <|im_end|>, <|eot_id|>, ...)
};

class BpeTokenizer {
public:
    explicit BpeTokenizer(TokenizerSpec spec);
    ~BpeTokenizer();

    // From a Hugging Face tokenizer.json document (model.type "BPE", byte_level). Throws on unsupported.
    static BpeTokenizer from_tokenizer_json(const nlohmann::json& tokenizer_json);
    // Maps tokenizer.ggml.pre names ("gpt2", "smollm", "llama-bpe", ...) to a PreTokenizer; throws if unknown.
    static PreTokenizer pre_tokenizer_from_name(const std::string& name);

    // add_special: prepend BOS if the spec says so. parse_special: recognise special/added tokens
    // written in the text (e.g. "<|im_start|>"), otherwise they are tokenized as plain text.
    std::vector<int32_t> encode(std::string_view text, bool add_special = true, bool parse_special = true) const;
    // Raw bytes of the tokens (special tokens included as their text unless skip_special).
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
    // The bytes one token stands for.
    std::string token_bytes(int32_t id) const;

    int32_t vocab_size() const;
    const TokenizerSpec& spec() const;
    bool is_special(int32_t id) const;
    bool is_eos(int32_t id) const;
    int32_t token_id(std::string_view token) const;  // -1 if absent (token in byte-level unicode form)

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    BpeTokenizer(std::unique_ptr<Impl> impl);
public:
    BpeTokenizer(BpeTokenizer&&) noexcept;
    BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
};

// StreamDecoder — turns a stream of token ids into text without ever emitting a broken UTF-8
// sequence: bytes of an incomplete trailing character are held back until completed; a sequence
// that can never be completed is emitted as U+FFFD.
class StreamDecoder {
public:
    explicit StreamDecoder(const BpeTokenizer& tokenizer, bool skip_special = true);
    // Returns the text that became complete with this token (possibly empty).
    std::string push(int32_t id);
    // Flushes what is held back (invalid remainder becomes U+FFFD).
    std::string finish();

private:
    const BpeTokenizer& tokenizer_;
    bool skip_special_;
    std::string pending_;
};

}  // namespace swiftkv
