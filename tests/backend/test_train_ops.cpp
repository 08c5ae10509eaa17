// The training ops (backend/backend.h, "training ops"; issue 6) on every backend that implements them.
// Each backward op is checked against finite differences: the test has its own straightforward f64
// FORWARD of the op; central differences (h = 1e-6, in f64) of the scalar sum(forward(x) * r), r random,
// give the reference gradient, which the backend's analytic backward (f32, with dy = r) must match to
// 1e-4 relative (measured against max(|g_i|, 1% of the tensor's largest gradient), so that elements
// near zero are judged on the scale of the tensor). The training forwards (attention_forward_train, and
// the backend's rmsnorm/rope that the backward ops differentiate) are checked against the f64 forwards.
// Losses are checked against the f64 formula and finite differences, AdamW against an f64 optimizer.
// Shapes are small (finite differences cost one forward per element), in a grid: GQA 1:1 and 3:1,
// 1 to 3 packed sequences of unequal length (one empty), head_dim 8 and 16, strided (fused) rows; a few
// larger products and rows exercise the threaded and panelled paths against direct f64 formulas.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "backend/train_ops.h"
#include "backend_test_util.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace swiftkv::test {
namespace {

// An odd number of pool threads, so that work splits are uneven; set before any backend exists.
const bool kPoolSized = (ThreadPool::set_global_threads(3), true);

using Vec = std::vector<double>;

Vec to_f64(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// Central differences of a scalar function at x, element by element. f(x, i) returns the function value
// at x where only element i differs from the base point, so it may restrict itself to the part of the
// output that element i can reach (its row, its sequence).
Vec fd_grad(Vec x, const std::function<double(const Vec&, size_t)>& f, double h = 1e-6) {
    Vec g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double fp = f(x, i);
        x[i] = x0 - h;
        const double fm = f(x, i);
        x[i] = x0;
        g[i] = (fp - fm) / (2.0 * h);
    }
    return g;
}

// |actual - expected| <= tol * max(|expected_i|, floor * max_j |expected_j|) for every element.
::testing::AssertionResult grad_close(const std::vector<float>& actual, const Vec& expected, double tol = 1e-4,
                                      double floor = 1e-2) {
    double max_abs = 0.0;
    for (double e : expected) max_abs = std::max(max_abs, std::abs(e));
    Vec scale(expected.size());
    for (size_t i = 0; i < expected.size(); ++i) scale[i] = std::max({std::abs(expected[i]), floor * max_abs, 1e-30});
    return all_close(actual, expected, scale, tol);
}

class TrainOps : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        backend_ = make_backend(GetParam());
        ASSERT_TRUE(backend_) << "backend " << GetParam() << " unavailable";
    }
    Backend& b() { return *backend_; }
    TrainingOps& ops() { return training_ops(*backend_); }
    std::unique_ptr<Backend> backend_;
};

// ---- rmsnorm --------------------------------------------------------------------------------------------

// y = x / sqrt(mean(x^2) + eps) * w for one row.
void ref_rmsnorm_row(const double* x, const double* w, double* y, int64_t dim, double eps) {
    double ss = 0.0;
    for (int64_t j = 0; j < dim; ++j) ss += x[j] * x[j];
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t j = 0; j < dim; ++j) y[j] = x[j] * inv * w[j];
}

TEST_P(TrainOps, RmsNormForwardAndBackward) {
    Random rng(11);
    struct Case { int64_t rows, dim; };
    for (const Case c : {Case{1, 8}, Case{3, 16}, Case{5, 33}, Case{4, 2}, Case{300, 128}}) {
        const double eps = 1e-5;
        const auto x = rng.floats(size_t(c.rows * c.dim), -2.0f, 2.0f);
        const auto w = rng.floats(size_t(c.dim), 0.5f, 1.5f);
        const auto r = rng.floats(size_t(c.rows * c.dim));
        const auto dx0 = rng.floats(size_t(c.rows * c.dim));
        const auto dw0 = rng.floats(size_t(c.dim));
        const Vec xd = to_f64(x), wd = to_f64(w), rd = to_f64(r);

        // Forward against the f64 reference.
        Vec y(xd.size());
        for (int64_t i = 0; i < c.rows; ++i) ref_rmsnorm_row(&xd[size_t(i * c.dim)], wd.data(), &y[size_t(i * c.dim)], c.dim, eps);
        DeviceArray<float> d_x(b(), x), d_w(b(), w), d_r(b(), r), d_y(b(), x.size());
        b().rmsnorm(d_x.get(), d_w.get(), d_y.get(), c.rows, c.dim, float(eps));
        EXPECT_TRUE(grad_close(d_y.to_host(), y, 1e-5, 1e-6)) << c.rows << "x" << c.dim;

        // Gradients by finite differences, row by row for x, over all rows for w.
        const auto row_value = [&](const double* xr, const double* wr, const double* rr) {
            std::vector<double> yr(size_t(c.dim));
            ref_rmsnorm_row(xr, wr, yr.data(), c.dim, eps);
            return std::inner_product(yr.begin(), yr.end(), rr, 0.0);
        };
        const Vec gx = fd_grad(xd, [&](const Vec& xp, size_t i) {
            const size_t row = i / size_t(c.dim) * size_t(c.dim);
            return row_value(&xp[row], wd.data(), &rd[row]);
        });
        const Vec gw = fd_grad(wd, [&](const Vec& wp, size_t) {
            double f = 0.0;
            for (int64_t i = 0; i < c.rows; ++i)
                f += row_value(&xd[size_t(i * c.dim)], wp.data(), &rd[size_t(i * c.dim)]);
            return f;
        });

        DeviceArray<float> d_dx(b(), dx0), d_dw(b(), dw0);
        ops().rmsnorm_backward(d_x.get(), d_w.get(), d_r.get(), d_dx.get(), d_dw.get(), c.rows, c.dim, float(eps), false);
        EXPECT_TRUE(grad_close(d_dx.to_host(), gx)) << "dx " << c.rows << "x" << c.dim;
        Vec gw_acc(gw);
        for (size_t j = 0; j < gw.size(); ++j) gw_acc[j] += dw0[j];
        EXPECT_TRUE(grad_close(d_dw.to_host(), gw_acc)) << "dweight (accumulated) " << c.rows << "x" << c.dim;

        // accumulate_dx adds to dx; a null dweight is skipped.
        ops().rmsnorm_backward(d_x.get(), d_w.get(), d_r.get(), d_dx.get(), nullptr, c.rows, c.dim, float(eps), true);
        Vec gx2(gx);
        for (auto& g : gx2) g *= 2.0;
        EXPECT_TRUE(grad_close(d_dx.to_host(), gx2)) << "dx accumulated " << c.rows << "x" << c.dim;
    }
}

