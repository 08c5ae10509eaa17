// The training ops (backend/train_ops.h, TrainingOps; issue 6) on every backend (all_backend_names(): the
// CPU, and CUDA where a device is usable). This is the one list of training-op tests; tests/cuda/
// test_cuda_train_ops.cpp keeps only what exists in the CUDA build alone (the forced SIMT path of the
// training attention, through the check of train_attention_check.h, and timings). Activations live in the
// backend's act dtype (ActArray: f32 on the CPU, bf16 on CUDA); every reference is computed in f64 from
// the values the backend actually holds.
//
// Two tiers of cases:
//  - The small grid, on every backend. Each backward op is checked against finite differences: the test
//    has its own straightforward f64 FORWARD of the op; central differences (h = 1e-6, in f64) of the
//    scalar sum(forward(x) * r), r random, give the reference gradient. On the CPU the backend's analytic
//    backward (f32, with dy = r) must match it to 1e-4 relative (measured against max(|g_i|, 1% of the
//    tensor's largest gradient), so that elements near zero are judged on the scale of the tensor). Each
//    test also has a direct analytic f64 backward (the reference of the device-sized tier), which must
//    match the finite differences to 1e-6 (1e-4 for KL) on every backend; on the other backends the
//    backend's results are checked against it with the element bounds below. The training forwards
//    (attention_forward_train, and the backend's rmsnorm/rope/silu_mul that the backward ops
//    differentiate) are checked against the f64 forwards. Losses are checked against the f64 formula and
//    finite differences, AdamW against an f64 optimizer. Shapes are small (finite differences cost one
//    forward per element), in a grid: GQA 1:1 and 3:1, 1 to 3 packed sequences of unequal length (one
//    empty), head_dim 8 and 16, strided (fused) rows; a few larger products and rows exercise the threaded
//    and panelled paths against direct f64 formulas, and AttentionPackedBatches runs the check of
//    train_attention_check.h (fused QKV rows, head_dim 64, unknown max length) on every backend.
//  - The device-sized tier (tests named *DeviceSized, AttentionLlamaShape; cases added to AdamW, the
//    gradient norm and the conversions), on backends other than the CPU only (device_sized() of
//    backend_test_util.h; SWIFTKV_TEST_MODEL_SIZED=1 runs them on the CPU too): the shapes of the device
//    kernels' paths -- Llama-3.1-8B attention heads (32/8, head_dim 128) on 300+213 packed
//    rows, head_dim 64/128 tensor-core attention over packings up to 1+17+300 rows, ffn 14336, norms of
//    dim 14000, linear layers up to [2048 rows, 1024 x 512] and the [128256, 576] LM head, vocabularies up
//    to 128256, vectors of 2^24 -- against the direct analytic f64 references (finite differences are out
//    of reach there). The CPU backend's kernels have no shape-dependent paths there that the small grid
//    misses, and its f32 results plus the f64 references would cost CI minutes.
//
// Tolerances of non-CPU backends, per element, relative to the element's condition scale (the sum of the
// |terms| it is formed from, as in test_backend_matmul.cpp):
//  - activation outputs rounded once (rope/silu_mul backward): act_tol, i.e. 4e-3 for bf16 (its unit
//    roundoff is 2^-8 = 3.9e-3; the f32 arithmetic before the rounding adds ~1e-6), 1e-5 for f32;
//  - linear dX in bf16 (a GEMM, f32 accumulation): kBf16Gemm = 8e-3 of sum_o |dy_o W_oj| (+ |dX| when
//    accumulating): 2^-8 for the output's rounding and as much again for the accumulation order of up to
//    128256 terms (tensor cores, split-K);
//  - f32 outputs of f32 reductions (rmsnorm dx/dweight, linear dW, MSE): kF32Reduce = 2e-5 of the scale:
//    up to ~256 f32 roundings in a chain (per-block partials added in order, tree reductions; 256 * 2^-24
//    = 1.5e-5);
//  - attention: train_attention_check.h; losses, optimizer and vector ops: at each test.
// The CPU backend keeps the strict finite-difference checks (it reduces in f64 where it matters).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "backend/train_ops.h"
#include "backend_test_util.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "train_attention_check.h"

