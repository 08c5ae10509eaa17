// Helpers for the backend op tests: the list of backends under test, device arrays that go through the
// Backend interface (so the same tests can run on a device backend), random data, and tolerance checks
// against double-precision references.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "core/dtype.h"

namespace swiftkv::test {

// Backends under test, by name: every backend this machine has -- the CPU with its best instruction set
// ("cpu"), the CPU with each lower one it supports ("cpu_avx2", "cpu_sse4", ...: cpu/cpu_isa.h, so every
// SIMD path is tested on any machine), and CUDA where a device is usable. Suites are written for any
// activation dtype (ActArray, act_tol).
inline std::vector<std::string> all_backend_names() {
    std::vector<std::string> names{"cpu"};
    const auto isas = cpu::supported_cpu_isas();
    for (size_t i = 0; i + 1 < isas.size(); ++i) names.push_back(std::string("cpu_") + cpu::cpu_isa_name(isas[i]));
    if (cuda_backend_available()) names.push_back("cuda");
    return names;
}

// A CPU backend, of any instruction set.
inline bool is_cpu(const std::string& backend) { return backend.rfind("cpu", 0) == 0; }

// Whether a suite also runs its model-sized cases (rows, widths and contexts of real models, which pick a
// device backend's other kernels: vectorised, multi-block, split and tensor-core paths) on this
// backend. The CPU backend's paths are all chosen at the smaller sizes every backend runs, and its
// double-precision references at model sizes would cost CI minutes. SWIFTKV_TEST_MODEL_SIZED=1 runs
// them on every backend (e.g. to check a new reference against the CPU backend).
inline bool device_sized(const std::string& backend) {
    const char* all = std::getenv("SWIFTKV_TEST_MODEL_SIZED");
    return !is_cpu(backend) || (all != nullptr && std::string(all) == "1");
}

inline std::unique_ptr<Backend> make_backend(const std::string& name) {
    if (name == "cpu") return make_cpu_backend();
    if (name.rfind("cpu_", 0) == 0) {
        const auto isa = cpu::parse_cpu_isa(name.substr(4));
        if (!isa) return nullptr;
        CpuBackendOptions options;
        options.isa = *isa;
        return make_cpu_backend(options);
    }
    if (name == "cuda") return make_cuda_backend(0);
    return nullptr;
}

// A typed buffer in backend memory, filled from and read back to host vectors.
template <class T>
class DeviceArray {
public:
    DeviceArray(Backend& backend, const std::vector<T>& host) : backend_(backend), size_(host.size()) {
        ptr_ = static_cast<T*>(backend_.alloc(bytes()));
        backend_.upload(ptr_, host.data(), bytes());
    }
    DeviceArray(Backend& backend, size_t size) : backend_(backend), size_(size) {
        ptr_ = static_cast<T*>(backend_.alloc(bytes()));
        backend_.fill_zero(ptr_, bytes());
    }
    ~DeviceArray() { backend_.free(ptr_); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;

    T* get() { return ptr_; }
    size_t size() const { return size_; }
    size_t bytes() const { return size_ * sizeof(T); }
    std::vector<T> to_host() {
        std::vector<T> host(size_);
        backend_.synchronize();
        backend_.download(host.data(), ptr_, bytes());
        return host;
    }

private:
    Backend& backend_;
    size_t size_;
    T* ptr_ = nullptr;
};

// Runs fn(begin, end) over [0, n) split across the host's cores: the double-precision references of
// the model-sized cases.
template <class Fn>
void parallel_ranges(int64_t n, Fn&& fn) {
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(n, int64_t(std::thread::hardware_concurrency())));
    std::vector<std::thread> threads;
    for (int64_t p = 0; p < parts; ++p)
        threads.emplace_back([&, p] { fn(n * p / parts, n * (p + 1) / parts); });
    for (auto& t : threads) t.join();
}

class Random {
public:
    explicit Random(uint32_t seed) : engine_(seed) {}
    float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(engine_); }
    int32_t integer(int32_t lo, int32_t hi) { return std::uniform_int_distribution<int32_t>(lo, hi)(engine_); }
    std::vector<float> floats(size_t n, float lo = -1.0f, float hi = 1.0f) {
        std::vector<float> v(n);
        for (auto& x : v) x = uniform(lo, hi);
        return v;
    }
    std::mt19937& engine() { return engine_; }

private:
    std::mt19937 engine_;
};

inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
    return out;
}

// An activation tensor in a backend's act dtype (f32 on the CPU, bf16 on CUDA). values() is what was
// uploaded, rounded to that dtype, so a reference computed from it sees exactly the backend's input.
class ActArray {
public:
    ActArray(Backend& backend, std::vector<float> values) : bf16_(backend.act_dtype() == DType::BF16) {
        if (bf16_) {
            for (float& x : values) x = bf16_to_f32(f32_to_bf16(x));
            h_ = std::make_unique<DeviceArray<uint16_t>>(backend, to_bf16(values));
        } else {
            f_ = std::make_unique<DeviceArray<float>>(backend, values);
        }
        values_ = std::move(values);
    }
    ActArray(Backend& backend, size_t n) : ActArray(backend, std::vector<float>(n, 0.0f)) {}

    void* get() { return bf16_ ? static_cast<void*>(h_->get()) : static_cast<void*>(f_->get()); }
    // The element at `offset` (for fused rows: K and V parts of a QKV buffer).
    void* at(int64_t offset) { return static_cast<char*>(get()) + offset * elem_bytes(); }
    int64_t elem_bytes() const { return bf16_ ? 2 : 4; }
    const std::vector<float>& values() const { return values_; }
    std::vector<float> to_host() {
        if (!bf16_) return f_->to_host();
        const std::vector<uint16_t> h = h_->to_host();
        std::vector<float> out(h.size());
        for (size_t i = 0; i < h.size(); ++i) out[i] = bf16_to_f32(h[i]);
        return out;
    }

private:
    bool bf16_;
    std::vector<float> values_;
    std::unique_ptr<DeviceArray<float>> f_;
    std::unique_ptr<DeviceArray<uint16_t>> h_;
};

// Relative tolerance of a result stored in the backend's act dtype: f32_tol for f32, and for bf16 its
// rounding (8 significant bits: at most 2^-8 = 3.9e-3 relative) plus f32 arithmetic.
inline double act_tol(const Backend& backend, double f32_tol) {
    return backend.act_dtype() == DType::F32 ? f32_tol : 4e-3;
}

// Checks |actual - expected| <= tol * scale[i] for every element, reporting the worst one.
inline ::testing::AssertionResult all_close(const std::vector<float>& actual, const std::vector<double>& expected,
                                            const std::vector<double>& scale, double tol) {
    if (actual.size() != expected.size()) return ::testing::AssertionFailure() << "size mismatch";
    double worst = 0.0;
    size_t worst_i = 0;
    for (size_t i = 0; i < actual.size(); ++i) {
        const double err = std::abs(double(actual[i]) - expected[i]);
        const double ratio = err / (tol * scale[i]);
        if (!(ratio <= worst) || std::isnan(ratio)) {
            worst = std::isnan(ratio) ? INFINITY : ratio;
            worst_i = i;
        }
    }
    if (worst <= 1.0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "element " << worst_i << ": got " << actual[worst_i] << ", expected "
                                         << expected[worst_i] << " (error " << worst << "x the tolerance "
                                         << tol * scale[worst_i] << ")";
}

}  // namespace swiftkv::test