// ---- rope ---------------------------------------------------------------------------------------------

std::vector<float> make_inv_freq(int64_t head_dim, double theta) {
    std::vector<float> inv_freq(size_t(head_dim / 2));
    for (int64_t i = 0; i < head_dim / 2; ++i)
        inv_freq[size_t(i)] = float(1.0 / std::pow(theta, double(2 * i) / double(head_dim)));
    return inv_freq;
}

// Rotate-half RoPE of one row of n_heads heads (contiguous), angle = f32(position * inv_freq) as PyTorch.
void ref_rope_row(const double* x, double* y, int64_t n_heads, int64_t head_dim, int32_t pos,
                  const std::vector<float>& inv_freq) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
            const double angle = double(float(pos) * inv_freq[size_t(i)]);
            const double c = std::cos(angle), s = std::sin(angle);
            const double a = x[h * head_dim + i], bb = x[h * head_dim + half + i];
            y[h * head_dim + i] = a * c - bb * s;
            y[h * head_dim + half + i] = bb * c + a * s;
        }
}

TEST_P(TrainOps, RopeForwardAndBackward) {
    Random rng(12);
    struct Case { int64_t rows, n_heads, head_dim, extra; int32_t max_pos; bool packed; };
    for (const Case c : {Case{1, 1, 8, 0, 5, false}, Case{9, 3, 16, 5, 4000, false}, Case{12, 2, 8, 16, 0, true},
                         Case{300, 4, 32, 0, 0, true}, Case{7, 1, 2, 1, 100000, false}}) {
        const int64_t width = c.n_heads * c.head_dim, stride = width + c.extra;
        const auto inv_freq = make_inv_freq(c.head_dim, 10000.0);
        std::vector<int32_t> pos(size_t(c.rows));
        if (c.packed) {  // two packed sequences: positions 0..len-1 each
            const int64_t first = c.rows / 3;
            for (int64_t r = 0; r < c.rows; ++r) pos[size_t(r)] = int32_t(r < first ? r : r - first);
        } else {
            for (auto& p : pos) p = rng.integer(0, c.max_pos);
        }
        const auto x = rng.floats(size_t(c.rows * stride), -2.0f, 2.0f);  // strided rows
        const auto r = rng.floats(size_t(c.rows * width));                // contiguous projection

        // Forward: the backend's rope against the reference.
        Vec xd(size_t(c.rows * width)), y(xd.size());
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < width; ++j) xd[size_t(i * width + j)] = x[size_t(i * stride + j)];
        for (int64_t i = 0; i < c.rows; ++i)
            ref_rope_row(&xd[size_t(i * width)], &y[size_t(i * width)], c.n_heads, c.head_dim, pos[size_t(i)], inv_freq);
        DeviceArray<float> d_x(b(), x), d_f(b(), inv_freq);
        DeviceArray<int32_t> d_p(b(), pos);
        b().rope(d_x.get(), c.rows, stride, c.n_heads, c.head_dim, d_p.get(), d_f.get());
        const auto fwd = d_x.to_host();
        std::vector<float> fwd_heads(xd.size());
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < width; ++j) fwd_heads[size_t(i * width + j)] = fwd[size_t(i * stride + j)];
        EXPECT_TRUE(grad_close(fwd_heads, y, 1e-5, 1e-2)) << "rope forward, " << c.rows << " rows";

        // Backward: the gradient r, strided like the activations, rotated back in place.
        const Vec rd = to_f64(r);
        const Vec g = fd_grad(xd, [&](const Vec& xp, size_t i) {
            const size_t row = i / size_t(width);
            Vec yr(static_cast<size_t>(width));
            ref_rope_row(&xp[row * size_t(width)], yr.data(), c.n_heads, c.head_dim, pos[row], inv_freq);
            return std::inner_product(yr.begin(), yr.end(), rd.begin() + ptrdiff_t(row * size_t(width)), 0.0);
        });
        std::vector<float> dx(size_t(c.rows * stride));
        for (size_t i = 0; i < dx.size(); ++i) dx[i] = float(i % 7);  // padding sentinels
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < width; ++j) dx[size_t(i * stride + j)] = r[size_t(i * width + j)];
        DeviceArray<float> d_dx(b(), dx);
        ops().rope_backward(d_dx.get(), c.rows, stride, c.n_heads, c.head_dim, d_p.get(), d_f.get());
        const auto got = d_dx.to_host();
        std::vector<float> got_heads(xd.size());
        for (int64_t i = 0; i < c.rows; ++i) {
            for (int64_t j = 0; j < width; ++j) got_heads[size_t(i * width + j)] = got[size_t(i * stride + j)];
            for (int64_t j = width; j < stride; ++j) ASSERT_EQ(got[size_t(i * stride + j)], dx[size_t(i * stride + j)]);
        }
        EXPECT_TRUE(grad_close(got_heads, g)) << "rope backward, " << c.rows << " rows, head_dim " << c.head_dim;
    }
}

