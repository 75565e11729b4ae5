// CPU kernel of torch.ops.yoda.masked_q_sample: training-time forward noising with YODA masks (DESIGN.md §7),
// per batch element b:
//
//     x_t = sqrt_ab[b] * (x0 where A >= tau[b] else c) + sqrt_1m_ab[b] * noise
//
// x0, c, noise: (B, C, H, W), one dtype (fp32/fp16/bf16), any strides; A: (B, 1, H, W), (B, H, W) (any float
// dtype) or absent (plain q_sample); sqrt_ab, sqrt_1m_ab, tau: (B,) float tensors. Float32 arithmetic in
// naive.py's order (csrc/step.h: q_sample_pixel). Output: x0's dtype and layout rule (see naive.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "common.h"
#include "cpu/parallel.h"

namespace yoda {

namespace {

constexpr const char* kOp = "yoda::masked_q_sample";

template <typename scalar_t, typename a_t>
void q_sample_kernel(const at::Tensor& x0, const at::Tensor& c, const at::Tensor& noise, const at::Tensor& A,
                     const float* sa, const float* s1a, const float* tau, at::Tensor& out) {
  const int64_t B = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  const scalar_t* X = x0.const_data_ptr<scalar_t>();
  const scalar_t* Cc = c.const_data_ptr<scalar_t>();
  const scalar_t* N = noise.const_data_ptr<scalar_t>();
  scalar_t* Out = out.mutable_data_ptr<scalar_t>();
  const a_t* Ap = A.defined() ? A.const_data_ptr<a_t>() : nullptr;
  const int64_t xb = x0.stride(0), xc = x0.stride(1), xh = x0.stride(2), xw = x0.stride(3);
  const int64_t cb = c.stride(0), cc = c.stride(1), ch = c.stride(2), cw = c.stride(3);
  const int64_t nb = noise.stride(0), nc = noise.stride(1), nh = noise.stride(2), nw = noise.stride(3);
  const int64_t ob = out.stride(0), oc = out.stride(1), oh = out.stride(2), ow = out.stride(3);
  const int64_t ab = Ap ? A.stride(0) : 0, ah = Ap ? A.stride(-2) : 0, aw = Ap ? A.stride(-1) : 0;
  // One task = one image row of one channel: B*C*H rows, enough for any thread count.
  cpu::parallel_for(0, B * C * H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (C * H), ch_i = (r / H) % C, y = r % H;
      const float a = sa[b], s = s1a[b], t = tau[b];
      const scalar_t* xr = X + b * xb + ch_i * xc + y * xh;
      const scalar_t* cr = Cc + b * cb + ch_i * cc + y * ch;
      const scalar_t* nr = N + b * nb + ch_i * nc + y * nh;
      scalar_t* orow = Out + b * ob + ch_i * oc + y * oh;
      if (!Ap) {
        for (int64_t i = 0; i < W; ++i)
          orow[i * ow] = static_cast<scalar_t>(
              q_sample_pixel(a, s, static_cast<float>(xr[i * xw]), static_cast<float>(nr[i * nw])));
        continue;
      }
      const a_t* ar = Ap + b * ab + y * ah;
      for (int64_t i = 0; i < W; ++i) {
        const bool active = is_active(static_cast<float>(ar[i * aw]), t);
        // Read only the branch that is used (x0 for active pixels, c for the others).
        const float base = active ? static_cast<float>(xr[i * xw]) : static_cast<float>(cr[i * cw]);
        orow[i * ow] = static_cast<scalar_t>(q_sample_pixel(a, s, base, static_cast<float>(nr[i * nw])));
      }
    }
  });
}

}  // namespace

at::Tensor masked_q_sample_cpu(const at::Tensor& x0, const at::Tensor& c, const at::Tensor& noise,
                               const std::optional<at::Tensor>& A_opt, const at::Tensor& sqrt_ab,
                               const at::Tensor& sqrt_1m_ab, const at::Tensor& tau) {
  constexpr Backend be = Backend::kCPU;
  const at::Tensor A = checked_q_sample_args(kOp, be, x0, c, noise, A_opt);
  const at::Tensor sa = per_batch(kOp, be, "sqrt_ab", sqrt_ab, x0);
  const at::Tensor s1a = per_batch(kOp, be, "sqrt_1m_ab", sqrt_1m_ab, x0);
  const at::Tensor t = per_batch(kOp, be, "tau", tau, x0);
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(output_format(x0)));
  if (out.numel() == 0) return out;
  const at::ScalarType a_type = A.defined() ? A.scalar_type() : at::kFloat;
  dispatch_float3(x0.scalar_type(), "yoda", [&](auto state_tag) {
    dispatch_float3(a_type, "yoda", [&](auto a_tag) {
      q_sample_kernel<decltype(state_tag), decltype(a_tag)>(x0, c, noise, A, sa.const_data_ptr<float>(),
                                                            s1a.const_data_ptr<float>(), t.const_data_ptr<float>(), out);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(yoda, CPU, m) { m.impl("masked_q_sample", &masked_q_sample_cpu); }

}  // namespace yoda
