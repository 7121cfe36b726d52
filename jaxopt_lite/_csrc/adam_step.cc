// One fused AdamW step on float32 buffers, in place: the CPU fast path of
// jaxopt_lite.kernels.adamw_step. XLA:CPU splits the same update into three
// loops (40 bytes per parameter); this is one pass over p, g, m, v (28 bytes).
//
// hyper = [lr, b1, b2, eps, eps_root, weight_decay, 1/(1-b1^t), 1/(1-b2^t), grad_prescale, grad_scale]
//   g' = (grad_prescale * g) * grad_scale   (two factors: see clipping.clip_scales; both 1 unclipped)
//   m  <- b1 m + (1-b1) g'          v <- b2 v + (1-b2) g'^2
//   p  <- p - lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t) + eps_root) + eps) + weight_decay * p)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Hyper {
  float lr, b1, b2, eps, eps_root, wd, inv_bc1, inv_bc2, gprescale, gscale;
};

void Step(const Hyper h, const float* g, float* p, float* m, float* v, int64_t begin, int64_t end) {
  const float c1 = 1.0f - h.b1, c2 = 1.0f - h.b2;
  for (int64_t i = begin; i < end; ++i) {
    const float gi = (g[i] * h.gprescale) * h.gscale;
    const float mi = h.b1 * m[i] + c1 * gi;
    const float vi = h.b2 * v[i] + c2 * (gi * gi);
    const float denom = std::sqrt(vi * h.inv_bc2 + h.eps_root) + h.eps;
    // 0 where denom == 0 (eps == 0 and every gradient so far 0, so mi == 0 too): 0/0 would be NaN.
    // A select, not a branch: the loop still vectorizes.
    const float dir = denom > 0.0f ? (mi * h.inv_bc1) / denom : 0.0f;
    p[i] = p[i] - h.lr * (dir + h.wd * p[i]);
    m[i] = mi;
    v[i] = vi;
  }
}

ffi::Error AdamwStepImpl(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> m,
                         ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> hyper, ffi::ResultBuffer<ffi::F32> p_out,
                         ffi::ResultBuffer<ffi::F32> m_out, ffi::ResultBuffer<ffi::F32> v_out) {
  const int64_t n = p.element_count();
  if (g.element_count() != n || m.element_count() != n || v.element_count() != n) {
    return ffi::Error::InvalidArgument("adamw_step: p, g, m, v must have the same number of elements");
  }
  if (hyper.element_count() != 10) {
    return ffi::Error::InvalidArgument("adamw_step: expected 10 hyperparameters");
  }
  const float* hv = hyper.typed_data();
  const Hyper h{hv[0], hv[1], hv[2], hv[3], hv[4], hv[5], hv[6], hv[7], hv[8], hv[9]};
  float* po = p_out->typed_data();
  float* mo = m_out->typed_data();
  float* vo = v_out->typed_data();
  // The outputs alias the inputs (input_output_aliases); copy only if XLA gave fresh buffers.
  if (po != p.typed_data()) std::copy(p.typed_data(), p.typed_data() + n, po);
  if (mo != m.typed_data()) std::copy(m.typed_data(), m.typed_data() + n, mo);
  if (vo != v.typed_data()) std::copy(v.typed_data(), v.typed_data() + n, vo);

  const int64_t min_chunk = 1 << 16;
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(hw, n / min_chunk));
  if (threads == 1) {
    Step(h, g.typed_data(), po, mo, vo, 0, n);
    return ffi::Error::Success();
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = t * chunk, e = std::min(n, b + chunk);
    pool.emplace_back(Step, h, g.typed_data(), po, mo, vo, b, e);
  }
  Step(h, g.typed_data(), po, mo, vo, 0, std::min(n, chunk));
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxoptLiteAdamwStep, AdamwStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