// ---- attention -------------------------------------------------------------------------------------------

struct AttnShape {
    int64_t n_heads, n_kv_heads, head_dim;
    std::vector<int32_t> lens;
    bool fused;  // q, k, v (and dq, dk, dv) as column blocks of one [T, (nh + 2 nkv) hd] buffer
};

// Causal softmax attention of rows [begin, end) (one sequence), q [T, nh, hd], k/v [T, nkv, hd] contiguous;
// writes out [T, nh, hd] and lse [T, nh] for those rows.
void ref_attention_seq(const Vec& q, const Vec& k, const Vec& v, const AttnShape& s, double scale, int64_t begin,
                       int64_t end, Vec& out, Vec& lse) {
    const int64_t nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim, group = nh / nkv;
    Vec p;
    for (int64_t h = 0; h < nh; ++h) {
        const int64_t kvh = h / group;
        for (int64_t i = begin; i < end; ++i) {
            p.assign(size_t(i - begin + 1), 0.0);
            double m = -INFINITY;
            for (int64_t j = begin; j <= i; ++j) {
                double sc = 0.0;
                for (int64_t d = 0; d < hd; ++d) sc += q[size_t((i * nh + h) * hd + d)] * k[size_t((j * nkv + kvh) * hd + d)];
                p[size_t(j - begin)] = sc * scale;
                m = std::max(m, sc * scale);
            }
            double sum = 0.0;
            for (auto& x : p) sum += (x = std::exp(x - m));
            for (int64_t d = 0; d < hd; ++d) {
                double o = 0.0;
                for (int64_t j = begin; j <= i; ++j) o += p[size_t(j - begin)] * v[size_t((j * nkv + kvh) * hd + d)];
                out[size_t((i * nh + h) * hd + d)] = o / sum;
            }
            lse[size_t(i * nh + h)] = m + std::log(sum);
        }
    }
}