namespace swiftkv::test {
namespace {

// An odd number of pool threads, so that work splits are uneven; set before any backend exists.
const bool kPoolSized = (ThreadPool::set_global_threads(3), true);

constexpr double kBf16Gemm = 8e-3;
constexpr double kF32Reduce = 2e-5;

using Vec = std::vector<double>;

Vec to_f64(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }
std::vector<float> to_f32(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }
Vec abs_of(const std::vector<float>& v) {
    Vec out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = std::abs(double(v[i]));
    return out;
}
Vec plus(Vec a, const Vec& b) {
    for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
    return a;
}
Vec plus(Vec a, const std::vector<float>& b) {
    for (size_t i = 0; i < a.size(); ++i) a[i] += double(b[i]);
    return a;
}
Vec times(Vec a, double s) {
    for (auto& x : a) x *= s;
    return a;
}

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

// |actual - expected| <= tol * mag_i for every element (mag: the element's condition scale).
::testing::AssertionResult scaled_close(const std::vector<float>& actual, const Vec& expected, const Vec& mag,
                                        double tol) {
    Vec scale(mag);
    for (auto& s : scale) s += 1e-30;
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
    bool on_cpu() const { return is_cpu(GetParam()); }
    bool bf16_act() const { return backend_->act_dtype() == DType::BF16; }
    // Tolerance of an activation output: f32_tol where activations are f32, bf16_tol where bf16.
    double act_or(double f32_tol, double bf16_tol) const { return bf16_act() ? bf16_tol : f32_tol; }
    // v as the backend holds it in its act dtype.
    std::vector<float> act(std::vector<float> v) const {
        if (bf16_act())
            for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
        return v;
    }
    // The weight dtype of tests written for f32 weights: BF16 on backends that hold only bf16 weights.
    DType weight_dtype() const { return backend_->supports_weight_dtype(DType::F32) ? DType::F32 : DType::BF16; }
    // A gradient of the small grid: on the CPU against the finite differences (the strict check above);
    // elsewhere against the analytic f64 reference within tol of each element's condition scale mag.
    ::testing::AssertionResult grad_ok(const std::vector<float>& got, const Vec& fd, const Vec& analytic,
                                       const Vec& mag, double tol) const {
        if (on_cpu()) return grad_close(got, fd);
        return scaled_close(got, analytic, mag, tol);
    }
    // The gradients of a linear layer y = x W^T given dy: linear_backward_input written into dx0's buffer,
    // then accumulated onto that result; with dw, linear_backward_weight accumulated onto dw0. fd_* are
    // the finite-difference gradients (or the direct f64 products), an_* / *_mag the analytic ones and
    // their condition scales (grad_ok).
    struct LinearGrads {
        const Vec &fd_dx, &an_dx, &dx_mag;
        const Vec *fd_dw = nullptr, *an_dw = nullptr, *dw_mag = nullptr;
    };
    void check_linear_backward(const std::vector<float>& x, const std::vector<float>& dy, const WeightMatrix& w,
                               int64_t rows, const std::vector<float>& dx0, const std::vector<float>& dw0,
                               const LinearGrads& g, const std::string& what) {
        ActArray d_x(b(), x), d_dy(b(), dy), d_dx(b(), dx0);
        DeviceArray<float> d_dw(b(), dw0);
        const double dx_tol = act_or(1e-5, kBf16Gemm);
        ops().linear_backward_input(d_dy.get(), rows, w, d_dx.get(), false);
        const auto dx1 = d_dx.to_host();
        EXPECT_TRUE(grad_ok(dx1, g.fd_dx, g.an_dx, g.dx_mag, dx_tol)) << "dx " << what;
        ops().linear_backward_input(d_dy.get(), rows, w, d_dx.get(), true);
        EXPECT_TRUE(grad_ok(d_dx.to_host(), times(g.fd_dx, 2.0), plus(g.an_dx, dx1), plus(g.dx_mag, abs_of(dx1)), dx_tol))
            << "dx accumulated " << what;
        if (!g.fd_dw) return;
        ops().linear_backward_weight(d_dy.get(), d_x.get(), rows, w.rows, w.cols, d_dw.get());
        EXPECT_TRUE(grad_ok(d_dw.to_host(), plus(*g.fd_dw, dw0), plus(*g.an_dw, dw0), plus(*g.dw_mag, abs_of(dw0)),
                            kF32Reduce))
            << "dw " << what;
    }
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

// rmsnorm's backward, analytic: per row r = (mean(x^2) + eps)^-1/2, g = dy,
//   dx_j = r w_j g_j - x_j r^3 (sum_k w_k g_k x_k) / dim,   dweight_j = sum over rows of g_j x_j r,
// with the condition scales r |w_j g_j| + |x_j| r^3 (sum_k |w_k g_k x_k|) / dim and sum over rows |g_j x_j| r.
struct RmsNormBackwardRef {
    Vec dx, dx_mag, dw, dw_mag;
};
RmsNormBackwardRef ref_rmsnorm_backward(const std::vector<float>& x, const std::vector<float>& w,
                                        const std::vector<float>& dy, int64_t rows, int64_t dim, double eps) {
    RmsNormBackwardRef r;
    r.dx.resize(size_t(rows * dim));
    r.dx_mag.resize(r.dx.size());
    r.dw.assign(size_t(dim), 0.0);
    r.dw_mag.assign(size_t(dim), 0.0);
    for (int64_t i = 0; i < rows; ++i) {
        const float* xr = &x[size_t(i * dim)];
        const float* g = &dy[size_t(i * dim)];
        double ss = 0.0, gx = 0.0, gx_mag = 0.0;
        for (int64_t j = 0; j < dim; ++j) {
            const double t = double(w[size_t(j)]) * double(g[j]) * double(xr[j]);
            ss += double(xr[j]) * double(xr[j]);
            gx += t;
            gx_mag += std::abs(t);
        }
        const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
        const double c = inv * inv * inv * gx / double(dim), c_mag = inv * inv * inv * gx_mag / double(dim);
        for (int64_t j = 0; j < dim; ++j) {
            const double wg = double(w[size_t(j)]) * double(g[j]);
            r.dx[size_t(i * dim + j)] = inv * wg - c * double(xr[j]);
            r.dx_mag[size_t(i * dim + j)] = inv * std::abs(wg) + c_mag * std::abs(double(xr[j]));
            r.dw[size_t(j)] += double(g[j]) * double(xr[j]) * inv;
            r.dw_mag[size_t(j)] += std::abs(double(g[j]) * double(xr[j])) * inv;
        }
    }
    return r;
}

TEST_P(TrainOps, RmsNormForwardAndBackward) {
    Random rng(11);
    struct Case { int64_t rows, dim; };
    for (const Case c : {Case{1, 8}, Case{3, 16}, Case{5, 33}, Case{4, 2}, Case{300, 128}}) {
        const double eps = 1e-5;
        const auto x = rng.floats(size_t(c.rows * c.dim), -2.0f, 2.0f);
        const auto w = rng.floats(size_t(c.dim), 0.5f, 1.5f);
        const auto r = act(rng.floats(size_t(c.rows * c.dim)));  // dy, an activation gradient
        const auto dx0 = rng.floats(size_t(c.rows * c.dim));
        const auto dw0 = rng.floats(size_t(c.dim));
        const Vec xd = to_f64(x), wd = to_f64(w), rd = to_f64(r);
        const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.dim);

        // Forward against the f64 reference (output in the act dtype: rounded once).
        Vec y(xd.size());
        for (int64_t i = 0; i < c.rows; ++i) ref_rmsnorm_row(&xd[size_t(i * c.dim)], wd.data(), &y[size_t(i * c.dim)], c.dim, eps);
        DeviceArray<float> d_x(b(), x), d_w(b(), w);
        ActArray d_r(b(), r), d_y(b(), x.size());
        b().rmsnorm(d_x.get(), d_w.get(), d_y.get(), c.rows, c.dim, float(eps));
        EXPECT_TRUE(grad_close(d_y.to_host(), y, act_tol(b(), 1e-5), 1e-6)) << what;

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
        const RmsNormBackwardRef an = ref_rmsnorm_backward(x, w, r, c.rows, c.dim, eps);
        EXPECT_TRUE(grad_close(to_f32(an.dx), gx, 1e-6)) << "analytic dx vs finite differences, " << what;
        EXPECT_TRUE(grad_close(to_f32(an.dw), gw, 1e-6)) << "analytic dweight vs finite differences, " << what;

        DeviceArray<float> d_dx(b(), dx0), d_dw(b(), dw0);
        ops().rmsnorm_backward(d_x.get(), d_w.get(), d_r.get(), d_dx.get(), d_dw.get(), c.rows, c.dim, float(eps), false);
        const auto dx1 = d_dx.to_host(), dw1 = d_dw.to_host();
        EXPECT_TRUE(grad_ok(dx1, gx, an.dx, an.dx_mag, kF32Reduce)) << "dx " << what;
        EXPECT_TRUE(grad_ok(dw1, plus(gw, dw0), plus(an.dw, dw0), plus(an.dw_mag, abs_of(dw0)), kF32Reduce))
            << "dweight (accumulated) " << what;

        // accumulate_dx adds to dx; a null dweight is skipped (and not touched).
        ops().rmsnorm_backward(d_x.get(), d_w.get(), d_r.get(), d_dx.get(), nullptr, c.rows, c.dim, float(eps), true);
        EXPECT_TRUE(grad_ok(d_dx.to_host(), times(gx, 2.0), plus(an.dx, dx1), plus(an.dx_mag, abs_of(dx1)), kF32Reduce))
            << "dx accumulated " << what;
        EXPECT_EQ(d_dw.to_host(), dw1) << "dweight touched without being passed, " << what;
    }
}

// The CUDA kernel's paths: dims that are (not) multiples of 4 (vector loads), dweight partials in shared
// memory (dim <= 12000) or global memory (14000), 1 to 300 rows over up to 256 blocks; each without
// accumulation and with dweight, with accumulation and without dweight (which must stay untouched), both.
TEST_P(TrainOps, RmsNormBackwardDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    Random rng(111);
    for (const int64_t dim : {64, 576, 4096, 5, 577, 14000}) {
        for (const int64_t rows : {1, 17, 300}) {
            for (int variant = 0; variant < 3; ++variant) {
                const bool accumulate = variant >= 1, with_dw = variant != 1;
                const auto x = rng.floats(size_t(rows * dim), -3.0f, 3.0f);
                const auto w = rng.floats(size_t(dim), 0.5f, 1.5f);
                const auto dx0 = rng.floats(size_t(rows * dim));
                const auto dw0 = rng.floats(size_t(dim));
                DeviceArray<float> d_x(b(), x), d_w(b(), w), d_dx(b(), dx0), d_dw(b(), dw0);
                ActArray d_dy(b(), rng.floats(size_t(rows * dim)));
                ops().rmsnorm_backward(d_x.get(), d_w.get(), d_dy.get(), d_dx.get(), with_dw ? d_dw.get() : nullptr,
                                       rows, dim, 1e-5f, accumulate);
                const RmsNormBackwardRef an = ref_rmsnorm_backward(x, w, d_dy.values(), rows, dim, 1e-5);
                const std::string what = std::to_string(rows) + " x " + std::to_string(dim) +
                                         (accumulate ? ", accumulate" : "") + (with_dw ? ", dweight" : "");
                if (accumulate)
                    EXPECT_TRUE(scaled_close(d_dx.to_host(), plus(an.dx, dx0), plus(an.dx_mag, abs_of(dx0)), kF32Reduce))
                        << "dx, " << what;
                else
                    EXPECT_TRUE(scaled_close(d_dx.to_host(), an.dx, an.dx_mag, kF32Reduce)) << "dx, " << what;
                if (with_dw)
                    EXPECT_TRUE(scaled_close(d_dw.to_host(), plus(an.dw, dw0), plus(an.dw_mag, abs_of(dw0)), kF32Reduce))
                        << "dweight, " << what;
                else
                    EXPECT_EQ(d_dw.to_host(), dw0) << "dweight touched without being passed, " << what;
            }
        }
    }
}

// ---- rope ---------------------------------------------------------------------------------------------

std::vector<float> make_inv_freq(int64_t head_dim, double theta) {
    std::vector<float> inv_freq(size_t(head_dim / 2));
    for (int64_t i = 0; i < head_dim / 2; ++i)
        inv_freq[size_t(i)] = float(1.0 / std::pow(theta, double(2 * i) / double(head_dim)));
    return inv_freq;
}

// Rotate-half rotation of one row of n_heads heads (contiguous) by sign * angle, angle = f32(position *
// inv_freq) as PyTorch: (a, b) -> (a cos - b sin, b cos + a sin) at sign +1. mag (optional) = |a| + |b|
// for both elements of a pair (the rotation's scale).
template <class T>
void rotate_heads(const T* x, double* y, double* mag, int64_t n_heads, int64_t head_dim, int32_t pos,
                  const std::vector<float>& inv_freq, double sign) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
            const double angle = double(float(pos) * inv_freq[size_t(i)]);
            const double c = std::cos(angle), s = sign * std::sin(angle);
            const int64_t ia = h * head_dim + i, ib = ia + half;
            const double a = double(x[ia]), bb = double(x[ib]);
            y[ia] = a * c - bb * s;
            y[ib] = bb * c + a * s;
            if (mag) mag[ia] = mag[ib] = std::abs(a) + std::abs(bb);
        }
}

// RoPE's forward of one row.
void ref_rope_row(const double* x, double* y, int64_t n_heads, int64_t head_dim, int32_t pos,
                  const std::vector<float>& inv_freq) {
    rotate_heads(x, y, nullptr, n_heads, head_dim, pos, inv_freq, 1.0);
}

