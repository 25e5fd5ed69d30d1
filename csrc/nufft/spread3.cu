// CUDA kernels of the 3-D NUFFT, launched through CuPy by luser_fast/ops/nufft.py (the
// "3-D kernels" block) on torch's current stream. The per-point math (stencil start, bins,
// ES kernel weights) is es_kernel.h's, shared with the CPU kernels in spread3.cpp; the plan
// produced here has the CPU plan's layout (order [M] int64, start [M, 3] int32, weights
// [M, 3, w], points sorted by bin), so spreading and interpolation read the same numbers on
// both devices. What is here is only the mapping of threads to work, as in spread.cu (2-D).
// Grids are [B, n0, n1, n2] complex, values [B, M] complex, both as interleaved reals. Only
// es_kernel.h (with common/) and CUDA builtins are included, so NVRTC compiles this file.
//
// Sizes. Point indices p are 64-bit wherever they are multiplied (3 p, p 3 w), and so are
// cell offsets (a 3-D grid passes 2^31 cells long before a side passes 2^28), the plane
// offsets (b n0 n1 n2, b M) and the batch B itself. The launcher keeps M and the number of
// bins below 2^31 and each grid side at most 2^28, and caps gridDim.y at 65535: the planes
// are a grid-stride loop over blockIdx.y, so any batch runs.
//
// Rounding. Spreading adds with atomics, in an order that changes from run to run, and
// interpolation sums each stencil row over its columns before the rows: CPU and CUDA
// results agree within the bound of docs/DESIGN.md ("Numerical contracts"), not bitwise.
#include "common/device.h"
#include "nufft/es_kernel.h"

namespace luser_fast {
namespace nufft {

// Plan, step 1: one thread per point (input order): wrapped stencil start per axis and
// bin id (b0 nb1 + b1) nb2 + b2. k [M, 3] float64, columns along grid axes 0, 1, 2.
__device__ void plan3_points(const double* __restrict__ k, int m, int n0, int n1, int n2,
                             int nb0, int nb1, int nb2, int width, int* __restrict__ start,
                             int* __restrict__ bins) {
  const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= m) return;
  const int n[3] = {n0, n1, n2};
  const int nb[3] = {nb0, nb1, nb2};
  long long id = 0;
  for (int d = 0; d < 3; ++d) {
    const int s = wrap_cell(stencil_start(grid_position(k[3 * p + d], n[d]), width), n[d]);
    start[3 * p + d] = s;
    id = id * nb[d] + bin_of_cell(s, n[d], nb[d]);
  }
  bins[p] = (int)id;
}

// Plan, step 2: one thread per sorted point: its 3 x w weights, float64.
__device__ void plan3_weights(const double* __restrict__ k, const long long* __restrict__ order,
                              int m, int n0, int n1, int n2, int width, double beta,
                              double* __restrict__ weights) {
  const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= m) return;
  const long long q = order[p];
  const int n[3] = {n0, n1, n2};
  for (int d = 0; d < 3; ++d) {
    const double t = grid_position(k[3 * q + d], n[d]);
    const long long s = stencil_start(t, width);
    double* out = weights + (p * 3 + d) * width;
    for (int a = 0; a < width; ++a) out[a] = stencil_weight(t, s, a, width, beta);
  }
}