TEST_P(TrainOps, AttentionForwardAndBackward) {
    Random rng(13);
    const std::vector<AttnShape> shapes = {
        {2, 2, 8, {7}, false},       {3, 1, 16, {5, 9, 3}, false}, {6, 2, 8, {1, 12, 6}, false},
        {4, 4, 16, {10, 0, 4}, true}, {3, 1, 8, {13, 2}, true},
    };
    for (const AttnShape& s : shapes) {
        const int64_t nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim;
        std::vector<int32_t> cu(1, 0);
        for (int32_t len : s.lens) cu.push_back(cu.back() + len);
        const int64_t T = cu.back(), nseq = int64_t(s.lens.size());
        const double scale = 1.0 / std::sqrt(double(hd));
        const auto q = rng.floats(size_t(T * nh * hd), -2.0f, 2.0f);
        const auto k = rng.floats(size_t(T * nkv * hd), -2.0f, 2.0f);
        const auto v = rng.floats(size_t(T * nkv * hd));
        const auto r = rng.floats(size_t(T * nh * hd));
        const Vec qd = to_f64(q), kd = to_f64(k), vd = to_f64(v), rd = to_f64(r);

        // Device layout: separate contiguous tensors, or column blocks of one fused buffer.
        const int64_t qs = s.fused ? (nh + 2 * nkv) * hd : nh * hd, kvs = s.fused ? qs : nkv * hd;
        const int64_t k_off = s.fused ? nh * hd : 0, v_off = s.fused ? (nh + nkv) * hd : 0;
        auto pack = [&](const std::vector<float>& src, int64_t width, int64_t stride, int64_t offset,
                        std::vector<float>& dst) {
            for (int64_t i = 0; i < T; ++i)
                for (int64_t j = 0; j < width; ++j) dst[size_t(i * stride + offset + j)] = src[size_t(i * width + j)];
        };
        auto unpack = [&](const std::vector<float>& src, int64_t width, int64_t stride, int64_t offset) {
            std::vector<float> out(size_t(T * width));
            for (int64_t i = 0; i < T; ++i)
                for (int64_t j = 0; j < width; ++j) out[size_t(i * width + j)] = src[size_t(i * stride + offset + j)];
            return out;
        };
        std::vector<float> qbuf(size_t(T * qs)), kbuf(size_t(T * kvs)), vbuf(size_t(T * kvs));
        std::vector<float>& kdst = s.fused ? qbuf : kbuf;
        std::vector<float>& vdst = s.fused ? qbuf : vbuf;
        pack(q, nh * hd, qs, 0, qbuf);
        pack(k, nkv * hd, kvs, k_off, kdst);
        pack(v, nkv * hd, kvs, v_off, vdst);
        DeviceArray<float> d_q(b(), qbuf), d_k(b(), kbuf), d_v(b(), vbuf);
        const float* qp = d_q.get();
        const float* kp = s.fused ? d_q.get() + k_off : d_k.get();
        const float* vp = s.fused ? d_q.get() + v_off : d_v.get();
        DeviceArray<int32_t> d_cu(b(), cu);
        PackedSequences seqs;
        seqs.num_seqs = nseq;
        seqs.num_rows = T;
        seqs.cu_seqlens = d_cu.get();
        seqs.max_seq_len = *std::max_element(s.lens.begin(), s.lens.end());

        // Forward: out and lse against the reference.
        Vec out_ref(size_t(T * nh * hd)), lse_ref(size_t(T * nh));
        for (int64_t i = 0; i < nseq; ++i) ref_attention_seq(qd, kd, vd, s, scale, cu[size_t(i)], cu[size_t(i + 1)], out_ref, lse_ref);
        DeviceArray<float> d_out(b(), size_t(T * nh * hd)), d_lse(b(), size_t(T * nh));
        ops().attention_forward_train(qp, qs, kp, vp, kvs, seqs, nh, nkv, hd, float(scale), d_out.get(), d_lse.get());
        const std::string what = std::to_string(nh) + ":" + std::to_string(nkv) + " heads, head_dim " +
                                 std::to_string(hd) + ", " + std::to_string(nseq) + " sequences" +
                                 (s.fused ? ", fused rows" : "");
        EXPECT_TRUE(grad_close(d_out.to_host(), out_ref, 2e-5, 1e-2)) << "out, " << what;
        EXPECT_TRUE(grad_close(d_lse.to_host(), lse_ref, 1e-5, 1e-1)) << "lse, " << what;

        // Finite differences: an element of row i reaches only the outputs of row i's sequence.
        auto seq_of_row = [&](int64_t row) {
            return int64_t(std::upper_bound(cu.begin(), cu.end(), int32_t(row)) - cu.begin()) - 1;
        };
        auto seq_value = [&](const Vec& qx, const Vec& kx, const Vec& vx, int64_t seq) {
            Vec o(size_t(T * nh * hd)), l(size_t(T * nh));
            const int64_t b0 = cu[size_t(seq)], e0 = cu[size_t(seq + 1)];
            ref_attention_seq(qx, kx, vx, s, scale, b0, e0, o, l);
            double f = 0.0;
            for (int64_t i = b0 * nh * hd; i < e0 * nh * hd; ++i) f += o[size_t(i)] * rd[size_t(i)];
            return f;
        };
        const Vec gq = fd_grad(qd, [&](const Vec& x, size_t i) { return seq_value(x, kd, vd, seq_of_row(int64_t(i) / (nh * hd))); });
        const Vec gk = fd_grad(kd, [&](const Vec& x, size_t i) { return seq_value(qd, x, vd, seq_of_row(int64_t(i) / (nkv * hd))); });
        const Vec gv = fd_grad(vd, [&](const Vec& x, size_t i) { return seq_value(qd, kd, x, seq_of_row(int64_t(i) / (nkv * hd))); });

        // Backward with dout = r, into buffers prefilled with sentinels (the columns outside the head slots
        // must survive; with accumulate the head slots add up).
        std::vector<float> gbuf_q(size_t(T * qs)), gbuf_k(size_t(T * kvs)), gbuf_v(size_t(T * kvs));
        for (auto* g : {&gbuf_q, &gbuf_k, &gbuf_v})
            for (size_t i = 0; i < g->size(); ++i) (*g)[i] = float(int(i % 5) - 2);
        DeviceArray<float> d_gq(b(), gbuf_q), d_gk(b(), gbuf_k), d_gv(b(), gbuf_v), d_r(b(), r);
        float* dq = d_gq.get();
        float* dk = s.fused ? d_gq.get() + k_off : d_gk.get();
        float* dv = s.fused ? d_gq.get() + v_off : d_gv.get();
        ops().attention_backward(qp, qs, kp, vp, kvs, d_out.get(), d_lse.get(), d_r.get(), seqs, nh, nkv, hd,
                               float(scale), dq, dk, dv, false);
        {
            const auto hq = d_gq.to_host(), hk = s.fused ? hq : d_gk.to_host(), hv = s.fused ? hq : d_gv.to_host();
            EXPECT_TRUE(grad_close(unpack(hq, nh * hd, qs, 0), gq)) << "dq, " << what;
            EXPECT_TRUE(grad_close(unpack(hk, nkv * hd, kvs, k_off), gk)) << "dk, " << what;
            EXPECT_TRUE(grad_close(unpack(hv, nkv * hd, kvs, v_off), gv)) << "dv, " << what;
        }
        ops().attention_backward(qp, qs, kp, vp, kvs, d_out.get(), d_lse.get(), d_r.get(), seqs, nh, nkv, hd,
                               float(scale), dq, dk, dv, true);
        {
            auto twice = [](Vec g) {
                for (auto& x : g) x *= 2.0;
                return g;
            };
            const auto hq = d_gq.to_host(), hk = s.fused ? hq : d_gk.to_host(), hv = s.fused ? hq : d_gv.to_host();
            EXPECT_TRUE(grad_close(unpack(hq, nh * hd, qs, 0), twice(gq))) << "dq accumulated, " << what;
            EXPECT_TRUE(grad_close(unpack(hk, nkv * hd, kvs, k_off), twice(gk))) << "dk accumulated, " << what;
            EXPECT_TRUE(grad_close(unpack(hv, nkv * hd, kvs, v_off), twice(gv))) << "dv accumulated, " << what;
            if (s.fused) {
                for (int64_t i = 0; i < T; ++i)
                    for (int64_t j = (nh + 2 * nkv) * hd; j < qs; ++j)
                        ASSERT_EQ(hq[size_t(i * qs + j)], gbuf_q[size_t(i * qs + j)]);
            }
        }
    }
}

