// Paged causal GQA attention and the KV-cache write for the CPU backend.
//
// Work decomposition: a tile is (sequence, kv head, up to kTargetColumns/group query rows). The query
// rows of all query heads sharing the kv head are stacked as the tile's columns, so each K/V element
// read from the cache serves every head of the group. A tile runs flash-attention style over its causal
// key prefix in chunks of kKeyChunk keys, read in place from the paged blocks (copied to scratch only
// when a block does not hold whole groups of 8 keys).
//
// Wide tiles (prefill) are kept "query-transposed": Qt[d][m], St[n][m] (scores), Ot[d][m], with m the
// stacked query column. Then both products are outer-product micro-kernels that broadcast K or V
// elements straight from their natural row-major layout and load 16 query columns per vector:
//   St[n][m] = sum_d K[n][d] Qt[d][m]          (8 keys x 48 columns per micro-tile)
//   Ot[d][m] = alpha[m] Ot[d][m] + sum_n V[n][d] Pt[n][m]   (8 dims x 48 columns per micro-tile)
// and the online softmax runs along n, i.e. elementwise across vectors of 16 columns (no horizontal
// reductions). Narrow tiles (decode: at most 8 columns) would waste most vector lanes that way and use
// dot products along head_dim instead (run_piece_narrow). No BLAS inside, so no interplay between
// thread systems.
//
// When there are few tiles (decode, small chunked prefill), a tile's key range is split into pieces
// (flash-decoding); pieces write unnormalised partial results that a second pass merges.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_kernels.h"
#include "backend/cpu/cpu_simd.h"
#include "core/error.h"

namespace swiftkv::cpu {

namespace {

constexpr int64_t kKeyChunk = 64;        // keys per online-softmax step
constexpr int64_t kKeyRows = 8;          // keys per QK micro-tile
constexpr int64_t kDimRows = 8;          // head dims per PV micro-tile
constexpr int64_t kTargetColumns = 192;  // stacked query columns (heads x rows) per tile
constexpr int64_t kMinSplitKeys = 256;   // never split a tile into pieces shorter than this
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Scores are kept in log2 units (log2(e) folded into the query scale), so the softmax uses 2^x.
constexpr double kLog2e = 1.4426950408889634;
constexpr float kExp2ZeroBelow = -126.0f;  // 2^x is exactly 0 below this: results stay normal numbers

struct Problem {
    const float* q;
    int64_t q_row_stride;
    const AttentionBatch* batch;
    const float* k_cache;
    const float* v_cache;
    float* out;
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t group;  // query heads per kv head
    int64_t head_dim;
    int64_t block_size;
    float scale;  // the softmax scale times log2(e): scores come out in log2 units
};

struct Tile {
    int32_t seq;
    int32_t kv_head;
    int32_t q_begin;  // query rows of the tile, relative to query_start[seq]
    int32_t q_end;
    int32_t num_pieces;
    int64_t first_partial;  // float offset of its first piece's partial slot when num_pieces > 1
};

struct Piece {
    int32_t tile;
    int32_t key_begin;
    int32_t key_end;
    int64_t partial;  // float offset of its partial slot, or -1 when the piece covers the whole tile
    int64_t cost;
};

// Per-thread working set of one piece, carved from one aligned buffer. Every array length is a multiple
// of 16 floats, so every array starts 64-byte aligned.
struct TileScratch {
    float* qt;         // [head_dim][cols]
    float* ot;         // [head_dim][cols]
    float* st;         // [kKeyChunk][cols]
    float* keys;       // [kKeyChunk][head_dim], gathered keys when they cannot be read in place
    float* values;     // [kKeyChunk][head_dim]
    float* row_max;    // [cols]
    float* row_sum;    // [cols]
    float* alpha;      // [cols]
    float* chunk_max;  // [cols] max score of the current chunk (unmasked chunks)
    int32_t* pos;      // [cols] causal limit (last visible key) of each column

