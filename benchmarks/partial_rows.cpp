// What reading only part of each row costs on this machine's memory, against reading every byte: the question
// behind issue 13's 50%-active CPU cell (RESULTS.md, "Forty-eighth session"). Not part of the pytest benchmarks
// (it times no yoda code); build and run it by hand, one thread:
//
//     g++ -O3 -march=native -ffast-math benchmarks/partial_rows.cpp -o /tmp/partial_rows && /tmp/partial_rows
//
// 1. One stream, 96 MiB (more than any L3 here): read all of it, or the first part of each row of R bytes (a
//    tile-aligned run of one class, as masked_step reads x and model_out only where tiles are active).
// 2. The step's shapes at 4x3x512^2 float32 (rows of 2 KiB), five 12 MiB tensors x, o, c, z, out:
//    lr (out = f(c, z) everywhere: 0% active), sr (out = g(x, o, z): 100%), split (left half lr, right half sr,
//    each row swept left to right: what the C++ kernel does at 50% with the left half inactive) and dense (every
//    pixel reads x, o, c and z and selects: what torch.compile of the reference does).
// Medians of 21 interleaved rounds in milliseconds; part 1's ratios are medians of per-round ratios to the whole
// read; part 2 compares split with the mean of lr and sr (what it would take if a half row cost half a row) and
// with dense.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Times the functions in `fns` in 21 interleaved rounds (the machine is shared: its load drifts), and returns each
// one's median time in ms and its median per-round ratio to fns[base].
struct Timed {
  std::vector<double> ms, ratio;
};
template <typename F>
Timed interleaved(const std::vector<F>& fns, size_t base) {
  constexpr int kRounds = 21;
  std::vector<std::vector<double>> t(fns.size()), r(fns.size());
  for (int round = 0; round < kRounds; ++round) {
    std::vector<double> now(fns.size());
    for (size_t i = 0; i < fns.size(); ++i) {
      const auto t0 = Clock::now();
      fns[i]();
      now[i] = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      t[i].push_back(now[i]);
    }
    for (size_t i = 0; i < fns.size(); ++i) r[i].push_back(now[i] / now[base]);
  }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  Timed out;
  for (size_t i = 0; i < fns.size(); ++i) {
    out.ms.push_back(median(t[i]));
    out.ratio.push_back(median(r[i]));
  }
  return out;
}

float* filled(long n) {
  float* p = static_cast<float*>(std::aligned_alloc(4096, n * sizeof(float)));
  for (long i = 0; i < n; ++i) p[i] = static_cast<float>(i % 7);
  return p;
}

volatile float sink;

// The sum of the first `part` floats of each row of `row` floats.
void read_rows(const float* a, long n, long row, long part) {
  float s = 0;
  for (long r = 0; r < n; r += row)
    for (long i = 0; i < part; ++i) s += a[r + i];
  sink = s;
}

constexpr long kB = 4, kC = 3, kH = 512, kW = 512, kN = kB * kC * kH * kW;

void lr(const float* __restrict c, const float* __restrict z, float* __restrict out, long n) {
  for (long i = 0; i < n; ++i) out[i] = 0.7f * c[i] + 0.2f * z[i];
}

void sr(const float* __restrict x, const float* __restrict o, const float* __restrict z, float* __restrict out,
        long n) {
  for (long i = 0; i < n; ++i) out[i] = 1.1f * x[i] - 0.3f * o[i] + 0.1f * z[i];
}

void dense(const float* __restrict x, const float* __restrict o, const float* __restrict c,
           const float* __restrict z, float* __restrict out, long n, long split) {
  for (long i = 0; i < n; ++i) {
    const float s = 1.1f * x[i] - 0.3f * o[i] + 0.1f * z[i], l = 0.7f * c[i] + 0.2f * z[i];
    out[i] = i < split ? l : s;
  }
}

}  // namespace

int main() {
  using Fn = std::function<void()>;
  const long n = 24L << 20;  // 96 MiB of float32
  const float* a = filled(n);
  std::vector<Fn> reads = {[&] { read_rows(a, n, n, n); }};
  std::vector<long> row_bytes, dens;
  for (long bytes : {2048L, 4096L, 8192L, 16384L})
    for (long den : {2L, 4L}) {
      row_bytes.push_back(bytes);
      dens.push_back(den);
      reads.push_back([&, bytes, den] { read_rows(a, n, bytes / 4, bytes / 4 / den); });
    }
  const Timed r = interleaved(reads, 0);
  std::printf("one stream, 96 MiB: all of it %.2f ms\n", r.ms[0]);
  for (size_t i = 0; i < row_bytes.size(); ++i)
    std::printf("  first 1/%ld of each %5ld-byte row: %.2f ms, %.2f x all, for %.2f of the bytes\n", dens[i],
                row_bytes[i], r.ms[i + 1], r.ratio[i + 1], 1.0 / dens[i]);

  float *x = filled(kN), *o = filled(kN), *c = filled(kN), *z = filled(kN), *out = filled(kN);
  const long half = kW / 2;
  const auto rows = [&](auto&& f) {
    for (long r = 0; r < kN; r += kW) f(r);
  };
  const std::vector<Fn> steps = {
      [&] { rows([&](long r) { lr(c + r, z + r, out + r, kW); }); },
      [&] { rows([&](long r) { sr(x + r, o + r, z + r, out + r, kW); }); },
      [&] {
        rows([&](long r) {
          lr(c + r, z + r, out + r, half);
          sr(x + r + half, o + r + half, z + r + half, out + r + half, kW - half);
        });
      },
      [&] { rows([&](long r) { dense(x + r, o + r, c + r, z + r, out + r, kW, half); }); }};
  const Timed s = interleaved(steps, 0);
  const double mean = (s.ms[0] + s.ms[1]) / 2;
  std::printf("step shapes, 4x3x512^2: lr %.2f ms, sr %.2f ms (mean %.2f)\n", s.ms[0], s.ms[1], mean);
  std::printf("  split (left half lr, right half sr): %.2f ms, %.2f x the mean, %.2f x dense\n", s.ms[2],
              s.ms[2] / mean, s.ms[2] / s.ms[3]);
  std::printf("  dense (every pixel reads all four):  %.2f ms, %.2f x the mean\n", s.ms[3], s.ms[3] / mean);
  return 0;
}