TEST_P(TrainOps, AttentionRejectsBadPacking) {
    std::vector<int32_t> cu = {0, 5, 3};
    DeviceArray<int32_t> d_cu(b(), cu);
    DeviceArray<float> buf(b(), size_t(64 * 16));
    PackedSequences seqs;
    seqs.num_seqs = 2;
    seqs.num_rows = 3;
    seqs.cu_seqlens = d_cu.get();
    seqs.max_seq_len = 5;
    EXPECT_THROW(ops().attention_forward_train(buf.get(), 8, buf.get(), buf.get(), 8, seqs, 1, 1, 8, 1.0f, buf.get(),
                                             buf.get()),
                 Error);
    seqs.num_seqs = 1;
    seqs.num_rows = 5;
    EXPECT_THROW(ops().attention_forward_train(buf.get(), 16, buf.get(), buf.get(), 8, seqs, 3, 2, 4, 1.0f, buf.get(),
                                             buf.get()),
                 Error);  // 3 query heads cannot share 2 KV heads
}

// ---- silu_mul ----------------------------------------------------------------------------------------------

double ref_silu(double g) { return g / (1.0 + std::exp(-g)); }

TEST_P(TrainOps, SiluMulForwardAndBackward) {
    Random rng(14);
    struct Case { int64_t rows, ffn; float range; };
    for (const Case c : {Case{1, 1, 4.0f}, Case{3, 17, 6.0f}, Case{5, 40, 30.0f}, Case{40, 300, 5.0f}}) {
        const auto gu = rng.floats(size_t(c.rows * 2 * c.ffn), -c.range, c.range);
        const auto r = rng.floats(size_t(c.rows * c.ffn));
        const Vec gud = to_f64(gu), rd = to_f64(r);
        Vec y(size_t(c.rows * c.ffn));
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < c.ffn; ++j)
                y[size_t(i * c.ffn + j)] = ref_silu(gud[size_t(i * 2 * c.ffn + j)]) * gud[size_t(i * 2 * c.ffn + c.ffn + j)];
        DeviceArray<float> d_gu(b(), gu), d_r(b(), r), d_y(b(), y.size()), d_g(b(), gu.size());
        b().silu_mul(d_gu.get(), d_y.get(), c.rows, c.ffn);
        EXPECT_TRUE(grad_close(d_y.to_host(), y, 1e-5, 1e-6)) << "silu_mul forward " << c.rows << "x" << c.ffn;

        const Vec g = fd_grad(gud, [&](const Vec& x, size_t i) {
            const int64_t row = int64_t(i) / (2 * c.ffn);
            double f = 0.0;
            for (int64_t j = 0; j < c.ffn; ++j)
                f += ref_silu(x[size_t(row * 2 * c.ffn + j)]) * x[size_t(row * 2 * c.ffn + c.ffn + j)] *
                     rd[size_t(row * c.ffn + j)];
            return f;
        });
        ops().silu_mul_backward(d_gu.get(), d_r.get(), d_g.get(), c.rows, c.ffn);
        EXPECT_TRUE(grad_close(d_g.to_host(), g)) << "silu_mul backward " << c.rows << "x" << c.ffn;
    }
}

// ---- linear -----------------------------------------------------------------------------------------------

TEST_P(TrainOps, LinearBackwardFiniteDifferences) {
    Random rng(15);
    struct Case { int64_t rows, in, out; };
    for (const Case c : {Case{1, 1, 1}, Case{3, 5, 4}, Case{7, 16, 9}, Case{2, 12, 20}}) {
        const auto x = rng.floats(size_t(c.rows * c.in));
        const auto w = rng.floats(size_t(c.out * c.in));
        const auto r = rng.floats(size_t(c.rows * c.out));
        const auto dx0 = rng.floats(x.size());
        const auto dw0 = rng.floats(w.size());
        const Vec xd = to_f64(x), wd = to_f64(w), rd = to_f64(r);
        auto value = [&](const Vec& xx, const Vec& ww) {  // sum((x W^T) * r)
            double f = 0.0;
            for (int64_t i = 0; i < c.rows; ++i)
                for (int64_t o = 0; o < c.out; ++o) {
                    double y = 0.0;
                    for (int64_t j = 0; j < c.in; ++j) y += xx[size_t(i * c.in + j)] * ww[size_t(o * c.in + j)];
                    f += y * rd[size_t(i * c.out + o)];
                }
            return f;
        };
        const Vec gx = fd_grad(xd, [&](const Vec& xx, size_t) { return value(xx, wd); });
        Vec gw = fd_grad(wd, [&](const Vec& ww, size_t) { return value(xd, ww); });
        for (size_t i = 0; i < gw.size(); ++i) gw[i] += dw0[i];

        DeviceArray<float> d_x(b(), x), d_w(b(), w), d_r(b(), r), d_dx(b(), dx0), d_dw(b(), dw0);
        const WeightMatrix wm{DType::F32, c.out, c.in, d_w.get()};
        ops().linear_backward_input(d_r.get(), c.rows, wm, d_dx.get(), false);
        EXPECT_TRUE(grad_close(d_dx.to_host(), gx)) << "dx " << c.rows << "x" << c.in << "->" << c.out;
        ops().linear_backward_input(d_r.get(), c.rows, wm, d_dx.get(), true);
        Vec gx2(gx);
        for (auto& g : gx2) g *= 2.0;
        EXPECT_TRUE(grad_close(d_dx.to_host(), gx2)) << "dx accumulated " << c.rows << "x" << c.in << "->" << c.out;
        ops().linear_backward_weight(d_r.get(), d_x.get(), c.rows, c.out, c.in, d_dw.get());
        EXPECT_TRUE(grad_close(d_dw.to_host(), gw)) << "dw " << c.rows << "x" << c.in << "->" << c.out;
    }
}