    static int64_t floats_needed(int64_t head_dim, int64_t cols) {
        return 2 * head_dim * cols + kKeyChunk * cols + 2 * round_up(kKeyChunk * head_dim, 16) + 5 * cols;
    }
    TileScratch(float* base, int64_t head_dim, int64_t cols) {
        qt = base;
        ot = qt + head_dim * cols;
        st = ot + head_dim * cols;
        keys = st + kKeyChunk * cols;
        values = keys + round_up(kKeyChunk * head_dim, 16);
        row_max = values + round_up(kKeyChunk * head_dim, 16);
        row_sum = row_max + cols;
        alpha = row_sum + cols;
        chunk_max = alpha + cols;
        pos = reinterpret_cast<int32_t*>(chunk_max + cols);
    }
};

// Where one chunk's keys and values are: groups of kKeyRows contiguous key rows, and each value row.
// They point into the cache itself when blocks hold whole groups, else into gathered copies.
struct KeyChunk {
    int64_t key0 = 0;
    int64_t num_keys = 0;
    int64_t num_keys_padded = 0;  // multiple of kKeyRows; padding rows are zero
    bool need_mask = false;
    const float* key_groups[kKeyChunk / kKeyRows];
    const float* value_rows[kKeyChunk];
};

// Copies keys [begin, begin+count) of (sequence, kv head) from the paged cache into dst [count][head_dim],
// one contiguous run per cache block.
void gather_keys(const Problem& p, const float* cache, const int32_t* block_table, int64_t kv_head,
                 int64_t begin, int64_t count, float* dst) {
    const int64_t bs = p.block_size, hd = p.head_dim;
    int64_t k = begin;
    const int64_t end = begin + count;
    while (k < end) {
        const int64_t block = block_table[k / bs];
        const int64_t offset = k % bs;
        const int64_t run = std::min(bs - offset, end - k);
        const float* src = cache + ((block * p.n_kv_heads + kv_head) * bs + offset) * hd;
        std::memcpy(dst + (k - begin) * hd, src, size_t(run * hd) * sizeof(float));
        k += run;
    }
}

// Fills c's pointers for keys [c.key0, c.key0 + c.num_keys). Key groups are padded with zero rows up to a
// multiple of pad_to (kKeyRows or 16); keys_buf needs room for kKeyChunk rows.
void prepare_chunk(const Problem& p, const int32_t* block_table, int64_t kv_head, float* keys_buf,
                   float* values_buf, int64_t pad_to, KeyChunk& c) {
    const int64_t hd = p.head_dim, bs = p.block_size;
    c.num_keys_padded = round_up(c.num_keys, pad_to);
    auto row = [&](const float* cache, int64_t key) {
        return cache + ((block_table[key / bs] * p.n_kv_heads + kv_head) * bs + key % bs) * hd;
    };
    const int64_t full_groups = c.num_keys / kKeyRows;
    // Chunks start at multiples of kKeyChunk, so with bs % kKeyRows == 0 every full group lies in one block.
    if (bs % kKeyRows == 0) {
        for (int64_t g = 0; g < full_groups; ++g) c.key_groups[g] = row(p.k_cache, c.key0 + g * kKeyRows);
        for (int64_t n = 0; n < c.num_keys; ++n) c.value_rows[n] = row(p.v_cache, c.key0 + n);
    } else {
        gather_keys(p, p.k_cache, block_table, kv_head, c.key0, full_groups * kKeyRows, keys_buf);
        gather_keys(p, p.v_cache, block_table, kv_head, c.key0, c.num_keys, values_buf);
        for (int64_t g = 0; g < full_groups; ++g) c.key_groups[g] = keys_buf + g * kKeyRows * hd;
        for (int64_t n = 0; n < c.num_keys; ++n) c.value_rows[n] = values_buf + n * hd;
    }
    if (c.num_keys_padded > full_groups * kKeyRows) {
        // The partial last group and any padding groups: copy and zero-fill; their scores are never read.
        const int64_t n0 = full_groups * kKeyRows, tail = c.num_keys - n0;
        float* dst = keys_buf + n0 * hd;
        gather_keys(p, p.k_cache, block_table, kv_head, c.key0 + n0, tail, dst);
        std::memset(dst + tail * hd, 0, size_t((c.num_keys_padded - c.num_keys) * hd) * sizeof(float));
        for (int64_t g = full_groups; g < c.num_keys_padded / kKeyRows; ++g) c.key_groups[g] = keys_buf + g * kKeyRows * hd;
    }
}

// Calls f(std::integral_constant<int, C>, column_offset) over the column vectors of a tile, in groups
// of 3 vectors (48 columns), with 2+2 instead of 3+1 at the end so that no micro-tile is too thin.
template <class F>
void for_column_groups(int64_t cols, F&& f) {
    const int64_t vecs = cols / 16;
    int64_t v = 0;
    while (vecs - v >= 5 || vecs - v == 3) {
        f(std::integral_constant<int, 3>{}, v * 16);
        v += 3;
    }
    while (vecs - v >= 2) {
        f(std::integral_constant<int, 2>{}, v * 16);
        v += 2;
    }
    if (vecs - v == 1) f(std::integral_constant<int, 1>{}, v * 16);
}

#ifdef SKV_CPU_AVX512

// 2^x for x <= 0 or -inf (scores, in log2 units, minus their max): n = round(x), 2^(x-n) by a degree-5
// minimax polynomial on [-1/2, 1/2] (max relative error 2.1e-7 in f32), scaled by 2^n. Lanes below
// -126 (and -inf, whose NaN intermediate is masked) give exactly 0, so nothing downstream is denormal.
inline __m512 exp2_nonpositive(__m512 x) {
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExp2ZeroBelow), _CMP_GE_OQ);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 e = _mm512_set1_ps(1.3276471736815055e-3f);
    e = _mm512_fmadd_ps(e, f, _mm512_set1_ps(9.675541540080513e-3f));
    e = _mm512_fmadd_ps(e, f, _mm512_set1_ps(5.550713276094967e-2f));
    e = _mm512_fmadd_ps(e, f, _mm512_set1_ps(2.402211972007472e-1f));
    e = _mm512_fmadd_ps(e, f, _mm512_set1_ps(6.931469670620422e-1f));
    e = _mm512_fmadd_ps(e, f, _mm512_set1_ps(1.000000071655432f));
    return _mm512_maskz_scalef_ps(keep, e, n);
}

// In place: r[i] lane j <-> r[j] lane i.
inline void transpose16x16(__m512 r[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] * factor[i] for a 16 x 16 block (factor may be null: 1).
inline void transpose_block16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
                              const float* factor, float scale) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
        r[i] = _mm512_loadu_ps(src + i * src_stride);
        if (factor) r[i] = _mm512_mul_ps(r[i], _mm512_set1_ps(factor[i]));
        else r[i] = _mm512_mul_ps(r[i], _mm512_set1_ps(scale));
    }
    transpose16x16(r);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * dst_stride, r[j]);
}

