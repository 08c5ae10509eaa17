// Small helpers shared by the io/ readers and writers (internal to swiftkv_io).
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>

namespace swiftkv::io_detail {

// "552960 bytes (540.0 KiB)": exact for debugging, readable for the user.
inline std::string describe_bytes(uint64_t n) {
    if (n < 1024) return fmt::format("{} bytes", n);
    const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = double(n) / 1024.0;
    int u = 0;
    while (v >= 1024.0 && u < 5) {
        v /= 1024.0;
        ++u;
    }
    return fmt::format("{} bytes ({:.1f} {})", n, v, units[u]);
}

}  // namespace swiftkv::io_detail
