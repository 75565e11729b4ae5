// Host-side helpers shared by the CPU kernels (csrc/cpu/*.cpp) and the CUDA launchers (csrc/cuda/*.cu):
// argument checks, dtype dispatch, strides and the output memory format. ATen only, no device code: the
// per-element math (host and device) is in csrc/step.h, the CUDA-only device helpers in csrc/cuda/cuda_utils.cuh.
//
// Messages read "<op>: <argument> ..." (op e.g. "yoda::masked_step") so that every error names the argument;
// a device error says which backend's kernel refused the tensor, "<op> (CPU): ..." / "<op> (CUDA): ...".
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "step.h"

namespace yoda {

// Numbers and shapes in messages are text made here, never streamed: on the lent H200 (torch 2.11.0+cu130, the
// extension built with the machine's /opt/gcc, 2026-12-04) every check whose message streamed an integer or a
// double into c10::str crashed the process (SIGSEGV), while messages of strings, devices and dtypes were raised;
// std::to_string and snprintf do not go through the stream's number formatting.
inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string num(double v) {  // as an ostream prints it by default (%g, 6 significant digits)
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

template <typename T>
std::string nums(c10::ArrayRef<T> values) {  // "[1, 2, 3]", as c10 prints an ArrayRef
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + num(values[i]);
  return out + "]";
}

inline std::string shape(const at::Tensor& t) { return nums(t.sizes()); }

// The backend whose kernel checks its arguments: it decides where the tensors must live.
enum class Backend { kCPU, kCUDA };

struct Strides4 {
  int64_t b, c, h, w;
};

inline Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// The dtypes the ops accept for state tensors and the attention map.
inline bool is_float3(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// Calls f(T{}) for T in {float, c10::Half, c10::BFloat16} matching t (every other dtype was rejected before).
template <typename F>
void dispatch_float3(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t);
  }
}

// naive.py's output layout: channels-last only for a channels-last (and not also contiguous) input.
inline at::MemoryFormat output_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

// ---- argument checks -----------------------------------------------------------------------------------------

// tile in {8, 16, 32}: a multiple of 4 (one Philox group of rows) that divides a CUDA warp.
inline void check_tile(int64_t tile) {
  TORCH_CHECK(tile == 8 || tile == 16 || tile == 32, "yoda: tile must be one of (8, 16, 32), got ", num(tile));
}

// An attention map: (B, 1, H, W) or (B, H, W), fp32/fp16/bf16 (device and size checked by the op).
constexpr int64_t kMaxSide = int64_t(1) << 31;  // the Python layer's limit too (checks.check_sides)

inline void check_attention(const at::Tensor& A, const char* name) {
  TORCH_CHECK(A.dim() == 3 || (A.dim() == 4 && A.size(1) == 1), "yoda: ", name,
              " must be (B, 1, H, W) or (B, H, W), got ", shape(A));
  TORCH_CHECK(A.size(-2) < kMaxSide && A.size(-1) < kMaxSide, "yoda: ", name, " has a side of 2**31 or more, got ",
              shape(A), "; the kernels take less");
  TORCH_CHECK(is_float3(A.scalar_type()), "yoda: ", name, " must be float32, float16 or bfloat16, got ",
              A.scalar_type());
}

// A's batch and spatial sizes match the state's (B, H, W).
inline void check_attention_size(const char* op, const at::Tensor& A, int64_t B, int64_t H, int64_t W) {
  TORCH_CHECK(A.size(0) == B && A.size(-2) == H && A.size(-1) == W, op, ": A must be (", num(B), ", 1, ",
              num(H), ", ", num(W), ") or (", num(B), ", ", num(H), ", ", num(W), "), got ", shape(A));
}

// t lives where the backend's kernel reads it: on the CPU, or on some CUDA device.
inline void check_on_backend(const char* op, Backend be, const char* name, const at::Tensor& t) {
  if (be == Backend::kCPU) {
    TORCH_CHECK(t.device().is_cpu(), op, " (CPU): ", name, " must be on the CPU, got ", t.device());
  } else {
    TORCH_CHECK(t.is_cuda(), op, " (CUDA): ", name, " must be a CUDA tensor, got ", t.device());
  }
}

// t is on ref's device (ref_name names ref in the message).
inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
}

// An auxiliary input (A, tile stats, per-batch vectors) of an op whose first input ref has passed check_state:
// on the CPU for the CPU kernel, on ref's device for the CUDA kernel.
inline void check_device(const char* op, Backend be, const char* name, const at::Tensor& t, const at::Tensor& ref,
                         const char* ref_name) {
  if (be == Backend::kCPU) {
    check_on_backend(op, be, name, t);
  } else {
    check_same_device(op, name, t, ref, ref_name);
  }
}

