// PagedKvCache — the device memory of the paged KV cache (DESIGN.md section 4): one K and one V pool
// per physical cache layer (L + (N-L)/g of them for a SwiftKV model), fixed-size blocks, and the
// BlockAllocator that hands the blocks out. SequenceBlocks is one sequence's block table.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/device_buffer.h"
#include "kv/block_allocator.h"
#include "model/forward_batch.h"
#include "model/model_config.h"

namespace swiftkv {

class PagedKvCache {
public:
    // Sizes the pools to hold num_blocks blocks of block_size tokens for every physical layer, in the
    // backend's activation dtype.
    PagedKvCache(Backend& backend, const ModelConfig& config, int64_t num_blocks, int64_t block_size = 16);

    const KvCacheView& view() const { return view_; }
    BlockAllocator& allocator() { return allocator_; }
    const BlockAllocator& allocator() const { return allocator_; }
    int64_t block_size() const { return view_.layout.block_size; }
    int64_t num_blocks() const { return view_.layout.num_blocks; }
    int64_t total_bytes() const { return total_bytes_; }

private:
    DeviceBuffer storage_;
    KvCacheView view_;
    BlockAllocator allocator_;
    int64_t total_bytes_ = 0;
};

// The block table of one sequence. Grows as tokens are appended; releases its blocks on destruction.
class SequenceBlocks {
public:
    explicit SequenceBlocks(BlockAllocator& allocator, int64_t block_size)
        : allocator_(&allocator), block_size_(block_size) {}
    ~SequenceBlocks() { release_all(); }
    SequenceBlocks(const SequenceBlocks&) = delete;
    SequenceBlocks& operator=(const SequenceBlocks&) = delete;
    SequenceBlocks(SequenceBlocks&& o) noexcept
        : allocator_(o.allocator_), block_size_(o.block_size_), blocks_(std::move(o.blocks_)) { o.blocks_.clear(); }

    // Makes room for `tokens` tokens in total. Returns false (allocating nothing) if the pool is short.
    [[nodiscard]] bool reserve(int64_t tokens);
    void release_all();
    const std::vector<int32_t>& blocks() const { return blocks_; }
    int64_t capacity() const { return int64_t(blocks_.size()) * block_size_; }

private:
    BlockAllocator* allocator_;
    int64_t block_size_;
    std::vector<int32_t> blocks_;
};

}  // namespace swiftkv