// rope's backward, analytic: the transpose rotation (by -angle) of the n_heads heads at the start of g.
void ref_rope_backward_heads(const float* g, double* out, double* mag, int64_t n_heads, int64_t head_dim, int32_t pos,
                             const std::vector<float>& inv_freq) {
    rotate_heads(g, out, mag, n_heads, head_dim, pos, inv_freq, -1.0);
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
        const auto x = act(rng.floats(size_t(c.rows * stride), -2.0f, 2.0f));  // strided rows
        const auto r = act(rng.floats(size_t(c.rows * width)));                // contiguous projection
        const std::string what = std::to_string(c.rows) + " rows, head_dim " + std::to_string(c.head_dim);

        // Forward: the backend's rope against the reference (bf16: one rounding of |a| + |b|).
        Vec xd(size_t(c.rows * width)), y(xd.size()), y_mag(xd.size());
        std::vector<float> x_heads(xd.size());
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < width; ++j) x_heads[size_t(i * width + j)] = x[size_t(i * stride + j)];
        xd = to_f64(x_heads);
        for (int64_t i = 0; i < c.rows; ++i) {
            ref_rope_row(&xd[size_t(i * width)], &y[size_t(i * width)], c.n_heads, c.head_dim, pos[size_t(i)], inv_freq);
            Vec unused(static_cast<size_t>(width));
            ref_rope_backward_heads(&x_heads[size_t(i * width)], unused.data(), &y_mag[size_t(i * width)], c.n_heads,
                                    c.head_dim, pos[size_t(i)], inv_freq);
        }
        ActArray d_x(b(), x);
        DeviceArray<float> d_f(b(), inv_freq);
        DeviceArray<int32_t> d_p(b(), pos);
        b().rope(d_x.get(), c.rows, stride, c.n_heads, c.head_dim, d_p.get(), d_f.get());
        const auto fwd = d_x.to_host();
        std::vector<float> fwd_heads(xd.size());
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < width; ++j) fwd_heads[size_t(i * width + j)] = fwd[size_t(i * stride + j)];
        if (on_cpu())
            EXPECT_TRUE(grad_close(fwd_heads, y, 1e-5, 1e-2)) << "rope forward, " << what;
        else
            EXPECT_TRUE(scaled_close(fwd_heads, y, y_mag, act_tol(b(), 1e-5))) << "rope forward, " << what;

        // Backward: the gradient r, strided like the activations, rotated back in place.
        const Vec rd = to_f64(r);
        const Vec g = fd_grad(xd, [&](const Vec& xp, size_t i) {
            const size_t row = i / size_t(width);
            Vec yr(static_cast<size_t>(width));
            ref_rope_row(&xp[row * size_t(width)], yr.data(), c.n_heads, c.head_dim, pos[row], inv_freq);
            return std::inner_product(yr.begin(), yr.end(), rd.begin() + ptrdiff_t(row * size_t(width)), 0.0);
        });
        Vec an(xd.size()), an_mag(xd.size());
        for (int64_t i = 0; i < c.rows; ++i)
            ref_rope_backward_heads(&r[size_t(i * width)], &an[size_t(i * width)], &an_mag[size_t(i * width)],
                                    c.n_heads, c.head_dim, pos[size_t(i)], inv_freq);
        EXPECT_TRUE(grad_close(to_f32(an), g, 1e-6)) << "analytic rope backward vs finite differences, " << what;
        std::vector<float> dx(size_t(c.rows * stride));
        for (size_t i = 0; i < dx.size(); ++i) dx[i] = float(i % 7);  // padding sentinels
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < width; ++j) dx[size_t(i * stride + j)] = r[size_t(i * width + j)];
        ActArray d_dx(b(), dx);
        ops().rope_backward(d_dx.get(), c.rows, stride, c.n_heads, c.head_dim, d_p.get(), d_f.get());
        const auto got = d_dx.to_host();
        std::vector<float> got_heads(xd.size());
        for (int64_t i = 0; i < c.rows; ++i) {
            for (int64_t j = 0; j < width; ++j) got_heads[size_t(i * width + j)] = got[size_t(i * stride + j)];
            for (int64_t j = width; j < stride; ++j) ASSERT_EQ(got[size_t(i * stride + j)], dx[size_t(i * stride + j)]);
        }
        EXPECT_TRUE(grad_ok(got_heads, g, an, an_mag, act_tol(b(), 1e-5))) << "rope backward, " << what;
    }
}

// Fused QKV rows as the trainer rotates them: Q heads at the start of the row, then K heads through an
// offset pointer; V must stay untouched. Llama-3.1-8B's heads (32/8 of 128, the vectorized path) and odd
// ones (9/3 of 64; head_dim 6 and 20: the scalar path), positions up to ~3000, rope theta 500000.
TEST_P(TrainOps, RopeBackwardDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    Random rng(112);
    struct Case { int64_t n_heads, n_kv_heads, head_dim; };
    for (const Case c : {Case{32, 8, 128}, Case{9, 3, 64}, Case{4, 2, 6}, Case{2, 1, 20}}) {
        for (const int64_t rows : {1, 17, 300}) {
            const int64_t hd = c.head_dim, stride = (c.n_heads + 2 * c.n_kv_heads) * hd;
            ActArray qkv(b(), rng.floats(size_t(rows * stride), -2.0f, 2.0f));
            const std::vector<float> x = qkv.values();
            std::vector<int32_t> pos(static_cast<size_t>(rows));
            for (int64_t r = 0; r < rows; ++r) pos[size_t(r)] = int32_t(r % 97 + (r / 97) * 1000);
            const auto inv_freq = make_inv_freq(hd, 500000.0);
            DeviceArray<int32_t> d_p(b(), pos);
            DeviceArray<float> d_f(b(), inv_freq);
            ops().rope_backward(qkv.get(), rows, stride, c.n_heads, hd, d_p.get(), d_f.get());
            ops().rope_backward(qkv.at(c.n_heads * hd), rows, stride, c.n_kv_heads, hd, d_p.get(), d_f.get());
            const auto got = qkv.to_host();
            const int64_t width = (c.n_heads + c.n_kv_heads) * hd;
            Vec ref(size_t(rows * width)), mag(ref.size());
            std::vector<float> got_qk(ref.size());
            for (int64_t r = 0; r < rows; ++r) {
                ref_rope_backward_heads(&x[size_t(r * stride)], &ref[size_t(r * width)], &mag[size_t(r * width)],
                                        c.n_heads + c.n_kv_heads, hd, pos[size_t(r)], inv_freq);
                for (int64_t j = 0; j < width; ++j) got_qk[size_t(r * width + j)] = got[size_t(r * stride + j)];
            }
            const std::string what = "heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) +
                                     ", head_dim " + std::to_string(hd) + ", rows " + std::to_string(rows);
            EXPECT_TRUE(scaled_close(got_qk, ref, mag, act_tol(b(), 1e-5))) << what;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = width; j < stride; ++j)
                    ASSERT_EQ(got[size_t(r * stride + j)], x[size_t(r * stride + j)]) << "V modified, " << what;
        }
    }
}

// ---- attention -------------------------------------------------------------------------------------------

struct AttnShape {
    int64_t n_heads, n_kv_heads, head_dim;
    std::vector<int32_t> lens;
    bool fused;  // q, k, v (and dq, dk, dv) as column blocks of one [T, (nh + 2 nkv) hd] buffer
};

// Causal softmax attention of rows [begin, end) (one sequence), q [T, nh, hd], k/v [T, nkv, hd] contiguous;
// writes out [T, nh, hd] and lse [T, nh] for those rows (train_attention_check.h's reference).
void ref_attention_seq(const Vec& q, const Vec& k, const Vec& v, const AttnShape& s, double scale, int64_t begin,
                       int64_t end, Vec& out, Vec& lse) {
    const AttnHeads heads{s.n_heads, s.n_kv_heads, s.head_dim};
    for (int64_t h = 0; h < s.n_heads; ++h)
        ref_attention_forward_head(q.data(), k.data(), v.data(), heads, scale, begin, end, h, out.data(), lse.data());
}

