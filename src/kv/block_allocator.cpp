#include "kv/block_allocator.h"

#include "core/error.h"

namespace swiftkv {

BlockAllocator::BlockAllocator(int32_t num_blocks) : ref_counts_(num_blocks, 0) {
    SKV_CHECK(num_blocks > 0, "the KV cache needs at least one block");
    free_list_.reserve(num_blocks);
    for (int32_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(b);  // hand out low ids first
}

std::optional<int32_t> BlockAllocator::allocate() {
    if (free_list_.empty()) return std::nullopt;
    const int32_t b = free_list_.back();
    free_list_.pop_back();
    ref_counts_[b] = 1;
    return b;
}

void BlockAllocator::retain(int32_t b) {
    SKV_CHECK(b >= 0 && b < num_blocks() && ref_counts_[b] > 0, "retain of KV block {} that is not allocated", b);
    ++ref_counts_[b];
}

void BlockAllocator::release(int32_t b) {
    SKV_CHECK(b >= 0 && b < num_blocks() && ref_counts_[b] > 0, "release of KV block {} that is not allocated", b);
    if (--ref_counts_[b] == 0) free_list_.push_back(b);
}

int32_t BlockAllocator::ref_count(int32_t b) const {
    SKV_CHECK(b >= 0 && b < num_blocks(), "KV block {} is out of range", b);
    return ref_counts_[b];
}

}  // namespace swiftkv