// A state tensor (x, model_out, c, noise, x0): 4-D, fp32/fp16/bf16, on the backend (CUDA: on ref's device),
// with the shape and dtype of the op's first input ref, named ref_name in the CPU kernels' messages (the CUDA
// kernels' messages say "the first input").
inline void check_state(const char* op, Backend be, const char* name, const at::Tensor& t, const at::Tensor& ref,
                        const char* ref_name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (B, C, H, W), got shape ", shape(t));
  // before any (H + tile - 1) / tile: a side near 2**63 (an expanded empty tensor) overflowed it (UB)
  TORCH_CHECK(t.size(2) < kMaxSide && t.size(3) < kMaxSide, op, ": ", name, " has a side of 2**31 or more, got ",
              shape(t), "; the kernels take less");
  TORCH_CHECK(is_float3(t.scalar_type()), op, ": ", name, " must be float32, float16 or bfloat16, got ",
              t.scalar_type());
  check_on_backend(op, be, name, t);
  if (be == Backend::kCPU) {
    TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ", shape(ref),
                ", got ", shape(t));
    TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
                ref_name, " has ", ref.scalar_type());
  } else {
    check_same_device(op, name, t, ref, "the first input");
    TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have shape ", shape(ref), ", got ", shape(t));
    TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                " but the first input has ", ref.scalar_type());
  }
}

// tile_max / tile_min given to masked_step: float32 (B, TY, TX) = tile_stats(A, tile) on x's device; returned
// contiguous (the kernels index them as such).
inline at::Tensor checked_stats(const char* op, Backend be, const char* name, const at::Tensor& t,
                                const at::Tensor& x, int64_t TY, int64_t TX, int64_t tile) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  check_device(op, be, name, t, x, "x");
  const int64_t B = x.size(0);
  TORCH_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == TY && t.size(2) == TX, op, ": ", name,
              " must have shape (", num(B), ", ", num(TY), ", ", num(TX), ") = tile_stats(A, ", num(tile), "), got ",
              shape(t));
  return t.contiguous();
}

// An op's optional A, checked against its first input ref (named ref_name): undefined when A is absent.
inline at::Tensor checked_attention(const char* op, Backend be, const std::optional<at::Tensor>& A_opt,
                                    const at::Tensor& ref, const char* ref_name) {
  if (!A_opt.has_value()) return at::Tensor();
  const at::Tensor& A = *A_opt;
  check_attention(A, "A");
  check_device(op, be, "A", A, ref, ref_name);
  check_attention_size(op, A, ref.size(0), ref.size(2), ref.size(3));
  return A;
}

// masked_step's optional A with its tile stats: checks A, then takes the given (tile_max, tile_min) or computes
// them with ``stats_fn`` (the backend's tile_stats). Leaves all three undefined when A is absent.
template <typename StatsFn>
inline void checked_attention_and_stats(const char* op, Backend be, const std::optional<at::Tensor>& A_opt,
                                        const std::optional<at::Tensor>& tile_max_opt,
                                        const std::optional<at::Tensor>& tile_min_opt, const at::Tensor& x,
                                        int64_t TY, int64_t TX, int64_t tile, StatsFn stats_fn, at::Tensor& A,
                                        at::Tensor& tmax, at::Tensor& tmin) {
  A = checked_attention(op, be, A_opt, x, "x");
  if (!A.defined()) return;
  TORCH_CHECK(tile_max_opt.has_value() == tile_min_opt.has_value(), op,
              ": give both tile_max and tile_min or neither");
  if (tile_max_opt.has_value()) {
    tmax = checked_stats(op, be, "tile_max", *tile_max_opt, x, TY, TX, tile);
    tmin = checked_stats(op, be, "tile_min", *tile_min_opt, x, TY, TX, tile);
  } else {
    std::tie(tmax, tmin) = stats_fn(A, tile);
  }
}

// A (B,) vector of masked_q_sample (sqrt_ab, sqrt_1m_ab, tau) for first input x0, as contiguous float32 (the
// reference uses .float() of these vectors).
inline at::Tensor per_batch(const char* op, Backend be, const char* name, const at::Tensor& t, const at::Tensor& x0) {
  const int64_t B = x0.size(0);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a float tensor, got ", t.scalar_type());
  check_device(op, be, name, t, x0, "x0");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, op, ": ", name, " must have shape (", num(B), "), got ", shape(t));
  return t.to(at::kFloat).contiguous();
}

// tau and coefs as the schemas pass them, Scalar and Scalar[] (yoda_kernels/ops.py: a custom op's float argument
// is specialised by torch.compile, so a compiled loop recompiled at every new value), read as doubles; a complex or
// bool one is refused (the Python entry points pass floats).
inline double real_scalar(const char* op, const char* name, const at::Scalar& s) {
  TORCH_CHECK(!s.isComplex() && !s.isBoolean(), op, ": ", name, " must be real, got a ",
              s.isComplex() ? "complex" : "bool");
  return s.toDouble();
}
inline std::vector<double> real_scalars(const char* op, const char* name, at::ArrayRef<at::Scalar> v) {
  std::vector<double> out;
  out.reserve(v.size());
  for (const at::Scalar& s : v) out.push_back(real_scalar(op, name, s));
  return out;
}

