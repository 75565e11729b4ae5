// Block evaluation of the noise stream (csrc/cpu/normals.h): SIMD Philox words and a vectorisable float32
// Box-Muller that rounds like the scalar reference of csrc/philox.h.
//
// Why double. The reference rounds to float32 after each operation: th = fl(2 pi_f u2), L = fl(log u1),
// fl(-2 L), r = fl(sqrt(.)), fl(cos th), fl(sin th), fl(r cos), fl(r sin). Multiplications and sqrt are
// float32 vector instructions and already correctly rounded. For log, cos and sin we evaluate the exact
// function of the float32 argument in double precision, with a relative error below 2^-50, and round the
// double once to float32. That result equals the correctly rounded float32 value unless the exact value is
// within 2^-50 (relative) of a float32 rounding midpoint -- a chance of about 2^-26 per call -- and the
// correctly rounded value is also what glibc's logf / cosf / sinf return on all but very rare arguments
// (they are < 1 ulp accurate). Polynomials in float32 would need ~2^-30 accuracy to do the same, which float
// cannot give; in double they are short and branch-free, so GCC vectorises the whole loop at -O3 without
// -ffast-math (no libm calls, only +, -, *, /, sqrt, conversions, integer and bit operations).
//
// log u1, u1 in [1e-7, 1) (float32, normal):
//     u1 = 2^k z with z in [sqrt(1/2), sqrt(2))     exponent split on the float bits, exact
//     log u1 = k ln 2 + log z,   log z = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ... + s^19/19),  s = (z-1)/(z+1)
// |s| <= 0.1716, s^2 <= 0.0295: the first omitted term is < 2^-55 of the sum. z - 1 is exact in double;
// k ln2 and log z have the same sign or |k ln 2| >= 2 |log z|, so the sum loses no relative accuracy.
//
// cos th, sin th, th in [0, 2 pi_f] (float32):
//     q = rint(th * 2/pi) in {0..4},  x = (th - q P1) - q P2,  |x| <= pi/4 (+ 1e-15)
// P1 = pi/2 to 33 bits, so q P1 (36 bits) and th - q P1 (bits from 2^2 down to 2^-32) are exact in double;
// P2 = fl64(pi/2 - P1), the reduction error is < 2^-80 absolute, while a float32 th is never closer than
// ~1e-9 to a multiple of pi/2 in this range. Then Taylor series (with |x| <= pi/4):
//     S = sin x = x - x^3/3! + ... - x^15/15!        first omitted term < 2^-53 of S
//     C = cos x = 1 - x^2/2! + ... + x^16/16!        first omitted term < 2^-58 of C
// and by quadrant (q mod 4): (cos th, sin th) = (C, S), (-S, C), (-C, -S), (S, -C) -- a swap on bit 0 of q
// and sign flips on bits of q and q + 1, done with 64-bit integer masks (no branches).
#include "cpu/normals.h"

#include <cmath>
#include <cstring>

#include "philox.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(YODA_NO_TARGET_CLONES)
#define YODA_NOISE_CLONES __attribute__((target_clones("avx2", "default")))
#define YODA_HAVE_NOISE_CLONES 1
#include <immintrin.h>
#else
#define YODA_NOISE_CLONES
#define YODA_HAVE_NOISE_CLONES 0
#endif