// Larger products (threaded splits along either dimension, BF16 weights in several panels) against the
// direct f64 products dx = dy W and dw = dy^T x.
TEST_P(TrainOps, LinearBackwardLarge) {
    Random rng(16);
    struct Case { int64_t rows, in, out; DType dtype; };
    for (const Case c : {Case{200, 20, 30, DType::F32}, Case{20, 200, 30, DType::F32}, Case{64, 40, 80, DType::F32},
                         Case{64, 300, 16, DType::F32}, Case{8, 4096, 300, DType::BF16},
                         Case{40, 64, 50, DType::BF16}}) {
        const auto x = rng.floats(size_t(c.rows * c.in));
        auto w = rng.floats(size_t(c.out * c.in));
        const auto dy = rng.floats(size_t(c.rows * c.out));
        const auto dx0 = rng.floats(x.size());
        const auto dw0 = rng.floats(w.size());
        const auto w_bf16 = to_bf16(w);
        if (c.dtype == DType::BF16)
            for (size_t i = 0; i < w.size(); ++i) w[i] = bf16_to_f32(w_bf16[i]);
        Vec ref_dx(x.size()), ref_dw(w.size());
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t o = 0; o < c.out; ++o) {
                const double g = dy[size_t(i * c.out + o)];
                for (int64_t j = 0; j < c.in; ++j) {
                    ref_dx[size_t(i * c.in + j)] += g * w[size_t(o * c.in + j)];
                    ref_dw[size_t(o * c.in + j)] += g * x[size_t(i * c.in + j)];
                }
            }
        for (size_t i = 0; i < ref_dw.size(); ++i) ref_dw[i] += dw0[i];
        DeviceArray<float> d_x(b(), x), d_dy(b(), dy), d_dx(b(), dx0), d_dw(b(), dw0), d_w(b(), w);
        DeviceArray<uint16_t> d_wb(b(), w_bf16);
        const WeightMatrix wm = c.dtype == DType::F32 ? WeightMatrix{DType::F32, c.out, c.in, d_w.get()}
                                                      : WeightMatrix{DType::BF16, c.out, c.in, d_wb.get()};
        ops().linear_backward_input(d_dy.get(), c.rows, wm, d_dx.get(), false);
        EXPECT_TRUE(grad_close(d_dx.to_host(), ref_dx, 1e-4)) << "dx " << c.rows << "x" << c.in << "->" << c.out;
        ops().linear_backward_input(d_dy.get(), c.rows, wm, d_dx.get(), true);
        for (auto& g : ref_dx) g *= 2.0;
        EXPECT_TRUE(grad_close(d_dx.to_host(), ref_dx, 1e-4)) << "dx accumulated " << c.rows << "x" << c.in << "->" << c.out;
        if (c.dtype == DType::F32) {
            ops().linear_backward_weight(d_dy.get(), d_x.get(), c.rows, c.out, c.in, d_dw.get());
            EXPECT_TRUE(grad_close(d_dw.to_host(), ref_dw, 1e-4)) << "dw " << c.rows << "x" << c.in << "->" << c.out;
        }
    }
}

// ---- losses -------------------------------------------------------------------------------------------------

