// Multiple-choice data sets: the ARC, PIQA and Winogrande readers on the shared dev sets and on
// hand-written files (malformed lines are skipped and counted; lm-eval's prompt strings exactly),
// and Python's whitespace stripping.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "eval/multiple_choice.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

const std::string kData = std::string(SWIFTKV_SHARED_DIR) + "/data";

fs::path temp_dir() { return fs::temp_directory_path() / ("swiftkv_eval_data_" + std::to_string(::getpid())); }

// Removes the hand-written files when the test program ends.
class TempDirCleanup : public ::testing::Environment {
public:
    void TearDown() override { fs::remove_all(temp_dir()); }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

std::string write_file(const std::string& name, const std::string& text) {
    const auto dir = temp_dir();
    fs::create_directories(dir);
    const std::string path = (dir / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
}

bool have(const std::string& f) { return fs::exists(kData + "/" + f); }

}  // namespace

TEST(McData, ArcEasyAndChallengeDev) {
    if (!have("ARC-Easy-Dev.jsonl") || !have("ARC-Challenge-Dev.jsonl")) GTEST_SKIP() << "shared data missing";
    const McDataset easy = load_mc_dataset(kData + "/ARC-Easy-Dev.jsonl");
    EXPECT_EQ(easy.format, McFormat::Arc);
    EXPECT_EQ(easy.items.size(), 570u);
    EXPECT_EQ(easy.skipped, 0);
    const McItem& first = easy.items[0];
    EXPECT_EQ(first.id, "MCAS_2000_4_6");
    EXPECT_EQ(first.contexts[0], "Question: Which technology was developed most recently?\nAnswer:");
    EXPECT_EQ(first.continuations[0], " cellular telephone");
    EXPECT_EQ(first.norm_lengths[0], 18);
    EXPECT_EQ(first.gold, 0);
    size_t three = 0, five = 0;
    for (const auto& it : easy.items) {
        ASSERT_GE(it.gold, 0);
        ASSERT_LT(size_t(it.gold), it.contexts.size());
        three += it.contexts.size() == 3;
        five += it.contexts.size() == 5;
    }
    EXPECT_GT(three + five, 0u);  // the release has 3- and 5-choice questions
    const McDataset challenge = load_mc_dataset(kData + "/ARC-Challenge-Dev.jsonl", McFormat::Arc, "", 0);
    EXPECT_EQ(challenge.items.size(), 299u);
    EXPECT_EQ(challenge.skipped, 0);
    EXPECT_EQ(load_mc_dataset(kData + "/ARC-Easy-Dev.jsonl", McFormat::Auto, "", 25).items.size(), 25u);
}

TEST(McData, ArcNumericLabelsAndHuggingFaceLayout) {
    const std::string path = write_file(
        "arc.jsonl",
        R"({"id":"q1","question":{"stem":"2+2?","choices":[{"text":"3","label":"1"},{"text":"4","label":"2"},{"text":"5","label":"3"}]},"answerKey":"2"})"
        "\n"
        R"({"id":"q2","question":"Sky?","choices":{"text":["blue","green"],"label":["A","B"]},"answerKey":"A"})"
        "\n\n"
        R"({"id":"q3","question":{"stem":"x","choices":[{"text":"a","label":"A"},{"text":"b","label":"B"}]},"answerKey":"C"})"
        "\n"
        "{not json\n"
        R"(["a list"])"
        "\n"
        R"({"id":"q4","question":{"stem":"x","choices":[{"text":"a","label":"A"}]},"answerKey":"A"})"
        "\n");
    const McDataset d = load_mc_dataset(path);
    EXPECT_EQ(d.format, McFormat::Arc);
    ASSERT_EQ(d.items.size(), 2u);
    EXPECT_EQ(d.items[0].gold, 1);
    EXPECT_EQ(d.items[0].continuations[1], " 4");
    EXPECT_EQ(d.items[1].contexts[0], "Question: Sky?\nAnswer:");
    EXPECT_EQ(d.items[1].gold, 0);
    EXPECT_EQ(d.records, 6);
    EXPECT_EQ(d.skipped, 4);
    ASSERT_EQ(d.skip_messages.size(), 4u);
    EXPECT_NE(d.skip_messages[0].find(":4: answerKey 'C'"), std::string::npos) << d.skip_messages[0];
    EXPECT_NE(d.skip_messages[1].find(":5: not valid JSON"), std::string::npos) << d.skip_messages[1];
    EXPECT_NE(d.skip_messages[3].find("at least 2"), std::string::npos) << d.skip_messages[3];
}

TEST(McData, PiqaWithSiblingLabels) {
    if (!have("piqa-valid.jsonl")) GTEST_SKIP() << "shared data missing";
    const McDataset d = load_mc_dataset(kData + "/piqa-valid.jsonl");
    EXPECT_EQ(d.format, McFormat::Piqa);
    EXPECT_EQ(d.labels_path, kData + "/piqa-valid-labels.lst");
    ASSERT_EQ(d.items.size(), 1838u);
    EXPECT_EQ(d.skipped, 0);
    EXPECT_EQ(d.items[0].gold, 0);
    EXPECT_EQ(d.items[1].gold, 1);
    EXPECT_EQ(d.items[1].contexts[0], "Question: dresser\nAnswer:");
    EXPECT_EQ(d.items[1].continuations[0], " replace drawer with bobby pin ");  // kept as is, like lm-eval
    EXPECT_EQ(d.items[1].norm_lengths[1], 34);
}

TEST(McData, PiqaLabelsFileAndField) {
    const std::string data = write_file("p.jsonl", R"({"goal":"g1","sol1":"a","sol2":"b"})"
                                                   "\n"
                                                   R"({"goal":"g2","sol1":"a"})"
                                                   "\n"
                                                   R"({"goal":"g3","sol1":"a","sol2":"b"})"
                                                   "\n");
    const std::string labels = write_file("p-labels.lst", "1\n0\nx\n");
    const McDataset d = load_mc_dataset(data);  // finds p-labels.lst beside p.jsonl
    ASSERT_EQ(d.items.size(), 1u);
    EXPECT_EQ(d.items[0].gold, 1);
    EXPECT_EQ(d.skipped, 2);
    const std::string short_labels = write_file("short.lst", "1\n");
    EXPECT_THROW(load_mc_dataset(data, McFormat::Piqa, short_labels), Error);
    EXPECT_THROW(load_mc_dataset(data, McFormat::Piqa, "/nonexistent/labels.lst"), Error);
    const std::string no_labels = write_file("nolabels.jsonl", R"({"goal":"g","sol1":"a","sol2":"b"})"
                                                               "\n");
    try {
        load_mc_dataset(no_labels);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--labels"), std::string::npos) << e.what();
    }
    const std::string with_field = write_file("field.jsonl", R"({"goal":"g","sol1":"a","sol2":"b","label":1})"
                                                             "\n");
    EXPECT_EQ(load_mc_dataset(with_field).items.at(0).gold, 1);
}

TEST(McData, WinograndePartialScoring) {
    const std::string path = write_file(
        "wino.jsonl",
        R"({"qID":"w1","sentence":"The trophy doesn't fit into the brown suitcase because the _ is too large.","option1":"trophy","option2":"suitcase","answer":"1"})"
        "\n"
        R"({"qID":"w2","sentence":"No blank here.","option1":"a","option2":"b","answer":"2"})"
        "\n"
        R"({"qID":"w3","sentence":"_ went home  ","option1":"Ann","option2":"Bob","answer":2})"
        "\n");
    const McDataset d = load_mc_dataset(path);
    EXPECT_EQ(d.format, McFormat::Winogrande);
    ASSERT_EQ(d.items.size(), 2u);
    const McItem& a = d.items[0];
    EXPECT_EQ(a.id, "w1");
    EXPECT_EQ(a.contexts[0], "The trophy doesn't fit into the brown suitcase because the trophy");
    EXPECT_EQ(a.contexts[1], "The trophy doesn't fit into the brown suitcase because the suitcase");
    EXPECT_EQ(a.continuations[0], " is too large.");
    EXPECT_EQ(a.continuations[1], " is too large.");
    EXPECT_EQ(a.norm_lengths[1], int64_t(a.contexts[1].size()));
    EXPECT_EQ(a.gold, 0);
    EXPECT_EQ(d.items[1].contexts[1], "Bob");
    EXPECT_EQ(d.items[1].continuations[0], " went home");
    EXPECT_EQ(d.items[1].gold, 1);
    EXPECT_EQ(d.skipped, 1);
}

TEST(McData, UnknownFormatAndMissingFile) {
    EXPECT_THROW(load_mc_dataset("/nonexistent/file.jsonl"), Error);
    const std::string odd = write_file("odd.jsonl", R"({"text":"hello"})"
                                                    "\n");
    EXPECT_THROW(load_mc_dataset(odd), Error);
    EXPECT_THROW(parse_mc_format("hellaswag"), Error);
    EXPECT_EQ(parse_mc_format("winogrande"), McFormat::Winogrande);
}

TEST(McData, PythonWhitespaceStrip) {
    EXPECT_EQ(strip_whitespace("  a b \t\n"), "a b");
    EXPECT_EQ(strip_whitespace("  a b \n", false, true), "  a b");
    EXPECT_EQ(strip_whitespace("\xc2\xa0x\xe3\x80\x80", true, true), "x");  // U+00A0, U+3000
    EXPECT_EQ(strip_whitespace("x\xc3\xa9"), "x\xc3\xa9");                  // é is not whitespace
    EXPECT_EQ(strip_whitespace(" \x1f "), "");
    EXPECT_EQ(strip_whitespace(""), "");
}
