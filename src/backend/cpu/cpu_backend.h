// The CPU backend's tuning knobs, for benchmarks and tests that compare configurations. Production code
// uses make_cpu_backend(num_threads) from backend/backend.h, which picks the defaults below.
#pragma once

#include <memory>
#include <optional>

#include "backend/backend.h"
#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_kernels.h"

namespace swiftkv {

struct CpuBackendOptions {
    int num_threads = 0;  // <= 0: all cores (sizes the global pool if it does not exist yet)
    cpu::MatmulOptions matmul;
    // The SIMD instruction set of the kernels (one of cpu::supported_cpu_isas()); default
    // cpu::default_cpu_isa(): the best the machine has, capped by SWIFTKV_CPU_ISA.
    std::optional<cpu::CpuIsa> isa;
};

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options);

// "Cooperlake", "SkylakeX", ...: the OpenBLAS kernel family the backend ended up with.
const char* cpu_backend_blas_core();

}  // namespace swiftkv