namespace yoda {

namespace {

// The bits of a float / double as an integer of the same size and back (std::bit_cast before C++20).
template <typename To, typename From>
inline To bits(From v) {
  static_assert(sizeof(To) == sizeof(From), "bits: sizes differ");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

constexpr double fact(int n) { return n <= 1 ? 1.0 : n * fact(n - 1); }  // exact up to 18!

constexpr uint32_t kSqrtHalfBits = 0x3f3504f3u;  // float32 nearest sqrt(1/2): z's lower bound
constexpr double kLn2 = 0.6931471805599453094;
constexpr double kTwoOverPi = 0.63661977236758134308;
constexpr double kPio2Hi = 1.57079632673412561417e+00;  // pi/2 to 33 bits: 0x3FF921FB54400000
constexpr double kPio2Lo = 6.07710050650619224932e-11;  // pi/2 - kPio2Hi, rounded to double
constexpr double kRoundMagic = 6755399441055744.0;       // 1.5 * 2^52: x + M - M = rint(x) for |x| < 2^51

}  // namespace

#if YODA_HAVE_NOISE_CLONES
// Philox over 8 counters per __m256i, state as 8 uint32 lanes. _mm256_mul_epu32 multiplies the even 32-bit
// lanes into 64-bit products, so each 32x32 -> 64 product of all 8 lanes is two multiplies (even lanes, and
// odd lanes shifted down) whose high / low halves are merged back by 32-bit blends. GCC does not find this on
// its own (it widens, multiplies and re-packs every round, no faster than scalar code), hence intrinsics.
__attribute__((target("avx2"))) static int64_t philox_block_avx2(uint32_t seed, uint32_t step, uint32_t g0, int64_t n,
                                                                 uint32_t* w0, uint32_t* w1, uint32_t* w2,
                                                                 uint32_t* w3) {
  const __m256i ma = _mm256_set1_epi64x(kPhiloxRoundA), mb = _mm256_set1_epi64x(kPhiloxRoundB);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(g0 + static_cast<uint32_t>(i))), lane);
    __m256i c1 = _mm256_setzero_si256(), c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = seed, k1 = step;
    for (int r = 0; r < kPhiloxRounds; ++r) {
      // (hi, lo) of kPhiloxRoundB * c2 and kPhiloxRoundA * c0, lane by lane
      const __m256i pb_even = _mm256_mul_epu32(c2, mb), pb_odd = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), mb);
      const __m256i pa_even = _mm256_mul_epu32(c0, ma), pa_odd = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), ma);
      const __m256i hi_b = _mm256_blend_epi32(_mm256_srli_epi64(pb_even, 32), pb_odd, 0xAA);
      const __m256i lo_b = _mm256_blend_epi32(pb_even, _mm256_slli_epi64(pb_odd, 32), 0xAA);
      const __m256i hi_a = _mm256_blend_epi32(_mm256_srli_epi64(pa_even, 32), pa_odd, 0xAA);
      const __m256i lo_a = _mm256_blend_epi32(pa_even, _mm256_slli_epi64(pa_odd, 32), 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c1 = lo_b;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c3 = lo_a;
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + i), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + i), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + i), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + i), c3);
  }
  return i;  // the first counter left to the scalar loop
}
#endif

void philox_block(uint32_t seed, uint32_t step, uint32_t g0, int64_t n, uint32_t* w0, uint32_t* w1, uint32_t* w2,
                  uint32_t* w3) {
  int64_t i = 0;
#if YODA_HAVE_NOISE_CLONES
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) i = philox_block_avx2(seed, step, g0, n, w0, w1, w2, w3);
#endif
  for (; i < n; ++i) {  // the reference function itself (also the whole block without AVX2)
    const Philox4 r = philox_yoda(seed, step, g0 + static_cast<uint32_t>(i));
    w0[i] = r.v[0];
    w1[i] = r.v[1];
    w2[i] = r.v[2];
    w3[i] = r.v[3];
  }
}

