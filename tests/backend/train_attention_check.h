// Attention over packed sequences (TrainingOps::attention_forward_train / attention_backward) against
// direct double-precision references, shared by tests/backend/test_train_ops.cpp (every backend: small
// packings on all of them, the device-sized grid on device backends) and tests/cuda/test_cuda_train_ops.cpp
// (the CUDA backend's forced SIMT path, whose switch exists in the CUDA build only).
//
// check_train_attention runs one case on a fused QKV buffer [T, (nh + 2 nkv) hd + 8] (the 8 padding
// columns must survive), in the backend's act dtype (ActArray: the references see exactly its inputs):
//   - forward: out and lse against the f64 forward;
//   - backward, once written and once accumulated into a randomly prefilled fused gradient buffer, from
//     the f64 forward's out (rounded to the act dtype) and lse (rounded to f32), against the analytic
//     f64 backward (per packed sequence, causal; GQA sums over the query heads of a KV head):
//         P_ij = exp(scale q_i.k_j - lse_i),  D_i = dO_i.O_i,  dP_ij = dO_i.v_j,  dS_ij = P_ij (dP_ij - D_i)
//         dV_j = sum_i P_ij dO_i,  dK_j = scale sum_i dS_ij q_i,  dQ_i = scale sum_j dS_ij k_j
//     (test_train_ops.cpp checks this reference against finite differences of the f64 forward).
// Tolerances, per element, relative to the condition scale of what the element sums:
//   - out: |err| <= t_out * sum_j p_j |v_jd| + u * 2^-24 * S * sum_j p_j |v_jd - out_d| (as in
//     test_backend_attention.cpp; S = max_j scale sum_d |q_d k_jd|: the second term is what rounding
//     scores of magnitude S to f32 does to a peaked softmax). f32: t_out = 1e-5, u = 4. bf16: t_out = 1e-2
//     -- P enters the P.V tensor-core product in bf16 (2^-8 of the scale) and out is rounded to bf16
//     (2^-8 of |out| <= the scale) -- and u = 16 (scores from tensor cores, exp2 in f32).
//   - lse (f32 on every backend): |err| <= 1e-5 * (1 + |lse| + S): the f32 row maximum and exponent
//     (ulps of S), the f32 log-sum (ulps of |lse|, and of the sum's log: the 1).
//   - dq, dk, dv: |err| <= t_g * M1 + t_a * M2 (+ t_g |prev| when accumulating), with
//         M1 = sum |terms| (dV: sum_i P_ij |dO_id|; dK: scale sum_i |dS_ij| |q_id|; dQ: scale sum_j |dS_ij| |k_jd|)
//         M2 = the same sums with |dS_ij| replaced by P_ij (sum_d |dO_id v_jd| + sum_d |dO_id O_id|)
//     M1 carries the rounding of P and dS (bf16 on CUDA: FlashAttention-2 style, P and dS enter the
//     tensor-core products in bf16, 2^-8 each) and of the output (2^-8 of |result| <= M1); M2 carries
//     the f32 rounding of dP and D, which dS = P (dP - D) cancels (at most ~hd 2^-24 of their terms'
//     magnitudes). f32: t_g = 2e-5, t_a = 2e-5. bf16: t_g = 2e-2 (2.5x the 2^-7 of the two roundings),
//     t_a = 2e-5 (2.5x 128 * 2^-24); and, as a check of the whole tensor that the element bound (loose
//     where a sum cancels) cannot make, ||got - ref|| / ||ref|| <= 1e-2 per gradient (the two bf16
//     roundings, of random sign, give ~3e-3). (The CPU backend's f32 results stay below 4e-7 of M1.)
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "backend/train_ops.h"
#include "backend_test_util.h"

