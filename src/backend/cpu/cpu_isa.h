// The CPU's instruction sets, chosen at run time (issue 14). One build runs on any x86-64-v2 machine:
// the SIMD kernels (cpu_vector_kernels.h) are compiled once per instruction set by Highway, and each
// CPU backend picks the best one the machine supports, or a lower one when asked (the environment
// variable SWIFTKV_CPU_ISA, or CpuBackendOptions::isa), so every path can be tested and benchmarked on
// any machine that has it.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace swiftkv::cpu {

// From the lowest to the highest. Each is a Highway target:
//   scalar     portable code (Highway's EMU128), any CPU; not built on x86, whose baseline is sse4
//   sse4       SSE4.2 + POPCNT (x86-64-v2), 128-bit vectors
//   avx2       AVX2 + FMA + F16C + BMI2 (x86-64-v3; e.g. AMD EPYC before Zen 4), 256-bit vectors
//   avx512     AVX-512 F/BW/DQ/VL (Skylake-X and later), 512-bit vectors, 32 registers
//   avx512vnni avx512 + VNNI, VBMI2, GFNI, VAES (Ice Lake, Zen 4 and later): int8 dot products
enum class CpuIsa { kScalar, kSse4, kAvx2, kAvx512, kAvx512Vnni };

const char* cpu_isa_name(CpuIsa isa);
// Parses a name of cpu_isa_name; nullopt for anything else.
std::optional<CpuIsa> parse_cpu_isa(const std::string& name);

// The instruction sets this build has kernels for and this CPU runs, lowest first.
std::vector<CpuIsa> supported_cpu_isas();

// The highest supported one, capped by SWIFTKV_CPU_ISA when set (an unknown or unsupported value is an
// error naming the choices).
CpuIsa default_cpu_isa();

}  // namespace swiftkv::cpu
