// The smooth ReLU of aid/interpreters/smooth_relu.py as C++ autograd functions, for float32 CPU tensors.
//
// Same numbers as the PyTorch ops of the Python version, bit for bit: each element goes through the
// same float32 operations in the same order (z*z, + tau, 1/sqrt, z*r, + step; h' = ((r*r)*r)*tau;
// (gg*g)*h'), all correctly rounded, and the build forbids contracting them into fused multiply-adds.
// What differs is the work around them:
// - one pass over the activations per backward instead of several (one loop computes h and the products);
// - the backward with create_graph keeps only grad_out (z is kept by the forward anyway) and the double
//   backward recomputes h and h' from z, instead of holding h and h' for every activation from the first
//   backward to the second: less memory in flight while the convolutions of the double backward run;
// - no Python on the backward passes.
// The double backward hands the h it recomputed to the forward function's second backward (the gradient
// along the forward graph), which then multiplies instead of recomputing (h depends on z alone).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 32768;  // elements per task, as ATen's elementwise kernels

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define AID_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AID_CLONES
#endif

// h(z) and r = 1/sqrt(z*z + t), element by element, as the PyTorch ops compute them.
inline float h_of(float z, float t, float& r) {
  const float sq = z * z;
  const float a = sq + t;
  r = 1.0f / std::sqrt(a);
  const float s = z * r;
  return s + (z < 0.0f ? 1.0f : 0.0f);
}

// The loops over elements [b, e) of z's memory (one task of at::parallel_for).
AID_CLONES void times_h_loop(const float* __restrict__ z, const float* __restrict__ g, float* __restrict__ out,
                             float t, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    float r;
    out[i] = g[i] * h_of(z[i], t, r);
  }
}

AID_CLONES void double_backward_loop(const float* __restrict__ z, const float* __restrict__ g,
                                     const float* __restrict__ gg, float* __restrict__ d_g, float* __restrict__ d_z,
                                     float* __restrict__ h, float t, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    float r;
    const float hi = h_of(z[i], t, r);
    const float r2 = r * r;
    const float r3 = r2 * r;
    const float dh = r3 * t;
    const float x = gg[i];
    const float y = x * g[i];
    h[i] = hi;
    d_g[i] = x * hi;
    d_z[i] = y * dh;
  }
}

// Whether the loops can run over z's memory directly (float32 on a CPU, no gaps, no overlaps).
bool dense(const Tensor& z) { return z.is_cpu() && z.scalar_type() == at::kFloat && z.is_non_overlapping_and_dense(); }

// a (same sizes as z) in z's memory layout, so that element i of both sits at the same offset.
Tensor same_layout(const Tensor& a, const Tensor& z) {
  if (a.strides() == z.strides()) return a;
  return at::empty_like(z).copy_(a);
}

template <class F>
void run(int64_t n, F f) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) { f(b, e); });
}

// The PyTorch ops of the Python version, for a z the loops do not take (the same numbers).
std::pair<Tensor, Tensor> h_and_r_ops(const Tensor& z, double tau) {
  Tensor r = at::mul(z, z).add_(tau).rsqrt_();
  Tensor step = at::empty_like(z);
  at::lt_out(step, z, 0);
  return {at::mul(z, r).add_(step), r};
}

// grad_out * h(z).
Tensor times_h(const Tensor& g, const Tensor& z, double tau) {
  if (!dense(z)) return g * h_and_r_ops(z, tau).first;
  Tensor gl = same_layout(g, z);
  Tensor out = at::empty_like(z);
  const float* zp = z.const_data_ptr<float>();
  const float* gp = gl.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float t = static_cast<float>(tau);
  run(z.numel(), [&](int64_t b, int64_t e) { times_h_loop(zp, gp, op, t, b, e); });
  return out;
}

// (gg * h(z), (gg * grad_out) * h'(z), h(z)).
std::tuple<Tensor, Tensor, Tensor> double_backward(const Tensor& gg, const Tensor& g, const Tensor& z, double tau) {
  if (!dense(z)) {
    auto [h, r] = h_and_r_ops(z, tau);
    Tensor dh = r.pow_(3).mul_(tau);
    return {gg * h, at::mul(gg, g).mul_(dh), h};
  }
  Tensor gl = same_layout(g, z);
  Tensor ggl = same_layout(gg, z);
  Tensor d_g = at::empty_like(z), d_z = at::empty_like(z), h = at::empty_like(z);
  const float* zp = z.const_data_ptr<float>();
  const float* gp = gl.const_data_ptr<float>();
  const float* ggp = ggl.const_data_ptr<float>();
  float* dgp = d_g.mutable_data_ptr<float>();
  float* dzp = d_z.mutable_data_ptr<float>();
  float* hp = h.mutable_data_ptr<float>();
  const float t = static_cast<float>(tau);
  run(z.numel(), [&](int64_t b, int64_t e) { double_backward_loop(zp, gp, ggp, dgp, dzp, hp, t, b, e); });
  return {d_g, d_z, h};
}

// h(z) handed from a double backward to the forward function's next backward: a list shared by both
// contexts (c10::List copies share their elements), holding at most one tensor, used once.
c10::List<Tensor> h_cache(AutogradContext* ctx) { return ctx->saved_data.at("h").toTensorList(); }

// grad_out * h(z), differentiable once more in both arguments (the map of ADV² against GRAD).
struct SmoothReLUBackward : public torch::autograd::Function<SmoothReLUBackward> {
  static Tensor forward(AutogradContext* ctx, Tensor grad_out, Tensor z, double tau, c10::IValue cache) {
    ctx->save_for_backward({grad_out, z});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["h"] = std::move(cache);
    return times_h(grad_out, z, tau);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "smooth ReLU: third derivatives are not supported (a backward with create_graph through the "
                "gradient of a smooth-ReLU gradient)");
    auto saved = ctx->get_saved_variables();
    auto [d_g, d_z, h] = double_backward(grads[0], saved[0], saved[1], ctx->saved_data["tau"].toDouble());
    auto cache = h_cache(ctx);
    cache.clear();
    cache.push_back(h);
    return {ctx->needs_input_grad(0) ? d_g : Tensor(), ctx->needs_input_grad(1) ? d_z : Tensor(), Tensor(), Tensor()};
  }
};

// ReLU forward, grad_out * h(z) backward.
struct SmoothReLU : public torch::autograd::Function<SmoothReLU> {
  static Tensor forward(AutogradContext* ctx, Tensor z, double tau) {
    ctx->save_for_backward({z});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["h"] = c10::List<Tensor>();
    return z.clamp_min(0);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor z = ctx->get_saved_variables()[0];
    const double tau = ctx->saved_data["tau"].toDouble();
    if (at::GradMode::is_enabled()) {  // create_graph: the backward must itself be differentiable
      return {SmoothReLUBackward::apply(grads[0], z, tau, ctx->saved_data["h"]), Tensor()};
    }
    auto cache = h_cache(ctx);
    if (cache.size() == 1) {
      Tensor h = cache.get(0);
      cache.clear();
      return {grads[0] * h, Tensor()};
    }
    return {times_h(grads[0], z, tau), Tensor()};
  }
};

Tensor smooth_relu(const Tensor& z, double tau) { return SmoothReLU::apply(z, tau); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("smooth_relu", &smooth_relu, "ReLU forward, grad * h(z) backward (differentiable twice)");
}
