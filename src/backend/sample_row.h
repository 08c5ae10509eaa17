// The sampling rule of Backend::sample for one row, on the host: the same selection (top-k, top-p,
// min-p) and the same Gumbel-max draw over sampling_noise.h, so a host-side sampler that applies
// penalties first still draws exactly the token the device would have drawn from the same logits.
// Implemented by the CPU backend's kernel (cpu_elementwise.cpp).
#pragma once

#include <cstdint>

#include "backend/backend.h"

namespace swiftkv {

// logits[vocab] (not modified); temperature <= 0 is greedy (lowest index on ties).
int32_t sample_row_host(const float* logits, int64_t vocab, const SampleParams& params);

}  // namespace swiftkv
