// BlockAllocator — hands out KV cache blocks by id with reference counts, so that sequences can
// share blocks (prefix sharing, forked completions). A block returns to the free list when its last
// reference is released. Never throws on exhaustion: allocate() reports failure so the scheduler can
// preempt.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace swiftkv {

class BlockAllocator {
public:
    explicit BlockAllocator(int32_t num_blocks);

    int32_t num_blocks() const { return int32_t(ref_counts_.size()); }
    int32_t num_free() const { return int32_t(free_list_.size()); }
    int32_t num_used() const { return num_blocks() - num_free(); }

    [[nodiscard]] std::optional<int32_t> allocate();
    void retain(int32_t block);
    void release(int32_t block);
    int32_t ref_count(int32_t block) const;

private:
    std::vector<int32_t> ref_counts_;
    std::vector<int32_t> free_list_;
};

}  // namespace swiftkv