// The finite-difference grid. On the CPU the backend's forward and gradients are checked as before
// (out 2e-5, lse 1e-5 and gradients 1e-4 relative with floors); on bf16 backends (head_dim 8/16: the CUDA
// SIMT path) with the bounds of train_attention_check.h, the backward against the analytic reference
// evaluated at the backend's own forward results (which the backward reads).
TEST_P(TrainOps, AttentionForwardAndBackward) {
    Random rng(13);
    const std::vector<AttnShape> shapes = {
        {2, 2, 8, {7}, false},       {3, 1, 16, {5, 9, 3}, false}, {6, 2, 8, {1, 12, 6}, false},
        {4, 4, 16, {10, 0, 4}, true}, {3, 1, 8, {13, 2}, true},
    };
    const TrainAttnTolerance tol = train_attn_tolerance(b());
    for (const AttnShape& s : shapes) {
        const int64_t nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim;
        const AttnHeads heads{nh, nkv, hd};
        std::vector<int32_t> cu(1, 0);
        for (int32_t len : s.lens) cu.push_back(cu.back() + len);
        const int64_t T = cu.back(), nseq = int64_t(s.lens.size());
        const double scale = 1.0 / std::sqrt(double(hd));
        const auto q = act(rng.floats(size_t(T * nh * hd), -2.0f, 2.0f));
        const auto k = act(rng.floats(size_t(T * nkv * hd), -2.0f, 2.0f));
        const auto v = act(rng.floats(size_t(T * nkv * hd)));
        const auto r = act(rng.floats(size_t(T * nh * hd)));
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
        ActArray d_q(b(), qbuf), d_k(b(), kbuf), d_v(b(), vbuf);
        const void* qp = d_q.get();
        const void* kp = s.fused ? d_q.at(k_off) : d_k.get();
        const void* vp = s.fused ? d_q.at(v_off) : d_v.get();
        DeviceArray<int32_t> d_cu(b(), cu);
        PackedSequences seqs;
        seqs.num_seqs = nseq;
        seqs.num_rows = T;
        seqs.cu_seqlens = d_cu.get();
        seqs.max_seq_len = *std::max_element(s.lens.begin(), s.lens.end());

        // Forward: out and lse against the reference.
        Vec out_ref(size_t(T * nh * hd)), lse_ref(size_t(T * nh)), mag(out_ref.size()), spread(out_ref.size()),
            score_mag(lse_ref.size());
        for (int64_t i = 0; i < nseq; ++i)
            for (int64_t h = 0; h < nh; ++h)
                ref_attention_forward_head(qd.data(), kd.data(), vd.data(), heads, scale, cu[size_t(i)],
                                           cu[size_t(i + 1)], h, out_ref.data(), lse_ref.data(), mag.data(),
                                           spread.data(), score_mag.data());
        ActArray d_out(b(), size_t(T * nh * hd));
        DeviceArray<float> d_lse(b(), size_t(T * nh));
        ops().attention_forward_train(qp, qs, kp, vp, kvs, seqs, nh, nkv, hd, float(scale), d_out.get(), d_lse.get());
        const std::string what = std::to_string(nh) + ":" + std::to_string(nkv) + " heads, head_dim " +
                                 std::to_string(hd) + ", " + std::to_string(nseq) + " sequences" +
                                 (s.fused ? ", fused rows" : "");
        const auto got_out = d_out.to_host(), got_lse = d_lse.to_host();
        if (on_cpu()) {
            EXPECT_TRUE(grad_close(got_out, out_ref, 2e-5, 1e-2)) << "out, " << what;
            EXPECT_TRUE(grad_close(got_lse, lse_ref, 1e-5, 1e-1)) << "lse, " << what;
        } else {
            Vec out_tol(out_ref.size()), lse_tol(lse_ref.size());
            for (size_t i = 0; i < out_ref.size(); ++i)
                out_tol[i] = tol.out * mag[i] + tol.out_scores * 0x1p-24 * score_mag[i / size_t(hd)] * spread[i];
            for (size_t i = 0; i < lse_ref.size(); ++i) lse_tol[i] = tol.lse * (1.0 + std::abs(lse_ref[i]) + score_mag[i]);
            EXPECT_TRUE(scaled_close(got_out, out_ref, out_tol, 1.0)) << "out, " << what;
            EXPECT_TRUE(scaled_close(got_lse, lse_ref, lse_tol, 1.0)) << "lse, " << what;
        }

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
        // The analytic backward of train_attention_check.h (the device-sized tier's reference), at the exact
        // forward, against the finite differences.
        const AttnBackwardRef an = ref_attention_backward(qd, kd, vd, out_ref, lse_ref, rd, heads, scale, cu);
        EXPECT_TRUE(grad_close(to_f32(an.dq), gq, 1e-6)) << "analytic dq vs finite differences, " << what;
        EXPECT_TRUE(grad_close(to_f32(an.dk), gk, 1e-6)) << "analytic dk vs finite differences, " << what;
        EXPECT_TRUE(grad_close(to_f32(an.dv), gv, 1e-6)) << "analytic dv vs finite differences, " << what;
        // Elsewhere than on the CPU the backend's backward reads its own (rounded) out and lse: the
        // reference is evaluated there.
        const AttnBackwardRef at_backend =
            on_cpu() ? AttnBackwardRef{}
                     : ref_attention_backward(qd, kd, vd, to_f64(got_out), to_f64(got_lse), rd, heads, scale, cu);

        // Backward with dout = r, into buffers prefilled with sentinels (the columns outside the head slots
        // must survive; with accumulate the head slots add up).
        std::vector<float> gbuf_q(size_t(T * qs)), gbuf_k(size_t(T * kvs)), gbuf_v(size_t(T * kvs));
        for (auto* g : {&gbuf_q, &gbuf_k, &gbuf_v})
            for (size_t i = 0; i < g->size(); ++i) (*g)[i] = float(int(i % 5) - 2);
        ActArray d_gq(b(), gbuf_q), d_gk(b(), gbuf_k), d_gv(b(), gbuf_v), d_r(b(), r);
        void* dq = d_gq.get();
        void* dk = s.fused ? d_gq.at(k_off) : d_gk.get();
        void* dv = s.fused ? d_gq.at(v_off) : d_gv.get();
        // On bf16 backends: got against `want` (+ prev) within the bounds of train_attention_check.h.
        auto bf16_check = [&](const std::vector<float>& got, const Vec& want, const Vec& m1, const Vec* m2,
                              const std::vector<float>* prev) {
            Vec bound(want.size()), w(want);
            for (size_t i = 0; i < want.size(); ++i) {
                const double p = prev ? double((*prev)[i]) : 0.0;
                w[i] += p;
                bound[i] = tol.grad * (m1[i] + std::abs(p)) + (m2 ? tol.grad_arith * (*m2)[i] : 0.0);
            }
            return scaled_close(got, w, bound, 1.0);
        };
        ops().attention_backward(qp, qs, kp, vp, kvs, d_out.get(), d_lse.get(), d_r.get(), seqs, nh, nkv, hd,
                                 float(scale), dq, dk, dv, false);
        std::vector<float> first_q, first_k, first_v;
        {
            const auto hq = d_gq.to_host(), hk = s.fused ? hq : d_gk.to_host(), hv = s.fused ? hq : d_gv.to_host();
            first_q = unpack(hq, nh * hd, qs, 0);
            first_k = unpack(hk, nkv * hd, kvs, k_off);
            first_v = unpack(hv, nkv * hd, kvs, v_off);
            if (on_cpu()) {
                EXPECT_TRUE(grad_close(first_q, gq)) << "dq, " << what;
                EXPECT_TRUE(grad_close(first_k, gk)) << "dk, " << what;
                EXPECT_TRUE(grad_close(first_v, gv)) << "dv, " << what;
            } else {
                EXPECT_TRUE(bf16_check(first_q, at_backend.dq, at_backend.dq_m1, &at_backend.dq_m2, nullptr)) << "dq, " << what;
                EXPECT_TRUE(bf16_check(first_k, at_backend.dk, at_backend.dk_m1, &at_backend.dk_m2, nullptr)) << "dk, " << what;
                EXPECT_TRUE(bf16_check(first_v, at_backend.dv, at_backend.dv_m1, nullptr, nullptr)) << "dv, " << what;
            }
        }
        ops().attention_backward(qp, qs, kp, vp, kvs, d_out.get(), d_lse.get(), d_r.get(), seqs, nh, nkv, hd,
                                 float(scale), dq, dk, dv, true);
        {
            const auto hq = d_gq.to_host(), hk = s.fused ? hq : d_gk.to_host(), hv = s.fused ? hq : d_gv.to_host();
            const auto aq = unpack(hq, nh * hd, qs, 0), ak = unpack(hk, nkv * hd, kvs, k_off),
                       av = unpack(hv, nkv * hd, kvs, v_off);
            if (on_cpu()) {
                EXPECT_TRUE(grad_close(aq, times(gq, 2.0))) << "dq accumulated, " << what;
                EXPECT_TRUE(grad_close(ak, times(gk, 2.0))) << "dk accumulated, " << what;
                EXPECT_TRUE(grad_close(av, times(gv, 2.0))) << "dv accumulated, " << what;
            } else {
                EXPECT_TRUE(bf16_check(aq, at_backend.dq, at_backend.dq_m1, &at_backend.dq_m2, &first_q)) << "dq accumulated, " << what;
                EXPECT_TRUE(bf16_check(ak, at_backend.dk, at_backend.dk_m1, &at_backend.dk_m2, &first_k)) << "dk accumulated, " << what;
                EXPECT_TRUE(bf16_check(av, at_backend.dv, at_backend.dv_m1, nullptr, &first_v)) << "dv accumulated, " << what;
            }
            if (s.fused) {
                for (int64_t i = 0; i < T; ++i)
                    for (int64_t j = (nh + 2 * nkv) * hd; j < qs; ++j)
                        ASSERT_EQ(hq[size_t(i * qs + j)], gbuf_q[size_t(i * qs + j)]);
            }
        }
    }
}

// The packed-batch check of train_attention_check.h (fused QKV rows with padding, out/lse/dq/dk/dv
// against the f64 references, written and accumulated) at shapes cheap enough for every backend: the
// CUDA tensor-core path (head_dim 64) with an empty sequence, the SIMT path (head_dim 16), and a batch
// whose PackedSequences::max_seq_len is 0 (unknown: the backend must not rely on the hint).
TEST_P(TrainOps, AttentionPackedBatches) {
    check_train_attention(b(), TrainAttnCase{{17, 0, 65}, 4, 4, 64}, 1100);
    check_train_attention(b(), TrainAttnCase{{5, 1, 9}, 6, 2, 16}, 1101);
    check_train_attention(b(), TrainAttnCase{{17, 130}, 8, 2, 64}, 1102, /*unknown_max_len=*/true);
}

// The tensor-core grid: head_dim 64 and 128, GQA 1:1 and 4:1, packings of 1 to 3 sequences of 1 to 300
// rows (one empty; 64/128: whole tiles), each written and accumulated.
TEST_P(TrainOps, AttentionDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    uint32_t seed = 1000;
    const std::vector<std::vector<int32_t>> packings = {{1}, {17}, {300}, {1, 17, 300}, {64, 128}, {17, 0, 65}};
    for (const int64_t hd : {64, 128})
        for (const auto& [nh, nkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}})
            for (const auto& lens : packings) check_train_attention(b(), TrainAttnCase{lens, nh, nkv, hd}, seed++);
}

// Llama-3.1-8B's heads (32 query, 8 KV, head_dim 128) on two packed sequences.
TEST_P(TrainOps, AttentionLlamaShape) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    check_train_attention(b(), TrainAttnCase{{300, 213}, 32, 8, 128}, 2000);
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
    // cu_seqlens is device memory: only the CPU backend reads (and checks) its values on the host.
    if (on_cpu()) {
        EXPECT_THROW(ops().attention_forward_train(buf.get(), 8, buf.get(), buf.get(), 8, seqs, 1, 1, 8, 1.0f,
                                                   buf.get(), buf.get()),
                     Error);
    }
    seqs.num_seqs = 1;
    seqs.num_rows = 5;
    EXPECT_THROW(ops().attention_forward_train(buf.get(), 16, buf.get(), buf.get(), 8, seqs, 3, 2, 4, 1.0f, buf.get(),
                                               buf.get()),
                 Error);  // 3 query heads cannot share 2 KV heads
}

