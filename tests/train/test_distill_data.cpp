// The distillation data pipeline (train/distill_data.h): every record kind is read, malformed lines are
// skipped and counted with their file:line (never silently), the assistant mask covers exactly the
// assistant turns' rendered content, long documents are cut to seq_len, and the packed stream is a
// reproducible function of (data, seed) that covers each epoch's tokens exactly once without letting a
// segment cross a row.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "train/distill_data.h"
#include "train_test_util.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

std::string write_file(const std::string& dir, const std::string& name, const std::string& content) {
    const std::string path = dir + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
}

std::string decode(const std::vector<int32_t>& ids, size_t begin, size_t end) {
    std::string s;
    for (size_t i = begin; i < end; ++i) {
        const int32_t id = ids[i];
        s += id < 256 ? std::string(1, char(id)) : id == 257 ? "<|im_start|>" : id == 258 ? "<|im_end|>" : "<s>";
    }
    return s;
}

}  // namespace

TEST(DistillData, ReadsRecordKindsAndCountsMalformedLines) {
    const std::string dir = test_temp_dir("data");
    const std::string jsonl = write_file(dir, "mixed.jsonl",
        R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})" "\n"
        R"({"instruction": "Add", "input": "2+2", "output": "4"})" "\n"
        "\n"                                                                  // blank: not a record
        R"({"messages": [{"role": "user", "content": "x"}, )" "\n"            // 3: bad JSON
        R"({"prompt": 7, "response": "no"})" "\n"                             // 4: prompt not a string
        R"({"something": "else"})" "\n"                                       // 5: no known field
        R"({"messages": [{"role": "wizard", "content": "x"}]})" "\n"          // 6: unknown role
        R"("a bare prompt")" "\n"
        R"({"question": "Q?", "answer": "A."})" "\n"
        R"({"turns": ["one", "two"]})" "\n"
        R"({"text": "plain text record"})" "\n"
        R"([1, 2, 3])" "\n");                                                 // 12: not an object
    const std::string json = write_file(dir, "arr.json", R"([{"instruction": "I", "output": "O"}, 5, {"text": ""}])");
    const std::string txt = write_file(dir, "t.txt", std::string(1000, 'a'));
    const DistillCorpus c = load_distill_corpus({jsonl, json, txt}, byte_codec(), 300);
    ASSERT_EQ(c.files.size(), 3u);
    EXPECT_EQ(c.files[0].records, 11);  // 12 lines, one blank
    EXPECT_EQ(c.files[0].malformed, 5);
    EXPECT_EQ(c.files[1].records, 3);
    EXPECT_EQ(c.files[1].malformed, 2);
    EXPECT_EQ(c.files[2].documents, 4);  // 1000 tokens + BOS cut into 300-token pieces
    EXPECT_EQ(c.malformed, 7);
    ASSERT_GE(c.malformed_examples.size(), 5u);
    EXPECT_NE(c.malformed_examples[0].find("mixed.jsonl:4"), std::string::npos) << c.malformed_examples[0];
    EXPECT_NE(c.malformed_examples[0].find("not valid JSON"), std::string::npos);
    EXPECT_NE(c.malformed_examples[1].find("mixed.jsonl:5"), std::string::npos) << c.malformed_examples[1];
    EXPECT_NE(c.malformed_examples[3].find("unknown role"), std::string::npos) << c.malformed_examples[3];
    for (const auto& d : c.documents) {
        EXPECT_LE(int64_t(d.tokens.size()), 300);
        EXPECT_EQ(d.tokens.size(), d.assistant.size());
    }

    // The first chat: the mask is exactly "Hello!<|im_end|>\n".
    const DistillDocument& chat = c.documents[0];
    EXPECT_EQ(decode(chat.tokens, 0, chat.tokens.size()),
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
    size_t first = chat.assistant.size(), last = 0, count = 0;
    for (size_t i = 0; i < chat.assistant.size(); ++i)
        if (chat.assistant[i]) first = std::min(first, i), last = i, ++count;
    EXPECT_EQ(decode(chat.tokens, first, last + 1), "Hello!<|im_end|>\n");
    EXPECT_EQ(count, last + 1 - first);
    // The instruction pair becomes user + assistant, the input appended.
    EXPECT_EQ(decode(c.documents[1].tokens, 0, c.documents[1].tokens.size()),
              "<|im_start|>user\nAdd\n\n2+2<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
    std::filesystem::remove_all(dir);
}

TEST(DistillData, ErrorsAreClear) {
    const std::string dir = test_temp_dir("data_err");
    try {
        load_distill_corpus({dir + "/missing.jsonl"}, byte_codec(), 16);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
    }
    const std::string csv = write_file(dir, "x.csv", "a,b\n");
    EXPECT_THROW(load_distill_corpus({csv}, byte_codec(), 16), Error);
    const std::string bad = write_file(dir, "bad.jsonl", "{\n}\n");
    try {
        load_distill_corpus({bad}, byte_codec(), 16);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no usable records (2 malformed"), std::string::npos) << e.what();
    }
    // Chat data needs a template.
    DistillTextCodec no_template = byte_codec();
    no_template.render_chat = nullptr;
    const std::string chat = write_file(dir, "c.jsonl", R"({"prompt": "p", "response": "r"})" "\n");
    try {
        load_distill_corpus({chat}, no_template, 16);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("chat template"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}

TEST(DistillData, PackedStreamIsReproducibleAndCoversEachEpoch) {
    const std::string dir = test_temp_dir("pack");
    std::string lines;
    for (int i = 0; i < 40; ++i)
        lines += R"({"prompt": "question )" + std::to_string(i) + std::string(size_t(i % 7) * 5, 'q') +
                 R"(", "response": "answer )" + std::to_string(i) + std::string(size_t(i % 5) * 9, 'a') + "\"}\n";
    const std::string path = write_file(dir, "d.jsonl", lines);
    const DistillCorpus c = load_distill_corpus({path}, byte_codec(), 64);
    PackedStream a(c, 7), b(c, 7), other(c, 8);
    const int64_t R = a.rows_per_epoch();
    ASSERT_EQ(R, c.tokens / 64);
    int64_t covered = 0;
    bool differs = false;
    for (int64_t row = 0; row < 2 * R; ++row) {
        PackedBatch x, y, z;
        a.append_row(row, LossMask::Assistant, x);
        b.append_row(row, LossMask::Assistant, y);
        other.append_row(row, LossMask::Assistant, z);
        ASSERT_EQ(x.num_tokens(), 64);
        EXPECT_EQ(x.tokens, y.tokens);
        EXPECT_EQ(x.cu_seqlens, y.cu_seqlens);
        EXPECT_EQ(x.row_weights, y.row_weights);
        differs = differs || x.tokens != z.tokens;
        x.validate(kByteVocab, 4096);
        if (row < R) covered += x.num_tokens();
        // A row's weight is 1 exactly when its next token (same document) is an assistant token.
        for (float w : x.row_weights) EXPECT_TRUE(w == 0.0f || w == 1.0f);
    }
    EXPECT_TRUE(differs) << "another seed should give another order";
    EXPECT_EQ(covered, R * 64);
    // Epoch 1 is shuffled differently from epoch 0.
    PackedBatch e0, e1;
    a.append_row(0, LossMask::AllTokens, e0);
    a.append_row(R, LossMask::AllTokens, e1);
    EXPECT_NE(e0.tokens, e1.tokens);
    for (float w : e0.row_weights) EXPECT_EQ(w, 1.0f);
    // Random access gives what sequential access gave (what resuming relies on).
    PackedStream fresh(c, 7);
    PackedBatch late, again;
    fresh.append_row(R + 3, LossMask::Assistant, late);
    a.append_row(R + 3, LossMask::Assistant, again);
    EXPECT_EQ(late.tokens, again.tokens);
    EXPECT_EQ(late.row_weights, again.row_weights);
    std::filesystem::remove_all(dir);
}

TEST(DistillData, PreTokenizedRecordsAreTakenAsGiven) {
    const std::string dir = test_temp_dir("data_ids");
    const std::string path = write_file(dir, "ids.jsonl",
        R"({"input_ids": [5, 6, 7, 8]})" "\n"
        R"({"input_ids": [1, 2, 3], "assistant_mask": [0, 1, 1]})" "\n"
        R"({"input_ids": [1, 99999]})" "\n"                                  // 3: outside the vocabulary
        R"({"input_ids": [1, 2], "assistant_mask": [1]})" "\n"              // 4: mask of the wrong length
        R"({"input_ids": ["a"]})" "\n"                                      // 5: not integers
        R"({"input_ids": []})" "\n");                                       // 6: empty
    DistillTextCodec codec = byte_codec();
    codec.vocab = kByteVocab;
    const DistillCorpus c = load_distill_corpus({path}, codec, 16);
    EXPECT_EQ(c.files[0].records, 6);
    EXPECT_EQ(c.malformed, 4);
    ASSERT_EQ(c.documents.size(), 2u);
    EXPECT_EQ(c.documents[0].tokens, (std::vector<int32_t>{5, 6, 7, 8}));  // no BOS added
    EXPECT_EQ(c.documents[0].assistant, (std::vector<uint8_t>{0, 0, 0, 0}));
    EXPECT_EQ(c.documents[1].assistant, (std::vector<uint8_t>{0, 1, 1}));
    EXPECT_EQ(c.assistant_tokens, 2);
    EXPECT_NE(c.malformed_examples[0].find("ids.jsonl:3"), std::string::npos) << c.malformed_examples[0];
    EXPECT_NE(c.malformed_examples[0].find("outside the vocabulary"), std::string::npos) << c.malformed_examples[0];
    EXPECT_NE(c.malformed_examples[1].find("assistant_mask"), std::string::npos) << c.malformed_examples[1];
    std::filesystem::remove_all(dir);
}
