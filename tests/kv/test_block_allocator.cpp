#include <gtest/gtest.h>

#include "core/error.h"
#include "kv/block_allocator.h"
#include "kv/paged_kv_cache.h"

using namespace swiftkv;

TEST(BlockAllocator, AllocatesUntilEmptyThenReportsFailure) {
    BlockAllocator a(4);
    std::vector<int32_t> got;
    for (int i = 0; i < 4; ++i) {
        auto b = a.allocate();
        ASSERT_TRUE(b.has_value());
        got.push_back(*b);
    }
    EXPECT_FALSE(a.allocate().has_value());
    EXPECT_EQ(a.num_free(), 0);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3}));
}

TEST(BlockAllocator, ReferenceCountsKeepSharedBlocks) {
    BlockAllocator a(2);
    const int32_t b = *a.allocate();
    a.retain(b);
    EXPECT_EQ(a.ref_count(b), 2);
    a.release(b);
    EXPECT_EQ(a.num_free(), 1);  // still held once
    a.release(b);
    EXPECT_EQ(a.num_free(), 2);
    EXPECT_THROW(a.release(b), Error);  // double free is an error, not corruption
    EXPECT_THROW(a.retain(7), Error);
}

