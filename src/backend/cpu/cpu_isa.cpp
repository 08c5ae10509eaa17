// Which instruction sets this build compiled kernels for (Highway's HWY_TARGETS) and which this CPU
// runs (Highway's run-time detection), the SWIFTKV_CPU_ISA cap, and the kernel table of each.
#include "hwy/highway.h"
#include "hwy/targets.h"

#include <array>
#include <cstdlib>
#include <mutex>

#include "backend/cpu/cpu_isa.h"
#include "backend/cpu/cpu_isa_dispatch.h"
#include "backend/cpu/cpu_vector_kernels.h"
#include "core/error.h"

namespace swiftkv::cpu {

namespace {
constexpr std::array<CpuIsa, 5> kAll = {CpuIsa::kScalar, CpuIsa::kSse4, CpuIsa::kAvx2, CpuIsa::kAvx512,
                                        CpuIsa::kAvx512Vnni};
}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
    switch (isa) {
        case CpuIsa::kScalar: return "scalar";
        case CpuIsa::kSse4: return "sse4";
        case CpuIsa::kAvx2: return "avx2";
        case CpuIsa::kAvx512: return "avx512";
        case CpuIsa::kAvx512Vnni: return "avx512vnni";
    }
    return "?";
}

std::optional<CpuIsa> parse_cpu_isa(const std::string& name) {
    for (CpuIsa isa : kAll)
        if (name == cpu_isa_name(isa)) return isa;
    return std::nullopt;
}

std::vector<CpuIsa> supported_cpu_isas() {
    const int64_t runs = hwy::SupportedTargets();
    std::vector<CpuIsa> out;
    for (CpuIsa isa : kAll) {
        const int64_t t = hwy_target(isa);
        if ((HWY_TARGETS & t) && (isa == CpuIsa::kScalar || (runs & t))) out.push_back(isa);
    }
    return out;
}

CpuIsa default_cpu_isa() {
    const std::vector<CpuIsa> ok = supported_cpu_isas();
    const char* cap = std::getenv("SWIFTKV_CPU_ISA");
    if (!cap || !*cap) return ok.back();
    std::string names;
    for (CpuIsa isa : ok) names += std::string(names.empty() ? "" : ", ") + cpu_isa_name(isa);
    const std::optional<CpuIsa> want = parse_cpu_isa(cap);
    SKV_CHECK(want.has_value(), "SWIFTKV_CPU_ISA={} is not an instruction set; this machine has {}", cap, names);
    CpuIsa best = ok.front();
    for (CpuIsa isa : ok)
        if (isa <= *want) best = isa;
    SKV_CHECK(best == *want, "SWIFTKV_CPU_ISA={}: this machine (or build) does not have it; it has {}", cap, names);
    return best;
}

const VectorKernels& vector_kernels(CpuIsa isa) {
    static std::array<VectorKernels, kAll.size()> tables;
    static std::once_flag once;
    std::call_once(once, [] {
        for (CpuIsa i : kAll) {
            VectorKernels& k = tables[size_t(i)];
            k.isa = i;
            fill_gemv_kernels(i, k);
            fill_rowwise_kernels(i, k);
        }
    });
    return tables[size_t(isa)];
}

}  // namespace swiftkv::cpu