// ---- silu_mul ----------------------------------------------------------------------------------------------

double ref_silu(double g) { return g / (1.0 + std::exp(-g)); }

// silu_mul's backward, analytic: s = sigmoid(g), d_up = dy g s, d_gate = dy u s (1 + g (1 - s)), in
// [rows, 2 ffn] (gate gradients first); condition scales |d_up| and |dy u s| (1 + |g (1 - s)|).
void ref_silu_mul_backward(const std::vector<float>& gu, const std::vector<float>& dy, int64_t rows, int64_t ffn,
                           Vec& grad, Vec& mag) {
    grad.assign(size_t(rows * 2 * ffn), 0.0);
    mag.assign(grad.size(), 0.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < ffn; ++j) {
            const size_t ig = size_t(r * 2 * ffn + j), iu = ig + size_t(ffn);
            const double g = gu[ig], u = gu[iu], d = dy[size_t(r * ffn + j)];
            const double s = 1.0 / (1.0 + std::exp(-g));
            grad[iu] = d * g * s;
            mag[iu] = std::abs(grad[iu]);
            grad[ig] = d * u * s * (1.0 + g * (1.0 - s));
            mag[ig] = std::abs(d * u * s) * (1.0 + std::abs(g * (1.0 - s)));
        }
}

TEST_P(TrainOps, SiluMulForwardAndBackward) {
    Random rng(14);
    struct Case { int64_t rows, ffn; float range; };
    for (const Case c : {Case{1, 1, 4.0f}, Case{3, 17, 6.0f}, Case{5, 40, 30.0f}, Case{40, 300, 5.0f}}) {
        const auto gu = act(rng.floats(size_t(c.rows * 2 * c.ffn), -c.range, c.range));
        const auto r = act(rng.floats(size_t(c.rows * c.ffn)));
        const Vec gud = to_f64(gu), rd = to_f64(r);
        const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.ffn);
        Vec y(size_t(c.rows * c.ffn));
        for (int64_t i = 0; i < c.rows; ++i)
            for (int64_t j = 0; j < c.ffn; ++j)
                y[size_t(i * c.ffn + j)] = ref_silu(gud[size_t(i * 2 * c.ffn + j)]) * gud[size_t(i * 2 * c.ffn + c.ffn + j)];
        ActArray d_gu(b(), gu), d_r(b(), r), d_y(b(), y.size());
        ActArray d_g(b(), std::vector<float>(gu.size(), std::numeric_limits<float>::quiet_NaN()));
        b().silu_mul(d_gu.get(), d_y.get(), c.rows, c.ffn);
        EXPECT_TRUE(grad_close(d_y.to_host(), y, act_tol(b(), 1e-5), 1e-6)) << "silu_mul forward " << what;

        const Vec g = fd_grad(gud, [&](const Vec& x, size_t i) {
            const int64_t row = int64_t(i) / (2 * c.ffn);
            double f = 0.0;
            for (int64_t j = 0; j < c.ffn; ++j)
                f += ref_silu(x[size_t(row * 2 * c.ffn + j)]) * x[size_t(row * 2 * c.ffn + c.ffn + j)] *
                     rd[size_t(row * c.ffn + j)];
            return f;
        });
        Vec an, mag;
        ref_silu_mul_backward(gu, r, c.rows, c.ffn, an, mag);
        EXPECT_TRUE(grad_close(to_f32(an), g, 1e-6)) << "analytic silu_mul backward vs finite differences, " << what;
        ops().silu_mul_backward(d_gu.get(), d_r.get(), d_g.get(), c.rows, c.ffn);
        EXPECT_TRUE(grad_ok(d_g.to_host(), g, an, mag, act_tol(b(), 1e-5))) << "silu_mul backward " << what;
    }
}

// Llama's ffn 14336 (vectorized) and 13 (scalar), 576; gate values in [-6, 6].
TEST_P(TrainOps, SiluMulBackwardDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    Random rng(114);
    for (const int64_t ffn : {64, 576, 14336, 13}) {
        for (const int64_t rows : {1, 17, 300}) {
            ActArray gate_up(b(), rng.floats(size_t(rows * 2 * ffn), -6.0f, 6.0f));
            ActArray dy(b(), rng.floats(size_t(rows * ffn)));
            ActArray out(b(), std::vector<float>(size_t(rows * 2 * ffn), std::numeric_limits<float>::quiet_NaN()));
            ops().silu_mul_backward(gate_up.get(), dy.get(), out.get(), rows, ffn);
            Vec ref, mag;
            ref_silu_mul_backward(gate_up.values(), dy.values(), rows, ffn, ref, mag);
            EXPECT_TRUE(scaled_close(out.to_host(), ref, mag, act_tol(b(), 1e-5))) << rows << " x " << ffn;
        }
    }
}

// ---- linear -----------------------------------------------------------------------------------------------

// dx = dy W ([rows, in]) and its condition scale sum_o |dy_o W_oj|; dy [rows, out], W [out, in] as the
// backend holds them. Row blocks in parallel; W in blocks of 256 rows (reused from cache across rows).
void ref_linear_dx(const float* dy, const float* w, int64_t rows, int64_t out, int64_t in, Vec& dx, Vec& mag) {
    dx.assign(size_t(rows * in), 0.0);
    mag.assign(dx.size(), 0.0);
    parallel_ranges(rows, [&](int64_t r0, int64_t r1) {
        for (int64_t o0 = 0; o0 < out; o0 += 256)
            for (int64_t i = r0; i < r1; ++i)
                for (int64_t o = o0; o < std::min(out, o0 + 256); ++o) {
                    const double g = dy[i * out + o], ag = std::abs(g);
                    const float* wr = w + o * in;
                    double* xr = &dx[size_t(i * in)];
                    double* mr = &mag[size_t(i * in)];
                    for (int64_t j = 0; j < in; ++j) {
                        xr[j] += g * double(wr[j]);
                        mr[j] += ag * std::abs(double(wr[j]));
                    }
                }
    });
}

// dw = dy^T x ([out, in]) and its condition scale sum_r |dy_ro x_rj|; x [rows, in]. Output rows in
// parallel, 8 at a time (each row of x reused from cache).
void ref_linear_dw(const float* dy, const float* x, int64_t rows, int64_t out, int64_t in, Vec& dw, Vec& mag) {
    dw.assign(size_t(out * in), 0.0);
    mag.assign(dw.size(), 0.0);
    parallel_ranges((out + 7) / 8, [&](int64_t b0, int64_t b1) {
        for (int64_t ob = b0; ob < b1; ++ob)
            for (int64_t i = 0; i < rows; ++i) {
                const float* xr = x + i * in;
                for (int64_t o = ob * 8; o < std::min(out, ob * 8 + 8); ++o) {
                    const double g = dy[i * out + o], ag = std::abs(g);
                    double* wr = &dw[size_t(o * in)];
                    double* mr = &mag[size_t(o * in)];
                    for (int64_t j = 0; j < in; ++j) {
                        wr[j] += g * double(xr[j]);
                        mr[j] += ag * std::abs(double(xr[j]));
                    }
                }
            }
    });
}

// A weight matrix on the backend in F32 or BF16 (values: as the backend holds them).
struct TestWeight {
    TestWeight(Backend& b, DType dtype, int64_t rows, int64_t cols, std::vector<float> v)
        : values(std::move(v)), bits(to_bf16(values)), f32(b, dtype == DType::F32 ? values : std::vector<float>(1)),
          bf16(b, dtype == DType::BF16 ? bits : std::vector<uint16_t>(1)) {
        if (dtype == DType::BF16)
            for (size_t i = 0; i < values.size(); ++i) values[i] = bf16_to_f32(bits[i]);
        matrix = WeightMatrix{dtype, rows, cols, dtype == DType::F32 ? static_cast<const void*>(f32.get()) : bf16.get()};
    }
    std::vector<float> values;
    std::vector<uint16_t> bits;
    DeviceArray<float> f32;
    DeviceArray<uint16_t> bf16;
    WeightMatrix matrix;
};

TEST_P(TrainOps, LinearBackwardFiniteDifferences) {
    Random rng(15);
    struct Case { int64_t rows, in, out; };
    for (const Case c : {Case{1, 1, 1}, Case{3, 5, 4}, Case{7, 16, 9}, Case{2, 12, 20}}) {
        const auto x = act(rng.floats(size_t(c.rows * c.in)));
        TestWeight tw(b(), weight_dtype(), c.out, c.in, rng.floats(size_t(c.out * c.in)));
        const std::vector<float>& w = tw.values;
        const auto r = act(rng.floats(size_t(c.rows * c.out)));
        const auto dx0 = rng.floats(x.size());
        const auto dw0 = rng.floats(w.size());
        const Vec xd = to_f64(x), wd = to_f64(w), rd = to_f64(r);
        const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.in) + "->" + std::to_string(c.out);
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
        const Vec gw = fd_grad(wd, [&](const Vec& ww, size_t) { return value(xd, ww); });
        Vec an_dx, dx_mag, an_dw, dw_mag;
        ref_linear_dx(r.data(), w.data(), c.rows, c.out, c.in, an_dx, dx_mag);
        ref_linear_dw(r.data(), x.data(), c.rows, c.out, c.in, an_dw, dw_mag);
        EXPECT_TRUE(grad_close(to_f32(an_dx), gx, 1e-6)) << "analytic dx vs finite differences, " << what;
        EXPECT_TRUE(grad_close(to_f32(an_dw), gw, 1e-6)) << "analytic dw vs finite differences, " << what;

        check_linear_backward(x, r, tw.matrix, c.rows, dx0, dw0, {gx, an_dx, dx_mag, &gw, &an_dw, &dw_mag}, what);
    }
}