// log softmax of z (stable: shifted by the maximum).
Vec ref_log_softmax(const double* z, int64_t n) {
    double m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, z[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(z[j] - m);
    Vec out(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) out[size_t(j)] = z[j] - m - std::log(sum);
    return out;
}

// T^2 KL(softmax(t/T) || softmax(s/T)) for one row.
double ref_kl_row(const double* t, const double* s, int64_t n, double temp) {
    Vec zt(static_cast<size_t>(n)), zs(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
        zt[size_t(j)] = t[j] / temp;
        zs[size_t(j)] = s[j] / temp;
    }
    const Vec lt = ref_log_softmax(zt.data(), n), ls = ref_log_softmax(zs.data(), n);
    double kl = 0.0;
    for (int64_t j = 0; j < n; ++j) kl += std::exp(lt[size_t(j)]) * (lt[size_t(j)] - ls[size_t(j)]);
    return temp * temp * kl;
}

TEST_P(TrainOps, KlDivLoss) {
    Random rng(17);
    struct Case { int64_t rows, vocab; float temperature, spread, offset; bool weights; };
    for (const Case c : {Case{1, 2, 1.0f, 1.0f, 0.0f, false}, Case{4, 37, 2.0f, 5.0f, 0.0f, true},
                         Case{3, 200, 2.0f, 20.0f, 1000.0f, true}, Case{8, 600, 1.0f, 8.0f, -50.0f, true},
                         Case{2, 50, 0.5f, 3.0f, 0.0f, false}}) {
        auto t = rng.floats(size_t(c.rows * c.vocab), -c.spread, c.spread);
        auto s = rng.floats(size_t(c.rows * c.vocab), -c.spread, c.spread);
        for (auto& x : t) x += c.offset;
        for (auto& x : s) x += c.offset;
        std::vector<float> w(size_t(c.rows), 1.0f);
        if (c.weights) {
            for (auto& x : w) x = rng.uniform(0.0f, 1.0f);
            w[0] = 0.0f;  // a masked row
        }
        const Vec td = to_f64(t), sd = to_f64(s);
        const double temp = c.temperature;
        Vec loss_ref(size_t(c.rows));
        for (int64_t i = 0; i < c.rows; ++i)
            loss_ref[size_t(i)] = ref_kl_row(&td[size_t(i * c.vocab)], &sd[size_t(i * c.vocab)], c.vocab, temp);
        const Vec g = fd_grad(sd, [&](const Vec& x, size_t i) {
            const int64_t row = int64_t(i) / c.vocab;
            return double(w[size_t(row)]) * ref_kl_row(&td[size_t(row * c.vocab)], &x[size_t(row * c.vocab)], c.vocab, temp);
        }, std::max(1e-6, 1e-8 * double(std::abs(c.offset))));

        DeviceArray<float> d_t(b(), t), d_s(b(), s), d_w(b(), w), d_loss(b(), size_t(c.rows)), d_g(b(), s.size());
        ops().kl_div_loss(d_t.get(), d_s.get(), c.weights ? d_w.get() : nullptr, c.rows, c.vocab, c.temperature,
                        d_loss.get(), d_g.get());
        const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.vocab) + ", T " +
                                 std::to_string(c.temperature) + ", offset " + std::to_string(c.offset);
        // The loss in absolute terms: the backend's cross term sums O(|logit|/T) values before cancelling.
        EXPECT_TRUE(grad_close(d_loss.to_host(), loss_ref, 1e-5, 1.0)) << "loss, " << what;
        EXPECT_TRUE(grad_close(d_g.to_host(), g, 1e-4, 1e-2)) << "d_student, " << what;

        // Loss only, gradient only.
        DeviceArray<float> d_loss2(b(), size_t(c.rows)), d_g2(b(), s.size());
        ops().kl_div_loss(d_t.get(), d_s.get(), c.weights ? d_w.get() : nullptr, c.rows, c.vocab, c.temperature,
                        d_loss2.get(), nullptr);
        ops().kl_div_loss(d_t.get(), d_s.get(), c.weights ? d_w.get() : nullptr, c.rows, c.vocab, c.temperature,
                        nullptr, d_g2.get());
        EXPECT_EQ(d_loss2.to_host(), d_loss.to_host());
        EXPECT_EQ(d_g2.to_host(), d_g.to_host());
    }
}

TEST_P(TrainOps, KlDivLossOfIdenticalLogitsIsZero) {
    Random rng(18);
    const int64_t rows = 3, vocab = 100;
    const auto t = rng.floats(size_t(rows * vocab), -10.0f, 10.0f);
    DeviceArray<float> d_t(b(), t), d_loss(b(), size_t(rows)), d_g(b(), t.size());
    ops().kl_div_loss(d_t.get(), d_t.get(), nullptr, rows, vocab, 2.0f, d_loss.get(), d_g.get());
    for (float l : d_loss.to_host()) EXPECT_NEAR(l, 0.0f, 1e-6f);
    for (float g : d_g.to_host()) EXPECT_NEAR(g, 0.0f, 1e-12f);  // q - p, up to FMA contraction
}

TEST_P(TrainOps, MseLoss) {
    Random rng(19);
    struct Case { int64_t rows, dim; bool weights; };
    for (const Case c : {Case{1, 1, false}, Case{3, 17, true}, Case{64, 576, true}}) {
        const auto a = rng.floats(size_t(c.rows * c.dim), -3.0f, 3.0f);
        const auto bb = rng.floats(size_t(c.rows * c.dim), -3.0f, 3.0f);
        std::vector<float> w(size_t(c.rows), 1.0f);
        if (c.weights)
            for (auto& x : w) x = rng.uniform(0.0f, 2.0f);
        const Vec ad = to_f64(a), bd = to_f64(bb);
        auto row_loss = [&](const double* ar, int64_t row) {
            double sum = 0.0;
            for (int64_t j = 0; j < c.dim; ++j) sum += (ar[j] - bd[size_t(row * c.dim + j)]) * (ar[j] - bd[size_t(row * c.dim + j)]);
            return sum / double(c.dim);
        };
        Vec loss_ref(size_t(c.rows));
        for (int64_t i = 0; i < c.rows; ++i) loss_ref[size_t(i)] = row_loss(&ad[size_t(i * c.dim)], i);
        const Vec g = fd_grad(ad, [&](const Vec& x, size_t i) {
            const int64_t row = int64_t(i) / c.dim;
            return double(w[size_t(row)]) * row_loss(&x[size_t(row * c.dim)], row);
        });
        DeviceArray<float> d_a(b(), a), d_b(b(), bb), d_w(b(), w), d_loss(b(), size_t(c.rows)), d_g(b(), a.size());
        ops().mse_loss(d_a.get(), d_b.get(), c.weights ? d_w.get() : nullptr, c.rows, c.dim, d_loss.get(), d_g.get());
        EXPECT_TRUE(grad_close(d_loss.to_host(), loss_ref, 1e-6, 0.0)) << "loss " << c.rows << "x" << c.dim;
        EXPECT_TRUE(grad_close(d_g.to_host(), g)) << "grad " << c.rows << "x" << c.dim;
    }
}

// ---- optimizer --------------------------------------------------------------------------------------------

