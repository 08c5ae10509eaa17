// Tests of BpeTokenizer / StreamDecoder / the GGUF tokenizer reader against Hugging Face `tokenizers`:
// the references in tests/tokenizer/data/tokenizer_refs.json were made by
// scripts/make_tokenizer_refs.py from the default model's vocabulary (see that script for the
// formats). The same vocabulary is loaded from the real GGUF (tests skip that part when the model is
// absent) and from the committed tokenizer.json.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "sha256.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/gguf_vocab.h"

namespace swiftkv {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string kDataDir = std::string(SWIFTKV_SOURCE_DIR) + "/tests/tokenizer/data";
const std::string kSharedData = std::string(SWIFTKV_SHARED_DIR) + "/data";
const std::string kModel = std::string(SWIFTKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string from_hex(const std::string& hex) {
    std::string out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    return out;
}

std::string ids_sha(const std::vector<int32_t>& ids) {
    test::Sha256 h;
    for (int32_t id : ids) h.update_u32_le(static_cast<uint32_t>(id));
    return h.hex();
}

std::vector<int32_t> as_ids(const json& j) { return j.get<std::vector<int32_t>>(); }

const json& refs() {
    static const json j = json::parse(read_file(kDataDir + "/tokenizer_refs.json"));
    return j;
}

const json& tokenizer_doc() {
    static const json j = json::parse(read_file(kDataDir + "/smollm2_tokenizer.json"));
    return j;
}

// The tokenizers under test, each built on first use (ctest runs every test in its own process).
const BpeTokenizer* gguf_tokenizer() {  // null when the model file is absent
    static const std::unique_ptr<BpeTokenizer> t =
        fs::exists(kModel) ? std::make_unique<BpeTokenizer>(tokenizer_spec_from_gguf(GgufFile(kModel))) : nullptr;
    return t.get();
}

const BpeTokenizer& json_tokenizer() {  // SmolLM2 pre-tokenizer
    static const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(tokenizer_doc());
    return t;
}

const BpeTokenizer& llama3_tokenizer() {  // same vocabulary, Llama-3 pre-tokenizer, ignore_merges
    static const BpeTokenizer t = [] {
        json doc = tokenizer_doc();
        doc["pre_tokenizer"] = json::parse(R"({"type":"Sequence","pretokenizers":[
            {"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})");
        doc["model"]["ignore_merges"] = true;
        return BpeTokenizer::from_tokenizer_json(doc);
    }();
    return t;
}

const BpeTokenizer& gpt2_tokenizer() {  // same vocabulary, GPT-2 pre-tokenizer
    static const BpeTokenizer t = [] {
        json doc = tokenizer_doc();
        doc["pre_tokenizer"] = json::parse(R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})");
        return BpeTokenizer::from_tokenizer_json(doc);
    }();
    return t;
}

const BpeTokenizer& strip_tokenizer() {  // <|im_start|> rstrip, <|im_end|> lstrip
    static const BpeTokenizer t = [] {
        json doc = tokenizer_doc();
        for (auto& a : doc["added_tokens"]) {
            if (a["content"] == "<|im_start|>") a["rstrip"] = true;
            if (a["content"] == "<|im_end|>") a["lstrip"] = true;
        }
        return BpeTokenizer::from_tokenizer_json(doc);
    }();
    return t;
}

// The bytes of an adversarial entry (invalid UTF-8 ones are stored as hex).
std::string entry_bytes(const json& e) { return e.contains("hex") ? from_hex(e["hex"]) : e["text"].get<std::string>(); }

// Compares one encoding with a stored reference: a full id list or {count, sha256}.
::testing::AssertionResult matches(const std::vector<int32_t>& got, const json& want) {
    if (want.is_array()) {
        const auto w = as_ids(want);
        if (got == w) return ::testing::AssertionSuccess();
        size_t k = 0;
        while (k < got.size() && k < w.size() && got[k] == w[k]) ++k;
        return ::testing::AssertionFailure() << "ids differ at position " << k << " (got " << got.size()
                                             << " ids, want " << w.size() << "): got "
                                             << (k < got.size() ? got[k] : -1) << ", want " << (k < w.size() ? w[k] : -1);
    }
    if (static_cast<int64_t>(got.size()) == want["count"].get<int64_t>() && ids_sha(got) == want["sha256"])
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got.size() << " ids, want " << want["count"] << " (or hash differs)";
}

std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s.substr(0, 60)) {
        if (c >= 0x20 && c < 0x7F) out += static_cast<char>(c);
        else out += fmt::format("\\x{:02x}", c);
    }
    return out + (s.size() > 60 ? "..." : "");
}