// Larger products (threaded splits along either dimension, BF16 weights in several panels) against the
// direct f64 products dx = dy W and dw = dy^T x. (F32-weight cases use BF16 weights on backends that hold
// only those.)
TEST_P(TrainOps, LinearBackwardLarge) {
    Random rng(16);
    struct Case { int64_t rows, in, out; DType dtype; };
    for (const Case c : {Case{200, 20, 30, DType::F32}, Case{20, 200, 30, DType::F32}, Case{64, 40, 80, DType::F32},
                         Case{64, 300, 16, DType::F32}, Case{8, 4096, 300, DType::BF16},
                         Case{40, 64, 50, DType::BF16}}) {
        const DType dtype = c.dtype == DType::F32 ? weight_dtype() : c.dtype;
        const auto x = act(rng.floats(size_t(c.rows * c.in)));
        TestWeight tw(b(), dtype, c.out, c.in, rng.floats(size_t(c.out * c.in)));
        const auto dy = act(rng.floats(size_t(c.rows * c.out)));
        const auto dx0 = rng.floats(x.size());
        const auto dw0 = rng.floats(tw.values.size());
        Vec ref_dx, dx_mag, ref_dw, dw_mag;
        ref_linear_dx(dy.data(), tw.values.data(), c.rows, c.out, c.in, ref_dx, dx_mag);
        ref_linear_dw(dy.data(), x.data(), c.rows, c.out, c.in, ref_dw, dw_mag);
        const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.in) + "->" + std::to_string(c.out);
        const bool dw = c.dtype == DType::F32;
        check_linear_backward(x, dy, tw.matrix, c.rows, dx0, dw0,
                              {ref_dx, ref_dx, dx_mag, dw ? &ref_dw : nullptr, &ref_dw, &dw_mag}, what);
    }
}

// Operands at offsets inside larger buffers, as the trainer passes them (fused K/V blocks, parameter
// slices): dy, x, W and dX 8 elements in (16 bytes in bf16), dW 4 floats (16 bytes) and 1 float (4 bytes:
// the alignment an f32 slice may have) in. The elements before each offset stay untouched. Tolerances
// relative to the condition scales: dX 1e-5 (f32) / kBf16Gemm (bf16); dW 1e-5 on the CPU (f32 BLAS over
// 33 rows: <= 34 2^-24 = 2e-6), kF32Reduce elsewhere.
TEST_P(TrainOps, LinearBackwardOffsetOperands) {
    Random rng(23);
    const int64_t rows = 33, out = 96, in = 80;
    for (const int64_t dw_off : {int64_t(4), int64_t(1)}) {
        const std::string what = "dW offset " + std::to_string(dw_off);
        ActArray dy(b(), rng.floats(size_t(rows * out + 8))), x(b(), rng.floats(size_t(rows * in + 8)));
        const auto dw0 = rng.floats(size_t(out * in + dw_off));
        DeviceArray<float> d_dw(b(), dw0);
        ops().linear_backward_weight(dy.at(8), x.at(8), rows, out, in, d_dw.get() + dw_off);
        Vec ref, mag;
        ref_linear_dw(dy.values().data() + 8, x.values().data() + 8, rows, out, in, ref, mag);
        const auto got_dw = d_dw.to_host();
        for (int64_t i = 0; i < dw_off; ++i) EXPECT_EQ(got_dw[size_t(i)], dw0[size_t(i)]) << what;
        const std::vector<float> dw_slice(got_dw.begin() + dw_off, got_dw.end()), dw0_slice(dw0.begin() + dw_off, dw0.end());
        EXPECT_TRUE(scaled_close(dw_slice, plus(ref, dw0_slice), plus(mag, abs_of(dw0_slice)), on_cpu() ? 1e-5 : kF32Reduce))
            << what;

        const auto w16 = to_bf16(rng.floats(size_t(out * in + 8)));
        std::vector<float> w(w16.size());
        for (size_t i = 0; i < w.size(); ++i) w[i] = bf16_to_f32(w16[i]);
        DeviceArray<uint16_t> d_w(b(), w16);
        ActArray dx(b(), rng.floats(size_t(rows * in + 8)));
        ops().linear_backward_input(dy.at(8), rows, WeightMatrix{DType::BF16, out, in, d_w.get() + 8}, dx.at(8), true);
        ref_linear_dx(dy.values().data() + 8, w.data() + 8, rows, out, in, ref, mag);
        const auto got_dx = dx.to_host();
        for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(got_dx[size_t(i)], dx.values()[size_t(i)]) << "dX at an offset";
        const std::vector<float> dx_slice(got_dx.begin() + 8, got_dx.end()), dx0_slice(dx.values().begin() + 8, dx.values().end());
        EXPECT_TRUE(scaled_close(dx_slice, plus(ref, dx0_slice), plus(mag, abs_of(dx0_slice)), act_or(1e-5, kBf16Gemm)))
            << "dX at an offset, " << what;
    }
}