// st[n0 .. n0+8)[m0 .. m0+16C) = K Qt for one group of 8 contiguous key rows; also folds the group's
// column maxima into chunk_max.
template <int C>
inline void qk_micro(const float* keys, int64_t hd, const float* qt, int64_t cols, int64_t m0, float* st,
                     float* chunk_max) {
    __m512 acc[kKeyRows][C];
#pragma GCC unroll 8
    for (int r = 0; r < kKeyRows; ++r)
#pragma GCC unroll 3
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
        __m512 qv[C];
#pragma GCC unroll 3
        for (int c = 0; c < C; ++c) qv[c] = _mm512_load_ps(qt + d * cols + m0 + 16 * c);
#pragma GCC unroll 8
        for (int r = 0; r < kKeyRows; ++r) {
            const __m512 kb = _mm512_set1_ps(keys[r * hd + d]);
#pragma GCC unroll 3
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(kb, qv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) {
        __m512 mx = _mm512_load_ps(chunk_max + m0 + 16 * c);
#pragma GCC unroll 8
        for (int r = 0; r < kKeyRows; ++r) {
            _mm512_store_ps(st + r * cols + m0 + 16 * c, acc[r][c]);
            mx = _mm512_max_ps(mx, acc[r][c]);
        }
        _mm512_store_ps(chunk_max + m0 + 16 * c, mx);
    }
}

// ot[d0 .. d0+R)[m0 .. m0+16C) = alpha * ot + sum_n values[n][d] * pt[n][m].
template <int R, int C>
inline void pv_micro(const float* pt, const KeyChunk& chunk, int64_t d0, int64_t cols, int64_t m0,
                     const float* alpha, bool first, float* ot) {
    __m512 acc[R][C];
    if (first) {
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    } else {
#pragma GCC unroll 3
        for (int c = 0; c < C; ++c) {
            const __m512 a = _mm512_load_ps(alpha + m0 + 16 * c);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r)
                acc[r][c] = _mm512_mul_ps(a, _mm512_load_ps(ot + (d0 + r) * cols + m0 + 16 * c));
        }
    }
    for (int64_t n = 0; n < chunk.num_keys; ++n) {
        __m512 pv[C];
#pragma GCC unroll 3
        for (int c = 0; c < C; ++c) pv[c] = _mm512_load_ps(pt + n * cols + m0 + 16 * c);
        const float* vrow = chunk.value_rows[n] + d0;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m512 vb = _mm512_set1_ps(vrow[r]);
#pragma GCC unroll 3
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(vb, pv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
        for (int c = 0; c < C; ++c) _mm512_store_ps(ot + (d0 + r) * cols + m0 + 16 * c, acc[r][c]);
}

void scores_chunk(const TileScratch& s, const KeyChunk& chunk, int64_t hd, int64_t cols) {
    const __m512 neg_inf = _mm512_set1_ps(kNegInf);
    for (int64_t m = 0; m < cols; m += 16) _mm512_store_ps(s.chunk_max + m, neg_inf);
    for_column_groups(cols, [&](auto c_tag, int64_t m0) {
        constexpr int C = decltype(c_tag)::value;
        for (int64_t n0 = 0; n0 < chunk.num_keys_padded; n0 += kKeyRows)
            qk_micro<C>(chunk.key_groups[n0 / kKeyRows], hd, s.qt, cols, m0, s.st + n0 * cols, s.chunk_max);
    });
}

void accumulate_chunk(const TileScratch& s, const KeyChunk& chunk, int64_t hd, int64_t cols, bool first) {
    for_column_groups(cols, [&](auto c_tag, int64_t m0) {
        constexpr int C = decltype(c_tag)::value;
        int64_t d0 = 0;
        for (; d0 + kDimRows <= hd; d0 += kDimRows)
            pv_micro<kDimRows, C>(s.st, chunk, d0, cols, m0, s.alpha, first, s.ot);
        for (; d0 < hd; ++d0) pv_micro<1, C>(s.st, chunk, d0, cols, m0, s.alpha, first, s.ot);
    });
}

// The online-softmax step for V column vectors starting at m0 (V independent chains for ILP).
template <int V>
inline void softmax_columns(const TileScratch& s, const KeyChunk& chunk, int64_t cols, int64_t m0) {
    const __m512 neg_inf = _mm512_set1_ps(kNegInf);
    __m512 mx[V];
    if (chunk.need_mask) {
        // Masked scores become -inf; the maximum must then be taken after masking.
        __m512i limit[V];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
            limit[v] = _mm512_load_si512(s.pos + m0 + 16 * v);
            mx[v] = neg_inf;
        }
        for (int64_t n = 0; n < chunk.num_keys; ++n) {
            const __m512i key = _mm512_set1_epi32(int32_t(chunk.key0 + n));
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
                float* at = s.st + n * cols + m0 + 16 * v;
                const __m512 x = _mm512_mask_mov_ps(_mm512_load_ps(at), _mm512_cmpgt_epi32_mask(key, limit[v]), neg_inf);
                _mm512_store_ps(at, x);
                mx[v] = _mm512_max_ps(mx[v], x);
            }
        }
    } else {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) mx[v] = _mm512_load_ps(s.chunk_max + m0 + 16 * v);
    }
    __m512 new_max[V], safe_max[V], sum[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
        const __m512 old_max = _mm512_load_ps(s.row_max + m0 + 16 * v);
        new_max[v] = _mm512_max_ps(old_max, mx[v]);
        // Columns with every key so far masked keep max -inf; subtract 0 there so no inf - inf appears.
        safe_max[v] = _mm512_mask_mov_ps(new_max[v], _mm512_cmp_ps_mask(new_max[v], neg_inf, _CMP_EQ_OQ),
                                         _mm512_setzero_ps());
        _mm512_store_ps(s.alpha + m0 + 16 * v, exp2_nonpositive(_mm512_sub_ps(old_max, safe_max[v])));
        _mm512_store_ps(s.row_max + m0 + 16 * v, new_max[v]);
        sum[v] = _mm512_setzero_ps();
    }
    for (int64_t n = 0; n < chunk.num_keys; ++n) {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
            float* at = s.st + n * cols + m0 + 16 * v;
            const __m512 e = exp2_nonpositive(_mm512_sub_ps(_mm512_load_ps(at), safe_max[v]));
            _mm512_store_ps(at, e);
            sum[v] = _mm512_add_ps(sum[v], e);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
        float* l = s.row_sum + m0 + 16 * v;
        _mm512_store_ps(l, _mm512_fmadd_ps(_mm512_load_ps(l), _mm512_load_ps(s.alpha + m0 + 16 * v), sum[v]));
    }
}

