// swiftkv::Error — the one exception type of the project, and the check macros that throw it.
// Messages are written for the user: say what is wrong and what to do. The source location is kept
// separately (where()) so the CLI can show it in verbose mode without cluttering the message.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace swiftkv {

class Error : public std::runtime_error {
public:
    Error(std::string message, const char* file = "", int line = 0)
        : std::runtime_error(std::move(message)), file_(file), line_(line) {}
    std::string where() const { return fmt::format("{}:{}", file_, line_); }

private:
    const char* file_;
    int line_;
};

}  // namespace swiftkv

// SKV_THROW("tensor '{}' is missing", name) — throws swiftkv::Error with a formatted message.
#define SKV_THROW(...) throw ::swiftkv::Error(::fmt::format(__VA_ARGS__), __FILE__, __LINE__)

// SKV_CHECK(cond, "message {}", arg) — throws swiftkv::Error when cond is false.
#define SKV_CHECK(cond, ...)          \
    do {                              \
        if (!(cond)) SKV_THROW(__VA_ARGS__); \
    } while (0)