// Totals for the summary printed at the end of the data tests.
struct Counts {
    int64_t units = 0, tokens = 0;
};
void report(const char* what, const Counts& c) {
    std::cout << "[ verified ] " << what << ": " << c.units << " texts, " << c.tokens << " tokens\n";
}

// ----------------------------------------------------------------------------------------------

TEST(TokenizerRefs, MadeByHuggingFaceTokenizers) {
    EXPECT_EQ(refs()["generator"], "scripts/make_tokenizer_refs.py");
    EXPECT_FALSE(refs()["tokenizers_version"].get<std::string>().empty());
    std::cout << "[ info ] references from tokenizers " << refs()["tokenizers_version"].get<std::string>() << "\n";
}

TEST(GgufVocab, SpecOfSmolLM2) {
    const BpeTokenizer* gt = gguf_tokenizer();
    if (!gt) GTEST_SKIP() << kModel << " is absent";
    const TokenizerSpec& g = gt->spec();
    const TokenizerSpec& j = json_tokenizer().spec();
    EXPECT_EQ(g.pre, PreTokenizer::SmolLM);
    EXPECT_EQ(g.tokens, j.tokens);
    EXPECT_EQ(g.merges, j.merges);
    EXPECT_EQ(g.kinds, j.kinds);
    EXPECT_EQ(g.tokens.size(), 49152u);
    EXPECT_EQ(g.bos_id, 1);
    EXPECT_EQ(g.eos_id, 2);
    EXPECT_EQ(g.pad_id, 2);
    EXPECT_EQ(g.unk_id, 0);
    EXPECT_FALSE(g.add_bos);
    EXPECT_FALSE(g.ignore_merges);
    EXPECT_EQ(g.eos_ids, (std::vector<int32_t>{0, 2}));  // <|endoftext|>, <|im_end|>
    EXPECT_TRUE(gt->is_eos(2));
    EXPECT_TRUE(gt->is_eos(0));
    EXPECT_FALSE(gt->is_eos(1));
    EXPECT_EQ(gt->token_id("<|im_start|>"), 1);
    EXPECT_EQ(gt->token_id("Ġthe"), gt->encode(" the", false).at(0));
    EXPECT_EQ(gt->token_id("no such token"), -1);
    EXPECT_TRUE(gt->is_special(1));
    EXPECT_FALSE(gt->is_special(100));
    const auto tmpl = chat_template_from_gguf(GgufFile(kModel));
    ASSERT_TRUE(tmpl.has_value());
    EXPECT_NE(tmpl->find("<|im_start|>"), std::string::npos);
}

TEST(GgufVocab, UnsupportedPreTokenizerNamesSupportedOnes) {
    EXPECT_EQ(BpeTokenizer::pre_tokenizer_from_name("llama-bpe"), PreTokenizer::Llama3);
    EXPECT_EQ(BpeTokenizer::pre_tokenizer_from_name("smollm"), PreTokenizer::SmolLM);
    EXPECT_EQ(BpeTokenizer::pre_tokenizer_from_name("gpt2"), PreTokenizer::Gpt2);
    try {
        BpeTokenizer::pre_tokenizer_from_name("qwen2");
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("qwen2"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("supported"), std::string::npos);
    }
}

