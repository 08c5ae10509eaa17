// Helpers of the distillation tests: a tiny random SwiftKV student written as a Hugging Face directory
// (the teacher's original q/k/v next to random SwiftKV tensors, like `swiftkv convert` writes but with
// the SwiftKV tensors perturbed away from their init), and random packed batches.
#pragma once

#include <random>
#include <string>
#include <vector>

#include "tiny_model.h"
#include "train/distill_data.h"
#include "train/distill_model.h"

struct TinyStudentSpec {
    TinySpec base;       // layers, sizes, seed
    int cut = 2;         // L
    int group = 1;       // g
    float swiftkv_noise = 0.1f;  // SwiftKV tensors = their convert init + this much Gaussian noise
};

// Writes config.json + model.safetensors into dir; returns the model (teacher tensors plus SwiftKV ones).
TinyModel write_tiny_student(const TinyStudentSpec& spec, const std::string& dir);

// Segments of the given lengths with random tokens and random row weights in [0, 1) / total rows.
swiftkv::PackedBatch random_packed_batch(std::mt19937& rng, const std::vector<int>& lengths, int vocab);

// A fresh temporary directory for one test (removed by the caller or left in /tmp).
std::string test_temp_dir(const std::string& name);

// A stand-in tokenizer for tests: each byte is its own id (0..255), BOS is 256, and the ChatML markers
// <|im_start|> and <|im_end|> are the special ids 257 and 258. Chats render as ChatML
// ("<|im_start|>role\ncontent<|im_end|>\n", generation prompt "<|im_start|>assistant\n"). Needs vocab >= 259.
swiftkv::DistillTextCodec byte_codec();
constexpr int kByteVocab = 260;