// Spreading with a shared-memory tile per subproblem (at most _CUDA_SUBPROBLEM points of
// one bin): blockIdx.x is the subproblem, blockIdx.y strides over the planes. The tile
// covers the bin and its w - 1 cell halo, t0 x t1 x t2 cells (sized for the longest bin);
// the block's threads add their points' w^3 stencils into it with shared-memory atomics,
// then add the tile to the grid with global atomics (tiles of neighbouring bins overlap).
// subproblems [S, 3] int32: (bin, first sorted point, end).
template <typename R>
__device__ void spread3_tile(const R* __restrict__ values, const long long* __restrict__ order,
                             const int* __restrict__ start, const R* __restrict__ weights,
                             const int* __restrict__ subproblems, long long batch, int m,
                             int width, int n0, int n1, int n2, int nb0, int nb1, int nb2,
                             int t0, int t1, int t2, R* __restrict__ grid) {
  extern __shared__ double2 smem_raw[];
  R* tile = reinterpret_cast<R*>(smem_raw);
  const int* sub = subproblems + 3 * (long long)blockIdx.x;
  const int bin = sub[0];
  const long long p0 = sub[1], p1 = sub[2];
  const int b0 = bin / (nb1 * nb2), b1 = (bin / nb2) % nb1, b2 = bin % nb2;
  const int lo0 = bin_start(b0, n0, nb0), lo1 = bin_start(b1, n1, nb1), lo2 = bin_start(b2, n2, nb2);
  const int len0 = bin_start(b0 + 1, n0, nb0) - lo0;
  const int len1 = bin_start(b1 + 1, n1, nb1) - lo1;
  const int len2 = bin_start(b2 + 1, n2, nb2) - lo2;
  const int cells = t0 * t1 * t2;
  const long long plane_cells = (long long)n0 * n1 * n2;
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    for (int i = threadIdx.x; i < 2 * cells; i += blockDim.x) tile[i] = R(0);
    __syncthreads();
    for (long long p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
      const int r0 = start[3 * p] - lo0, r1 = start[3 * p + 1] - lo1, r2 = start[3 * p + 2] - lo2;
      // the plan puts every point in its bin; a point that is not is skipped, never
      // written outside the tile
      if (r0 < 0 || r0 >= len0 || r1 < 0 || r1 >= len1 || r2 < 0 || r2 >= len2) continue;
      const R* kz = weights + p * 3 * width;
      const R* ky = kz + width;
      const R* kx = ky + width;
      const long long v = 2 * (b * m + order[p]);
      const R vr = values[v], vi = values[v + 1];
      for (int i0 = 0; i0 < width; ++i0) {
        const R zr = kz[i0] * vr, zi = kz[i0] * vi;
        for (int i1 = 0; i1 < width; ++i1) {
          R* trow = tile + 2 * (((r0 + i0) * t1 + r1 + i1) * t2 + r2);
          const R yr = ky[i1] * zr, yi = ky[i1] * zi;
          for (int j = 0; j < width; ++j) {
            atomicAdd(trow + 2 * j, kx[j] * yr);
            atomicAdd(trow + 2 * j + 1, kx[j] * yi);
          }
        }
      }
    }
    __syncthreads();
    R* plane = grid + 2 * b * plane_cells;
    for (int i = threadIdx.x; i < cells; i += blockDim.x) {
      const int c2 = i % t2, c1 = (i / t2) % t1, c0 = i / (t1 * t2);
      const R re = tile[2 * i], im = tile[2 * i + 1];
      if (c0 >= len0 + width - 1 || c1 >= len1 + width - 1 || c2 >= len2 + width - 1 ||
          (re == R(0) && im == R(0)))
        continue;
      const int g0 = lo0 + c0 < n0 ? lo0 + c0 : lo0 + c0 - n0;
      const int g1 = lo1 + c1 < n1 ? lo1 + c1 : lo1 + c1 - n1;
      const int g2 = lo2 + c2 < n2 ? lo2 + c2 : lo2 + c2 - n2;
      R* cell = plane + 2 * (((long long)g0 * n1 + g1) * n2 + g2);
      atomicAdd(cell, re);
      atomicAdd(cell + 1, im);
    }
    __syncthreads();
  }
}

// Spreading with global atomics, for tiles too large for shared memory: one thread per
// (sorted point, plane).
template <typename R>
__device__ void spread3_global(const R* __restrict__ values, const long long* __restrict__ order,
                               const int* __restrict__ start, const R* __restrict__ weights,
                               long long batch, int m, int width, int n0, int n1, int n2,
                               R* __restrict__ grid) {
  const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= m) return;
  const R* kz = weights + p * 3 * width;
  const R* ky = kz + width;
  const R* kx = ky + width;
  const int s0 = start[3 * p], s1 = start[3 * p + 1], s2 = start[3 * p + 2];
  const long long plane_cells = (long long)n0 * n1 * n2;
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    const long long v = 2 * (b * m + order[p]);
    const R vr = values[v], vi = values[v + 1];
    R* plane = grid + 2 * b * plane_cells;
    for (int i0 = 0; i0 < width; ++i0) {
      const int c0 = s0 + i0 < n0 ? s0 + i0 : s0 + i0 - n0;
      const R zr = kz[i0] * vr, zi = kz[i0] * vi;
      for (int i1 = 0; i1 < width; ++i1) {
        const int c1 = s1 + i1 < n1 ? s1 + i1 : s1 + i1 - n1;
        R* row = plane + 2 * ((long long)c0 * n1 + c1) * n2;
        const R yr = ky[i1] * zr, yi = ky[i1] * zi;
        for (int j = 0; j < width; ++j) {
          const int c2 = s2 + j < n2 ? s2 + j : s2 + j - n2;
          atomicAdd(row + 2 * c2, kx[j] * yr);
          atomicAdd(row + 2 * c2 + 1, kx[j] * yi);
        }
      }
    }
  }
}

