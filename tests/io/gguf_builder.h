// GgufBuilder — writes GGUF bytes field by field, for tests and fuzz seeds. It is deliberately raw:
// every count, type code, dimension and offset can be overridden, so tests can produce each kind
// of invalid file the reader must reject. Also: reference quantizers (ggml's *_ref algorithms) to
// make Q8_0/Q4_0/Q4_1 test data.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace swiftkv::testing {

// GGUF value type codes.
enum : uint32_t {
    kGgufU8 = 0, kGgufI8, kGgufU16, kGgufI16, kGgufU32, kGgufI32, kGgufF32, kGgufBool, kGgufString,
    kGgufArray, kGgufU64, kGgufI64, kGgufF64,
};
// ggml tensor type codes.
enum : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8, kGgmlBF16 = 30 };

inline void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(uint8_t(v >> (8 * i)));
}
inline void put_u32(std::vector<uint8_t>& out, uint32_t v) { put_le(out, v, 4); }
inline void put_u64(std::vector<uint8_t>& out, uint64_t v) { put_le(out, v, 8); }
inline void put_str(std::vector<uint8_t>& out, const std::string& s) {
    put_u64(out, s.size());
    out.insert(out.end(), s.begin(), s.end());
}
inline void put_f32(std::vector<uint8_t>& out, float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    put_u32(out, u);
}
inline void put_f64(std::vector<uint8_t>& out, double f) {
    uint64_t u;
    std::memcpy(&u, &f, 8);
    put_u64(out, u);
}

class GgufBuilder {
public:
    struct Tensor {
        std::string name;
        std::vector<uint64_t> ne;  // ggml order: ne[0] fastest
        uint32_t ggml_type = kGgmlF32;
        std::vector<uint8_t> data;
        std::optional<uint64_t> offset;  // relative offset override (default: packed, aligned)
    };

    uint32_t version = 3;
    uint64_t alignment = 32;  // used for layout; add a general.alignment key yourself to declare it
    std::optional<uint64_t> tensor_count_override;
    std::optional<uint64_t> kv_count_override;
    std::vector<Tensor> tensors;

    // Metadata: the raw encoding of one key/value (type code + payload) is appended as given.
    void add_raw_kv(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
        put_str(kv_, key);
        put_u32(kv_, type);
        kv_.insert(kv_.end(), payload.begin(), payload.end());
        ++kv_count_;
    }
    void add_u8(const std::string& k, uint8_t v) { add_raw_kv(k, kGgufU8, le(v, 1)); }
    void add_i8(const std::string& k, int8_t v) { add_raw_kv(k, kGgufI8, le(uint8_t(v), 1)); }
    void add_u16(const std::string& k, uint16_t v) { add_raw_kv(k, kGgufU16, le(v, 2)); }
    void add_i16(const std::string& k, int16_t v) { add_raw_kv(k, kGgufI16, le(uint16_t(v), 2)); }
    void add_u32(const std::string& k, uint32_t v) { add_raw_kv(k, kGgufU32, le(v, 4)); }
    void add_i32(const std::string& k, int32_t v) { add_raw_kv(k, kGgufI32, le(uint32_t(v), 4)); }
    void add_u64(const std::string& k, uint64_t v) { add_raw_kv(k, kGgufU64, le(v, 8)); }
    void add_i64(const std::string& k, int64_t v) { add_raw_kv(k, kGgufI64, le(uint64_t(v), 8)); }
    void add_f32(const std::string& k, float v) {
        std::vector<uint8_t> p;
        put_f32(p, v);
        add_raw_kv(k, kGgufF32, p);
    }
    void add_f64(const std::string& k, double v) {
        std::vector<uint8_t> p;
        put_f64(p, v);
        add_raw_kv(k, kGgufF64, p);
    }
    void add_bool(const std::string& k, bool v) { add_raw_kv(k, kGgufBool, {uint8_t(v ? 1 : 0)}); }
    void add_string(const std::string& k, const std::string& v) {
        std::vector<uint8_t> p;
        put_str(p, v);
        add_raw_kv(k, kGgufString, p);
    }
    void add_string_array(const std::string& k, const std::vector<std::string>& v) {
        std::vector<uint8_t> p;
        put_u32(p, kGgufString);
        put_u64(p, v.size());
        for (const auto& s : v) put_str(p, s);
        add_raw_kv(k, kGgufArray, p);
    }
    // Array of integers of the given element type (1, 2, 4 or 8 bytes each, as the type says).
    void add_int_array(const std::string& k, uint32_t elem_type, const std::vector<int64_t>& v) {
        std::vector<uint8_t> p;
        put_u32(p, elem_type);
        put_u64(p, v.size());
        const int w = elem_type <= kGgufI8 ? 1 : elem_type <= kGgufI16 ? 2 : elem_type <= kGgufI32 ? 4 : 8;
        for (int64_t x : v) put_le(p, uint64_t(x), w);
        add_raw_kv(k, kGgufArray, p);
    }
    void add_f32_array(const std::string& k, const std::vector<float>& v) {
        std::vector<uint8_t> p;
        put_u32(p, kGgufF32);
        put_u64(p, v.size());
        for (float x : v) put_f32(p, x);
        add_raw_kv(k, kGgufArray, p);
    }
    void add_bool_array(const std::string& k, const std::vector<bool>& v) {
        std::vector<uint8_t> p;
        put_u32(p, kGgufBool);
        put_u64(p, v.size());
        for (bool x : v) p.push_back(x ? 1 : 0);
        add_raw_kv(k, kGgufArray, p);
    }

