// Generic defaults of the distillation support ops (backend/backend.h, "distillation support ops"):
// convert_from_f32 and add_f32 staged through host memory, so that they are correct on any backend that
// implements upload/download. The CPU backend uses them as they are (its "device" memory is host memory,
// so the staging is a plain copy); a device backend should override both with a kernel.
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"

namespace swiftkv {

void Backend::convert_from_f32(const float* src, void* dst, int64_t n, DType dtype) {
    SKV_CHECK(n >= 0, "convert_from_f32: negative element count {}", n);
    SKV_CHECK(dtype == DType::F32 || dtype == DType::BF16, "convert_from_f32: cannot convert to {} (F32 or BF16 only)",
              dtype_name(dtype));
    if (n == 0) return;
    if (dtype == DType::F32) {
        if (static_cast<const void*>(src) != dst) copy(dst, src, size_t(n) * 4);
        return;
    }
    std::vector<float> host(static_cast<size_t>(n));
    download(host.data(), src, size_t(n) * 4);
    std::vector<uint16_t> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = f32_to_bf16(host[size_t(i)]);
    upload(dst, out.data(), size_t(n) * 2);
}

void Backend::add_f32(float* y, const float* x, int64_t n, float alpha) {
    SKV_CHECK(n >= 0, "add_f32: negative element count {}", n);
    if (n == 0) return;
    std::vector<float> hx(static_cast<size_t>(n)), hy(static_cast<size_t>(n));
    download(hx.data(), x, size_t(n) * 4);
    download(hy.data(), y, size_t(n) * 4);
    for (int64_t i = 0; i < n; ++i) hy[size_t(i)] += alpha * hx[size_t(i)];
    upload(y, hy.data(), size_t(n) * 4);
}

}  // namespace swiftkv