// Interpolation, a gather: one thread per (sorted point, plane); the threads of a warp hold
// neighbouring points of one bin, so their stencils overlap in cache. Each stencil row is
// summed over its w cells (with kx), then the rows with kz ky.
template <typename R>
__device__ void interp3(const R* __restrict__ grid, const long long* __restrict__ order,
                        const int* __restrict__ start, const R* __restrict__ weights,
                        long long batch, int m, int width, int n0, int n1, int n2,
                        R* __restrict__ out) {
  const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= m) return;
  const R* kz = weights + p * 3 * width;
  const R* ky = kz + width;
  const R* kx = ky + width;
  const int s0 = start[3 * p], s1 = start[3 * p + 1], s2 = start[3 * p + 2];
  const long long q = order[p];
  const long long plane_cells = (long long)n0 * n1 * n2;
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    const R* plane = grid + 2 * b * plane_cells;
    R re = R(0), im = R(0);
    for (int i0 = 0; i0 < width; ++i0) {
      const int c0 = s0 + i0 < n0 ? s0 + i0 : s0 + i0 - n0;
      for (int i1 = 0; i1 < width; ++i1) {
        const int c1 = s1 + i1 < n1 ? s1 + i1 : s1 + i1 - n1;
        const R* row = plane + 2 * ((long long)c0 * n1 + c1) * n2;
        R ar = R(0), ai = R(0);
        for (int j = 0; j < width; ++j) {
          const int c2 = s2 + j < n2 ? s2 + j : s2 + j - n2;
          ar += kx[j] * row[2 * c2];
          ai += kx[j] * row[2 * c2 + 1];
        }
        const R y = kz[i0] * ky[i1];
        re += y * ar;
        im += y * ai;
      }
    }
    out[2 * (b * m + q)] = re;
    out[2 * (b * m + q) + 1] = im;
  }
}

}  // namespace nufft
}  // namespace luser_fast

LF_KERNEL nufft3_plan_points_kernel(const double* k, int m, int n0, int n1, int n2, int nb0,
                                    int nb1, int nb2, int width, int* start, int* bins) {
  luser_fast::nufft::plan3_points(k, m, n0, n1, n2, nb0, nb1, nb2, width, start, bins);
}

LF_KERNEL nufft3_plan_weights_kernel(const double* k, const long long* order, int m, int n0,
                                     int n1, int n2, int width, double beta, double* weights) {
  luser_fast::nufft::plan3_weights(k, order, m, n0, n1, n2, width, beta, weights);
}

// Spreading (tile and global) and interpolation kernels, float32 and float64.
#define LF_NUFFT3_KERNELS(SUFFIX, R)                                                            \
  LF_KERNEL nufft3_spread_tile_kernel_##SUFFIX(                                                 \
      const R* values, const long long* order, const int* start, const R* weights,             \
      const int* subproblems, long long batch, int m, int width, int n0, int n1, int n2,        \
      int nb0, int nb1, int nb2, int t0, int t1, int t2, R* grid) {                             \
    luser_fast::nufft::spread3_tile<R>(values, order, start, weights, subproblems, batch, m,    \
                                       width, n0, n1, n2, nb0, nb1, nb2, t0, t1, t2, grid);     \
  }                                                                                             \
  LF_KERNEL nufft3_spread_global_kernel_##SUFFIX(const R* values, const long long* order,       \
                                                 const int* start, const R* weights,            \
                                                 long long batch, int m, int width, int n0,     \
                                                 int n1, int n2, R* grid) {                     \
    luser_fast::nufft::spread3_global<R>(values, order, start, weights, batch, m, width, n0,    \
                                         n1, n2, grid);                                         \
  }                                                                                             \
  LF_KERNEL nufft3_interp_kernel_##SUFFIX(const R* grid, const long long* order,                \
                                          const int* start, const R* weights, long long batch,  \
                                          int m, int width, int n0, int n1, int n2, R* out) {   \
    luser_fast::nufft::interp3<R>(grid, order, start, weights, batch, m, width, n0, n1, n2,     \
                                  out);                                                         \
  }

LF_NUFFT3_KERNELS(f32, float)
LF_NUFFT3_KERNELS(f64, double)

#undef LF_NUFFT3_KERNELS