    Tensor& add_tensor(const std::string& name, uint32_t ggml_type, std::vector<uint64_t> ne,
                       std::vector<uint8_t> data) {
        tensors.push_back(Tensor{name, std::move(ne), ggml_type, std::move(data), std::nullopt});
        return tensors.back();
    }

    // Relative offsets the builder will use (overrides respected).
    std::vector<uint64_t> offsets() const {
        std::vector<uint64_t> out;
        uint64_t next = 0;
        for (const Tensor& t : tensors) {
            out.push_back(t.offset.value_or(next));
            next = align(next + t.data.size());
        }
        return out;
    }

    std::vector<uint8_t> build() const {
        std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
        put_u32(out, version);
        put_u64(out, tensor_count_override.value_or(tensors.size()));
        put_u64(out, kv_count_override.value_or(kv_count_));
        out.insert(out.end(), kv_.begin(), kv_.end());
        const std::vector<uint64_t> offs = offsets();
        for (size_t i = 0; i < tensors.size(); ++i) {
            const Tensor& t = tensors[i];
            put_str(out, t.name);
            put_u32(out, uint32_t(t.ne.size()));
            for (uint64_t n : t.ne) put_u64(out, n);
            put_u32(out, t.ggml_type);
            put_u64(out, offs[i]);
        }
        out.resize(size_t(align(out.size())), 0);
        const size_t data_start = out.size();
        // Data is placed at its (default) packed position; overridden offsets only change the
        // directory, which is what the invalid-offset tests want.
        uint64_t next = 0;
        for (const Tensor& t : tensors) {
            out.resize(size_t(data_start + next), 0);
            out.insert(out.end(), t.data.begin(), t.data.end());
            next = align(next + t.data.size());
        }
        return out;
    }

    size_t kv_count() const { return kv_count_; }

private:
    static std::vector<uint8_t> le(uint64_t v, int bytes) {
        std::vector<uint8_t> p;
        put_le(p, v, bytes);
        return p;
    }
    uint64_t align(uint64_t n) const { return (n + alignment - 1) / alignment * alignment; }

    std::vector<uint8_t> kv_;
    size_t kv_count_ = 0;
};

// ---- Test data encoders (ggml reference quantizers, scalar) ----

inline void put_f16(std::vector<uint8_t>& out, float f) { put_le(out, f32_to_f16(f), 2); }