// What masked_step and masked_combine share beyond their state tensors (x checked first): the tile size, tau, the
// n_coefs coefficients, seed and step, the size limit of the noise counter (philox.h: 32-bit) and the explicit
// noise when given.
inline void check_masked_common(const char* op, Backend be, const at::Tensor& x,
                                const std::optional<at::Tensor>& noise, double tau, at::ArrayRef<double> coefs,
                                int n_coefs, int64_t seed, int64_t step, int64_t tile) {
  check_tile(tile);
  TORCH_CHECK(!std::isnan(tau), op, ": tau must not be NaN");
  TORCH_CHECK(static_cast<int64_t>(coefs.size()) == n_coefs, op, ": coefs must hold ", num(int64_t{n_coefs}),
              " floats, got ", num(static_cast<int64_t>(coefs.size())));
  for (double v : coefs) TORCH_CHECK(std::isfinite(v), op, ": coefs must be finite, got ", nums(coefs));
  TORCH_CHECK(seed >= 0 && seed <= 0xFFFFFFFFLL, op, ": seed must be in [0, 2**32 - 1], got ", num(seed));
  TORCH_CHECK(step >= 0 && step <= 0x7FFFFFFFLL, op, ": step must be in [0, 2**31 - 1], got ", num(step));
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(B * C * ((H + 3) / 4) * W < (int64_t(1) << 31), op, ": x of shape ", shape(x),
              " is too large for the 32-bit noise counter");
  if (noise.has_value()) check_state(op, be, "noise", *noise, x, "x");
}

// masked_step's arguments but A and its tile stats: the state tensors (and the explicit noise when given), the
// tile size, the scalars and the size limit of the noise counter.
inline void check_step_args(const char* op, Backend be, const at::Tensor& x, const at::Tensor& model_out,
                            const at::Tensor& c, const std::optional<at::Tensor>& noise, double tau,
                            at::ArrayRef<double> coefs, int64_t seed, int64_t step, int64_t tile) {
  check_state(op, be, "x", x, x, "x");
  check_state(op, be, "model_out", model_out, x, "x");
  check_state(op, be, "c", c, x, "x");
  check_masked_common(op, be, x, noise, tau, coefs, kNumCoefs, seed, step, tile);
}

// masked_combine's arguments but A and its tile stats; returns the number of denoised estimates (1..3). d2 only
// with d1, and the weight of an absent estimate (coefs cd1 / cd2) must be 0.
inline int check_combine_args(const char* op, Backend be, const at::Tensor& x, const at::Tensor& d0,
                              const std::optional<at::Tensor>& d1, const std::optional<at::Tensor>& d2,
                              const at::Tensor& c, const std::optional<at::Tensor>& noise, double tau,
                              at::ArrayRef<double> coefs, int64_t seed, int64_t step, int64_t tile) {
  check_state(op, be, "x", x, x, "x");
  check_state(op, be, "d0", d0, x, "x");
  TORCH_CHECK(d1.has_value() || !d2.has_value(), op, ": d2 is given without d1");
  if (d1.has_value()) check_state(op, be, "d1", *d1, x, "x");
  if (d2.has_value()) check_state(op, be, "d2", *d2, x, "x");
  check_state(op, be, "c", c, x, "x");
  check_masked_common(op, be, x, noise, tau, coefs, kNumCombineCoefs, seed, step, tile);
  const int nd = 1 + static_cast<int>(d1.has_value()) + static_cast<int>(d2.has_value());
  TORCH_CHECK(nd > 1 || coefs[2] == 0.0, op, ": coefs: cd1 = ", num(coefs[2]), " but d1 is not given");
  TORCH_CHECK(nd > 2 || coefs[3] == 0.0, op, ": coefs: cd2 = ", num(coefs[3]), " but d2 is not given");
  return nd;
}

// masked_q_sample's state tensors and optional A (returned; undefined when absent).
inline at::Tensor checked_q_sample_args(const char* op, Backend be, const at::Tensor& x0, const at::Tensor& c,
                                        const at::Tensor& noise, const std::optional<at::Tensor>& A_opt) {
  check_state(op, be, "x0", x0, x0, "x0");
  check_state(op, be, "c", c, x0, "x0");
  check_state(op, be, "noise", noise, x0, "x0");
  return checked_attention(op, be, A_opt, x0, "x0");
}

// tile_stats' arguments.
inline void check_tile_stats_args(Backend be, const at::Tensor& A, int64_t tile) {
  check_attention(A, "A");
  check_tile(tile);
  check_on_backend("yoda::tile_stats", be, "A", A);
}

}  // namespace yoda
