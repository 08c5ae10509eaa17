// Prompt-set readers (io/prompt_sets.h) on every prompt file of the shared data (record counts as
// SOURCES.md gives them, the first prompt of each, the detected format, overlaps removed), on
// hand-written files (generic messages/prompt/instruction records, malformed lines skipped and
// counted), and the raw-text chunker. The shared-data tests skip when ../shared/data is missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/prompt_sets.h"

using namespace swiftkv;
namespace fs = std::filesystem;

namespace {

const std::string kData = std::string(SWIFTKV_SHARED_DIR) + "/data";

std::string write_file(const std::string& name, const std::string& text) {
    const auto dir = fs::temp_directory_path() / ("swiftkv_prompt_sets_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string path = (dir / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
}

bool have(const std::string& f) { return fs::exists(kData + "/" + f); }

struct SharedFile {
    const char* name;
    size_t records;
    PromptFormat format;
    const char* first;  // the first prompt (first turn)
};

const SharedFile kShared[] = {
    {"alpaca_eval_805_example_outputs.json", 805, PromptFormat::Instruction,
     "What are the names of some famous actors that started their careers on Broadway?"},
    {"mt_bench_questions.jsonl", 80, PromptFormat::Turns,
     "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and "
     "must-see attractions."},
    {"vicuna_bench_questions.jsonl", 80, PromptFormat::Turns, "How can I improve my time management skills?"},
    {"self_instruct_seed_tasks.jsonl", 175, PromptFormat::Instruction,
     "Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, and has roughly "
     "700-1000 calories?"},
    {"self_instruct_user_oriented_instructions.jsonl", 252, PromptFormat::Instruction,
     "The sentence you are given might be too wordy, complicated, or unclear. Rewrite the sentence and make your "
     "writing clearer by keeping it concise. Whenever possible, break complex sentences into multiple sentences and "
     "eliminate unnecessary words.\n\nIf you have any questions about my rate or if you find it necessary to increase "
     "or decrease the scope for this project, please let me know."},
    {"arena_hard_v0.1_questions.jsonl", 500, PromptFormat::Prompt,
     "Use ABC notation to write a melody in the style of a folk tune."},
    {"wizardlm_testset.jsonl", 218, PromptFormat::Instruction,
     "If a car travels 120 miles in 2 hours, what is its average speed in miles per hour?"},
    {"oasst_prompt_lottery_en_250.jsonl", 250, PromptFormat::String, "Can you tell me about GLaDOS?"},
    {"ultrachat_ultra_eval_385.json", 385, PromptFormat::Data,
     "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and "
     "must-see attractions."},
    {"gsm8k_train.jsonl", 7473, PromptFormat::Question,
     "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
     "did Natalia sell altogether in April and May?"},
};

}  // namespace

TEST(PromptSets, EverySharedPromptFile) {
    for (const SharedFile& f : kShared) {
        if (!have(f.name)) GTEST_SKIP() << "shared data missing";
        SCOPED_TRACE(f.name);
        const PromptSet s = load_prompt_set(kData + "/" + f.name);
        EXPECT_EQ(s.records.size(), f.records);
        EXPECT_EQ(s.records_read, int64_t(f.records));
        EXPECT_EQ(s.skipped, 0) << (s.skip_messages.empty() ? "" : s.skip_messages[0]);
        EXPECT_EQ(s.format, f.format);
        EXPECT_EQ(s.source, f.name);
        ASSERT_FALSE(s.records.empty());
        const PromptRecord& r = s.records[0];
        EXPECT_EQ(r.id, std::string(f.name) + ":0");
        EXPECT_EQ(r.index, 0);
        EXPECT_TRUE(r.context.empty());
        ASSERT_FALSE(r.turns.empty());
        EXPECT_EQ(r.turns[0], f.first);
        EXPECT_EQ(r.turns.size(), std::string(f.name).rfind("mt_bench", 0) == 0 ? 2u : 1u);
        for (const PromptRecord& p : s.records) {
            for (const std::string& t : p.turns) ASSERT_FALSE(t.empty());
        }
        EXPECT_EQ(s.records.back().id, fmt::format("{}:{}", f.name, f.records - 1));
    }
}

TEST(PromptSets, MtBenchTurnsAndFirstTurnOnly) {
    if (!have("mt_bench_questions.jsonl")) GTEST_SKIP() << "shared data missing";
    const PromptSet two = load_prompt_set(kData + "/mt_bench_questions.jsonl");
    size_t turns = 0;
    for (const auto& r : two.records) turns += r.turns.size();
    EXPECT_EQ(turns, 160u);  // SOURCES.md: 80 questions, 160 turns
    EXPECT_EQ(two.records[0].turns[1], "Rewrite your previous response. Start every sentence with the letter A.");
    PromptSetOptions o;
    o.first_turn_only = true;
    o.limit = 7;
    const PromptSet one = load_prompt_set(kData + "/mt_bench_questions.jsonl", o);
    EXPECT_EQ(one.records.size(), 7u);
    for (const auto& r : one.records) EXPECT_EQ(r.turns.size(), 1u);
}

TEST(PromptSets, NoReferenceAnswersAreRead) {
    if (!have("gsm8k_train.jsonl") || !have("alpaca_eval_805_example_outputs.json") || !have("self_instruct_seed_tasks.jsonl"))
        GTEST_SKIP() << "shared data missing";
    PromptSetOptions o;
    o.limit = 50;
    for (const char* f : {"gsm8k_train.jsonl", "alpaca_eval_805_example_outputs.json", "self_instruct_seed_tasks.jsonl"}) {
        const PromptSet s = load_prompt_set(kData + "/" + f, o);
        for (const auto& r : s.records) {
            EXPECT_EQ(r.turns[0].find("####"), std::string::npos) << f;  // GSM8K answers end in "#### N"
        }
    }
    const PromptSet seed = load_prompt_set(kData + "/self_instruct_seed_tasks.jsonl", o);
    EXPECT_EQ(seed.records[0].turns[0].find("oatmeal"), std::string::npos);  // the instance's output
}

TEST(PromptSets, DuplicatesAcrossSharedFiles) {
    std::vector<PromptSet> sets;
    for (const SharedFile& f : kShared) {
        if (!have(f.name)) GTEST_SKIP() << "shared data missing";
        sets.push_back(load_prompt_set(kData + "/" + f.name));
    }
    const int64_t dropped = remove_duplicate_prompts(sets);
    // SOURCES.md: AlpacaEval holds the 80 Vicuna prompts and the 252 self-instruct user-oriented ones
    // (input appended after a blank line); UltraChat's eval holds the 80 Vicuna prompts too.
    EXPECT_EQ(sets[2].duplicates, 80);   // vicuna
    EXPECT_EQ(sets[4].duplicates, 252);  // self-instruct user-oriented
    EXPECT_GE(sets[8].duplicates, 80);   // ultrachat
    EXPECT_EQ(sets[0].duplicates, 0);
    EXPECT_EQ(sets[1].duplicates, 0);    // MT-bench conversations are two turns: not a single prompt
    size_t kept = 0;
    for (const auto& s : sets) kept += s.records.size();
    EXPECT_EQ(int64_t(kept) + dropped, 805 + 80 + 80 + 175 + 252 + 500 + 218 + 250 + 385 + 7473);
    EXPECT_EQ(kept, 9799u);
}

TEST(PromptSets, MalformedLinesAreSkippedAndCounted) {
    const std::string path = write_file("bad.jsonl",
                                        "{\"prompt\": \"first\"}\n"
                                        "{\"prompt\": \"second\"\n"           // bad JSON
                                        "\n"                                  // blank: not a record
                                        "[1, 2]\n"                            // not an object
                                        "{\"prompt\": 7}\n"                   // not a string
                                        "{\"prompt\": \"   \"}\n"             // empty
                                        "{\"other\": \"x\"}\n"                // no prompt
                                        "{\"prompt\": \"  third \\n\"}\n");
    const PromptSet s = load_prompt_set(path);
    EXPECT_EQ(s.format, PromptFormat::Prompt);
    EXPECT_EQ(s.records_read, 7);
    EXPECT_EQ(s.skipped, 5);
    ASSERT_EQ(s.records.size(), 2u);
    EXPECT_EQ(s.records[0].turns[0], "first");
    EXPECT_EQ(s.records[1].turns[0], "third");
    EXPECT_EQ(s.records[1].id, "bad.jsonl:6");  // position among the file's records, malformed ones counted
    ASSERT_EQ(s.skip_messages.size(), 5u);
    EXPECT_NE(s.skip_messages[0].find("bad.jsonl:2: not valid JSON"), std::string::npos) << s.skip_messages[0];
    EXPECT_NE(s.skip_messages[1].find(":4: "), std::string::npos) << s.skip_messages[1];

    // A malformed first line does not decide the format.
    const PromptSet t = load_prompt_set(write_file("bad_first.jsonl", "{oops\n{\"question\": \"q?\"}\n"));
    EXPECT_EQ(t.format, PromptFormat::Question);
    EXPECT_EQ(t.skipped, 1);
    EXPECT_EQ(t.records.size(), 1u);
}

TEST(PromptSets, GenericMessagesPromptInstruction) {
    const std::string path = write_file(
        "chat.jsonl",
        R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "reference answer"}]})"
        "\n"
        R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}]}]})"
        "\n"
        R"({"messages": [{"role": "assistant", "content": "no user"}]})"
        "\n"
        R"({"messages": [{"role": "robot", "content": "x"}]})"
        "\n");
    const PromptSet s = load_prompt_set(path);
    EXPECT_EQ(s.format, PromptFormat::Messages);
    ASSERT_EQ(s.records.size(), 2u);
    EXPECT_EQ(s.skipped, 2);
    const PromptRecord& r = s.records[0];
    ASSERT_EQ(r.context.size(), 3u);
    EXPECT_EQ(r.context[0]["role"], "system");
    EXPECT_EQ(r.context[2]["content"], "Hello");
    EXPECT_EQ(r.turns, std::vector<std::string>{"2+2?"});  // the trailing assistant answer is dropped
    EXPECT_EQ(s.records[1].turns[0], "part one part two");

    const PromptSet g = load_prompt_set(write_file(
        "sharegpt.jsonl", R"({"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}]})" "\n"));
    ASSERT_EQ(g.records.size(), 1u);
    EXPECT_EQ(g.records[0].turns[0], "Q1");

    const PromptSet a = load_prompt_set(write_file(
        "alpaca.json",
        R"([{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}, {"instruction": "Say hi.", "input": ""}, {"instruction": "Sum.", "instances": [{"input": "1 2", "output": "3"}]}])"));
    EXPECT_EQ(a.format, PromptFormat::Instruction);
    ASSERT_EQ(a.records.size(), 3u);
    EXPECT_EQ(a.records[0].turns[0], "Translate.\n\nBonjour");
    EXPECT_EQ(a.records[1].turns[0], "Say hi.");
    EXPECT_EQ(a.records[2].turns[0], "Sum.\n\n1 2");

    // The arena-hard variant with {"content"} turns; UltraChat's list form.
    const PromptSet v = load_prompt_set(write_file("arena_v2.jsonl", R"({"uid": "x", "turns": [{"content": "Write a poem."}]})" "\n"));
    EXPECT_EQ(v.format, PromptFormat::Turns);
    EXPECT_EQ(v.records.at(0).turns, std::vector<std::string>{"Write a poem."});
    const PromptSet u = load_prompt_set(write_file("ultra.json", R"([{"id": "1", "data": ["Question?", "reference answer", "Follow-up?"]}])"));
    EXPECT_EQ(u.records.at(0).turns, std::vector<std::string>{"Question?"});

    // Forced format: records that do not fit are malformed.
    PromptSetOptions o;
    o.format = PromptFormat::Question;
    const PromptSet f = load_prompt_set(path, o);
    EXPECT_EQ(f.records.size(), 0u);
    EXPECT_EQ(f.skipped, 4);
}

