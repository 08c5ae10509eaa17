// PagedKvCache — the device memory of the paged KV cache (DESIGN.md section 4): one K and one V pool
// per physical cache layer (L + (N-L)/g of them for a SwiftKV model) of fixed-size blocks. Which
// sequence holds which block is the BlockManager's business (block_manager.h).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/device_buffer.h"
#include "model/step_inputs.h"
#include "model/model_config.h"

namespace swiftkv {

class PagedKvCache {
public:
    // Sizes the pools to hold num_blocks blocks of block_size tokens for every physical layer, in the
    // backend's activation dtype.
    PagedKvCache(Backend& backend, const ModelConfig& config, int64_t num_blocks, int64_t block_size = 16);

    const KvCacheView& view() const { return view_; }
    int64_t block_size() const { return view_.layout.block_size; }
    int64_t num_blocks() const { return view_.layout.num_blocks; }
    int64_t total_bytes() const { return total_bytes_; }

private:
    DeviceBuffer storage_;
    KvCacheView view_;
    int64_t total_bytes_ = 0;
};

}  // namespace swiftkv
