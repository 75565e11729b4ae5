// CUDA kernel of torch.ops.yoda.masked_q_sample: training-time forward noising with YODA masks (DESIGN.md §7),
// per batch element b:
//
//     x_t = sqrt_ab[b] * (x0 where A >= tau[b] else c) + sqrt_1m_ab[b] * noise
//
// x0, c, noise: (B, C, H, W), one dtype (fp32/fp16/bf16), any strides; A: (B, 1, H, W), (B, H, W) (any float
// dtype) or absent (plain q_sample); sqrt_ab, sqrt_1m_ab, tau: (B,) float tensors. Float32 arithmetic in
// naive.py's order (csrc/step.h: q_sample_pixel). Output: x0's dtype and layout rule (see naive.py).
//
// Work split: a thread owns 4 adjacent pixels of one row (one float4 / 8-byte vector when the layout allows)
// and loops over the channels, so A is read once per pixel; x0 is read only for a group with an active pixel
// and c only for one with an inactive pixel. Block 32 x 4 threads = 128 columns x 4 rows;
// grid (ceil(W / 128), ceil(H / 4), B).
#include "cuda_utils.cuh"

namespace yoda {
namespace cuda {
namespace {

constexpr int kQuadsX = 32, kRowsY = 4;

template <typename T>
struct QParams {
  const T* x0;
  const T* c;
  const T* noise;
  T* out;
  const void* A;  // null: plain q_sample; dtype a_type (AttnType)
  int a_type;
  const float* sa;
  const float* s1;
  const float* tau;
  Strides4 sx, sc, sn, sy;
  int64_t a_sb, a_sh, a_sw;
  int C, H, W;
};

template <typename T, bool kVec>
__global__ void __launch_bounds__(kQuadsX* kRowsY) masked_q_sample_kernel(const QParams<T> p) {
  const int b = blockIdx.z;
  const int y = blockIdx.y * kRowsY + threadIdx.y;
  const int x0 = (blockIdx.x * kQuadsX + threadIdx.x) * 4;
  if (y >= p.H || x0 >= p.W) return;
  const int n = min(4, p.W - x0);
  const float sa = p.sa[b], s1 = p.s1[b];
  bool act[4] = {true, true, true, true};
  if (p.A != nullptr) {
    const float tau = p.tau[b];
    const int64_t a0 = b * p.a_sb + y * p.a_sh + x0 * p.a_sw;
#pragma unroll
    for (int j = 0; j < 4; ++j) act[j] = j < n && is_active(load_attn(p.A, a0 + j * p.a_sw, p.a_type), tau);
  }
  const bool any_active = act[0] || act[1] || act[2] || act[3];
  const bool any_idle = !(act[0] && act[1] && act[2] && act[3]);
  for (int ch = 0; ch < p.C; ++ch) {
    float xv[4] = {}, cv[4] = {}, nv[4], r[4];
    if (any_active) load_row<kVec>(p.x0 + b * p.sx.b + ch * p.sx.c + y * p.sx.h + x0 * p.sx.w, p.sx.w, n, xv);
    if (any_idle) load_row<kVec>(p.c + b * p.sc.b + ch * p.sc.c + y * p.sc.h + x0 * p.sc.w, p.sc.w, n, cv);
    load_row<kVec>(p.noise + b * p.sn.b + ch * p.sn.c + y * p.sn.h + x0 * p.sn.w, p.sn.w, n, nv);
#pragma unroll
    for (int j = 0; j < 4; ++j) r[j] = q_sample_pixel(sa, s1, act[j] ? xv[j] : cv[j], nv[j]);
    store_row<kVec>(p.out + b * p.sy.b + ch * p.sy.c + y * p.sy.h + x0 * p.sy.w, p.sy.w, n, r);
  }
}

}  // namespace

at::Tensor masked_q_sample_cuda(const at::Tensor& x0, const at::Tensor& c, const at::Tensor& noise,
                                const std::optional<at::Tensor>& A_opt, const at::Tensor& sqrt_ab,
                                const at::Tensor& sqrt_1m_ab, const at::Tensor& tau) {
  const char* op = "yoda::masked_q_sample";
  constexpr Backend be = Backend::kCUDA;
  const at::Tensor A = checked_q_sample_args(op, be, x0, c, noise, A_opt);
  const int64_t B = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  TORCH_CHECK(B <= kMaxGridYZ && (H + kRowsY - 1) / kRowsY <= kMaxGridYZ, op, ": x0 of shape ", shape(x0),
              " is too large for the grid");
  TORCH_CHECK(C <= INT32_MAX && W <= INT32_MAX, op, ": x0 of shape ", shape(x0),  // p.C, p.H, p.W are int
              " has a side of 2^31 or more");
  const c10::cuda::CUDAGuard guard(x0.device());
  const at::Tensor sa = per_batch(op, be, "sqrt_ab", sqrt_ab, x0);
  const at::Tensor s1 = per_batch(op, be, "sqrt_1m_ab", sqrt_1m_ab, x0);
  const at::Tensor tau_f = per_batch(op, be, "tau", tau, x0);
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(output_format(x0)));
  if (out.numel() == 0) return out;
  const bool vec = W % 4 == 0 && vec4_ok(x0) && vec4_ok(c) && vec4_ok(noise) && vec4_ok(out);
  const dim3 block(kQuadsX, kRowsY);
  const dim3 grid(static_cast<unsigned>((W + 4 * kQuadsX - 1) / (4 * kQuadsX)),
                  static_cast<unsigned>((H + kRowsY - 1) / kRowsY), static_cast<unsigned>(B));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float3(x0.scalar_type(), op, [&](auto state_tag) {
    using T = decltype(state_tag);
    {
      QParams<T> p{};
      p.x0 = x0.const_data_ptr<T>();
      p.c = c.const_data_ptr<T>();
      p.noise = noise.const_data_ptr<T>();
      p.out = out.mutable_data_ptr<T>();
      if (A.defined()) {
        p.A = A.const_data_ptr();
        p.a_type = attn_type(A);
        p.a_sb = A.stride(0), p.a_sh = A.stride(-2), p.a_sw = A.stride(-1);
      }
      p.sa = sa.const_data_ptr<float>(), p.s1 = s1.const_data_ptr<float>(), p.tau = tau_f.const_data_ptr<float>();
      p.sx = strides_of(x0), p.sc = strides_of(c), p.sn = strides_of(noise), p.sy = strides_of(out);
      p.C = static_cast<int>(C), p.H = static_cast<int>(H), p.W = static_cast<int>(W);
      if (vec)
        masked_q_sample_kernel<T, true><<<grid, block, 0, stream>>>(p);
      else
        masked_q_sample_kernel<T, false><<<grid, block, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(yoda, CUDA, m) { m.impl("masked_q_sample", &masked_q_sample_cuda); }

}  // namespace cuda
}  // namespace yoda
