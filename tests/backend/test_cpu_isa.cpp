// The CPU instruction-set choice (backend/cpu/cpu_isa.h): what the machine supports, the
// SWIFTKV_CPU_ISA cap and its errors, and that a backend of each supported set computes. (The op suites
// run on every supported set through all_backend_names().)
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "backend/cpu/cpu_isa.h"
#include "backend_test_util.h"
#include "core/error.h"

namespace swiftkv::test {
namespace {

// Restores SWIFTKV_CPU_ISA when a test ends.
class IsaEnv {
public:
    IsaEnv() {
        const char* v = std::getenv("SWIFTKV_CPU_ISA");
        if (v) saved_ = v;
        had_ = v != nullptr;
    }
    ~IsaEnv() {
        if (had_) setenv("SWIFTKV_CPU_ISA", saved_.c_str(), 1);
        else unsetenv("SWIFTKV_CPU_ISA");
    }

private:
    bool had_ = false;
    std::string saved_;
};

TEST(CpuIsa, NamesRoundTrip) {
    for (cpu::CpuIsa isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kSse4, cpu::CpuIsa::kAvx2, cpu::CpuIsa::kAvx512,
                            cpu::CpuIsa::kAvx512Vnni})
        EXPECT_EQ(cpu::parse_cpu_isa(cpu::cpu_isa_name(isa)), isa);
    EXPECT_FALSE(cpu::parse_cpu_isa("avx1024").has_value());
    EXPECT_FALSE(cpu::parse_cpu_isa("").has_value());
}

TEST(CpuIsa, SupportedAscendingAndDefaultIsTheBest) {
    IsaEnv keep;
    unsetenv("SWIFTKV_CPU_ISA");
    const auto isas = cpu::supported_cpu_isas();
    ASSERT_FALSE(isas.empty());
    for (size_t i = 1; i < isas.size(); ++i) EXPECT_LT(isas[i - 1], isas[i]);
#if defined(__x86_64__)
    // The x86 build's baseline is x86-64-v2: sse4 always runs.
    EXPECT_EQ(isas.front(), cpu::CpuIsa::kSse4);
#endif
    EXPECT_EQ(cpu::default_cpu_isa(), isas.back());
}

TEST(CpuIsa, EnvironmentCapsAndRejects) {
    IsaEnv keep;
    const auto isas = cpu::supported_cpu_isas();
    for (cpu::CpuIsa isa : isas) {
        setenv("SWIFTKV_CPU_ISA", cpu::cpu_isa_name(isa), 1);
        EXPECT_EQ(cpu::default_cpu_isa(), isa);
    }
    setenv("SWIFTKV_CPU_ISA", "avx9000", 1);
    try {
        cpu::default_cpu_isa();
        FAIL() << "an unknown instruction set was accepted";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("avx9000"), std::string::npos) << msg;
        EXPECT_NE(msg.find(cpu::cpu_isa_name(isas.front())), std::string::npos) << msg;  // names the choices
    }
    if (isas.back() != cpu::CpuIsa::kAvx512Vnni) {
        setenv("SWIFTKV_CPU_ISA", "avx512vnni", 1);
        EXPECT_THROW(cpu::default_cpu_isa(), Error) << "a set the machine lacks was accepted";
    }
}

}  // namespace
}  // namespace swiftkv::test
