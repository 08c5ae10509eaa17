// swiftkv gen-data: the teacher answers prompt sets through one Engine, keeping up to
// max_num_seqs requests in flight (new ones are admitted as others finish), and every finished prompt
// is appended to the output at once (see gen_data.h for the records and resuming).
#include "gen_data.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "core/error.h"

namespace swiftkv {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr double kSyncSeconds = 5.0;   // fsync the output at least this often while writing
constexpr int kMaxRejectMessages = 5;  // prompts the engine refuses: the first few are named

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string format_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    const int64_t t = int64_t(s + 0.5);
    if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
    return fmt::format("{}:{:02}", t / 60, t % 60);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    SKV_CHECK(in.good(), "cannot read '{}'", path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Progress on stderr: a bar redrawn in place when stderr is a terminal, else a line every ~10 s.
class Progress {
public:
    Progress(bool enabled, int64_t total)
        : enabled_(enabled), tty_(::isatty(STDERR_FILENO) != 0), total_(total), start_(Clock::now()), last_(start_) {}

    void update(int64_t done, int64_t tokens) {
        if (!enabled_ || seconds_since(last_) < (tty_ ? 0.25 : 10.0)) return;
        last_ = Clock::now();
        const double elapsed = seconds_since(start_);
        const double pps = elapsed > 0 ? double(done) / elapsed : 0.0;
        const double tps = elapsed > 0 ? double(tokens) / elapsed : 0.0;
        const std::string eta = done > 0 ? format_duration(double(total_ - done) / pps) : "?";
        if (tty_) {
            constexpr int kWidth = 24;
            const int fill = total_ > 0 ? int(kWidth * done / total_) : kWidth;
            fmt::print(stderr, "\r\033[K[{}{}] {}/{} | {:.2f} prompts/s | {:.0f} tok/s | ETA {}", std::string(size_t(fill), '#'),
                       std::string(size_t(kWidth - fill), '.'), done, total_, pps, tps, eta);
            shown_ = true;
        } else {
            fmt::print(stderr, "gen-data: {}/{} prompts, {:.2f} prompts/s, {:.0f} generated tokens/s, ETA {}\n", done, total_,
                       pps, tps, eta);
        }
        std::fflush(stderr);
    }
    // A message line that does not break the bar.
    void message(const std::string& line) {
        clear();
        fmt::print(stderr, "{}\n", line);
    }
    void clear() {
        if (!shown_) return;
        fmt::print(stderr, "\r\033[K");
        std::fflush(stderr);
        shown_ = false;
    }

private:
    bool enabled_, tty_;
    int64_t total_;
    Clock::time_point start_, last_;
    bool shown_ = false;
};

// The output, opened for appending; each record is one line, flushed when written.
class OutputFile {
public:
    explicit OutputFile(const std::string& path) : path_(path), last_sync_(Clock::now()) {
        f_ = std::fopen(path.c_str(), "ab");
        SKV_CHECK(f_ != nullptr, "cannot open '{}' for writing: {}", path, std::strerror(errno));
    }
    ~OutputFile() {
        if (f_ != nullptr) std::fclose(f_);
    }
    void write(const ordered_json& record) {
        std::string line = record.dump(-1, ' ', false, json::error_handler_t::replace);
        line += '\n';
        SKV_CHECK(std::fwrite(line.data(), 1, line.size(), f_) == line.size() && std::fflush(f_) == 0,
                  "writing '{}' failed: {}", path_, std::strerror(errno));
        if (seconds_since(last_sync_) >= kSyncSeconds) sync();
    }
    void sync() {
        SKV_CHECK(std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0, "writing '{}' failed: {}", path_,
                  std::strerror(errno));
        last_sync_ = Clock::now();
    }
    void close() {
        sync();
        std::fclose(f_);
        f_ = nullptr;
    }

private:
    std::string path_;
    std::FILE* f_ = nullptr;
    Clock::time_point last_sync_;
};

// Ids already written to the output. A last line without its newline is a record cut short by a
// crash or kill: the file is truncated back to the last complete line.
struct Existing {
    std::unordered_set<std::string> ids;
    int64_t bad_lines = 0;          // complete lines that are not records (kept; their prompts rerun)
    uint64_t truncated_bytes = 0;   // the partial last line cut off
};

Existing read_existing(const std::string& path) {
    Existing e;
    if (!fs::exists(path)) return e;
    SKV_CHECK(fs::is_regular_file(path), "the output '{}' exists and is not a regular file", path);
    std::string text = read_file(path);
    const size_t last_newline = text.rfind('\n');
    const size_t keep = last_newline == std::string::npos ? 0 : last_newline + 1;
    if (keep < text.size()) {
        e.truncated_bytes = text.size() - keep;
        std::error_code ec;
        fs::resize_file(path, keep, ec);
        SKV_CHECK(!ec, "cannot truncate the partial last line of '{}': {}", path, ec.message());
        text.resize(keep);
    }
    for (size_t pos = 0; pos < text.size();) {
        const size_t end = text.find('\n', pos);
        const std::string_view line(text.data() + pos, end - pos);
        pos = end + 1;
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
        const json doc = json::parse(line, nullptr, false);
        if (doc.is_object() && doc.contains("id") && doc["id"].is_string()) {
            e.ids.insert(doc["id"].get<std::string>());
        } else {
            ++e.bad_lines;
        }
    }
    return e;
}

// User values win; then the model's generation_config.json; then temperature 0.7, top_p 1.
SamplingParams sampling_params(const GenDataOptions& o, const json& defaults) {
    auto def = [&](const char* name, float fallback) {
        if (defaults.is_object()) {
            auto it = defaults.find(name);
            if (it != defaults.end() && it->is_number()) return it->get<float>();
        }
        return fallback;
    };
    const bool model_greedy = defaults.is_object() && defaults.contains("do_sample") &&
                              defaults["do_sample"].is_boolean() && !defaults["do_sample"].get<bool>();
    SamplingParams p;
    p.temperature = o.temperature ? *o.temperature : model_greedy ? 0.0f : def("temperature", 0.7f);
    p.top_p = o.top_p ? *o.top_p : def("top_p", 1.0f);
    p.top_k = o.top_k ? *o.top_k : int32_t(def("top_k", 0.0f));
    p.min_p = o.min_p ? *o.min_p : def("min_p", 0.0f);
    p.repetition_penalty = o.repetition_penalty ? *o.repetition_penalty : def("repetition_penalty", 1.0f);
    return p;
}

std::vector<int32_t> encode_prompt(const BpeTokenizer& tok, const std::string& text) {
    const auto& spec = tok.spec();
    // A chat template that already wrote BOS must not get a second one.
    const bool starts_with_bos = spec.bos_id >= 0 && text.rfind(tok.token_bytes(spec.bos_id), 0) == 0;
    return tok.encode(text, /*add_special=*/!starts_with_bos, /*parse_special=*/true);
}

// One prompt being answered (one turn at a time).
struct Job {
    size_t index = 0;                 // in the prompt list
    json messages;                    // the conversation so far
    size_t turn = 0;                  // the turn being answered
    uint64_t request_id = 0;
    std::string answer;               // of the current turn
    std::string finish_reason;        // of the current turn, once it ended
    int64_t prompt_tokens = 0, completion_tokens = 0;
    int64_t completion_total = 0;     // over every turn
    std::vector<std::string> reasons; // one per answered turn
};

}  // namespace

int run_gen_data(const GenDataOptions& o, const std::atomic<int>& stop) {
    SKV_CHECK(!o.prompt_files.empty() || !o.text_files.empty(), "give prompt files (--prompts) or text files (--text)");
    SKV_CHECK(!o.out.empty(), "--out is required");
    SKV_CHECK(o.max_tokens >= 1, "--max-tokens must be at least 1, got {}", o.max_tokens);
    SKV_CHECK(o.text_chunk_tokens >= 1, "--text-chunk-tokens must be at least 1, got {}", o.text_chunk_tokens);
    SKV_CHECK(o.limit >= 0 && o.max_prompts >= 0, "--limit and --max-prompts must be >= 0");
    sampling_params(o, json::object()).validate();  // the values given, before loading anything
    const fs::path out_dir = fs::path(o.out).parent_path();
    SKV_CHECK(out_dir.empty() || fs::is_directory(out_dir), "the output folder '{}' does not exist", out_dir.string());

    // Inputs. Ids are "<file name>:<index>", so file names must be distinct.
    std::map<std::string, std::string> names;
    for (const auto* list : {&o.prompt_files, &o.text_files}) {
        for (const std::string& path : *list) {
            SKV_CHECK(fs::is_regular_file(path), "cannot read '{}'", path);
            const std::string name = fs::path(path).filename().string();
            auto [it, fresh] = names.emplace(name, path);
            SKV_CHECK(fresh, "two inputs are named '{}' ('{}' and '{}'); record ids are '<file name>:<index>', so "
                      "rename one", name, it->second, path);
        }
    }
    std::vector<PromptSet> sets;
    PromptSetOptions po;
    po.format = o.format;
    po.limit = o.limit;
    po.first_turn_only = o.first_turn_only;
    for (const std::string& path : o.prompt_files) sets.push_back(load_prompt_set(path, po));
    remove_duplicate_prompts(sets);
    std::vector<PromptRecord> prompts;
    for (PromptSet& s : sets) {
        int64_t multi = 0;
        for (const auto& r : s.records) multi += r.turns.size() > 1;
        fmt::print(stderr, "{}: {} prompts{} (format {}; {} records read, {} malformed skipped, {} duplicates of earlier prompts dropped)\n",
                   s.source, s.records.size(), multi > 0 ? fmt::format(", {} multi-turn", multi) : "",
                   prompt_format_name(s.format), s.records_read, s.skipped, s.duplicates);
        for (const std::string& m : s.skip_messages) fmt::print(stderr, "  skipped {}\n", m);
        for (PromptRecord& r : s.records) prompts.push_back(std::move(r));
    }
    if (o.shuffle) {  // Fisher-Yates with a fixed generator: the same seed gives the same order everywhere
        std::mt19937_64 rng(o.seed);
        for (size_t i = prompts.size(); i > 1; --i) std::swap(prompts[i - 1], prompts[size_t(rng() % i)]);
    }
    if (o.max_prompts > 0 && int64_t(prompts.size()) > o.max_prompts) prompts.resize(size_t(o.max_prompts));

    const Existing existing = read_existing(o.out);
    if (existing.truncated_bytes > 0)
        fmt::print(stderr, "{}: cut off a partial last line ({} bytes) left by an interrupted run\n", o.out,
                   existing.truncated_bytes);
    if (existing.bad_lines > 0)
        fmt::print(stderr, "{}: {} lines are not records with an \"id\"; they are kept as they are\n", o.out,
                   existing.bad_lines);
    std::vector<size_t> todo;
    for (size_t i = 0; i < prompts.size(); ++i) {
        if (!existing.ids.count(prompts[i].id)) todo.push_back(i);
    }
    if (!o.prompt_files.empty())
        fmt::print(stderr, "{} prompts in all, {} already answered in {}, {} to generate\n", prompts.size(),
                   prompts.size() - todo.size(), o.out, todo.size());
    if (todo.empty() && o.text_files.empty()) {
        fmt::print("gen-data: nothing to do; every prompt has a record in {}\n", o.out);
        return 0;
    }
    if (stop.load() != 0) return 130;

    fmt::print(stderr, "loading {} ...\n", o.engine.model.path);
    Engine engine(o.engine);
    if (stop.load() != 0) return 130;
    SKV_CHECK(engine.has_chat_template() || todo.empty(),
              "the teacher '{}' has no chat template; gen-data writes chat data and needs one",
              o.engine.model.path);
    const SamplingParams sampling = sampling_params(o, engine.generation_defaults());
    sampling.validate();
    OutputFile out(o.out);

    // Raw text: chunks copied through.
    const auto& tokenizer = engine.tokenizer();
    int64_t text_written = 0;
    for (const std::string& path : o.text_files) {
        const std::string source = fs::path(path).filename().string();
        const std::string text = read_file(path);
        const auto chunks = split_text_chunks(text, o.text_chunk_tokens, [&](std::string_view s) {
            return int64_t(tokenizer.encode(s, /*add_special=*/false, /*parse_special=*/false).size());
        });
        const size_t n = o.limit > 0 ? std::min(chunks.size(), size_t(o.limit)) : chunks.size();
        int64_t written = 0;
        for (size_t k = 0; k < n && stop.load() == 0; ++k) {
            const std::string id = fmt::format("{}:{}", source, k);
            if (existing.ids.count(id)) continue;
            out.write(ordered_json{{"id", id}, {"source", source}, {"text", chunks[k].text}});
            ++written;
        }
        text_written += written;
        fmt::print(stderr, "{}: {} text chunks of about {} tokens, {} written, {} already there\n", source, n,
                   o.text_chunk_tokens, written, int64_t(n) - written);
        if (stop.load() != 0) break;
    }
    if (stop.load() != 0) {
        out.close();
        fmt::print(stderr, "interrupted; run the same command again to continue\n");
        return 130;
    }
    if (todo.empty()) {
        out.close();
        fmt::print("gen-data: wrote {} text records to {}\n", text_written, o.out);
        return 0;
    }

    fmt::print(stderr,
               "teacher: {} (context {}, up to {} requests in flight, {} tokens a step); sampling: temperature {}, "
               "top_p {}, top_k {}, max_tokens {}, seed {} + prompt index\n",
               o.engine.model.path, engine.context_length(), o.engine.max_num_seqs, o.engine.max_batched_tokens,
               sampling.temperature, sampling.top_p, sampling.top_k, o.max_tokens, o.seed);

    std::unordered_map<size_t, std::unique_ptr<Job>> jobs;  // in flight, by prompt index
    std::vector<Job*> ended;                                 // turns that ended in the last step
    Progress progress(!o.quiet, int64_t(todo.size()));
    int64_t done = 0, written = 0, rejected = 0;
    std::map<std::string, int64_t> reasons;

    // Queues the job's next turn; false (with a message) when the engine refuses it (too long).
    auto submit = [&](Job& job) {
        const PromptRecord& p = prompts[job.index];
        job.messages.push_back({{"role", "user"}, {"content", p.turns[job.turn]}});
        job.answer.clear();
        job.finish_reason.clear();
        try {
            GenerationRequest req;
            req.prompt = encode_prompt(tokenizer, engine.apply_chat_template(job.messages, true));
            req.sampling = sampling;
            req.sampling.seed = (o.seed + uint64_t(job.index)) ^ (uint64_t(job.turn) * 0x9E3779B97F4A7C15ull);
            req.max_tokens = o.max_tokens;
            Job* j = &job;
            job.request_id = engine.add_request(std::move(req), [j, &ended](const ChoiceEvent& ev) {
                j->answer += ev.text;
                if (!ev.finished) return;
                j->finish_reason = ev.finish_reason;
                j->prompt_tokens = ev.prompt_tokens;
                j->completion_tokens = ev.completion_tokens;
                ended.push_back(j);
            });
        } catch (const std::exception& e) {
            job.messages.erase(job.messages.end() - 1);
            if (++rejected <= kMaxRejectMessages) {
                progress.message(fmt::format("{}{}: skipped: {}", p.id, job.turn > 0 ? fmt::format(" turn {}", job.turn + 1) : "",
                                             e.what()));
            }
            return false;
        }
        return true;
    };
    auto write_job = [&](const Job& j) {
        const PromptRecord& p = prompts[j.index];
        ordered_json rec;
        rec["id"] = p.id;
        rec["source"] = p.source;
        ordered_json messages = ordered_json::array();
        for (const json& m : j.messages) messages.push_back({{"role", m["role"]}, {"content", m["content"]}});
        rec["messages"] = std::move(messages);
        rec["finish_reason"] = j.reasons.back();
        if (j.reasons.size() > 1) rec["finish_reasons"] = j.reasons;
        rec["prompt_tokens"] = j.prompt_tokens;
        rec["completion_tokens"] = j.completion_total;
        out.write(rec);
        ++written;
        ++reasons[j.reasons.back()];
    };

    const auto start = Clock::now();
    const int64_t tokens_before = engine.stats().generation_tokens_total;
    size_t next = 0;
    bool interrupted = false;
    while (true) {
        if (stop.load() != 0) {
            interrupted = true;
            break;
        }
        while (jobs.size() < size_t(o.engine.max_num_seqs) && next < todo.size()) {
            auto job = std::make_unique<Job>();
            job->index = todo[next++];
            job->messages = prompts[job->index].context;
            if (submit(*job)) {
                jobs.emplace(job->index, std::move(job));
            } else {
                ++done;
            }
        }
        if (jobs.empty()) break;
        engine.step();
        std::vector<Job*> now;
        now.swap(ended);
        for (Job* j : now) {
            j->messages.push_back({{"role", "assistant"}, {"content", j->answer}});
            j->reasons.push_back(j->finish_reason);
            j->completion_total += j->completion_tokens;
            const PromptRecord& p = prompts[j->index];
            if (j->turn + 1 < p.turns.size() && j->finish_reason != "kv_cache") {
                ++j->turn;
                if (submit(*j)) continue;  // else: written with the turns answered so far
            }
            write_job(*j);
            ++done;
            jobs.erase(j->index);
        }
        progress.update(done, engine.stats().generation_tokens_total - tokens_before);
    }
    const double elapsed = seconds_since(start);
    const int64_t gen_tokens = engine.stats().generation_tokens_total - tokens_before;
    if (interrupted) {
        for (auto& [index, job] : jobs) engine.abort(job->request_id);  // their callbacks' output is dropped
        const size_t aborted = jobs.size();
        jobs.clear();
        out.close();
        progress.clear();
        fmt::print(stderr,
                   "interrupted: {} records written in {:.1f} s, {} requests in flight aborted (not written); run the "
                   "same command again to continue\n",
                   written, elapsed, aborted);
        return 130;
    }
    out.close();
    progress.clear();
    std::string finish;
    for (const auto& [reason, n] : reasons) finish += fmt::format("{}{} {}", finish.empty() ? "" : ", ", reason, n);
    const EngineStats st = engine.stats();
    fmt::print("gen-data: wrote {} records to {}{} in {:.1f} s: {:.2f} prompts/s, {:.1f} generated tokens/s ({} generated, "
               "{} prompt tokens, {} preemptions); finish: {}{}\n",
               written, o.out, text_written > 0 ? fmt::format(" (and {} text records)", text_written) : "", elapsed,
               elapsed > 0 ? double(written) / elapsed : 0.0, elapsed > 0 ? double(gen_tokens) / elapsed : 0.0, gen_tokens,
               st.prompt_tokens_total, st.preemptions, finish.empty() ? "none" : finish,
               rejected > 0 ? fmt::format("; {} prompts skipped (the engine refused them, e.g. longer than the context)", rejected)
                            : "");
    return 0;
}

}  // namespace swiftkv
