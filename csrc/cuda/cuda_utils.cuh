// Helpers shared by the CUDA kernels of csrc/cuda/*.cu: vector-path checks, the attention dtype tag, 4-wide
// vector loads / stores. Argument checks, dtype dispatch, strides and the output layout come from
// csrc/common.h, per-element math and the noise stream from csrc/step.h and csrc/philox.h, all shared with
// the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>

#include "common.h"
#include "step.h"

namespace yoda {
namespace cuda {

constexpr int64_t kMaxGridYZ = 65535;  // CUDA's limit on gridDim.y and gridDim.z

// True when 4 consecutive elements along W of t are one aligned vector for every (b, c, y, 4k):
// unit W-stride, other strides multiples of 4 and a data pointer aligned to 4 elements. W % 4 == 0 is
// checked by the caller (it is a property of the shape, shared by all tensors).
inline bool vec4_ok(const at::Tensor& t) {
  const auto s = strides_of(t);
  const auto align = static_cast<uintptr_t>(4 * t.element_size());
  return s.w == 1 && s.h % 4 == 0 && s.c % 4 == 0 && s.b % 4 == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % align == 0;
}

// The attention map's dtype, dispatched at run time inside the kernels (A is read only in mixed tiles, so a
// branch there is cheaper than tripling the kernel instantiations and the build time).
enum AttnType : int { kAttnFloat = 0, kAttnHalf = 1, kAttnBFloat16 = 2 };

inline AttnType attn_type(const at::Tensor& A) {
  switch (A.scalar_type()) {
    case at::kHalf: return kAttnHalf;
    case at::kBFloat16: return kAttnBFloat16;
    default: return kAttnFloat;  // check_attention has rejected every other dtype
  }
}

// ---- device side -------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float to_f32(T v) {
  return static_cast<float>(v);
}

// Element `off` of the attention map as float32.
__device__ __forceinline__ float load_attn(const void* A, int64_t off, int type) {
  if (type == kAttnHalf) return static_cast<float>(static_cast<const c10::Half*>(A)[off]);
  if (type == kAttnBFloat16) return static_cast<float>(static_cast<const c10::BFloat16*>(A)[off]);
  return static_cast<const float*>(A)[off];
}

// Four consecutive elements, 16 bytes (fp32) or 8 bytes (fp16 / bf16) in one load, streaming through the cache
// (every byte is used once: __ldcs / __stcs mark the lines evict-first).
template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&v)[4]) {
  if constexpr (sizeof(T) == 4) {
    const float4 r = __ldcs(reinterpret_cast<const float4*>(p));
    v[0] = r.x, v[1] = r.y, v[2] = r.z, v[3] = r.w;
  } else {
    const uint2 r = __ldcs(reinterpret_cast<const uint2*>(p));
    T h[4];
    memcpy(h, &r, sizeof(r));
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = to_f32(h[j]);
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const float (&v)[4]) {
  if constexpr (sizeof(T) == 4) {
    __stcs(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
  } else {
    T h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = static_cast<T>(v[j]);  // round to nearest even (c10::Half / BFloat16)
    uint2 r;
    memcpy(&r, h, sizeof(r));
    __stcs(reinterpret_cast<uint2*>(p), r);
  }
}

// Up to four elements at stride s (any layout, e.g. channels-last), n of them inside the image.
template <typename T>
__device__ __forceinline__ void load_n(const T* p, int64_t s, int n, float (&v)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = j < n ? to_f32(p[j * s]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ void store_n(T* p, int64_t s, int n, const float (&v)[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (j < n) p[j * s] = static_cast<T>(v[j]);
}

template <bool kVec, typename T>
__device__ __forceinline__ void load_row(const T* p, int64_t s, int n, float (&v)[4]) {
  if constexpr (kVec)
    load4(p, v);
  else
    load_n(p, s, n, v);
}

template <bool kVec, typename T>
__device__ __forceinline__ void store_row(T* p, int64_t s, int n, const float (&v)[4]) {
  if constexpr (kVec)
    store4(p, v);
  else
    store_n(p, s, n, v);
}

}  // namespace cuda
}  // namespace yoda