// Online-softmax step over one chunk: masks, updates row_max/row_sum, turns st into probabilities
// 2^(s - max) and leaves alpha = 2^(old_max - new_max) for rescaling ot (scores are in log2 units).
void softmax_chunk(const TileScratch& s, const KeyChunk& chunk, int64_t cols) {
    int64_t m0 = 0;
    for (; m0 + 64 <= cols; m0 += 64) softmax_columns<4>(s, chunk, cols, m0);
    switch ((cols - m0) / 16) {
        case 3: softmax_columns<3>(s, chunk, cols, m0); break;
        case 2: softmax_columns<2>(s, chunk, cols, m0); break;
        case 1: softmax_columns<1>(s, chunk, cols, m0); break;
        default: break;
    }
}


// ---- narrow tiles (decode): at most kNarrowColumns stacked query columns --------------------------------
// The transposed layout would leave most of each 16-lane vector idle, so narrow tiles use the natural
// orientation instead: scores are dot products vectorised over head_dim (16 keys at a time, reduced with
// one transpose tree), and P V broadcasts probabilities over rows of V. Needs head_dim % 32 == 0.

constexpr int64_t kNarrowColumns = 8;

struct NarrowScratch {
    float* q;        // [kNarrowColumns][head_dim], scaled
    float* o;        // [kNarrowColumns][head_dim]
    float* p;        // [kNarrowColumns][kKeyChunk] scores, then probabilities
    float* keys;     // [kKeyChunk][head_dim]
    float* values;   // [kKeyChunk][head_dim]
    float* row_max;  // [16]
    float* row_sum;  // [16]
    float* alpha;    // [16]

    static int64_t floats_needed(int64_t hd) { return 2 * kNarrowColumns * hd + kNarrowColumns * kKeyChunk + 2 * kKeyChunk * hd + 48; }
    NarrowScratch(float* base, int64_t hd) {
        q = base;
        o = q + kNarrowColumns * hd;
        p = o + kNarrowColumns * hd;
        keys = p + kNarrowColumns * kKeyChunk;
        values = keys + kKeyChunk * hd;
        row_max = values + kKeyChunk * hd;
        row_sum = row_max + 16;
        alpha = row_sum + 16;
    }
};

// Scores of one column against the chunk's keys, 16 at a time.
inline void narrow_scores(const float* q, const KeyChunk& chunk, int64_t hd, float* scores) {
    for (int64_t n0 = 0; n0 < chunk.num_keys_padded; n0 += 16) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
        const float* lo = chunk.key_groups[n0 / kKeyRows];
        const float* hi = chunk.key_groups[n0 / kKeyRows + 1];
        for (int64_t d = 0; d < hd; d += 16) {
            const __m512 qv = _mm512_load_ps(q + d);
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(lo + j * hd + d), qv, acc[j]);
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j) acc[8 + j] = _mm512_fmadd_ps(_mm512_loadu_ps(hi + j * hd + d), qv, acc[8 + j]);
        }
        _mm512_store_ps(scores + n0, transpose_reduce16(acc));
    }
}

// o[m][d0 .. d0+32) = alpha[m] o[m] + sum_n p[m][n] v[n] for the M columns.
template <int M>
inline void narrow_pv(const NarrowScratch& s, const KeyChunk& chunk, int64_t hd, bool first) {
    for (int64_t d0 = 0; d0 < hd; d0 += 32) {
        __m512 acc[M][2];
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
            if (first) {
                acc[m][0] = acc[m][1] = _mm512_setzero_ps();
            } else {
                const __m512 a = _mm512_set1_ps(s.alpha[m]);
                acc[m][0] = _mm512_mul_ps(a, _mm512_load_ps(s.o + m * hd + d0));
                acc[m][1] = _mm512_mul_ps(a, _mm512_load_ps(s.o + m * hd + d0 + 16));
            }
        }
        for (int64_t n = 0; n < chunk.num_keys; ++n) {
            const float* v = chunk.value_rows[n] + d0;
            const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m) {
                const __m512 pb = _mm512_set1_ps(s.p[m * kKeyChunk + n]);
                acc[m][0] = _mm512_fmadd_ps(pb, v0, acc[m][0]);
                acc[m][1] = _mm512_fmadd_ps(pb, v1, acc[m][1]);
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
            _mm512_store_ps(s.o + m * hd + d0, acc[m][0]);
            _mm512_store_ps(s.o + m * hd + d0 + 16, acc[m][1]);
        }
    }
}

void narrow_pv_dispatch(int64_t m, const NarrowScratch& s, const KeyChunk& chunk, int64_t hd, bool first) {
    switch (m) {
        case 1: return narrow_pv<1>(s, chunk, hd, first);
        case 2: return narrow_pv<2>(s, chunk, hd, first);
        case 3: return narrow_pv<3>(s, chunk, hd, first);
        case 4: return narrow_pv<4>(s, chunk, hd, first);
        case 5: return narrow_pv<5>(s, chunk, hd, first);
        case 6: return narrow_pv<6>(s, chunk, hd, first);
        case 7: return narrow_pv<7>(s, chunk, hd, first);
        default: return narrow_pv<8>(s, chunk, hd, first);
    }
}