// A tiny Llama-3-style GGUF: llama.cpp's defaults for llama-bpe (BOS added, ignore_merges) must
// apply; HF, configured like Llama-3's tokenizer.json, gives the reference ids.
TEST(GgufVocab, LlamaBpeDefaults) {
    const json& ref = refs()["tiny_llama_bpe"];
    const TokenizerSpec spec = tokenizer_spec_from_gguf(GgufFile(kDataDir + "/" + ref["file"].get<std::string>()));
    EXPECT_EQ(spec.pre, PreTokenizer::Llama3);
    EXPECT_TRUE(spec.add_bos);
    EXPECT_TRUE(spec.ignore_merges);
    EXPECT_EQ(spec.bos_id, ref["bos_id"].get<int32_t>());
    EXPECT_EQ(spec.eos_id, ref["eos_id"].get<int32_t>());
    // eos (<|end_of_text|>) and <|eot_id|>.
    EXPECT_EQ(spec.eos_ids, (std::vector<int32_t>{ref["eos_id"].get<int32_t>(), ref["eos_id"].get<int32_t>() + 1}));
    const BpeTokenizer tok(spec);
    for (const auto& c : ref["cases"]) {
        EXPECT_TRUE(matches(tok.encode(c["text"].get<std::string>()), c["ids"])) << c["text"];
    }
}

TEST(GgufVocab, RefusesOtherTokenizers) {
    try {
        tokenizer_spec_from_gguf(GgufFile(kDataDir + "/tiny_spm.gguf"));
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'llama'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("gpt2"), std::string::npos) << e.what();
    }
    try {
        tokenizer_spec_from_gguf(GgufFile(kDataDir + "/tiny_qwen2.gguf"));
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("qwen2"), std::string::npos) << e.what();
    }
}

TEST(TokenizerJson, RejectsUnsupported) {
    json doc = tokenizer_doc();
    doc["model"]["type"] = "Unigram";
    EXPECT_THROW(BpeTokenizer::from_tokenizer_json(doc), Error);
    doc = tokenizer_doc();
    doc["pre_tokenizer"] = json::parse(R"({"type":"Whitespace"})");
    EXPECT_THROW(BpeTokenizer::from_tokenizer_json(doc), Error);
    doc = tokenizer_doc();
    doc["normalizer"] = json::parse(R"({"type":"NFC"})");
    EXPECT_THROW(BpeTokenizer::from_tokenizer_json(doc), Error);
}

