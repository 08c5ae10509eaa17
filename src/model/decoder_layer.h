// The Llama decoder layer and SwiftKV's SingleInputKV projection, written once (DESIGN.md section 2,
// "one decoder layer"). Inference over the paged KV cache (LlamaModel), the distillation teacher and
// the SwiftKV student's forward (train/DistillModel) all run their layers through
// decoder_layer_forward. They differ only in
//   - the attention step they pass in: where K and V come from (the paged cache, the layer's own
//     projection, or the shared K/V of a SwiftKV group) and where they are written;
//   - which activations they keep for a backward pass (DecoderLayerIO's save_* pointers);
//   - which Q projection they multiply by (the loaded one, or the student's trainable copy).
// The hand-written backward of the student's layers lives in train/ (distill_model.cpp) and mirrors
// this function step by step; tests/train checks its gradients against finite differences of it.
#pragma once

#include <cstdint>
#include <utility>

#include "backend/backend.h"
#include "model/model_config.h"

namespace swiftkv {

// One layer's weights on the backend. qkv is Q, K and V fused ([q_dim + 2*kv_dim, hidden]) for a
// layer that keeps its own KV (l < L, or every layer of the teacher); for a SwiftKV later layer it is
// q_proj_swiftkv alone ([q_dim, hidden]): its K/V come from SingleInputKV.
struct LayerWeights {
    WeightMatrix qkv;
    WeightMatrix o;        // [hidden, q_dim]
    WeightMatrix gate_up;  // [2*ffn, hidden]: gate rows, then up rows
    WeightMatrix down;     // [hidden, ffn]
    const float* attn_norm = nullptr;  // [hidden]
    const float* ffn_norm = nullptr;   // [hidden]
};

// The buffers and inputs of one call over `rows` rows. Activations are in the backend's act dtype
// unless marked f32; every pointer is device memory.
struct DecoderLayerIO {
    int64_t rows = 0;
    // The residual stream [rows, hidden] f32, updated in place. On entry `delta` [rows, hidden] holds
    // the previous layer's output not yet added to it (unless `first`: the stream is complete); on
    // exit delta holds this layer's MLP output, again not yet added (the next layer's norm adds it).
    float* residual = nullptr;
    void* delta = nullptr;
    bool first = false;
    const int32_t* positions = nullptr;  // [rows] RoPE positions
    const float* rope_inv_freq = nullptr;  // [head_dim/2]
    // The Q (or Q|K|V) projection to use; null: the layer's own weights.qkv.
    const WeightMatrix* q_weight = nullptr;
    // Scratch and outputs: normed [rows, hidden], qkv [rows, q_weight rows], attn [rows, q_dim],
    // gate_up [rows, 2*ffn], mlp [rows, ffn].
    void* normed = nullptr;
    void* qkv = nullptr;
    void* attn = nullptr;
    void* gate_up = nullptr;
    void* mlp = nullptr;
    // For a backward pass (f32 [rows, hidden] each, optional): the stream entering the layer (after
    // the previous layer's delta is added) and the stream after attention (before the MLP).
    float* save_input = nullptr;
    float* save_mid = nullptr;
};

// One Llama decoder layer:
//   x = residual (+ delta);  h = RMSNorm(x; attn_norm);  q|k|v = h Wqkv;  RoPE on q (and k);
//   a = attend(q|k|v);  x += a Wo;  h = RMSNorm(x; ffn_norm);  delta = (SiLU(h Wg) * h Wu) Wd.
// `attend(char* qkv, int64_t stride, void* out)` gets the projected rows (RoPE applied; stride =
// elements per row: q_dim alone, or q_dim + 2*kv_dim with K and V after Q) and writes the attention
// output [rows, q_dim] to out; it also writes K/V to a cache where the caller keeps one.
template <class Attend>
void decoder_layer_forward(Backend& b, const ModelConfig& c, const LayerWeights& w, const DecoderLayerIO& io,
                           Attend&& attend) {
    const DType act = b.act_dtype();
    const float eps = float(c.rms_eps);
    const int64_t rows = io.rows, H = c.hidden;
    if (io.first) {
        b.rmsnorm(io.residual, w.attn_norm, io.normed, rows, H, eps);
    } else {
        b.add_rmsnorm(io.residual, io.delta, w.attn_norm, io.normed, rows, H, eps);
    }
    if (io.save_input != nullptr) b.copy(io.save_input, io.residual, size_t(rows * H) * 4);
    const WeightMatrix& wq = io.q_weight != nullptr ? *io.q_weight : w.qkv;
    b.matmul(io.normed, rows, wq, io.qkv, act);
    // Q and K heads are adjacent at the start of each row: one RoPE call covers both.
    const bool has_kv = wq.rows > c.q_dim();
    b.rope(io.qkv, rows, wq.rows, has_kv ? c.n_heads + c.n_kv_heads : c.n_heads, c.head_dim, io.positions,
           io.rope_inv_freq);
    std::forward<Attend>(attend)(static_cast<char*>(io.qkv), wq.rows, io.attn);
    b.matmul(io.attn, rows, w.o, io.delta, act);
    b.add_rmsnorm(io.residual, io.delta, w.ffn_norm, io.normed, rows, H, eps);
    if (io.save_mid != nullptr) b.copy(io.save_mid, io.residual, size_t(rows * H) * 4);
    b.matmul(io.normed, rows, w.gate_up, io.gate_up, act);
    b.silu_mul(io.gate_up, io.mlp, rows, c.ffn);
    b.matmul(io.mlp, rows, w.down, io.delta, act);
}

// SwiftKV's SingleInputKV: the K and V of every later group g (layers >= L) from the one hidden state
// entering layer L: x = RMSNorm(h_L; norm_swiftkv), [K_0..K_{G-1} | V_0..V_{G-1}] = x W_kv, RoPE on
// the K part. residual holds h_L, or h_L minus `delta` when delta is not null (it is added first, in
// place). Writes x to normed [rows, hidden] and the K/V rows to kv_out [rows, 2*G*kv_dim].
inline void single_input_kv(Backend& b, const ModelConfig& c, const float* norm_swiftkv, const WeightMatrix& w_kv,
                            int64_t rows, float* residual, const void* delta, const int32_t* positions,
                            const float* rope_inv_freq, void* normed, void* kv_out) {
    const float eps = float(c.rms_eps);
    if (delta != nullptr) {
        b.add_rmsnorm(residual, delta, norm_swiftkv, normed, rows, c.hidden, eps);
    } else {
        b.rmsnorm(residual, norm_swiftkv, normed, rows, c.hidden, eps);
    }
    b.matmul(normed, rows, w_kv, kv_out, b.act_dtype());
    const int64_t groups = w_kv.rows / (2 * c.kv_dim());
    b.rope(kv_out, rows, w_kv.rows, groups * c.n_kv_heads, c.head_dim, positions, rope_inv_freq);
}

}  // namespace swiftkv
