// at::parallel_for for the CPU kernels, with as many threads as torch's intra-op pool (torch.set_num_threads).
// A GCC build shares torch's OpenMP runtime (libgomp). A clang build links its own (libomp), and at::parallel_for's
// inline "omp parallel" region (ATen/ParallelOpenMP.h) then runs on libomp's pool at libomp's size
// (OMP_NUM_THREADS, else every core): torch.set_num_threads(2) on a many-core host ran the kernels on all of them,
// beside torch's own pool. So that pool is sized first.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

#if defined(_OPENMP) && defined(__clang__)
#include <omp.h>
#endif

namespace yoda::cpu {

template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
#if defined(_OPENMP) && defined(__clang__)
  omp_set_num_threads(at::get_num_threads());
#endif
  at::parallel_for(begin, end, grain, f);
}

}  // namespace yoda::cpu
