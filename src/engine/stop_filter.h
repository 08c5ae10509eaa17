// StopStringFilter — holds back generated text that might be the beginning of a stop string, so a
// stop string is never emitted, even when it arrives split across tokens.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace swiftkv {

class StopStringFilter {
public:
    explicit StopStringFilter(const std::vector<std::string>& stops) : stops_(stops) {
        for (const auto& s : stops_) max_len_ = std::max(max_len_, s.size());
    }
    // Appends text; returns (text now safe to emit, whether a stop string was found). After a stop
    // string the text from it on is dropped.
    std::pair<std::string, bool> push(std::string_view text) {
        pending_ += text;
        for (const auto& s : stops_) {
            if (s.empty()) continue;
            const size_t at = pending_.find(s);
            if (at != std::string::npos) {
                std::string out = pending_.substr(0, at);
                pending_.clear();
                return {out, true};
            }
        }
        if (max_len_ == 0) return {std::exchange(pending_, {}), false};
        // Keep the longest suffix that is a proper prefix of some stop string.
        size_t keep = 0;
        for (const auto& s : stops_) {
            for (size_t n = std::min(s.size() - 1, pending_.size()); n > keep; --n) {
                if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
                    keep = n;
                    break;
                }
            }
        }
        // Never split a UTF-8 character when holding back.
        size_t cut = pending_.size() - keep;
        while (cut > 0 && cut < pending_.size() && (uint8_t(pending_[cut]) & 0xC0) == 0x80) --cut;
        std::string out = pending_.substr(0, cut);
        pending_.erase(0, cut);
        return {out, false};
    }
    // The text held back when generation ends without a stop string.
    std::string finish() { return std::exchange(pending_, {}); }

private:
    std::vector<std::string> stops_;
    size_t max_len_ = 0;
    std::string pending_;
};

}  // namespace swiftkv
