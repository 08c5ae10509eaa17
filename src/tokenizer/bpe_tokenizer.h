// BpeTokenizer — byte-level BPE as used by GPT-2, SmolLM2 and Llama-3: a pre-tokenizer regex with
// Unicode classes (PCRE2, UCP), the GPT-2 byte-to-unicode map, merges applied by rank, special and
// added tokens matched before pre-tokenization. Built from GGUF metadata (tokenizer.ggml.*) or from a
// Hugging Face tokenizer.json.
//
// Invalid UTF-8 input rule: each maximal invalid subpart (Unicode 3.9, "U+FFFD substitution of maximal
// subparts") is replaced by one U+FFFD before anything else, exactly as Python's
// bytes.decode('utf-8', errors='replace') and Rust's String::from_utf8_lossy do: "\xE2\x82" (a
// truncated character) becomes one U+FFFD, "\xC0\xAF" (an overlong form) becomes two.
//
// A byte that has no token in the vocabulary (SmolLM2 lacks 21 of the 256, e.g. 0x04 and 0xF1) is
// dropped before merging, as Hugging Face's BPE does when the model has no unk_token; so
// decode(encode(x)) == x for valid UTF-8 text made of bytes the vocabulary covers.
//
// Token kinds follow Hugging Face's added tokens: Control (and Unknown) tokens are "special" — matched
// in the text only with parse_special, dropped by skip_special; UserDefined tokens are added tokens
// that are not special — always matched, always rendered. Their text is stored raw (not in the
// byte-level form of Normal tokens).
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
    // A piece that is itself a vocabulary token is taken whole, without merges (Hugging Face BPE
    // "ignore_merges"; Llama-3's tokenizer sets it, llama.cpp sets it for the llama-bpe family).
    bool ignore_merges = false;
    // Optional, per id (empty = all 0): bit 0 lstrip, bit 1 rstrip of a Hugging Face added token
    // (the match also swallows the whitespace on that side).
    std::vector<uint8_t> added_strip;
};

// The ids a generation should stop at: eos_id plus the known end-of-turn tokens (<|im_end|>,
// <|eot_id|>, <|eom_id|>, <|end_of_text|>, <|endoftext|>, <|end|>, <end_of_turn>) present in the
// vocabulary as special (Control) tokens. Sorted, unique.
std::vector<int32_t> end_of_generation_ids(const TokenizerSpec& spec);

// A stand-in vocabulary of `vocab` ids for models with random weights (benchmarks): ids 0..255 are
// the 256 bytes (so any text encodes, byte by byte, with no merges), id vocab-1 is an end-of-text
// control token, and every other id i is the word " w<i>". Needs vocab >= 258.
TokenizerSpec synthetic_tokenizer_spec(int64_t vocab);

// UTF-8 helpers with the rule above.
bool is_valid_utf8(std::string_view bytes);
std::string utf8_lossy(std::string_view bytes);  // maximal subparts -> U+FFFD

class BpeTokenizer {
public:
    explicit BpeTokenizer(TokenizerSpec spec);
    ~BpeTokenizer();

    // From a Hugging Face tokenizer.json document (model.type "BPE", byte_level). Throws on unsupported.
    // tokenizer_config (optional, tokenizer_config.json) supplies bos/eos/pad/unk and add_bos_token;
    // without it BOS comes from a TemplateProcessing post-processor and EOS from the known names.
    static BpeTokenizer from_tokenizer_json(const nlohmann::json& tokenizer_json,
                                            const nlohmann::json* tokenizer_config = nullptr);
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
    bool is_special(int32_t id) const;  // Control or Unknown (what skip_special drops)
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
