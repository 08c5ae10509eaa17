// Backend factory and the defaults shared by every backend.
#include "backend/backend.h"

#include <cstdlib>

#include "core/error.h"

namespace swiftkv {

std::unique_ptr<BackendGraph> Backend::capture(const std::function<void()>&) {
    SKV_THROW("the {} backend cannot record graphs", name());
}

void Backend::replay(BackendGraph&) { SKV_THROW("the {} backend cannot replay graphs", name()); }

#if !defined(SWIFTKV_HAVE_CUDA)
bool cuda_backend_available(std::string* why_not) {
    if (why_not) *why_not = "this swiftkv was built without CUDA (no nvcc at configure time)";
    return false;
}

std::unique_ptr<Backend> make_cuda_backend(int) {
    SKV_THROW("the CUDA backend is not available: this swiftkv was built without CUDA (install the CUDA toolkit "
              "and reconfigure)");
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& name, int num_threads) {
    if (name == "cpu") return make_cpu_backend(num_threads);
    if (name == "cuda") return make_cuda_backend(0);
    if (name.rfind("cuda:", 0) == 0) {
        const std::string index = name.substr(5);
        char* end = nullptr;
        const long device = std::strtol(index.c_str(), &end, 10);
        SKV_CHECK(!index.empty() && end && *end == '\0' && device >= 0 && device < 1024,
                  "device '{}': expected cuda:N with N a device index", name);
        return make_cuda_backend(int(device));
    }
    SKV_THROW("unknown device '{}' (use cpu, cuda or cuda:N)", name);
}

}  // namespace swiftkv