namespace swiftkv::test {

// f64 dot products with four accumulators (independent chains; the order does not matter at f64).
inline double ref_dot(const double* a, const double* b, int64_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t d = 0;
    for (; d + 4 <= n; d += 4) {
        s0 += a[d] * b[d];
        s1 += a[d + 1] * b[d + 1];
        s2 += a[d + 2] * b[d + 2];
        s3 += a[d + 3] * b[d + 3];
    }
    for (; d < n; ++d) s0 += a[d] * b[d];
    return (s0 + s1) + (s2 + s3);
}
inline double ref_abs_dot(const double* a, const double* b, int64_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t d = 0;
    for (; d + 4 <= n; d += 4) {
        s0 += std::abs(a[d] * b[d]);
        s1 += std::abs(a[d + 1] * b[d + 1]);
        s2 += std::abs(a[d + 2] * b[d + 2]);
        s3 += std::abs(a[d + 3] * b[d + 3]);
    }
    for (; d < n; ++d) s0 += std::abs(a[d] * b[d]);
    return (s0 + s1) + (s2 + s3);
}

struct AttnHeads {
    int64_t n_heads, n_kv_heads, head_dim;
};

// Causal softmax attention of query head h over the rows [begin, end) of one packed sequence; q [T, nh, hd],
// k and v [T, nkv, hd] contiguous. Writes out [T, nh, hd] and lse [T, nh] for those rows and, where given,
// each output's condition scales: mag = sum_j p_j |v_jd|, spread = sum_j p_j |v_jd - out_d| ([T, nh, hd])
// and score_mag = max_j scale sum_d |q_d k_jd| ([T, nh]).
inline void ref_attention_forward_head(const double* q, const double* k, const double* v, const AttnHeads& s,
                                       double scale, int64_t begin, int64_t end, int64_t h, double* out, double* lse,
                                       double* mag = nullptr, double* spread = nullptr, double* score_mag = nullptr) {
    const int64_t nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim, kvh = h / (nh / nkv);
    std::vector<double> p(size_t(std::max<int64_t>(end - begin, 1)));
    for (int64_t i = begin; i < end; ++i) {
        const double* qi = q + (i * nh + h) * hd;
        double m = -INFINITY, smag = 0.0;
        for (int64_t j = begin; j <= i; ++j) {
            const double* kj = k + (j * nkv + kvh) * hd;
            const double sc = scale * ref_dot(qi, kj, hd);
            p[size_t(j - begin)] = sc;
            m = std::max(m, sc);
            if (score_mag) smag = std::max(smag, scale * ref_abs_dot(qi, kj, hd));
        }
        double sum = 0.0;
        for (int64_t j = begin; j <= i; ++j) sum += (p[size_t(j - begin)] = std::exp(p[size_t(j - begin)] - m));
        const double inv = 1.0 / sum;
        double* o = out + (i * nh + h) * hd;
        std::fill(o, o + hd, 0.0);
        for (int64_t j = begin; j <= i; ++j) {
            const double pj = p[size_t(j - begin)] * inv;
            const double* vj = v + (j * nkv + kvh) * hd;
            for (int64_t d = 0; d < hd; ++d) o[d] += pj * vj[d];
        }
        lse[i * nh + h] = m + std::log(sum);
        if (score_mag) score_mag[i * nh + h] = smag;
        if (mag) {
            double* mg = mag + (i * nh + h) * hd;
            double* sp = spread + (i * nh + h) * hd;
            std::fill(mg, mg + hd, 0.0);
            std::fill(sp, sp + hd, 0.0);
            for (int64_t j = begin; j <= i; ++j) {
                const double pj = p[size_t(j - begin)] * inv;
                const double* vj = v + (j * nkv + kvh) * hd;
                for (int64_t d = 0; d < hd; ++d) {
                    mg[d] += pj * std::abs(vj[d]);
                    sp[d] += pj * std::abs(vj[d] - o[d]);
                }
            }
        }
    }
}

// The analytic backward (see the top of this file) and each gradient element's condition scales M1, M2,
// from q, k, v, out, dout and lse as the backend's attention_backward reads them. Layouts as above.
struct AttnBackwardRef {
    std::vector<double> dq, dk, dv;            // [T, nh, hd], [T, nkv, hd], [T, nkv, hd]
    std::vector<double> dq_m1, dk_m1, dv_m1;  // M1
    std::vector<double> dq_m2, dk_m2;         // M2 (dV has no dS term)
};

inline AttnBackwardRef ref_attention_backward(const std::vector<double>& q, const std::vector<double>& k,
                                              const std::vector<double>& v, const std::vector<double>& out,
                                              const std::vector<double>& lse, const std::vector<double>& dout,
                                              const AttnHeads& s, double scale, const std::vector<int32_t>& cu) {
    const int64_t nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim, group = nh / nkv;
    const int64_t T = cu.back(), nseq = int64_t(cu.size()) - 1;
    AttnBackwardRef r;
    for (auto* a : {&r.dq, &r.dq_m1, &r.dq_m2}) a->assign(size_t(T * nh * hd), 0.0);
    for (auto* a : {&r.dk, &r.dv, &r.dk_m1, &r.dv_m1, &r.dk_m2}) a->assign(size_t(T * nkv * hd), 0.0);
    // One unit per (sequence, KV head): it owns dK/dV of its rows and dQ of its group's query heads.
    parallel_ranges(nseq * nkv, [&](int64_t u0, int64_t u1) {
        for (int64_t unit = u0; unit < u1; ++unit) {
            const int64_t sq = unit / nkv, kvh = unit % nkv, begin = cu[size_t(sq)], end = cu[size_t(sq + 1)];
            for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
                for (int64_t i = begin; i < end; ++i) {
                    const size_t qi_at = size_t((i * nh + h) * hd);
                    const double* qi = &q[qi_at];
                    const double* oi = &out[qi_at];
                    const double* doi = &dout[qi_at];
                    const double D = ref_dot(doi, oi, hd), d_mag = ref_abs_dot(doi, oi, hd);
                    const double li = lse[size_t(i * nh + h)];
                    double* dq = &r.dq[qi_at];
                    double* dq1 = &r.dq_m1[qi_at];
                    double* dq2 = &r.dq_m2[qi_at];
                    for (int64_t j = begin; j <= i; ++j) {
                        const size_t kj_at = size_t((j * nkv + kvh) * hd);
                        const double* kj = &k[kj_at];
                        const double* vj = &v[kj_at];
                        const double p = std::exp(scale * ref_dot(qi, kj, hd) - li);
                        const double ds = p * (ref_dot(doi, vj, hd) - D);
                        const double a1 = scale * std::abs(ds), a2 = scale * p * (ref_abs_dot(doi, vj, hd) + d_mag);
                        const double sds = scale * ds;
                        double* dk = &r.dk[kj_at];
                        double* dv = &r.dv[kj_at];
                        double* dk1 = &r.dk_m1[kj_at];
                        double* dv1 = &r.dv_m1[kj_at];
                        double* dk2 = &r.dk_m2[kj_at];
                        for (int64_t d = 0; d < hd; ++d) {
                            dv[d] += p * doi[d];
                            dv1[d] += p * std::abs(doi[d]);
                            dk[d] += sds * qi[d];
                            dk1[d] += a1 * std::abs(qi[d]);
                            dk2[d] += a2 * std::abs(qi[d]);
                            dq[d] += sds * kj[d];
                            dq1[d] += a1 * std::abs(kj[d]);
                            dq2[d] += a2 * std::abs(kj[d]);
                        }
                    }
                }
        }
    });
    return r;
}

// One case of the packed attention grid.
struct TrainAttnCase {
    std::vector<int32_t> lens;
    int64_t n_heads, n_kv_heads, head_dim;
};

inline std::string train_attn_name(const TrainAttnCase& c) {
    std::string s = "lens {";
    for (size_t i = 0; i < c.lens.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(c.lens[i]);
    }
    return s + "}, heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) + ", head_dim " +
           std::to_string(c.head_dim);
}

// The tolerances at the top of this file, by the backend's act dtype.
struct TrainAttnTolerance {
    double out, out_scores, lse, grad, grad_arith, frobenius;
};
inline TrainAttnTolerance train_attn_tolerance(const Backend& b) {
    if (b.act_dtype() == DType::F32) return {1e-5, 4.0, 1e-5, 2e-5, 2e-5, 1e-5};
    return {1e-2, 16.0, 1e-5, 2e-2, 2e-5, 1e-2};
}

// ||got - want|| / ||want|| (NaN anywhere: infinity).
inline double rel_frobenius(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
        const double d = double(got[i]) - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    if (got.size() != want.size() || std::isnan(num)) return INFINITY;
    return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Forward and backward of one case on `b` (see the top of this file). unknown_max_len passes
// PackedSequences::max_seq_len = 0 (the backend must not rely on the hint).
inline void check_train_attention(Backend& b, const TrainAttnCase& c, uint32_t seed, bool unknown_max_len = false) {
    const int64_t nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim;
    const AttnHeads heads{nh, nkv, hd};
    std::vector<int32_t> cu = {0};
    int64_t max_len = 0;
    for (int32_t l : c.lens) {
        cu.push_back(cu.back() + l);
        max_len = std::max<int64_t>(max_len, l);
    }
    const int64_t T = cu.back(), nseq = int64_t(c.lens.size());
    const int64_t stride = (nh + 2 * nkv) * hd + 8, k_off = nh * hd, v_off = (nh + nkv) * hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    const TrainAttnTolerance tol = train_attn_tolerance(b);
    const bool bf16 = b.act_dtype() != DType::F32;
    const std::string what = train_attn_name(c) + (unknown_max_len ? ", max_seq_len unknown" : "");
    SCOPED_TRACE(what);
    TrainingOps& ops = training_ops(b);

    Random rng(seed);
    ActArray qkv(b, rng.floats(size_t(T * stride), -2.0f, 2.0f));
    // Contiguous f64 copies of the heads, as the backend holds them.
    auto unpack = [&](const std::vector<float>& all, int64_t offset, int64_t width) {
        std::vector<double> o(size_t(T * width));
        for (int64_t r = 0; r < T; ++r)
            for (int64_t j = 0; j < width; ++j) o[size_t(r * width + j)] = all[size_t(r * stride + offset + j)];
        return o;
    };
    const std::vector<double> q = unpack(qkv.values(), 0, nh * hd), k = unpack(qkv.values(), k_off, nkv * hd),
                              v = unpack(qkv.values(), v_off, nkv * hd);
    DeviceArray<int32_t> d_cu(b, cu);
    PackedSequences seqs;
    seqs.num_seqs = nseq;
    seqs.num_rows = T;
    seqs.cu_seqlens = d_cu.get();
    seqs.max_seq_len = unknown_max_len ? 0 : max_len;

    // Forward, into outputs that start out NaN (every row must be written).
    const float nan = std::numeric_limits<float>::quiet_NaN();
    ActArray out(b, std::vector<float>(size_t(T * nh * hd), nan));
    DeviceArray<float> lse(b, std::vector<float>(size_t(T * nh), nan));
    ops.attention_forward_train(qkv.get(), stride, qkv.at(k_off), qkv.at(v_off), stride, seqs, nh, nkv, hd, scale,
                                out.get(), lse.get());
    std::vector<double> out_ref(size_t(T * nh * hd)), mag(out_ref.size()), spread(out_ref.size());
    std::vector<double> lse_ref(size_t(T * nh)), score_mag(lse_ref.size());
    parallel_ranges(nseq * nh, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u)
            ref_attention_forward_head(q.data(), k.data(), v.data(), heads, double(scale), cu[size_t(u / nh)],
                                       cu[size_t(u / nh + 1)], u % nh, out_ref.data(), lse_ref.data(), mag.data(),
                                       spread.data(), score_mag.data());
    });
    {
        std::vector<double> out_tol(out_ref.size()), lse_tol(lse_ref.size());
        for (size_t i = 0; i < out_ref.size(); ++i)
            out_tol[i] = tol.out * mag[i] + tol.out_scores * 0x1p-24 * score_mag[i / size_t(hd)] * spread[i] + 1e-30;
        for (size_t i = 0; i < lse_ref.size(); ++i)
            lse_tol[i] = tol.lse * (1.0 + std::abs(lse_ref[i]) + score_mag[i]);
        EXPECT_TRUE(all_close(out.to_host(), out_ref, out_tol, 1.0)) << "out, " << what;
        EXPECT_TRUE(all_close(lse.to_host(), lse_ref, lse_tol, 1.0)) << "lse, " << what;
    }