// Same contract as run_piece (below) for tiles of at most kNarrowColumns columns.
void run_piece_narrow(const Problem& p, const Tile& tile, const Piece& piece, float* partials, ScratchBuffer& buffer) {
    const AttentionBatch& b = *p.batch;
    const int64_t hd = p.head_dim, group = p.group;
    const int64_t rows = tile.q_end - tile.q_begin;
    const int64_t used_cols = rows * group;
    const int64_t q0 = b.query_start[tile.seq];
    const int64_t num_queries = b.query_start[tile.seq + 1] - q0;
    const int64_t first_pos = b.seq_lens[tile.seq] - num_queries + tile.q_begin;
    const int32_t* block_table = b.block_tables + tile.seq * b.max_blocks_per_seq;
    NarrowScratch s(buffer.get(size_t(NarrowScratch::floats_needed(hd))), hd);

    int64_t pos[kNarrowColumns];
    for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < rows; ++i) {
            const int64_t m = g * rows + i;
            const float* src = p.q + (q0 + tile.q_begin + i) * p.q_row_stride + (tile.kv_head * group + g) * hd;
            for (int64_t d = 0; d < hd; ++d) s.q[m * hd + d] = src[d] * p.scale;
            pos[m] = first_pos + i;
            s.row_max[m] = kNegInf;
            s.row_sum[m] = 0.0f;
        }

    const __m512 neg_inf = _mm512_set1_ps(kNegInf);
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    bool first = true;
    KeyChunk chunk;
    for (int64_t key0 = piece.key_begin; key0 < piece.key_end; key0 += kKeyChunk) {
        chunk.key0 = key0;
        chunk.num_keys = std::min(kKeyChunk, piece.key_end - key0);
        prepare_chunk(p, block_table, tile.kv_head, s.keys, s.values, 16, chunk);
        for (int64_t m = 0; m < used_cols; ++m) {
            float* sc = s.p + m * kKeyChunk;
            narrow_scores(s.q + m * hd, chunk, hd, sc);
            // Hide keys past the chunk or past this column's causal limit.
            const int64_t visible = std::min(chunk.num_keys, pos[m] - key0 + 1);
            __m512 mx = neg_inf;
            for (int64_t n0 = 0; n0 < chunk.num_keys_padded; n0 += 16) {
                const __mmask16 shown = _mm512_cmplt_epi32_mask(lane, _mm512_set1_epi32(int32_t(visible - n0)));
                const __m512 x = _mm512_mask_mov_ps(neg_inf, shown, _mm512_load_ps(sc + n0));
                _mm512_store_ps(sc + n0, x);
                mx = _mm512_max_ps(mx, x);
            }
            const float old_max = s.row_max[m];
            const float new_max = std::max(old_max, _mm512_reduce_max_ps(mx));
            const float safe_max = new_max == kNegInf ? 0.0f : new_max;
            const float alpha = old_max == kNegInf ? 0.0f : std::exp2(old_max - safe_max);
            const __m512 sub = _mm512_set1_ps(safe_max);
            __m512 sum = _mm512_setzero_ps();
            for (int64_t n0 = 0; n0 < chunk.num_keys_padded; n0 += 16) {
                const __m512 e = exp2_nonpositive(_mm512_sub_ps(_mm512_load_ps(sc + n0), sub));
                _mm512_store_ps(sc + n0, e);
                sum = _mm512_add_ps(sum, e);
            }
            s.row_sum[m] = s.row_sum[m] * alpha + _mm512_reduce_add_ps(sum);
            s.row_max[m] = new_max;
            s.alpha[m] = alpha;
        }
        narrow_pv_dispatch(used_cols, s, chunk, hd, first);
        first = false;
    }

    if (piece.partial < 0) {
        for (int64_t g = 0; g < group; ++g)
            for (int64_t i = 0; i < rows; ++i) {
                const int64_t m = g * rows + i;
                const float inv = 1.0f / s.row_sum[m];
                float* dst = p.out + (q0 + tile.q_begin + i) * p.n_heads * hd + (tile.kv_head * group + g) * hd;
                for (int64_t d = 0; d < hd; ++d) dst[d] = s.o[m * hd + d] * inv;
            }
    } else {
        // Partial slots use the wide layout: ot [hd][cols], row_max [cols], row_sum [cols], cols = 16.
        const int64_t cols = round_up(used_cols, 16);
        float* slot = partials + piece.partial;
        for (int64_t m = 0; m < used_cols; ++m) {
            for (int64_t d = 0; d < hd; ++d) slot[d * cols + m] = s.o[m * hd + d];
            slot[hd * cols + m] = s.row_max[m];
            slot[(hd + 1) * cols + m] = s.row_sum[m];
        }
    }
}

bool use_narrow(const Problem& p, const Tile& tile) {
    return p.head_dim % 32 == 0 && int64_t(tile.q_end - tile.q_begin) * p.group <= kNarrowColumns;
}

#else  // portable path: same layout and algorithm, plain loops

inline bool use_narrow(const Problem&, const Tile&) { return false; }
inline void run_piece_narrow(const Problem&, const Tile&, const Piece&, float*, ScratchBuffer&) {}

inline float exp_clamped(float x) { return x < kExp2ZeroBelow ? 0.0f : std::exp2(x); }

