// Device helpers shared by the CUDA NUFFT kernels of 2-D (spread.cu) and 3-D (spread3.cu):
// the per-thread point, and the stencil-row operations of spreading (atomic adds) and
// interpolation (a w-term dot with the column weights kx), on rows of complex cells stored
// as interleaved reals. CUDA only (nvcc, NVRTC): builtins and es_kernel.h, no includes
// beyond; every .cu that uses it includes it, hence the guard (all.cu includes them all).
#ifndef LUSER_FAST_NUFFT_SPREAD_DEVICE_H
#define LUSER_FAST_NUFFT_SPREAD_DEVICE_H

#include "common/device.h"
#include "nufft/es_kernel.h"

namespace luser_fast {
namespace nufft {

// The thread's point p (one thread per point along x): false past the last of m.
__device__ __forceinline__ bool thread_point(int m, long long* p) {
  *p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  return *p < m;
}

// Adds kx[j] (yr, yi) to the w cells run[j], j = 0 .. w - 1 (no wrap: a tile's row).
template <typename R>
__device__ __forceinline__ void add_run_atomic(R* run, const R* kx, int width, R yr, R yi) {
  for (int j = 0; j < width; ++j) {
    atomicAdd(run + 2 * j, kx[j] * yr);
    atomicAdd(run + 2 * j + 1, kx[j] * yi);
  }
}

// Adds kx[j] (yr, yi) to the w cells s + j (wrapped at n) of a grid row.
template <typename R>
__device__ __forceinline__ void add_row_atomic(R* row, const R* kx, int s, int n, int width,
                                               R yr, R yi) {
  for (int j = 0; j < width; ++j) {
    R* cell = row + 2 * wrap_add(s, j, n);
    atomicAdd(cell, kx[j] * yr);
    atomicAdd(cell + 1, kx[j] * yi);
  }
}

// (ar, ai) = sum over j of kx[j] times cell s + j (wrapped at n) of a grid row.
template <typename R>
__device__ __forceinline__ void dot_row(const R* row, const R* kx, int s, int n, int width,
                                        R* ar, R* ai) {
  R re = R(0), im = R(0);
  for (int j = 0; j < width; ++j) {
    const int c = wrap_add(s, j, n);
    re += kx[j] * row[2 * c];
    im += kx[j] * row[2 * c + 1];
  }
  *ar = re;
  *ai = im;
}

// Adds a tile cell's (re, im) to a grid cell, skipping exact zeros (cells no point reached).
template <typename R>
__device__ __forceinline__ void add_cell_atomic(R* cell, R re, R im) {
  if (re == R(0) && im == R(0)) return;
  atomicAdd(cell, re);
  atomicAdd(cell + 1, im);
}

}  // namespace nufft
}  // namespace luser_fast

#endif  // LUSER_FAST_NUFFT_SPREAD_DEVICE_H