TEST_P(TrainOps, AdamWMatchesF64Reference) {
    Random rng(20);
    struct Case { int64_t n; float weight_decay; };
    for (const Case c : {Case{1, 0.0f}, Case{37, 0.1f}, Case{100000, 0.01f}}) {
        AdamWParams p;
        p.lr = 1e-3f;
        p.beta1 = 0.9f;
        p.beta2 = 0.95f;
        p.eps = 1e-8f;
        p.weight_decay = c.weight_decay;
        const auto param0 = rng.floats(size_t(c.n));
        Vec ref_p = to_f64(param0), ref_m(size_t(c.n)), ref_v(size_t(c.n));
        DeviceArray<float> d_p(b(), param0), d_m(b(), size_t(c.n)), d_v(b(), size_t(c.n));
        for (int64_t step = 1; step <= 5; ++step) {
            auto grad = rng.floats(size_t(c.n), -0.1f, 0.1f);
            if (step == 3) grad[0] = 0.0f;
            DeviceArray<float> d_g(b(), grad);
            ops().adamw_step(d_p.get(), d_g.get(), d_m.get(), d_v.get(), c.n, p, step);
            const double b1 = p.beta1, b2 = p.beta2, lr = p.lr;
            for (size_t i = 0; i < size_t(c.n); ++i) {
                const double g = grad[i];
                ref_p[i] *= 1.0 - lr * double(p.weight_decay);
                ref_m[i] = b1 * ref_m[i] + (1.0 - b1) * g;
                ref_v[i] = b2 * ref_v[i] + (1.0 - b2) * g * g;
                const double m_hat = ref_m[i] / (1.0 - std::pow(b1, double(step)));
                const double v_hat = ref_v[i] / (1.0 - std::pow(b2, double(step)));
                ref_p[i] -= lr * m_hat / (std::sqrt(v_hat) + double(p.eps));
            }
        }
        // The update is ~lr per step; f32 storage of p, m, v costs ~1e-7 relative.
        Vec scale(ref_p.size());
        for (size_t i = 0; i < scale.size(); ++i) scale[i] = std::abs(ref_p[i]) + double(p.lr);
        EXPECT_TRUE(all_close(d_p.to_host(), ref_p, scale, 1e-6)) << "param, n " << c.n;
        // m cancels (gradients of both signs): its f32 rounding is relative to the typical |m|, not to each.
        EXPECT_TRUE(grad_close(d_m.to_host(), ref_m, 1e-5, 1e-2)) << "m, n " << c.n;
        EXPECT_TRUE(grad_close(d_v.to_host(), ref_v, 1e-5, 1e-2)) << "v, n " << c.n;
    }
}

TEST_P(TrainOps, GradNormAndScale) {
    Random rng(21);
    for (int64_t n : {0, 1, 100, 200000}) {
        const auto x = rng.floats(size_t(n));
        double ref = 0.0;
        for (float v : x) ref += double(v) * double(v);
        DeviceArray<float> d_x(b(), n > 0 ? x : std::vector<float>(1));
        EXPECT_NEAR(ops().grad_sq_norm(d_x.get(), n), ref, 1e-12 * std::max(1.0, ref)) << n;
        ops().scale(d_x.get(), n, 0.25f);
        const auto got = d_x.to_host();
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[size_t(i)], x[size_t(i)] * 0.25f);
    }
}

// convert_from_f32 rounds to nearest even (bf16) or copies (f32); add_f32 is y + alpha x in f32. Both
// against values computed here from their definitions (bf16 rounding done in integer arithmetic).
TEST_P(TrainOps, ConvertFromF32AndAddF32) {
    Random rng(22);
    auto bf16_rne = [](float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
        return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    };
    for (int64_t n : {0, 1, 7, 100003}) {
        auto x = rng.floats(size_t(n), -1000.0f, 1000.0f);
        if (n >= 7) {  // ties, a denormal, infinity, a value that rounds up to infinity
            const uint32_t bits[] = {0x3f808000u, 0x3f818000u, 0x00000001u, 0x7f800000u, 0x7f7fffffu};
            for (int i = 0; i < 5; ++i) std::memcpy(&x[size_t(i)], &bits[i], 4);
        }
        DeviceArray<float> d_x(b(), n > 0 ? x : std::vector<float>(1));
        DeviceArray<uint16_t> d_h(b(), size_t(std::max<int64_t>(n, 1)));
        DeviceArray<float> d_f(b(), size_t(std::max<int64_t>(n, 1)));
        ops().convert_from_f32(d_x.get(), d_h.get(), n, DType::BF16);
        ops().convert_from_f32(d_x.get(), d_f.get(), n, DType::F32);
        const std::vector<uint16_t> h = d_h.to_host();
        const std::vector<float> f = d_f.to_host();
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(h[size_t(i)], bf16_rne(x[size_t(i)])) << "bf16 of " << x[size_t(i)] << ", n " << n;
            ASSERT_EQ(f[size_t(i)], x[size_t(i)]);
        }
        const auto y0 = rng.floats(size_t(n));
        DeviceArray<float> d_y(b(), n > 0 ? y0 : std::vector<float>(1));
        ops().add_f32(d_y.get(), d_f.get(), n, -0.5f);
        const auto y = d_y.to_host();
        for (int64_t i = 0; i < n; ++i) {  // one rounding (fused) or two
            const double ref = double(y0[size_t(i)]) - 0.5 * double(x[size_t(i)]);
            if (std::isinf(x[size_t(i)])) continue;
            ASSERT_NEAR(y[size_t(i)], ref, 1.2e-7 * (std::abs(ref) + 0.5 * std::abs(double(x[size_t(i)])))) << i;
        }
    }
    EXPECT_THROW(ops().convert_from_f32(nullptr, nullptr, 4, DType::Q8_0), Error);
    EXPECT_THROW(ops().add_f32(nullptr, nullptr, -1, 1.0f), Error);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, TrainOps, ::testing::ValuesIn(backend_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace swiftkv::test
