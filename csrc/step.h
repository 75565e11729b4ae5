// Per-element math of one YODA reverse step (DESIGN.md §5) and of the masked forward noising (§7),
// header-only, host and CUDA device (no ATen). The contract is yoda_kernels/contract.py (the coefficients'
// names and order, the float32 operation order) and yoda_kernels/naive.py its executable form: with
// fp-contract off (host) / --fmad=false (nvcc), a kernel using these functions matches the reference bit for
// bit on the same noise. tests/test_contract.py checks that StepCoefs and CombineCoefs below mirror
// contract.StepCoefs and contract.CombineCoefs.
//
//   x0  = k1 * x + k2 * out                   (clamped to [-1, 1] if clip)
//   eps = e1 * x + e2 * out
//   sr  = ((cx0 * x0 + cx * x) + ceps * eps) + sigma * z
//   lr  = la * c + lb * z
//   x'  = sr where A >= tau else lr
#pragma once

#include "philox.h"

namespace yoda {

constexpr int kNumCoefs = 10;

// The ten step coefficients (yoda_kernels.contract.StepCoefs, same names, same order), rounded to float32 once
// (as the reference's torch.tensor(v, dtype=float32) does).
struct StepCoefs {
  float k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb;
};

// c: kNumCoefs doubles in the order of the struct's fields (contract.COEF_NAMES).
YODA_HD StepCoefs make_step_coefs(const double* c) {
  StepCoefs k;
  k.k1 = static_cast<float>(c[0]);
  k.k2 = static_cast<float>(c[1]);
  k.e1 = static_cast<float>(c[2]);
  k.e2 = static_cast<float>(c[3]);
  k.cx0 = static_cast<float>(c[4]);
  k.cx = static_cast<float>(c[5]);
  k.ceps = static_cast<float>(c[6]);
  k.sigma = static_cast<float>(c[7]);
  k.la = static_cast<float>(c[8]);
  k.lb = static_cast<float>(c[9]);
  return k;
}

// Noise is drawn only if a branch uses it (coefs[7] or coefs[9] nonzero); otherwise z = 0 is exact.
YODA_HD bool step_needs_noise(const StepCoefs& k) { return k.sigma != 0.0f || k.lb != 0.0f; }

// torch.clamp(v, -1, 1): NaN stays NaN (fminf/fmaxf would drop it).
YODA_HD float clamp_unit(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }

// The sampler branch ("sr") of an active pixel: x = x_t, out = model output, z = its normal.
YODA_HD float step_sr(const StepCoefs& k, float x, float out, float z, bool clip) {
  float x0 = k.k1 * x + k.k2 * out;
  if (clip) x0 = clamp_unit(x0);
  const float eps = k.e1 * x + k.e2 * out;
  return k.cx0 * x0 + k.cx * x + k.ceps * eps + k.sigma * z;
}

// The LR branch ("lr") of an inactive pixel: c held at t_prev's noise level.
YODA_HD float step_lr(const StepCoefs& k, float c, float z) { return k.la * c + k.lb * z; }

// Pixel active at threshold tau (both float32; A == tau counts as active; NaN A is never active).
YODA_HD bool is_active(float a, float tau) { return a >= tau; }

// A whole pixel: sr where active, lr elsewhere.
YODA_HD float step_pixel(const StepCoefs& k, float x, float out, float c, float z, bool active, bool clip) {
  return active ? step_sr(k, x, out, z, clip) : step_lr(k, c, z);
}

// ---- masked_combine: the fused update of the multistep / SDE solvers (contract.CombineCoefs) -------------------
//
//   sr  = (((cx * x + cd0 * d0) + cd1 * d1) + cd2 * d2) + sigma * z      (terms of absent d1 / d2 not added)
//   lr  = la * c + lb * z
//   x'  = sr where A >= tau else lr

constexpr int kNumCombineCoefs = 7;
constexpr int kMaxHistory = 3;  // d0, d1, d2 (contract.MAX_HISTORY)

// The seven combine coefficients (yoda_kernels.contract.CombineCoefs, same names, same order), rounded to
// float32 once.
struct CombineCoefs {
  float cx, cd0, cd1, cd2, sigma, la, lb;
};

// c: kNumCombineCoefs doubles in the order of the struct's fields (contract.COMBINE_COEF_NAMES).
YODA_HD CombineCoefs make_combine_coefs(const double* c) {
  CombineCoefs k;
  k.cx = static_cast<float>(c[0]);
  k.cd0 = static_cast<float>(c[1]);
  k.cd1 = static_cast<float>(c[2]);
  k.cd2 = static_cast<float>(c[3]);
  k.sigma = static_cast<float>(c[4]);
  k.la = static_cast<float>(c[5]);
  k.lb = static_cast<float>(c[6]);
  return k;
}

YODA_HD bool combine_needs_noise(const CombineCoefs& k) { return k.sigma != 0.0f || k.lb != 0.0f; }

// The solver branch of an active pixel with nd denoised estimates (1..3; d1 / d2 are not read beyond nd). The
// sigma term is added even when z = 0 (no noise drawn), as the reference does: -0 + 0 is +0.
YODA_HD float combine_sr(const CombineCoefs& k, float x, float d0, float d1, float d2, float z, int nd) {
  float s = k.cx * x + k.cd0 * d0;
  if (nd > 1) s = s + k.cd1 * d1;
  if (nd > 2) s = s + k.cd2 * d2;
  return s + k.sigma * z;
}

YODA_HD float combine_lr(const CombineCoefs& k, float c, float z) { return k.la * c + k.lb * z; }

// A whole pixel: sr where active, lr elsewhere.
YODA_HD float combine_pixel(const CombineCoefs& k, float x, float d0, float d1, float d2, float c, float z, int nd,
                            bool active) {
  return active ? combine_sr(k, x, d0, d1, d2, z, nd) : combine_lr(k, c, z);
}

// Training-time noising (masked_q_sample): sqrt_ab * base + sqrt_1m_ab * noise, where the caller picks
// base = x0 for an active pixel and c elsewhere (so that it can read only the tensor it needs).
YODA_HD float q_sample_pixel(float sqrt_ab, float sqrt_1m_ab, float base, float noise) {
  return sqrt_ab * base + sqrt_1m_ab * noise;
}

// NaN-propagating max / min (as torch.amax / amin) for tile_stats: once the running value is NaN it stays NaN
// (v > NaN and v < NaN are false), so the caller can reject an A holding NaN.
YODA_HD float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }
YODA_HD float min_nan(float m, float v) { return (v < m || v != v) ? v : m; }

// Tile classes of DESIGN.md §8 at threshold tau, from the tile's max and min of A.
enum TileKind : int { kTileInactive = 0, kTileMixed = 1, kTileFull = 2 };

YODA_HD TileKind classify_tile(float tile_max, float tile_min, float tau) {
  // A NaN in the tile (its stats are NaN; only direct calls of the ops reach here, the public ones refuse it):
  // each pixel decides, as in the reference, where only the NaN pixel is inactive
  if (tile_max != tile_max) return kTileMixed;
  if (!(tile_max >= tau)) return kTileInactive;  // no pixel with A >= tau: x and model_out are not read
  if (tile_min >= tau) return kTileFull;         // every pixel active: A is not read
  return kTileMixed;
}

}  // namespace yoda