void scores_chunk(const TileScratch& s, const KeyChunk& chunk, int64_t hd, int64_t cols) {
    for (int64_t n = 0; n < chunk.num_keys_padded; ++n) {
        const float* key = chunk.key_groups[n / kKeyRows] + (n % kKeyRows) * hd;
        float* row = s.st + n * cols;
        for (int64_t m = 0; m < cols; ++m) row[m] = 0.0f;
        for (int64_t d = 0; d < hd; ++d) {
            const float k = key[d];
            const float* q = s.qt + d * cols;
            for (int64_t m = 0; m < cols; ++m) row[m] += k * q[m];
        }
    }
}

void accumulate_chunk(const TileScratch& s, const KeyChunk& chunk, int64_t hd, int64_t cols, bool first) {
    for (int64_t d = 0; d < hd; ++d) {
        float* o = s.ot + d * cols;
        for (int64_t m = 0; m < cols; ++m) o[m] = first ? 0.0f : o[m] * s.alpha[m];
        for (int64_t n = 0; n < chunk.num_keys; ++n) {
            const float v = chunk.value_rows[n][d];
            const float* pr = s.st + n * cols;
            for (int64_t m = 0; m < cols; ++m) o[m] += v * pr[m];
        }
    }
}

void softmax_chunk(const TileScratch& s, const KeyChunk& chunk, int64_t cols) {
    for (int64_t m = 0; m < cols; ++m) {
        float mx = kNegInf;
        for (int64_t n = 0; n < chunk.num_keys; ++n) {
            float& v = s.st[n * cols + m];
            if (chunk.need_mask && chunk.key0 + n > s.pos[m]) v = kNegInf;
            mx = std::max(mx, v);
        }
        const float new_max = std::max(s.row_max[m], mx);
        const float safe_max = new_max == kNegInf ? 0.0f : new_max;
        const float alpha = exp_clamped(s.row_max[m] - safe_max);
        float sum = 0.0f;
        for (int64_t n = 0; n < chunk.num_keys; ++n) {
            float& v = s.st[n * cols + m];
            v = exp_clamped(v - safe_max);
            sum += v;
        }
        s.row_sum[m] = s.row_sum[m] * alpha + sum;
        s.row_max[m] = new_max;
        s.alpha[m] = alpha;
    }
}

#endif  // SKV_CPU_AVX512

// dst[j * dst_stride + i] = src[i * src_stride + j] * (col_factor ? col_factor[j] : scale), for i < n_src_rows,
// j < n_src_cols; 16 x 16 register blocks where possible.
void transpose_scaled(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t n_src_rows,
                      int64_t n_src_cols, const float* col_factor, float scale) {
    int64_t i0 = 0;
#ifdef SKV_CPU_AVX512
    for (; i0 + 16 <= n_src_rows; i0 += 16) {
        int64_t j0 = 0;
        for (; j0 + 16 <= n_src_cols; j0 += 16) {
            if (col_factor) {
                // The factor belongs to source column j, i.e. destination row j: apply it after transposing.
                __m512 r[16];
#pragma GCC unroll 16
                for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (i0 + i) * src_stride + j0);
                transpose16x16(r);
#pragma GCC unroll 16
                for (int j = 0; j < 16; ++j)
                    _mm512_storeu_ps(dst + (j0 + j) * dst_stride + i0, _mm512_mul_ps(r[j], _mm512_set1_ps(col_factor[j0 + j])));
            } else {
                transpose_block16(src + i0 * src_stride + j0, src_stride, dst + j0 * dst_stride + i0, dst_stride, nullptr,
                                  scale);
            }
        }
        for (; j0 < n_src_cols; ++j0)
            for (int64_t i = i0; i < i0 + 16; ++i)
                dst[j0 * dst_stride + i] = src[i * src_stride + j0] * (col_factor ? col_factor[j0] : scale);
    }
#endif
    for (; i0 < n_src_rows; ++i0)
        for (int64_t j = 0; j < n_src_cols; ++j)
            dst[j * dst_stride + i0] = src[i0 * src_stride + j] * (col_factor ? col_factor[j] : scale);
}