    // Backward from the reference forward's out (in the act dtype) and lse (f32).
    std::vector<float> out_f(out_ref.begin(), out_ref.end()), lse_f(lse_ref.begin(), lse_ref.end());
    ActArray out_in(b, out_f);
    DeviceArray<float> lse_in(b, lse_f);
    ActArray dout(b, rng.floats(size_t(T * nh * hd)));
    const AttnBackwardRef ref = ref_attention_backward(
        q, k, v, std::vector<double>(out_in.values().begin(), out_in.values().end()),
        std::vector<double>(lse_f.begin(), lse_f.end()),
        std::vector<double>(dout.values().begin(), dout.values().end()), heads, double(scale), cu);
    for (const bool accumulate : {false, true}) {
        // The head slots are overwritten (or added to); the padding columns must keep their values.
        ActArray grad(b, rng.floats(size_t(T * stride)));
        ops.attention_backward(qkv.get(), stride, qkv.at(k_off), qkv.at(v_off), stride, out_in.get(), lse_in.get(),
                               dout.get(), seqs, nh, nkv, hd, scale, grad.get(), grad.at(k_off), grad.at(v_off),
                               accumulate);
        const std::vector<float> got = grad.to_host();
        const std::vector<float>& init = grad.values();
        const std::string how = accumulate ? ", accumulate" : "";
        auto check = [&](const char* name, int64_t offset, int64_t width, const std::vector<double>& g,
                         const std::vector<double>& m1, const std::vector<double>* m2) {
            std::vector<float> slot(size_t(T * width));
            std::vector<double> want(slot.size()), bound(slot.size());
            for (int64_t r = 0; r < T; ++r)
                for (int64_t j = 0; j < width; ++j) {
                    const size_t at = size_t(r * stride + offset + j), i = size_t(r * width + j);
                    const double prev = accumulate ? double(init[at]) : 0.0;
                    slot[i] = got[at];
                    want[i] = prev + g[i];
                    bound[i] = tol.grad * (m1[i] + std::abs(prev)) + (m2 ? tol.grad_arith * (*m2)[i] : 0.0) + 1e-30;
                }
            EXPECT_TRUE(all_close(slot, want, bound, 1.0)) << name << how << ", " << what;
            if (bf16) {
                EXPECT_LE(rel_frobenius(slot, want), tol.frobenius) << name << how << ", " << what;
            }
        };
        check("dq", 0, nh * hd, ref.dq, ref.dq_m1, &ref.dq_m2);
        check("dk", k_off, nkv * hd, ref.dk, ref.dk_m1, &ref.dk_m2);
        check("dv", v_off, nkv * hd, ref.dv, ref.dv_m1, nullptr);
        for (int64_t r = 0; r < T; ++r)
            for (int64_t j = stride - 8; j < stride; ++j)
                ASSERT_EQ(got[size_t(r * stride + j)], init[size_t(r * stride + j)])
                    << "padding column " << j << " of row " << r << " modified" << how << ", " << what;
    }
}

}  // namespace swiftkv::test