// The CUDA backend's cuBLASLt shapes: dX (written and accumulated) for products up to 2048 rows and the
// LM head [128256, 576]; dW (accumulated twice) for all but the LM head (whose dW is never trained).
// BF16 weights.
TEST_P(TrainOps, LinearBackwardDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    Random rng(116);
    struct Shape { int64_t rows, out, in; };
    for (const Shape s : {Shape{1, 64, 64}, Shape{17, 576, 200}, Shape{300, 4096, 576}, Shape{5, 33, 200},
                          Shape{300, 1024, 4096}, Shape{2048, 1024, 512}, Shape{17, 128256, 576}}) {
        const std::string what = std::to_string(s.rows) + " rows, W [" + std::to_string(s.out) + ", " +
                                 std::to_string(s.in) + "]";
        ActArray dy(b(), rng.floats(size_t(s.rows * s.out)));
        Vec ref, mag;
        {
            TestWeight tw(b(), DType::BF16, s.out, s.in, rng.floats(size_t(s.out * s.in)));
            ref_linear_dx(dy.values().data(), tw.values.data(), s.rows, s.out, s.in, ref, mag);
            for (const bool accumulate : {false, true}) {
                ActArray dx(b(), rng.floats(size_t(s.rows * s.in), -4.0f, 4.0f));
                ops().linear_backward_input(dy.get(), s.rows, tw.matrix, dx.get(), accumulate);
                const std::string how = what + (accumulate ? ", accumulate" : "");
                if (accumulate)
                    EXPECT_TRUE(scaled_close(dx.to_host(), plus(ref, dx.values()), plus(mag, abs_of(dx.values())),
                                             act_or(1e-5, kBf16Gemm)))
                        << "dX, " << how;
                else
                    EXPECT_TRUE(scaled_close(dx.to_host(), ref, mag, act_or(1e-5, kBf16Gemm))) << "dX, " << how;
            }
        }
        if (s.out * s.in > (int64_t(1) << 26)) continue;
        ActArray x(b(), rng.floats(size_t(s.rows * s.in)));
        const auto dw0 = rng.floats(size_t(s.out * s.in));
        DeviceArray<float> d_dw(b(), dw0);
        for (int rep = 0; rep < 2; ++rep) ops().linear_backward_weight(dy.get(), x.get(), s.rows, s.out, s.in, d_dw.get());
        ref_linear_dw(dy.values().data(), x.values().data(), s.rows, s.out, s.in, ref, mag);
        EXPECT_TRUE(scaled_close(d_dw.to_host(), plus(times(ref, 2.0), dw0), plus(times(mag, 2.0), abs_of(dw0)), kF32Reduce))
            << "dW (accumulated twice), " << what;
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

// kl_div_loss analytic, per row (z = logits / T, p = softmax(z), lse = log sum exp z):
//   loss = T^2 (sum_j pt_j (zt_j - zs_j) - lse_t + lse_s),   grad_j = w T (ps_j - pt_j),
// with the condition scales of an f32 evaluation (the magnitudes its statistics sum or cancel):
//   loss: T^2 (2 + |lse_t| + |lse_s| + sum_j pt_j (|zt_j| + |zs_j| + |zt_j - zs_j|))
//   grad: w T (ps_j (1 + |zs_j| + |lse_s|) + pt_j (1 + |zt_j| + |lse_t|))   (exp of a rounded z - lse)
struct KlRef {
    Vec loss, loss_mag, grad, grad_mag;
};
KlRef ref_kl(const std::vector<float>& t, const std::vector<float>& s, const float* w, int64_t rows, int64_t vocab,
             double temp) {
    KlRef r;
    r.loss.resize(size_t(rows));
    r.loss_mag.resize(size_t(rows));
    r.grad.resize(size_t(rows * vocab));
    r.grad_mag.resize(r.grad.size());
    parallel_ranges(rows, [&](int64_t r0, int64_t r1) {
        Vec zt(static_cast<size_t>(vocab)), zs(static_cast<size_t>(vocab));
        for (int64_t i = r0; i < r1; ++i) {
            double mt = -INFINITY, ms = -INFINITY;
            for (int64_t j = 0; j < vocab; ++j) {
                zt[size_t(j)] = double(t[size_t(i * vocab + j)]) / temp;
                zs[size_t(j)] = double(s[size_t(i * vocab + j)]) / temp;
                mt = std::max(mt, zt[size_t(j)]);
                ms = std::max(ms, zs[size_t(j)]);
            }
            double st = 0.0, ss = 0.0;
            for (int64_t j = 0; j < vocab; ++j) {
                st += std::exp(zt[size_t(j)] - mt);
                ss += std::exp(zs[size_t(j)] - ms);
            }
            const double lse_t = mt + std::log(st), lse_s = ms + std::log(ss);
            const double wi = w ? double(w[i]) : 1.0;
            double cross = 0.0, mag = 2.0 + std::abs(lse_t) + std::abs(lse_s);
            for (int64_t j = 0; j < vocab; ++j) {
                const double a = zt[size_t(j)], c = zs[size_t(j)];
                const double pt = std::exp(a - lse_t), ps = std::exp(c - lse_s);
                cross += pt * (a - c);
                mag += pt * (std::abs(a) + std::abs(c) + std::abs(a - c));
                r.grad[size_t(i * vocab + j)] = wi * temp * (ps - pt);
                r.grad_mag[size_t(i * vocab + j)] =
                    wi * temp * (ps * (1.0 + std::abs(c) + std::abs(lse_s)) + pt * (1.0 + std::abs(a) + std::abs(lse_t)));
            }
            r.loss[size_t(i)] = temp * temp * (cross - lse_t + lse_s);
            r.loss_mag[size_t(i)] = temp * temp * mag;
        }
    });
    return r;
}

// On the CPU (f64 statistics): the loss within 1e-5 of the largest row loss and the gradient against the
// finite differences (1e-4, floor 1%). Elsewhere (f32 statistics): 1e-5 of the condition scales of ref_kl
// (~170 f32 roundings of the magnitudes involved).
constexpr double kKlF32 = 1e-5;

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
        const KlRef an = ref_kl(t, s, c.weights ? w.data() : nullptr, c.rows, c.vocab, temp);
        const std::string what = std::to_string(c.rows) + "x" + std::to_string(c.vocab) + ", T " +
                                 std::to_string(c.temperature) + ", offset " + std::to_string(c.offset);
        // (The finite differences of KL carry the f64 rounding of log-sums of |logits| up to 1000 / h: 1e-4.)
        EXPECT_TRUE(grad_close(to_f32(an.loss), loss_ref, 1e-6, 1.0)) << "analytic loss, " << what;
        EXPECT_TRUE(grad_close(to_f32(an.grad), g, 1e-4)) << "analytic gradient vs finite differences, " << what;

        DeviceArray<float> d_t(b(), t), d_s(b(), s), d_w(b(), w), d_loss(b(), size_t(c.rows)), d_g(b(), s.size());
        ops().kl_div_loss(d_t.get(), d_s.get(), c.weights ? d_w.get() : nullptr, c.rows, c.vocab, c.temperature,
                          d_loss.get(), d_g.get());
        if (on_cpu()) {
            // The loss in absolute terms: the backend's cross term sums O(|logit|/T) values before cancelling.
            EXPECT_TRUE(grad_close(d_loss.to_host(), loss_ref, 1e-5, 1.0)) << "loss, " << what;
            EXPECT_TRUE(grad_close(d_g.to_host(), g, 1e-4, 1e-2)) << "d_student, " << what;
        } else {
            EXPECT_TRUE(scaled_close(d_loss.to_host(), an.loss, an.loss_mag, kKlF32)) << "loss, " << what;
            EXPECT_TRUE(scaled_close(d_g.to_host(), an.grad, an.grad_mag, kKlF32)) << "d_student, " << what;
        }

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
    const int64_t rows = 3, vocab = device_sized(GetParam()) ? 50000 : 100;
    const auto t = rng.floats(size_t(rows * vocab), -10.0f, 10.0f);
    DeviceArray<float> d_t(b(), t), d_loss(b(), size_t(rows)), d_g(b(), t.size());
    ops().kl_div_loss(d_t.get(), d_t.get(), nullptr, rows, vocab, 2.0f, d_loss.get(), d_g.get());
    for (float l : d_loss.to_host()) EXPECT_NEAR(l, 0.0f, 1e-6f);
    for (float g : d_g.to_host()) ASSERT_NEAR(g, 0.0f, 1e-12f);  // q - p, up to FMA contraction
}

// Vocabularies of 1000, 50000 and 1001 (scalar path), 1 to 17 rows (one masked), T 1 and 2, all three
// output combinations (an output not asked for stays untouched); then Llama's 128256 with null weights.
// Student logits are the teacher's plus noise in [-1, 1] (the distillation regime).
TEST_P(TrainOps, KlDivLossDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    Random rng(117);
    auto run = [&](int64_t rows, int64_t vocab, float temperature, float spread, float noise, bool weighted,
                   int outputs) {
        const auto t = rng.floats(size_t(rows * vocab), -spread, spread);
        auto s = rng.floats(size_t(rows * vocab), -noise, noise);
        for (size_t i = 0; i < s.size(); ++i) s[i] += t[i];
        auto w = rng.floats(size_t(rows), 0.0f, 1.0f);
        if (rows > 1) w[1] = 0.0f;  // a masked row
        const std::vector<float> loss0(size_t(rows), -1.0f), grad0(size_t(rows * vocab), 7.0f);
        DeviceArray<float> d_t(b(), t), d_s(b(), s), d_w(b(), w), d_loss(b(), loss0), d_g(b(), grad0);
        const bool with_loss = outputs != 2, with_grad = outputs != 1;
        ops().kl_div_loss(d_t.get(), d_s.get(), weighted ? d_w.get() : nullptr, rows, vocab, temperature,
                          with_loss ? d_loss.get() : nullptr, with_grad ? d_g.get() : nullptr);
        const KlRef an = ref_kl(t, s, weighted ? w.data() : nullptr, rows, vocab, temperature);
        const std::string what = std::to_string(rows) + " x " + std::to_string(vocab) + ", T " +
                                 std::to_string(temperature) + ", outputs " + std::to_string(outputs);
        if (with_loss)
            EXPECT_TRUE(scaled_close(d_loss.to_host(), an.loss, an.loss_mag, kKlF32)) << "row loss, " << what;
        else
            EXPECT_EQ(d_loss.to_host(), loss0) << "row loss written without being asked for, " << what;
        if (with_grad)
            EXPECT_TRUE(scaled_close(d_g.to_host(), an.grad, an.grad_mag, kKlF32)) << "gradient, " << what;
        else
            EXPECT_EQ(d_g.to_host(), grad0) << "gradient written without being asked for, " << what;
    };
    for (const int64_t vocab : {1000, 50000, 1001})
        for (const int64_t rows : {1, 3, 17})
            for (const float temperature : {1.0f, 2.0f})
                for (int outputs = 0; outputs < 3; ++outputs) run(rows, vocab, temperature, 8.0f, 1.0f, true, outputs);
    run(4, 128256, 1.0f, 10.0f, 2.0f, false, 0);
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
        // The loss sums positive terms: relative 1e-6 on the CPU (f64 sums), kF32Reduce for f32 sums.
        EXPECT_TRUE(grad_close(d_loss.to_host(), loss_ref, on_cpu() ? 1e-6 : kF32Reduce, 0.0)) << "loss " << c.rows << "x" << c.dim;
        EXPECT_TRUE(grad_close(d_g.to_host(), g)) << "grad " << c.rows << "x" << c.dim;
    }
}

// Hidden sizes 64, 4096 and 577, 1 to 300 rows, with and without row weights, against the f64 formulas:
// the loss (a sum of positive terms) within kF32Reduce relative, the gradient w 2 (a - b) / dim within
// 1e-6 relative (four f32 roundings: 2.4e-7).
TEST_P(TrainOps, MseLossDeviceSized) {
    if (!device_sized(GetParam())) GTEST_SKIP() << "the CPU's kernel paths are selected at the smaller sizes";
    Random rng(119);
    for (const int64_t dim : {64, 4096, 577}) {
        for (const int64_t rows : {1, 17, 300}) {
            for (const bool weighted : {false, true}) {
                const auto a = rng.floats(size_t(rows * dim), -3.0f, 3.0f);
                const auto bb = rng.floats(size_t(rows * dim), -3.0f, 3.0f);
                const auto w = rng.floats(size_t(rows), 0.0f, 1.0f);
                DeviceArray<float> d_a(b(), a), d_b(b(), bb), d_w(b(), w), d_loss(b(), size_t(rows)),
                    d_g(b(), a.size());
                ops().mse_loss(d_a.get(), d_b.get(), weighted ? d_w.get() : nullptr, rows, dim, d_loss.get(), d_g.get());
                Vec loss(size_t(rows), 0.0), grad(a.size());
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t j = 0; j < dim; ++j) {
                        const size_t i = size_t(r * dim + j);
                        const double d = double(a[i]) - double(bb[i]);
                        loss[size_t(r)] += d * d / double(dim);
                        grad[i] = (weighted ? double(w[size_t(r)]) : 1.0) * 2.0 * d / double(dim);
                    }
                const std::string what = std::to_string(rows) + " x " + std::to_string(dim) + (weighted ? ", weighted" : "");
                EXPECT_TRUE(grad_close(d_loss.to_host(), loss, kF32Reduce, 0.0)) << "row loss, " << what;
                EXPECT_TRUE(grad_close(d_g.to_host(), grad, 1e-6, 0.0)) << "gradient, " << what;
            }
        }
    }
}

// ---- optimizer --------------------------------------------------------------------------------------------

