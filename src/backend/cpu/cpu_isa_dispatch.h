// For the Highway kernel sources (cpu_gemv.cpp, ...) and cpu_isa.cpp only: the Highway target of each
// CpuIsa, and a call into the namespace of a given CpuIsa's compiled copy of a function. Include after
// hwy/highway.h, inside `#if HWY_ONCE`.
#pragma once

#include <cstdint>

#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_vector_kernels.h"
#include "hwy/highway.h"

namespace swiftkv::cpu {

constexpr int64_t hwy_target(CpuIsa isa) {
    switch (isa) {
        case CpuIsa::kAvx512Vnni: return HWY_AVX3_DL;
        case CpuIsa::kAvx512: return HWY_AVX3;
        case CpuIsa::kAvx2: return HWY_AVX2;
        case CpuIsa::kSse4: return HWY_SSE4;
        case CpuIsa::kScalar: break;
    }
    return HWY_EMU128 | HWY_SCALAR;
}

#if HWY_TARGETS & HWY_AVX3_DL
#define SKV_CASE_AVX3_DL(fn, ...) \
    case CpuIsa::kAvx512Vnni: return N_AVX3_DL::fn(__VA_ARGS__);
#else
#define SKV_CASE_AVX3_DL(fn, ...)
#endif
#if HWY_TARGETS & HWY_AVX3
#define SKV_CASE_AVX3(fn, ...) \
    case CpuIsa::kAvx512: return N_AVX3::fn(__VA_ARGS__);
#else
#define SKV_CASE_AVX3(fn, ...)
#endif
#if HWY_TARGETS & HWY_AVX2
#define SKV_CASE_AVX2(fn, ...) \
    case CpuIsa::kAvx2: return N_AVX2::fn(__VA_ARGS__);
#else
#define SKV_CASE_AVX2(fn, ...)
#endif
#if HWY_TARGETS & HWY_SSE4
#define SKV_CASE_SSE4(fn, ...) \
    case CpuIsa::kSse4: return N_SSE4::fn(__VA_ARGS__);
#else
#define SKV_CASE_SSE4(fn, ...)
#endif

// Calls the copy of `fn` compiled for `isa`; for an ISA this build has no copy of (supported_cpu_isas()
// lists only compiled ones), the baseline's copy: on x86 builds from an x86-64-v2 baseline that is sse4,
// the lowest compiled, and scalar is not built.
#define SKV_DISPATCH_TO_TARGET(isa, fn, ...)    \
    switch (isa) {                              \
        SKV_CASE_AVX3_DL(fn, __VA_ARGS__)       \
        SKV_CASE_AVX3(fn, __VA_ARGS__)          \
        SKV_CASE_AVX2(fn, __VA_ARGS__)          \
        SKV_CASE_SSE4(fn, __VA_ARGS__)          \
        default: break;                         \
    }                                           \
    return HWY_STATIC_DISPATCH(fn)(__VA_ARGS__)

// Each kernel source fills its part of a VectorKernels table.
void fill_gemv_kernels(CpuIsa isa, VectorKernels& k);
void fill_rowwise_kernels(CpuIsa isa, VectorKernels& k);

}  // namespace swiftkv::cpu