inline std::vector<uint8_t> encode_f32(const std::vector<float>& x) {
    std::vector<uint8_t> out;
    for (float f : x) put_f32(out, f);
    return out;
}
inline std::vector<uint8_t> encode_f16(const std::vector<float>& x) {
    std::vector<uint8_t> out;
    for (float f : x) put_f16(out, f);
    return out;
}
inline std::vector<uint8_t> encode_bf16(const std::vector<float>& x) {
    std::vector<uint8_t> out;
    for (float f : x) put_le(out, f32_to_bf16(f), 2);
    return out;
}
// quantize_row_q8_0_ref
inline std::vector<uint8_t> quantize_q8_0(const std::vector<float>& x) {
    std::vector<uint8_t> out;
    for (size_t b = 0; b + 32 <= x.size(); b += 32) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
        const float d = amax / 127.f;
        const float id = d != 0 ? 1.f / d : 0.f;
        put_f16(out, d);
        for (int j = 0; j < 32; ++j) out.push_back(uint8_t(int8_t(std::lround(x[b + j] * id))));
    }
    return out;
}
// quantize_row_q4_0_ref
inline std::vector<uint8_t> quantize_q4_0(const std::vector<float>& x) {
    std::vector<uint8_t> out;
    for (size_t b = 0; b + 32 <= x.size(); b += 32) {
        float amax = 0, max = 0;
        for (int j = 0; j < 32; ++j) {
            if (std::fabs(x[b + j]) > amax) {
                amax = std::fabs(x[b + j]);
                max = x[b + j];
            }
        }
        const float d = max / -8.f;
        const float id = d != 0 ? 1.f / d : 0.f;
        put_f16(out, d);
        for (int j = 0; j < 16; ++j) {
            const int q0 = std::min(15, int(int8_t(x[b + j] * id + 8.5f)));
            const int q1 = std::min(15, int(int8_t(x[b + j + 16] * id + 8.5f)));
            out.push_back(uint8_t(q0 | (q1 << 4)));
        }
    }
    return out;
}
// quantize_row_q4_1_ref
inline std::vector<uint8_t> quantize_q4_1(const std::vector<float>& x) {
    std::vector<uint8_t> out;
    for (size_t b = 0; b + 32 <= x.size(); b += 32) {
        float mn = x[b], mx = x[b];
        for (int j = 1; j < 32; ++j) {
            mn = std::min(mn, x[b + j]);
            mx = std::max(mx, x[b + j]);
        }
        const float d = (mx - mn) / 15.f;
        const float id = d != 0 ? 1.f / d : 0.f;
        put_f16(out, d);
        put_f16(out, mn);
        for (int j = 0; j < 16; ++j) {
            const int q0 = std::min(15, int(int8_t((x[b + j] - mn) * id + 0.5f)));
            const int q1 = std::min(15, int(int8_t((x[b + j + 16] - mn) * id + 0.5f)));
            out.push_back(uint8_t(q0 | (q1 << 4)));
        }
    }
    return out;
}

// A small valid GGUF exercising every metadata value type and every supported tensor type; used
// by the truncation test and as a fuzz seed.
inline GgufBuilder make_sample_gguf() {
    GgufBuilder b;
    b.add_string("general.architecture", "llama");
    b.add_u8("t.u8", 7);
    b.add_i8("t.i8", -7);
    b.add_u16("t.u16", 700);
    b.add_i16("t.i16", -700);
    b.add_u32("t.u32", 70000);
    b.add_i32("t.i32", -70000);
    b.add_u64("t.u64", 7000000000ull);
    b.add_i64("t.i64", -7000000000ll);
    b.add_f32("t.f32", 0.5f);
    b.add_f64("t.f64", -0.25);
    b.add_bool("t.bool", true);
    b.add_string_array("t.strings", {"a", "bc", ""});
    b.add_int_array("t.ints", kGgufI32, {1, -2, 3});
    b.add_f32_array("t.floats", {1.5f, -2.5f});
    b.add_bool_array("t.bools", {true, false});
    b.add_u32("general.alignment", 32);
    std::vector<float> x(64);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i) * 0.37f) * 1.5f;
    b.add_tensor("w.f32", kGgmlF32, {8, 2}, encode_f32({x.begin(), x.begin() + 16}));
    b.add_tensor("w.f16", kGgmlF16, {16}, encode_f16({x.begin(), x.begin() + 16}));
    b.add_tensor("w.bf16", kGgmlBF16, {4, 2, 2}, encode_bf16({x.begin(), x.begin() + 16}));
    b.add_tensor("w.q8_0", kGgmlQ8_0, {32, 2}, quantize_q8_0(x));
    b.add_tensor("w.q4_0", kGgmlQ4_0, {64}, quantize_q4_0(x));
    b.add_tensor("w.q4_1", kGgmlQ4_1, {32, 1, 1, 2}, quantize_q4_1(x));
    return b;
}

}  // namespace swiftkv::testing
