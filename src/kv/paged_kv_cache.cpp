#include "kv/paged_kv_cache.h"

#include "core/error.h"
#include "model/model_loader.h"

namespace swiftkv {

PagedKvCache::PagedKvCache(Backend& backend, const ModelConfig& c, int64_t num_blocks, int64_t block_size) {
    check_kv_block_size(block_size);
    SKV_CHECK(num_blocks > 0 && num_blocks < (int64_t(1) << 31) / block_size, "KV block count {} is out of range",
              num_blocks);
    view_.layout.num_blocks = num_blocks;
    view_.layout.block_size = block_size;
    view_.layout.n_kv_heads = c.n_kv_heads;
    view_.layout.head_dim = c.head_dim;
    const int64_t layer_bytes = num_blocks * view_.layout.block_elems() * dtype_row_bytes(backend.act_dtype(), 1);
    const int64_t layers = c.kv_cache_layers();
    total_bytes_ = 2 * layers * layer_bytes;
    storage_ = DeviceBuffer(backend, size_t(total_bytes_));
    backend.fill_zero(storage_.get(), size_t(total_bytes_));
    char* base = storage_.as<char>();
    for (int64_t l = 0; l < layers; ++l) {
        view_.k_layers.push_back(base + (2 * l) * layer_bytes);
        view_.v_layers.push_back(base + (2 * l + 1) * layer_bytes);
    }
}

}  // namespace swiftkv