// Runs one piece: keys [key_begin, key_end) for all columns of its tile. Writes the normalised output
// rows, or (split tiles) the unnormalised ot, row_max and row_sum into its partial slot.
void run_piece(const Problem& p, const Tile& tile, const Piece& piece, float* partials, ScratchBuffer& buffer) {
    const AttentionBatch& b = *p.batch;
    const int64_t hd = p.head_dim, group = p.group;
    const int64_t rows = tile.q_end - tile.q_begin;
    const int64_t used_cols = rows * group;
    const int64_t cols = round_up(used_cols, 16);
    const int64_t q0 = b.query_start[tile.seq];
    const int64_t num_queries = b.query_start[tile.seq + 1] - q0;
    const int64_t context = b.seq_lens[tile.seq];
    const int64_t first_pos = context - num_queries + tile.q_begin;  // position of the tile's first row
    const int32_t* block_table = b.block_tables + tile.seq * b.max_blocks_per_seq;

    TileScratch s(buffer.get(size_t(TileScratch::floats_needed(hd, cols))), hd, cols);

    // Column m = g * rows + i holds query head kv_head * group + g at row q_begin + i.
    for (int64_t g = 0; g < group; ++g) {
        const int64_t head = tile.kv_head * group + g;
        const float* src = p.q + (q0 + tile.q_begin) * p.q_row_stride + head * hd;
        float* dst = s.qt + g * rows;
        transpose_scaled(src, p.q_row_stride, dst, cols, rows, hd, nullptr, p.scale);
        for (int64_t i = 0; i < rows; ++i) s.pos[g * rows + i] = int32_t(first_pos + i);
    }
    for (int64_t m = used_cols; m < cols; ++m) {
        for (int64_t d = 0; d < hd; ++d) s.qt[d * cols + m] = 0.0f;
        s.pos[m] = INT32_MAX;
    }
    for (int64_t m = 0; m < cols; ++m) {
        s.row_max[m] = kNegInf;
        s.row_sum[m] = 0.0f;
    }

    bool first = true;
    KeyChunk chunk;
    for (int64_t key0 = piece.key_begin; key0 < piece.key_end; key0 += kKeyChunk) {
        chunk.key0 = key0;
        chunk.num_keys = std::min(kKeyChunk, piece.key_end - key0);
        chunk.need_mask = key0 + chunk.num_keys - 1 > first_pos;
        prepare_chunk(p, block_table, tile.kv_head, s.keys, s.values, kKeyRows, chunk);
        scores_chunk(s, chunk, hd, cols);
        softmax_chunk(s, chunk, cols);
        accumulate_chunk(s, chunk, hd, cols, first);
        first = false;
    }

    if (piece.partial < 0) {
        // row_sum becomes its reciprocal: the per-row factor of the transposed store.
        for (int64_t m = 0; m < used_cols; ++m) s.row_sum[m] = 1.0f / s.row_sum[m];
        for (int64_t g = 0; g < group; ++g) {
            const int64_t head = tile.kv_head * group + g;
            float* dst = p.out + (q0 + tile.q_begin) * p.n_heads * hd + head * hd;
            transpose_scaled(s.ot + g * rows, cols, dst, p.n_heads * hd, hd, rows, s.row_sum + g * rows, 1.0f);
        }
    } else {
        float* slot = partials + piece.partial;
        std::memcpy(slot, s.ot, size_t(hd * cols) * sizeof(float));
        std::memcpy(slot + hd * cols, s.row_max, size_t(cols) * sizeof(float));
        std::memcpy(slot + (hd + 1) * cols, s.row_sum, size_t(cols) * sizeof(float));
    }
}

// Combines the pieces of a split tile: out = sum_j w_j ot_j / sum_j w_j sum_j, w_j = 2^(max_j - max).
void merge_tile(const Problem& p, const Tile& tile, const float* partials) {
    const AttentionBatch& b = *p.batch;
    const int64_t hd = p.head_dim, group = p.group;
    const int64_t rows = tile.q_end - tile.q_begin;
    const int64_t cols = round_up(rows * group, 16);
    const int64_t q0 = b.query_start[tile.seq];
    const int64_t slot_floats = (hd + 2) * cols;
    const float* first = partials + tile.first_partial;  // piece j's slot is first + j * slot_floats
    std::vector<float> weight(size_t(tile.num_pieces));
    for (int64_t g = 0; g < group; ++g) {
        const int64_t head = tile.kv_head * group + g;
        for (int64_t i = 0; i < rows; ++i) {
            const int64_t m = g * rows + i;
            float max_all = kNegInf;
            for (int j = 0; j < tile.num_pieces; ++j)
                max_all = std::max(max_all, first[j * slot_floats + hd * cols + m]);
            // Key 0 is visible to every row, so some piece has a finite max.
            float total = 0.0f;
            for (int j = 0; j < tile.num_pieces; ++j) {
                const float* slot = first + j * slot_floats;
                const float mj = slot[hd * cols + m];
                weight[j] = mj == kNegInf ? 0.0f : std::exp2(mj - max_all);
                total += weight[j] * slot[(hd + 1) * cols + m];
            }
            const float inv = 1.0f / total;
            float* dst = p.out + (q0 + tile.q_begin + i) * p.n_heads * hd + head * hd;
            for (int64_t d = 0; d < hd; ++d) {
                float acc = 0.0f;
                for (int j = 0; j < tile.num_pieces; ++j)
                    acc += weight[j] * first[j * slot_floats + d * cols + m];
                dst[d] = acc * inv;
            }
        }
    }
}

void validate(const float* q, int64_t q_row_stride, const AttentionBatch& b, const KvLayout& layout,
              int64_t n_heads) {
    // Shapes are checked by the backend (op_checks::attention); here the batch's host values.
    if (b.num_seqs == 0) return;
    SKV_CHECK(b.query_start && b.seq_lens && b.block_tables, "attention: batch arrays must not be null");
    SKV_CHECK(b.query_start[0] >= 0, "attention: query_start[0] = {} is negative", b.query_start[0]);
    for (int64_t s = 0; s < b.num_seqs; ++s) {
        const int64_t nq = int64_t(b.query_start[s + 1]) - b.query_start[s];
        const int64_t len = b.seq_lens[s];
        SKV_CHECK(nq >= 0, "attention: query_start is decreasing at sequence {} ({} then {})", s,
                  b.query_start[s], b.query_start[s + 1]);
        SKV_CHECK(len >= nq, "attention: sequence {} has {} query rows but a context of only {} tokens", s, nq,
                  len);
        if (nq == 0) continue;
        const int64_t blocks = ceil_div(len, layout.block_size);
        SKV_CHECK(blocks <= b.max_blocks_per_seq,
                  "attention: sequence {} of {} tokens needs {} blocks but the block table holds {} per sequence", s,
                  len, blocks, b.max_blocks_per_seq);
        const int32_t* table = b.block_tables + s * b.max_blocks_per_seq;
        for (int64_t i = 0; i < blocks; ++i)
            SKV_CHECK(table[i] >= 0 && table[i] < layout.num_blocks,
                      "attention: sequence {} block table entry {} is block {}, outside the cache of {} blocks", s, i,
                      table[i], layout.num_blocks);
    }
    (void)q;
}

}  // namespace

