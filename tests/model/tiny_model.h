// A tiny random Llama written as a Hugging Face directory, and a plain double-precision reference
// forward pass over it (no batching, no paging, no fusion) for checking the engine's forward.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

struct TinySpec {
    int layers = 3, hidden = 32, heads = 4, kv_heads = 2, head_dim = 8, ffn = 48, vocab = 64;
    double theta = 10000.0, eps = 1e-5;
    bool tie = false;
    bool llama3_scaling = false;
    int num_kv_layers = 0;  // 0: plain Llama
    int group = 1;
    unsigned seed = 1;
};

struct TinyModel {
    TinySpec spec;
    nlohmann::json config;
    std::map<std::string, std::vector<float>> tensors;
    std::map<std::string, std::vector<int64_t>> shapes;
};

TinyModel make_tiny_model(const TinySpec& spec);
// Writes config.json + model.safetensors into dir (created).
void write_tiny_model(const TinyModel& m, const std::string& dir);
// Reference logits [n, vocab] at every position of one sequence, base (teacher) model.
std::vector<double> reference_logits(const TinyModel& m, const std::vector<int>& tokens);
