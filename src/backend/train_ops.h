// Types of the training ops (issue 6, SwiftKV self-distillation; DESIGN.md sections 1 and 6). The ops
// themselves are virtual methods of Backend, in the "training ops" section of backend/backend.h; this
// header holds the argument types they share, so backend.h stays readable.
//
// Training works on dense (non-paged) row-major tensors. A training batch packs several sequences one
// after another into T rows; attention is causal within each sequence and never crosses sequences.
#pragma once

#include <cstdint>

namespace swiftkv {

// The packed sequences of one training batch: sequence s owns rows [cu_seqlens[s], cu_seqlens[s+1]).
// cu_seqlens[0] = 0, non-decreasing, cu_seqlens[num_seqs] = num_rows. Sequences may be empty. Position
// p of a sequence attends to positions 0..p of the same sequence.
struct PackedSequences {
    int64_t num_seqs = 0;
    int64_t num_rows = 0;                 // host copy of cu_seqlens[num_seqs] (the total rows T)
    const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1], device memory
    int64_t max_seq_len = 0;              // host planning hint: >= every sequence length
};

// Hyper-parameters of one AdamW step (decoupled weight decay, bias-corrected moments; the update of
// torch.optim.AdamW):
//   p <- p * (1 - lr * weight_decay)
//   m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps),   t = step (1 for the first)
struct AdamWParams {
    float lr = 2e-4f;
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 0.0f;
};

}  // namespace swiftkv
