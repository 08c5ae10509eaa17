// render_driver — reads JSON lines {"template": ..., "context": {...}} on stdin and answers each
// with one JSON line {"ok": output} or {"error": message}; a C++ exception of any other type is
// reported as {"crash": ...}. fuzz_against_jinja2.py drives it to compare with Python's jinja2.
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/chat_template.h"

int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        nlohmann::json answer;
        try {
            auto request = nlohmann::json::parse(line);
            answer["ok"] = swiftkv::ChatTemplate(request.at("template").get<std::string>()).render(request.at("context"));
        } catch (const swiftkv::Error& e) {
            answer["error"] = e.what();
        } catch (const std::exception& e) {
            answer["crash"] = e.what();
        }
        std::cout << answer.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n' << std::flush;
    }
}