// The loop of box_muller_block, inlined into each of its clones and into box_muller_block_baseline.
__attribute__((always_inline)) static inline void box_muller_loop(const uint32_t* __restrict__ a,
                                                                  const uint32_t* __restrict__ b, int64_t m,
                                                                  float* __restrict__ zc, float* __restrict__ zs) {
  // Coefficients of the series above (1/(2j+1) for atanh; +-1/j! for sin and cos), rounded to double.
  constexpr double L3 = 1.0 / 3, L5 = 1.0 / 5, L7 = 1.0 / 7, L9 = 1.0 / 9, L11 = 1.0 / 11, L13 = 1.0 / 13,
                   L15 = 1.0 / 15, L17 = 1.0 / 17, L19 = 1.0 / 19;
  constexpr double S3 = -1 / fact(3), S5 = 1 / fact(5), S7 = -1 / fact(7), S9 = 1 / fact(9), S11 = -1 / fact(11),
                   S13 = 1 / fact(13), S15 = -1 / fact(15);
  constexpr double C2 = -1 / fact(2), C4 = 1 / fact(4), C6 = -1 / fact(6), C8 = 1 / fact(8), C10 = -1 / fact(10),
                   C12 = 1 / fact(12), C14 = -1 / fact(14), C16 = 1 / fact(16);
  for (int64_t i = 0; i < m; ++i) {
    // Triton's uint_to_uniform_float, written without a branch: s ^ (s >> 31) == (s < 0 ? ~s : s).
    int32_t s1 = static_cast<int32_t>(a[i]), s2 = static_cast<int32_t>(b[i]);
    s1 ^= s1 >> 31;
    s2 ^= s2 >> 31;
    // u1 = max(u1, 1e-7f) on the bits (both non-negative, so the integer order is the float order); a float
    // select here lets GCC thread a branch for the constant case and give up vectorising.
    const uint32_t iu0 = bits<uint32_t>(static_cast<float>(s1) * kUniformScale), imin = bits<uint32_t>(kMinUniform);
    const uint32_t iu = iu0 < imin ? imin : iu0;
    const float u2 = static_cast<float>(s2) * kUniformScale;
    const float th = kTwoPi * u2;

    // L = fl(log u1)
    const uint32_t t = iu - kSqrtHalfBits;
    const int32_t k = static_cast<int32_t>(t) >> 23;          // u1 = 2^k z
    const float z = bits<float>(iu - (t & 0xff800000u));        // z in [sqrt(1/2), sqrt(2)), exact
    const double f = static_cast<double>(z) - 1.0;              // exact
    const double s = f / (2.0 + f), s2d = s * s;
    const double p =
        L3 + s2d * (L5 + s2d * (L7 + s2d * (L9 + s2d * (L11 + s2d * (L13 + s2d * (L15 + s2d * (L17 + s2d * L19)))))));
    const double two_s = 2.0 * s;
    const double logz = two_s + two_s * (s2d * p);
    const float L = static_cast<float>(static_cast<double>(k) * kLn2 + logz);
    const float r = std::sqrt(-2.0f * L);

    // fl(cos th), fl(sin th)
    const double td = static_cast<double>(th);
    const double qm = td * kTwoOverPi + kRoundMagic;  // q in the low mantissa bits
    const uint64_t q = bits<uint64_t>(qm);
    const double qd = qm - kRoundMagic;
    const double x = (td - qd * kPio2Hi) - qd * kPio2Lo;
    const double x2 = x * x;
    const double ps = S3 + x2 * (S5 + x2 * (S7 + x2 * (S9 + x2 * (S11 + x2 * (S13 + x2 * S15)))));
    const double pc = C2 + x2 * (C4 + x2 * (C6 + x2 * (C8 + x2 * (C10 + x2 * (C12 + x2 * (C14 + x2 * C16))))));
    const double S = x + x * (x2 * ps);
    const double C = 1.0 + x2 * pc;
    const uint64_t swap = 0 - (q & 1);  // all ones for odd q: cos th = +-S, sin th = +-C
    const uint64_t cbits = bits<uint64_t>(C), sbits = bits<uint64_t>(S);
    const uint64_t cb = (cbits & ~swap) | (sbits & swap), sb = (sbits & ~swap) | (cbits & swap);
    const double cos_th = bits<double>(cb ^ (((q + 1) & 2) << 62));  // negative for q mod 4 in {1, 2}
    const double sin_th = bits<double>(sb ^ ((q & 2) << 62));        // negative for q mod 4 in {2, 3}
    zc[i] = r * static_cast<float>(cos_th);
    zs[i] = r * static_cast<float>(sin_th);
  }
}

YODA_NOISE_CLONES
void box_muller_block(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs) {
  box_muller_loop(a, b, m, zc, zs);
}

void box_muller_block_baseline(const uint32_t* a, const uint32_t* b, int64_t m, float* zc, float* zs) {
  box_muller_loop(a, b, m, zc, zs);
}

const char* normals_isa() {
#if YODA_HAVE_NOISE_CLONES
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? "avx2" : "default";
#else
  return "default";
#endif
}

}  // namespace yoda
