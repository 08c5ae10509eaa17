// Planned tensors -> f32 row chunks (see convert_plan.h).
#include "convert/convert_plan.h"

#include <algorithm>

#include "core/error.h"

namespace swiftkv::convert_detail {

bool is_rope_permuted_name(const std::string& n) {
    return n.ends_with("self_attn.q_proj.weight") || n.ends_with("self_attn.k_proj.weight") ||
           n.ends_with("self_attn.q_proj_swiftkv.weight") || n.ends_with("self_attn.k_proj_swiftkv.weight");
}

void for_each_f32_chunk(const PlannedTensor& t, int64_t head_dim, bool llama_rope_order,
                        const std::function<void(const float*, int64_t)>& emit) {
    const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const int64_t cols = t.shape.size() == 2 ? t.shape[1] : t.shape[0];
    SKV_CHECK(!llama_rope_order || (head_dim > 0 && head_dim % 2 == 0 && rows % head_dim == 0),
              "internal error: tensor '{}' has {} rows, not whole heads of {}", t.name, rows, head_dim);
    int64_t chunk_rows = std::max<int64_t>(1, (int64_t(1) << 22) / cols);
    if (llama_rope_order) chunk_rows = std::max(head_dim, chunk_rows / head_dim * head_dim);
    chunk_rows = std::min(chunk_rows, rows);
    std::vector<float> acc(size_t(chunk_rows * cols));
    std::vector<float> part(t.sources.size() > 1 ? acc.size() : 0);
    std::vector<float> reordered(llama_rope_order ? acc.size() : 0);
    const float inv_count = 1.0f / float(t.sources.size());
    const int64_t half = head_dim / 2;
    for (int64_t r = 0; r < rows; r += chunk_rows) {
        const int64_t n = std::min(chunk_rows, rows - r);
        const size_t count = size_t(n * cols);
        read_source_rows_f32(*t.sources.front(), r, r + n, head_dim, acc.data());
        if (t.sources.size() > 1) {
            for (size_t s = 1; s < t.sources.size(); ++s) {
                read_source_rows_f32(*t.sources[s], r, r + n, head_dim, part.data());
                for (size_t i = 0; i < count; ++i) acc[i] += part[i];
            }
            for (size_t i = 0; i < count; ++i) acc[i] *= inv_count;
        }
        if (!llama_rope_order) {
            emit(acc.data(), n);
            continue;
        }
        // Chunks hold whole heads, so the interleaving stays inside the chunk.
        for (int64_t head = 0; head < n / head_dim; ++head) {
            for (int64_t a = 0; a < 2; ++a) {
                for (int64_t b = 0; b < half; ++b) {
                    const float* from = acc.data() + (head * head_dim + a * half + b) * cols;
                    std::copy(from, from + cols, reordered.data() + (head * head_dim + 2 * b + a) * cols);
                }
            }
        }
        emit(reordered.data(), n);
    }
}

}  // namespace swiftkv::convert_detail
