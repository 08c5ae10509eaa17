// swiftkv inspect — config, tokenizer summary and tensor table of a model on disk.
#include <cstdio>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "backend/cpu/cpu_isa.h"
#include "cli_common.h"
#include "model/model_loader.h"
#include "io/gguf_reader.h"
#include "kv/paged_kv_cache.h"
#include "model/model_source.h"

using namespace swiftkv;

int cmd_inspect(const std::string& path, bool all_tensors) {
    auto source = ModelSource::open(path);
    const ModelConfig& c = source->config();
    fmt::print("model: {}\nformat: {}\n", path, source->is_gguf() ? fmt::format("GGUF v{}", source->gguf()->version())
                                                                      : std::string("Hugging Face directory"));
    fmt::print("\n[config]\n{}\n", c.to_hf_json().dump(2));
    if (c.is_swiftkv()) {
        fmt::print("SwiftKV: cut L = {} of {} layers, AcrossKV group g = {}, {} physical KV layers\n", c.num_kv_layers,
                   c.n_layers, c.kv_group_size, c.kv_cache_layers());
        if (!c.swiftkv_enabled)
            fmt::print("runs as its teacher by default: the config says \"swiftkv\": false "
                       "(--swiftkv on runs SwiftKV)\n");
    }
    fmt::print("KV cache: {} bytes per token (f32)\n", c.kv_bytes_per_token());
    std::string isas;
    for (cpu::CpuIsa isa : cpu::supported_cpu_isas()) isas += std::string(isas.empty() ? "" : " ") + cpu::cpu_isa_name(isa);
    fmt::print("CPU kernels: {} (this machine: {}; SWIFTKV_CPU_ISA picks a lower one)\n",
               cpu::cpu_isa_name(cpu::default_cpu_isa()), isas);

    BpeTokenizer tok = load_tokenizer(*source);
    const auto& spec = tok.spec();
    int specials = 0;
    for (int32_t i = 0; i < tok.vocab_size(); ++i) specials += tok.is_special(i) ? 1 : 0;
    auto name = [&](int32_t id) { return id >= 0 ? fmt::format("{} {:?}", id, tok.token_bytes(id)) : std::string("-"); };
    fmt::print("\n[tokenizer]\nbyte-level BPE, {} tokens ({} special), {} merges\nbos: {}\neos: {}\nadd_bos: {}\n",
               tok.vocab_size(), specials, spec.merges.size(), name(spec.bos_id), name(spec.eos_id), spec.add_bos);
    std::vector<std::string> eos;
    for (int32_t id : spec.eos_ids) eos.push_back(name(id));
    fmt::print("end-of-generation tokens: {}\n", fmt::join(eos, ", "));
    auto tmpl = load_chat_template(*source);
    fmt::print("chat template: {}\n", tmpl ? fmt::format("{} characters", tmpl->size()) : std::string("none"));

    fmt::print("\n[tensors]\n{:<52} {:<6} {:>20} {:>12}\n", "name", "dtype", "shape", "bytes");
    int64_t total = 0;
    int shown = 0, hidden = 0;
    for (const auto& [n, t] : source->tensors()) {
        const int64_t bytes = dtype_row_bytes(t.dtype, t.numel());
        total += bytes;
        const bool early = n.find("layers.") == std::string::npos || n.find("layers.0.") != std::string::npos;
        if (all_tensors || early) {
            fmt::print("{:<52} {:<6} {:>20} {:>12}\n", t.file_name, dtype_name(t.dtype), fmt::format("[{}]", fmt::join(t.shape, ", ")), bytes);
            ++shown;
        } else {
            ++hidden;
        }
    }
    if (hidden > 0) fmt::print("... {} more (use --all)\n", hidden);
    fmt::print("{} tensors, {:.1f} MB\n", shown + hidden, double(total) / 1e6);
    return 0;
}