TEST(PromptSets, Errors) {
    EXPECT_THROW(load_prompt_set("/nonexistent/prompts.jsonl"), Error);
    EXPECT_THROW(load_prompt_set(write_file("broken.json", "[{\"prompt\": \"a\"},")), Error);
    try {
        load_prompt_set(write_file("unknown.jsonl", "{\"foo\": 1, \"bar\": 2}\n"));
        FAIL() << "no format fits";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("bar, foo"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("--format"), std::string::npos) << e.what();
    }
    EXPECT_THROW(load_prompt_set(write_file("empty.jsonl", "\n\n")), Error);
    EXPECT_THROW(parse_prompt_format("csv"), Error);
    EXPECT_EQ(parse_prompt_format("turns"), PromptFormat::Turns);
}

namespace {

int64_t count_words(std::string_view s) {
    int64_t n = 0;
    bool in_word = false;
    for (char c : s) {
        const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
        n += !space && !in_word;
        in_word = !space;
    }
    return n;
}

}  // namespace

TEST(TextChunks, CutAtBlankLinesWithinTheTarget) {
    const std::string text = "\n\none two three\nfour\n\n  \nfive six\n\nseven eight nine ten\n";
    const auto chunks = split_text_chunks(text, 6, count_words);
    ASSERT_EQ(chunks.size(), 2u);
    EXPECT_EQ(chunks[0].text, "one two three\nfour\n\n  \nfive six");
    EXPECT_EQ(chunks[0].tokens, 6);
    EXPECT_EQ(chunks[1].text, "seven eight nine ten");

    // A paragraph over the target is cut at line ends, a line over it at spaces.
    const std::string para = "a b c\nd e f\ng h i j k l m n o p q r s t\n";
    const auto pieces = split_text_chunks(para, 4, count_words);
    std::string joined;
    for (const auto& c : pieces) {
        EXPECT_LE(c.tokens, 4) << c.text;
        EXPECT_NE(para.find(c.text), std::string::npos);
        joined += c.text + " ";
    }
    EXPECT_EQ(count_words(joined), count_words(para));
    EXPECT_EQ(pieces[0].text, "a b c");
    EXPECT_TRUE(split_text_chunks("\n \n", 10, count_words).empty());
    EXPECT_THROW(split_text_chunks("x", 0, count_words), Error);
}

TEST(TextChunks, TinyShakespeareCoversEveryLine) {
    if (!have("tinyshakespeare.txt")) GTEST_SKIP() << "shared data missing";
    std::ifstream in(kData + "/tinyshakespeare.txt", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const auto chunks = split_text_chunks(text, 300, count_words);
    ASSERT_GT(chunks.size(), 100u);
    int64_t words = 0;
    size_t pos = 0;
    for (const auto& c : chunks) {
        words += count_words(c.text);
        EXPECT_LE(c.tokens, 300);
        const size_t at = text.find(c.text, pos);  // in order, exact substrings
        ASSERT_NE(at, std::string::npos);
        EXPECT_TRUE(at == 0 || text[at - 1] == '\n');
        pos = at + c.text.size();
        EXPECT_TRUE(pos == text.size() || text.compare(pos, 2, "\n\n") == 0 || text.compare(pos, 1, "\n") == 0);
    }
    EXPECT_EQ(words, count_words(text));
}
