// DeviceBuffer — RAII ownership of one allocation on a backend.
#pragma once

#include <cstddef>
#include <utility>

#include "backend/backend.h"

namespace swiftkv {

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(Backend& backend, size_t bytes) : backend_(&backend), bytes_(bytes) {
        if (bytes > 0) ptr_ = backend.alloc(bytes);
    }
    ~DeviceBuffer() { reset(); }
    DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            reset();
            backend_ = std::exchange(o.backend_, nullptr);
            ptr_ = std::exchange(o.ptr_, nullptr);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void reset() {
        if (ptr_ != nullptr) backend_->free(ptr_);
        ptr_ = nullptr;
        bytes_ = 0;
    }
    void* get() const { return ptr_; }
    template <typename T>
    T* as() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return bytes_; }

private:
    Backend* backend_ = nullptr;
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

}  // namespace swiftkv