// The update is ~lr per step; f32 storage of p, m, v costs ~1e-7 relative per step (the update itself is
// formed in f64 on every backend). m cancels (gradients of both signs): its f32 rounding is relative to
// the typical |m|, not to each. On device backends also a million parameters over 10 steps.
TEST_P(TrainOps, AdamWMatchesF64Reference) {
    Random rng(20);
    struct Case { int64_t n; float weight_decay; int64_t steps; };
    std::vector<Case> cases = {{1, 0.0f, 5}, {37, 0.1f, 5}, {100000, 0.01f, 5}};
    if (device_sized(GetParam())) cases.push_back({1000003, 0.1f, 10});
    for (const Case c : cases) {
        AdamWParams p;
        p.lr = 1e-3f;
        p.beta1 = 0.9f;
        p.beta2 = 0.95f;
        p.eps = 1e-8f;
        p.weight_decay = c.weight_decay;
        const auto param0 = rng.floats(size_t(c.n));
        Vec ref_p = to_f64(param0), ref_m(size_t(c.n)), ref_v(size_t(c.n));
        DeviceArray<float> d_p(b(), param0), d_m(b(), size_t(c.n)), d_v(b(), size_t(c.n));
        for (int64_t step = 1; step <= c.steps; ++step) {
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
        Vec scale(ref_p.size());
        for (size_t i = 0; i < scale.size(); ++i) scale[i] = std::abs(ref_p[i]) + double(p.lr);
        EXPECT_TRUE(all_close(d_p.to_host(), ref_p, scale, 1e-6)) << "param, n " << c.n;
        EXPECT_TRUE(grad_close(d_m.to_host(), ref_m, 1e-5, 1e-2)) << "m, n " << c.n;
        EXPECT_TRUE(grad_close(d_v.to_host(), ref_v, 1e-5, 1e-2)) << "v, n " << c.n;
    }
}

// A slice one float into its buffers (4-byte aligned: the scalar path of vectorized kernels), from
// nonzero moments, at step 3 with the default hyper-parameters; the float before the slice stays.
TEST_P(TrainOps, AdamWUnalignedSlice) {
    Random rng(24);
    const int64_t n = 1001;
    const auto p0 = rng.floats(size_t(n + 1)), g = rng.floats(size_t(n + 1));
    const auto m0 = rng.floats(size_t(n + 1), -0.01f, 0.01f), v0 = rng.floats(size_t(n + 1), 0.0f, 0.01f);
    DeviceArray<float> d_p(b(), p0), d_g(b(), g), d_m(b(), m0), d_v(b(), v0);
    const AdamWParams hp;
    const int64_t step = 3;
    ops().adamw_step(d_p.get() + 1, d_g.get() + 1, d_m.get() + 1, d_v.get() + 1, n, hp, step);
    Vec ref_p(static_cast<size_t>(n)), ref_m(static_cast<size_t>(n)), ref_v(static_cast<size_t>(n));
    const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr;
    for (size_t i = 0; i < size_t(n); ++i) {
        const double gi = g[i + 1];
        ref_m[i] = b1 * double(m0[i + 1]) + (1.0 - b1) * gi;
        ref_v[i] = b2 * double(v0[i + 1]) + (1.0 - b2) * gi * gi;
        const double m_hat = ref_m[i] / (1.0 - std::pow(b1, double(step)));
        const double v_hat = ref_v[i] / (1.0 - std::pow(b2, double(step)));
        ref_p[i] = double(p0[i + 1]) * (1.0 - lr * double(hp.weight_decay)) - lr * m_hat / (std::sqrt(v_hat) + double(hp.eps));
    }
    const auto got_p = d_p.to_host(), got_m = d_m.to_host(), got_v = d_v.to_host();
    EXPECT_EQ(got_p[0], p0[0]);
    EXPECT_EQ(got_m[0], m0[0]);
    EXPECT_EQ(got_v[0], v0[0]);
    Vec scale(ref_p.size());
    for (size_t i = 0; i < scale.size(); ++i) scale[i] = std::abs(ref_p[i]) + lr;
    EXPECT_TRUE(all_close(std::vector<float>(got_p.begin() + 1, got_p.end()), ref_p, scale, 1e-6)) << "param";
    EXPECT_TRUE(grad_close(std::vector<float>(got_m.begin() + 1, got_m.end()), ref_m, 1e-5, 1e-2)) << "m";
    EXPECT_TRUE(grad_close(std::vector<float>(got_v.begin() + 1, got_v.end()), ref_v, 1e-5, 1e-2)) << "v";
}

// grad_sq_norm in f64, deterministic (the same result twice); scale exactly x * s in f32, also on a
// slice one float in. The squares of f32 values are exact in f64, so summing n of them (all positive)
// in any order is within (n - 1) 2^-53 of the exact sum (1.9e-9 relative at 2^24, where an f32
// accumulation would be off by ~1e-4); the reference is that exact sum (Neumaier's compensated
// summation; a plain f64 loop over 2^24 terms has errors of the size being tested).
TEST_P(TrainOps, GradNormAndScale) {
    Random rng(21);
    std::vector<int64_t> ns = {0, 1, 100, 200000};
    if (device_sized(GetParam())) ns.insert(ns.end(), {17, 1000003, int64_t(1) << 24});
    for (int64_t n : ns) {
        const auto x = rng.floats(size_t(n));
        double ref = 0.0, comp = 0.0;
        for (float v : x) {
            const double sq = double(v) * double(v), t = ref + sq;
            comp += std::abs(ref) >= sq ? (ref - t) + sq : (sq - t) + ref;
            ref = t;
        }
        ref += comp;
        DeviceArray<float> d_x(b(), n > 0 ? x : std::vector<float>(1));
        const double got = ops().grad_sq_norm(d_x.get(), n);
        EXPECT_NEAR(got, ref, double(std::max<int64_t>(n - 1, 1)) * 0x1p-53 * ref) << n;
        EXPECT_EQ(ops().grad_sq_norm(d_x.get(), n), got) << "not deterministic, n " << n;
        ops().scale(d_x.get(), n, 0.25f);
        const auto h = d_x.to_host();
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(h[size_t(i)], x[size_t(i)] * 0.25f);
    }
    const auto y = rng.floats(1003);
    DeviceArray<float> d_y(b(), y);
    ops().scale(d_y.get() + 1, 1001, -2.5f);
    const auto h = d_y.to_host();
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(h[i], i >= 1 && i <= 1001 ? y[i] * -2.5f : y[i]) << "unaligned, " << i;
}

// convert_from_f32 rounds to nearest even (bf16) or copies (f32); add_f32 is y + alpha x in f32. Both
// against values computed here from their definitions (bf16 rounding done in integer arithmetic), on
// buffers and on slices one element in (the scalar paths of vectorized kernels).
TEST_P(TrainOps, ConvertFromF32AndAddF32) {
    Random rng(22);
    auto bf16_rne = [](float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
        return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    };
    std::vector<int64_t> ns = {0, 1, 7, 100003};
    if (device_sized(GetParam())) ns.push_back(1000003);
    for (int64_t n : ns) {
        for (const int64_t off : {int64_t(0), int64_t(1)}) {
            const size_t total = size_t(std::max<int64_t>(n + off, 1));
            auto x = rng.floats(total, -1000.0f, 1000.0f);
            if (n >= 7) {  // ties, a denormal, infinity, a value that rounds up to infinity
                const uint32_t bits[] = {0x3f808000u, 0x3f818000u, 0x00000001u, 0x7f800000u, 0x7f7fffffu};
                for (int i = 0; i < 5; ++i) std::memcpy(&x[size_t(off + i)], &bits[i], 4);
            }
            DeviceArray<float> d_x(b(), x);
            DeviceArray<uint16_t> d_h(b(), std::vector<uint16_t>(total, 0x1234));
            DeviceArray<float> d_f(b(), std::vector<float>(total, -3.0f));
            ops().convert_from_f32(d_x.get() + off, d_h.get() + off, n, DType::BF16);
            ops().convert_from_f32(d_x.get() + off, d_f.get() + off, n, DType::F32);
            const std::vector<uint16_t> h = d_h.to_host();
            const std::vector<float> f = d_f.to_host();
            const std::string what = "n " + std::to_string(n) + ", offset " + std::to_string(off);
            if (off) {
                ASSERT_TRUE(h[0] == 0x1234 && f[0] == -3.0f) << "element before the slice written, " << what;
            }
            for (int64_t i = 0; i < n; ++i) {
                const size_t at = size_t(off + i);
                ASSERT_EQ(h[at], bf16_rne(x[at])) << "bf16 of " << x[at] << ", " << what;
                ASSERT_EQ(f[at], x[at]) << what;
            }
            const auto y0 = rng.floats(total);
            DeviceArray<float> d_y(b(), y0);
            ops().add_f32(d_y.get() + off, d_f.get() + off, n, -0.5f);
            const auto y = d_y.to_host();
            if (off) {
                ASSERT_EQ(y[0], y0[0]) << "element before the slice written, " << what;
            }
            for (int64_t i = 0; i < n; ++i) {  // one rounding (fused) or two
                const size_t at = size_t(off + i);
                const double ref = double(y0[at]) - 0.5 * double(x[at]);
                if (std::isinf(x[at])) continue;
                ASSERT_NEAR(y[at], ref, 1.2e-7 * (std::abs(ref) + 0.5 * std::abs(double(x[at])))) << i << ", " << what;
            }
        }
    }
    EXPECT_THROW(ops().convert_from_f32(nullptr, nullptr, 4, DType::Q8_0), Error);
    EXPECT_THROW(ops().add_f32(nullptr, nullptr, -1, 1.0f), Error);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, TrainOps, ::testing::ValuesIn(all_backend_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace swiftkv::test