TEST(TokenizerJson, SplitWithGpt2RegexIsGpt2) {
    json doc = tokenizer_doc();
    doc["pre_tokenizer"] = json::parse(R"({"type":"Sequence","pretokenizers":[
        {"type":"Split","pattern":{"Regex":"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
        {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})");
    const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(doc);
    EXPECT_EQ(t.spec().pre, PreTokenizer::Gpt2);
    for (const auto& e : refs()["adversarial"]) {
        if (e["gpt2"].is_array()) {
            EXPECT_TRUE(matches(t.encode(entry_bytes(e)), e["gpt2"]));
        }
    }
}

TEST(TokenizerJson, ConfigAndPostProcessorGiveBosEos) {
    json doc = tokenizer_doc();
    doc["post_processor"] = json::parse(R"({"type":"TemplateProcessing",
        "single":[{"SpecialToken":{"id":"<|im_start|>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
        "pair":[], "special_tokens":{"<|im_start|>":{"id":"<|im_start|>","ids":[1],"tokens":["<|im_start|>"]}}})");
    const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(doc);
    EXPECT_EQ(t.spec().bos_id, 1);
    EXPECT_TRUE(t.spec().add_bos);
    EXPECT_EQ(t.encode("hi", true), (std::vector<int32_t>{1, t.encode("hi", false)[0]}));
    EXPECT_EQ(t.encode("hi", false).size(), 1u);

    const json config = json::parse(R"({"bos_token":"<|im_start|>","eos_token":{"content":"<|im_end|>"},
                                         "pad_token":"<|endoftext|>","add_bos_token":false})");
    const BpeTokenizer c = BpeTokenizer::from_tokenizer_json(tokenizer_doc(), &config);
    EXPECT_EQ(c.spec().bos_id, 1);
    EXPECT_EQ(c.spec().eos_id, 2);
    EXPECT_EQ(c.spec().pad_id, 0);
    EXPECT_FALSE(c.spec().add_bos);
    EXPECT_EQ(c.spec().eos_ids, (std::vector<int32_t>{0, 2}));
}

// Adversarial strings: emoji, scripts, whitespace runs, digits, special tokens inline, invalid UTF-8.
void check_adversarial(const BpeTokenizer& tok, const char* key, bool parse_special, Counts& counts) {
    int failures = 0;
    for (const auto& e : refs()["adversarial"]) {
        const std::string bytes = entry_bytes(e);
        const auto got = tok.encode(bytes, /*add_special=*/true, parse_special);
        const auto r = matches(got, e[key]);
        EXPECT_TRUE(r) << key << " on \"" << printable(bytes) << "\"";
        if (!r && ++failures > 10) return;
        counts.units += 1;
        counts.tokens += static_cast<int64_t>(got.size());
    }
}

TEST(TokenizerAdversarial, SmolLMFromJson) {
    Counts c;
    check_adversarial(json_tokenizer(), "smollm", true, c);
    check_adversarial(json_tokenizer(), "smollm_no_special", false, c);
    report("adversarial, SmolLM2 tokenizer.json (with and without parse_special)", c);
}

TEST(TokenizerAdversarial, SmolLMFromGguf) {
    if (!gguf_tokenizer()) GTEST_SKIP() << kModel << " is absent";
    Counts c;
    check_adversarial(*gguf_tokenizer(), "smollm", true, c);
    check_adversarial(*gguf_tokenizer(), "smollm_no_special", false, c);
    report("adversarial, SmolLM2 GGUF (with and without parse_special)", c);
}

TEST(TokenizerAdversarial, Llama3Regex) {
    Counts c;
    check_adversarial(llama3_tokenizer(), "llama3", true, c);
    report("adversarial, Llama-3 pre-tokenizer", c);
}

TEST(TokenizerAdversarial, Gpt2Regex) {
    Counts c;
    check_adversarial(gpt2_tokenizer(), "gpt2", true, c);
    report("adversarial, GPT-2 pre-tokenizer", c);
}

TEST(TokenizerAdversarial, AddedTokenStrip) {
    Counts c;
    check_adversarial(strip_tokenizer(), "smollm_strip", true, c);
    report("adversarial, added tokens with lstrip/rstrip", c);
}

TEST(TokenizerUtf8, InvalidBytesReplacedLikePython) {
    int n = 0;
    for (const auto& e : refs()["adversarial"]) {
        if (!e.contains("hex")) {
            EXPECT_TRUE(is_valid_utf8(entry_bytes(e)));
            EXPECT_EQ(utf8_lossy(entry_bytes(e)), entry_bytes(e));
            continue;
        }
        const std::string bytes = entry_bytes(e);
        EXPECT_FALSE(is_valid_utf8(bytes));
        EXPECT_EQ(utf8_lossy(bytes), e["lossy"].get<std::string>()) << e["hex"];
        // The rule: encoding the bytes is encoding their lossy decoding.
        EXPECT_EQ(json_tokenizer().encode(bytes), json_tokenizer().encode(e["lossy"].get<std::string>()));
        ++n;
    }
    EXPECT_GE(n, 10);
    EXPECT_EQ(utf8_lossy("\xE2\x82"), "\xEF\xBF\xBD");
    EXPECT_EQ(utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
    EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerFirstLines, AllPreTokenizers) {
    const BpeTokenizer* gt = gguf_tokenizer();
    Counts c;
    for (const auto& e : refs()["first_lines"]) {
        const std::string path = kSharedData + "/" + e["file"].get<std::string>();
        if (!fs::exists(path)) GTEST_SKIP() << path << " is absent";
        std::string data = read_file(path);
        std::istringstream in(data);
        std::string line;
        for (int i = 0; i <= e["line"].get<int>() && std::getline(in, line); ++i) {}
        EXPECT_TRUE(matches(json_tokenizer().encode(line), e["smollm"])) << e["file"] << ":" << e["line"];
        if (gt) {
            EXPECT_TRUE(matches(gt->encode(line), e["smollm"])) << e["file"] << ":" << e["line"];
        }
        EXPECT_TRUE(matches(llama3_tokenizer().encode(line), e["llama3"])) << e["file"] << ":" << e["line"];
        EXPECT_TRUE(matches(gpt2_tokenizer().encode(line), e["gpt2"])) << e["file"] << ":" << e["line"];
        c.units += 1;
        c.tokens += static_cast<int64_t>(e["smollm"].size());
    }
    report("first lines of each data file, x4 tokenizers", c);
}

// ----------------------------------------------------------------------------------------------
// All of shared/data, by lines, by 64 KB chunks and by JSON string values.

std::vector<std::string> split_lines(const std::string& data) {
    std::vector<std::string> out;
    size_t start = 0;
    while (true) {
        const size_t nl = data.find('\n', start);
        if (nl == std::string::npos) {
            out.push_back(data.substr(start));
            return out;
        }
        out.push_back(data.substr(start, nl - start));
        start = nl + 1;
    }
}

void walk_strings(const nlohmann::ordered_json& v, std::vector<std::string>& out) {
    if (v.is_string()) {
        out.push_back(v.get<std::string>());
    } else if (v.is_structured()) {
        for (const auto& x : v) walk_strings(x, out);
    }
}

// Python's bytes.strip() is non-empty.
bool has_non_ascii_space(const std::string& s) {
    return std::any_of(s.begin(), s.end(), [](char c) { return !(c == ' ' || (c >= '\t' && c <= '\r')); });
}

std::vector<std::string> json_strings(const std::string& name, const std::string& data) {
    std::vector<std::string> out;
    if (name.ends_with(".jsonl")) {
        for (const auto& line : split_lines(data)) {
            if (has_non_ascii_space(line)) walk_strings(nlohmann::ordered_json::parse(line), out);
        }
    } else {
        walk_strings(nlohmann::ordered_json::parse(data), out);
    }
    return out;
}

// groups: [[n_units, n_tokens, sha256(sources), sha256(ids)], ...]
void check_groups(const BpeTokenizer& tok, const std::vector<std::string>& units, const json& groups,
                  const std::string& label, Counts& counts) {
    const int64_t group_size = refs()["group_size"].get<int64_t>();
    ASSERT_EQ(static_cast<int64_t>(groups.size()), (static_cast<int64_t>(units.size()) + group_size - 1) / group_size)
        << label << ": the data changed since the references were made; rerun scripts/make_tokenizer_refs.py";
    int failures = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
        const auto& ref = groups[g];
        test::Sha256 src, ids_hash;
        int64_t n_tokens = 0;
        std::vector<std::vector<int32_t>> encoded;
        const size_t begin = g * group_size, end = std::min(units.size(), begin + group_size);
        for (size_t u = begin; u < end; ++u) {
            src.update_u32_le(static_cast<uint32_t>(units[u].size()));
            src.update(units[u]);
            encoded.push_back(tok.encode(units[u], false));
            ids_hash.update_u32_le(static_cast<uint32_t>(encoded.back().size() * 4));
            for (int32_t id : encoded.back()) ids_hash.update_u32_le(static_cast<uint32_t>(id));
            n_tokens += static_cast<int64_t>(encoded.back().size());
        }
        ASSERT_EQ(src.hex(), ref[2].get<std::string>())
            << label << " group " << g << ": source text differs from the references; rerun the script";
        const bool ok = n_tokens == ref[1].get<int64_t>() && ids_hash.hex() == ref[3].get<std::string>();
        EXPECT_TRUE(ok) << label << " group " << g << " (units " << begin << ".." << end - 1 << "): " << n_tokens
                        << " tokens, want " << ref[1] << "; first unit \"" << printable(units[begin]) << "\"";
        if (!ok && ++failures > 5) return;
        counts.units += static_cast<int64_t>(end - begin);
        counts.tokens += n_tokens;
    }
}

struct DataFile {
    std::string name, bytes;
    const json* ref;
};

std::vector<DataFile> data_files() {
    std::vector<DataFile> files;
    for (const auto& f : refs()["files"]) {
        const std::string path = kSharedData + "/" + f["name"].get<std::string>();
        if (!fs::exists(path)) continue;
        files.push_back({f["name"], read_file(path), &f});
    }
    return files;
}

void check_lines(const BpeTokenizer& tok, const char* key, const char* what) {
    const auto files = data_files();
    if (files.empty()) GTEST_SKIP() << kSharedData << " is absent";
    Counts c;
    for (const auto& f : files) {
        ASSERT_EQ(test::sha256_hex(f.bytes), (*f.ref)["sha256"].get<std::string>())
            << f.name << " changed since the references were made; rerun scripts/make_tokenizer_refs.py";
        check_groups(tok, split_lines(f.bytes), (*f.ref)[key], f.name + " " + key, c);
    }
    report(what, c);
}

TEST(TokenizerData, LinesSmolLMFromJson) { check_lines(json_tokenizer(), "lines", "data lines, SmolLM2 tokenizer.json"); }

TEST(TokenizerData, LinesSmolLMFromGguf) {
    if (!gguf_tokenizer()) GTEST_SKIP() << kModel << " is absent";
    check_lines(*gguf_tokenizer(), "lines", "data lines, SmolLM2 GGUF");
}

TEST(TokenizerData, LinesLlama3Regex) { check_lines(llama3_tokenizer(), "lines_llama3", "data lines, Llama-3 pre-tokenizer"); }

TEST(TokenizerData, LinesGpt2Regex) { check_lines(gpt2_tokenizer(), "lines_gpt2", "data lines, GPT-2 pre-tokenizer"); }

TEST(TokenizerData, ChunksAndJsonStrings) {
    const auto files = data_files();
    if (files.empty()) GTEST_SKIP() << kSharedData << " is absent";
    const BpeTokenizer& tok = gguf_tokenizer() ? *gguf_tokenizer() : json_tokenizer();
    Counts chunks, strings;
    for (const auto& f : files) {
        for (const auto& ch : (*f.ref)["chunks"]) {
            const std::string text = f.bytes.substr(ch[0].get<size_t>(), ch[1].get<size_t>());
            const auto ids = tok.encode(text, false);
            EXPECT_EQ(static_cast<int64_t>(ids.size()), ch[2].get<int64_t>()) << f.name << " chunk at " << ch[0];
            EXPECT_EQ(ids_sha(ids), ch[3].get<std::string>()) << f.name << " chunk at " << ch[0];
            // Round trip: decoding gives the text back, byte for byte.
            EXPECT_TRUE(tok.decode(ids) == text) << f.name << " chunk at " << ch[0];
            chunks.units += 1;
            chunks.tokens += static_cast<int64_t>(ids.size());
        }
        if (f.ref->contains("json_strings")) {
            check_groups(tok, json_strings(f.name, f.bytes), (*f.ref)["json_strings"], f.name + " json strings", strings);
        }
    }
    report("data as 64 KB chunks (encode + decode round trip)", chunks);
    report("data JSON string values", strings);
}

TEST(TokenizerData, ConcurrentEncodeIsDeterministic) {
    const auto files = data_files();
    if (files.empty()) GTEST_SKIP() << kSharedData << " is absent";
    const BpeTokenizer tok = BpeTokenizer::from_tokenizer_json(tokenizer_doc());  // fresh, empty cache
    std::vector<std::string> texts;
    for (const auto& f : files) texts.push_back(f.bytes.substr(0, 200000));
    std::vector<std::vector<std::vector<int32_t>>> results(4);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (size_t i = 0; i < texts.size(); ++i) results[t].push_back(tok.encode(texts[(i + t) % texts.size()]));
        });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; ++t) {
        for (size_t i = 0; i < texts.size(); ++i) {
            EXPECT_TRUE(results[t][i] == results[0][(i + t) % texts.size()]) << "thread " << t << " text " << i;
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Decoding

TEST(TokenizerDecode, MatchesHuggingFace) {
    const BpeTokenizer& tok = json_tokenizer();
    int n = 0;
    for (const auto& e : refs()["decode"]) {
        const auto ids = as_ids(e["ids"]);
        EXPECT_EQ(utf8_lossy(tok.decode(ids)), e["text"].get<std::string>()) << e["ids"];
        EXPECT_EQ(utf8_lossy(tok.decode(ids, true)), e["text_skip_special"].get<std::string>()) << e["ids"];
        ++n;
    }
    EXPECT_GT(n, 200);
    EXPECT_THROW(tok.decode({-1}), Error);
    EXPECT_THROW(tok.decode({tok.vocab_size()}), Error);
}

// GPT-2's byte -> byte-level character, to find the bytes this vocabulary has no token for.
std::string byte_level_char(unsigned char b) {
    uint32_t cp = b, next = 256;
    for (int x = 0; x < 256; ++x) {
        const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
        if (!printable) {
            if (x == b) cp = next;
            ++next;
        }
    }
    std::string out;
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return out;
}

TEST(TokenizerDecode, RoundTripOfValidText) {
    const BpeTokenizer& tok = json_tokenizer();
    // SmolLM2 has no token for 21 bytes (0x04, 0x06, ..., 0xF1, 0xF2, ...): like HF, encode drops them,
    // so the round trip gives the text without them.
    std::vector<bool> has_token(256);
    int missing = 0;
    for (int b = 0; b < 256; ++b) {
        has_token[b] = tok.token_id(byte_level_char(static_cast<unsigned char>(b))) >= 0;
        missing += has_token[b] ? 0 : 1;
    }
    EXPECT_EQ(missing, 21);
    int n = 0;
    for (const auto& e : refs()["adversarial"]) {
        if (e.contains("hex")) continue;
        const std::string text = e["text"];
        std::string want;
        for (unsigned char c : text) {
            if (has_token[c]) want += static_cast<char>(c);
        }
        EXPECT_TRUE(tok.decode(tok.encode(text)) == want) << printable(text);
        EXPECT_TRUE(tok.decode(tok.encode(text, true, false)) == want) << printable(text);
        EXPECT_TRUE(llama3_tokenizer().decode(llama3_tokenizer().encode(text)) == want) << printable(text);
        ++n;
    }
    EXPECT_GT(n, 100);
}

// Every chunk a StreamDecoder emits is valid UTF-8 and the chunks add up to the lossy decode.
void check_stream(const BpeTokenizer& tok, const std::vector<int32_t>& ids, bool skip_special, int* held_back) {
    StreamDecoder stream(tok, skip_special);
    std::string all;
    for (int32_t id : ids) {
        const std::string piece = stream.push(id);
        EXPECT_TRUE(is_valid_utf8(piece)) << printable(piece);
        if (piece.empty() && !(skip_special && tok.is_special(id)) && !tok.token_bytes(id).empty()) ++*held_back;
        all += piece;
    }
    const std::string tail = stream.finish();
    EXPECT_TRUE(is_valid_utf8(tail));
    all += tail;
    EXPECT_EQ(all, utf8_lossy(tok.decode(ids, skip_special)));
}

TEST(TokenizerDecode, StreamNeverEmitsBrokenUtf8) {
    const BpeTokenizer& tok = json_tokenizer();
    int held_back = 0;
    for (const auto& e : refs()["adversarial"]) {
        const auto ids = tok.encode(entry_bytes(e));
        check_stream(tok, ids, true, &held_back);
        check_stream(tok, ids, false, &held_back);
    }
    for (const auto& e : refs()["decode"]) check_stream(tok, as_ids(e["ids"]), true, &held_back);
    // Emoji and CJK are split over several byte tokens in this vocabulary: the decoder must have held
    // back incomplete characters many times.
    EXPECT_GT(held_back, 50);
    int emoji_held = 0;
    const auto family = tok.encode("👨‍👩‍👧‍👦 日本語");
    EXPECT_GT(family.size(), 5u);
    check_stream(tok, family, true, &emoji_held);
    EXPECT_GT(emoji_held, 0);
    // A sequence that can never complete comes out as U+FFFD at the end.
    StreamDecoder stream(tok);
    const int32_t lead = tok.token_id("ð");  // byte 0xF0
    ASSERT_GE(lead, 0);
    EXPECT_EQ(stream.push(lead), "");
    EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
    EXPECT_EQ(stream.push(lead), "");
    EXPECT_EQ(stream.push(tok.encode("a")[0]), "\xEF\xBF\xBD" "a");
}

}  // namespace
}  // namespace swiftkv
