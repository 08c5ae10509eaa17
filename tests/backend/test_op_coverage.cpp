// Every op of the backend interfaces (backend/backend.h, backend/train_ops.h) is exercised on every
// backend: by a suite of tests/backend instantiated on all_backend_names() (double-precision references,
// each backend the machine has). Adding an op without test cases fails here, with the op's name. The op
// names are read from the headers, so the list cannot drift from the interfaces.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Names of the virtual methods declared in a header, minus those that are not ops (memory, device
// facts, graphs, the training accessor).
std::set<std::string> ops_declared(const fs::path& header) {
    static const std::set<std::string> not_ops = {"name",         "alloc",        "free",          "upload",
                                                  "download",     "copy",         "fill_zero",     "synchronize",
                                                  "supports_weight_dtype",        "act_dtype",     "memory_info",
                                                  "supports_graphs", "capture",   "replay",        "training"};
    const std::string text = read_file(header);
    std::set<std::string> out;
    const std::regex decl(R"(virtual\s+[\w:<>&*\s]+?\b(\w+)\s*\()");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), decl); it != std::sregex_iterator(); ++it) {
        const std::string name = (*it)[1];
        if (!not_ops.count(name)) out.insert(name);
    }
    return out;
}

// Ops called (".op(" or "->op(") in the .cpp files of a folder whose names start with `prefix` and, if
// `marker` is not empty, that contain it.
std::set<std::string> ops_called(const fs::path& dir, const std::set<std::string>& ops, const std::string& prefix,
                                 const std::string& marker = "") {
    std::string all;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string fname = e.path().filename().string();
        if (fname.rfind(prefix, 0) != 0 || fname == "test_op_coverage.cpp" || e.path().extension() != ".cpp") continue;
        const std::string text = read_file(e.path());
        if (marker.empty() || text.find(marker) != std::string::npos) all += text;
    }
    std::set<std::string> out;
    for (const std::string& op : ops) {
        if (all.find("." + op + "(") != std::string::npos || all.find("->" + op + "(") != std::string::npos)
            out.insert(op);
    }
    return out;
}

// An op is tested on every backend when a suite instantiated on all_backend_names() calls it.
TEST(OpCoverage, EveryOpHasTestsOnEveryBackend) {
    const fs::path src = SWIFTKV_SOURCE_DIR;
    std::set<std::string> ops = ops_declared(src / "src/backend/backend.h");
    const std::set<std::string> train = ops_declared(src / "src/backend/train_ops.h");
    ASSERT_GE(ops.size(), 12u) << "could not read the inference ops from backend.h";
    ASSERT_GE(train.size(), 12u) << "could not read the training ops from train_ops.h";
    ops.insert(train.begin(), train.end());
    const auto every = ops_called(src / "tests/backend", ops, "test_", "all_backend_names()");
    for (const std::string& op : ops)
        EXPECT_TRUE(every.count(op)) << op << " has no test in a tests/backend suite instantiated on all_backend_names()";
}

}  // namespace
