// What one forward step reads on the device (DESIGN.md section 3): the paged KV cache (KvCacheView)
// and the step's index arrays (StepInputs). The runner (runner/model_runner.h) builds both from a
// host-side ForwardBatch; the model's math reads these and nothing else of the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace swiftkv {

// Device memory of the paged KV cache: one K and one V pool per physical cache layer, elements in the
// backend's act_dtype(). Consecutive layers are equally far apart (SwiftKV's bulk write relies on it).
struct KvCacheView {
    KvLayout layout;
    std::vector<void*> k_layers;
    std::vector<void*> v_layers;
};

// One step's device inputs. T rows go through the layers that keep their own KV (l < L); the K
// survivors (the rows whose logits are wanted, a suffix of each sequence's rows) go through the
// later layers and the LM head. Both counts include the padding rows of a graph-replayed step.
struct StepInputs {
    int64_t num_tokens = 0;     // T
    int64_t num_survivors = 0;  // K
    const int32_t* tokens = nullptr;       // [T] token ids
    const int32_t* positions = nullptr;    // [T] absolute positions
    const int32_t* slots = nullptr;        // [T] KV cache slot of each row (block * block_size + offset); -1: not written
    const int32_t* survivor_rows = nullptr;       // [K] the survivors' rows among the T (sorted)
    const int32_t* survivor_positions = nullptr;  // [K] their positions
    AttentionBatch all;        // every row against its sequence's context
    AttentionBatch survivors;  // the survivors against their sequence's context
};

}  // namespace swiftkv