void kv_write(const float* k, const float* v, int64_t rows, int64_t row_stride, const int32_t* slots,
              const KvLayout& layout, float* k_cache, float* v_cache) {
    const int64_t capacity = layout.num_blocks * layout.block_size;
    for (int64_t r = 0; r < rows; ++r)
        SKV_CHECK(slots[r] < capacity, "kv_write: row {} targets slot {}, but the cache holds {} slots ({} blocks of {})",
                  r, slots[r], capacity, layout.num_blocks, layout.block_size);
    const int64_t hd = layout.head_dim, bs = layout.block_size;
    const size_t head_bytes = size_t(hd) * sizeof(float);
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t slot = slots[r];
        if (slot < 0) continue;
        const int64_t block = slot / bs, offset = slot % bs;
        for (int64_t h = 0; h < layout.n_kv_heads; ++h) {
            const int64_t dst = ((block * layout.n_kv_heads + h) * bs + offset) * hd;
            std::memcpy(k_cache + dst, k + r * row_stride + h * hd, head_bytes);
            std::memcpy(v_cache + dst, v + r * row_stride + h * hd, head_bytes);
        }
    }
}

void attention(const float* q, int64_t q_row_stride, const AttentionBatch& batch, const KvLayout& layout,
               const float* k_cache, const float* v_cache, int64_t n_heads, float scale, float* out,
               ThreadPool& pool) {
    validate(q, q_row_stride, batch, layout, n_heads);
    Problem p{q, q_row_stride, &batch, k_cache, v_cache, out, n_heads, layout.n_kv_heads,
              n_heads / layout.n_kv_heads, layout.head_dim, layout.block_size, float(double(scale) * kLog2e)};

    // Plan tiles.
    const int64_t rows_per_tile = std::max<int64_t>(1, kTargetColumns / p.group);
    std::vector<Tile> tiles;
    for (int64_t s = 0; s < batch.num_seqs; ++s) {
        const int64_t nq = batch.query_start[s + 1] - batch.query_start[s];
        for (int64_t h = 0; h < p.n_kv_heads; ++h)
            for (int64_t r = 0; r < nq; r += rows_per_tile)
                tiles.push_back(Tile{int32_t(s), int32_t(h), int32_t(r), int32_t(std::min(nq, r + rows_per_tile)), 1, -1});
    }
    if (tiles.empty()) return;

    // With few tiles, split their key ranges so that every thread has work (flash-decoding).
    const int64_t threads = pool.size();
    const int64_t want_pieces = 4 * threads;
    const int64_t max_splits = threads > 1 && int64_t(tiles.size()) < want_pieces
                                   ? ceil_div(want_pieces, int64_t(tiles.size()))
                                   : 1;
    std::vector<Piece> pieces;
    int64_t partial_floats = 0;  // partial slots of split tiles, (head_dim + 2) * cols floats per piece
    for (size_t t = 0; t < tiles.size(); ++t) {
        Tile& tile = tiles[t];
        const int64_t nq = batch.query_start[tile.seq + 1] - batch.query_start[tile.seq];
        const int64_t key_end = batch.seq_lens[tile.seq] - nq + tile.q_end;
        const int64_t cols = round_up(int64_t(tile.q_end - tile.q_begin) * p.group, 16);
        int64_t splits = std::min(max_splits, key_end / kMinSplitKeys);
        if (splits <= 1) {
            pieces.push_back(Piece{int32_t(t), 0, int32_t(key_end), -1, cols * key_end});
            continue;
        }
        const int64_t piece_keys = round_up(ceil_div(key_end, splits), kKeyChunk);
        splits = ceil_div(key_end, piece_keys);
        const int64_t slot_floats = (p.head_dim + 2) * cols;
        tile.num_pieces = int32_t(splits);
        tile.first_partial = partial_floats;
        for (int64_t j = 0; j < splits; ++j) {
            const int64_t kb = j * piece_keys, ke = std::min(key_end, kb + piece_keys);
            pieces.push_back(Piece{int32_t(t), int32_t(kb), int32_t(ke), partial_floats, cols * (ke - kb)});
            partial_floats += slot_floats;
        }
    }
    thread_local std::vector<float> partials;
    if (partials.size() < size_t(partial_floats)) partials.resize(size_t(partial_floats));

    // Largest pieces first, handed out dynamically: causal tiles differ in cost by up to the tile count.
    std::vector<int32_t> order(pieces.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return pieces[a].cost > pieces[b].cost; });

    std::atomic<int64_t> next{0};
    float* partial_data = partials.data();
    const int64_t n_pieces = int64_t(pieces.size());
    pool.parallel_for(std::min(threads, n_pieces), [&](int64_t, int64_t, int) {
        thread_local ScratchBuffer buffer;
        for (;;) {
            const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
            if (i >= n_pieces) break;
            const Piece& piece = pieces[size_t(order[size_t(i)])];
            const Tile& tile = tiles[size_t(piece.tile)];
            if (use_narrow(p, tile)) run_piece_narrow(p, tile, piece, partial_data, buffer);
            else run_piece(p, tile, piece, partial_data, buffer);
        }
    });

    if (partial_floats > 0) {
        std::vector<int32_t> split_tiles;
        for (size_t t = 0; t < tiles.size(); ++t)
            if (tiles[t].num_pieces > 1) split_tiles.push_back(int32_t(t));
        pool.parallel_for(int64_t(split_tiles.size()), [&](int64_t begin, int64_t end, int) {
            for (int64_t i = begin; i < end; ++i) merge_tile(p, tiles[size_t(split_tiles[size_t(i)])], partial_data);
        });
    }
}

}  // namespace swiftkv::cpu
