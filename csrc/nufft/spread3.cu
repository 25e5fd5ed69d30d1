// CUDA kernels of the 3-D NUFFT, launched through CuPy by luser_fast/ops/nufft.py (the
// "3-D kernels" block) on torch's current stream. The per-point math (stencil start, bins,
// ES kernel weights) is es_kernel.h's, shared with the CPU kernels in spread3.cpp; the plan
// produced here has the CPU plan's layout (order [M] int64, start [M, 3] int32, weights
// [M, 3, w], points sorted by bin), so spreading and interpolation read the same numbers on
// both devices. What is here is only the mapping of threads to work, as in spread.cu (2-D).
// Grids are [B, n0, n1, n2] complex, values [B, M] complex, both as interleaved reals. Only
// es_kernel.h and spread_device.h (with common/) and CUDA builtins are included, so NVRTC
// compiles this file.
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
#include "nufft/spread_device.h"

namespace luser_fast {
namespace nufft {

// Plan, step 1: one thread per point (input order): wrapped stencil start per axis and
// bin id (b0 nb1 + b1) nb2 + b2. k [M, 3] float64, columns along grid axes 0, 1, 2.
__device__ void plan3_points(const double* __restrict__ k, int m, int n0, int n1, int n2,
                             int nb0, int nb1, int nb2, int width, int* __restrict__ start,
                             int* __restrict__ bins) {
  long long p;
  if (!thread_point(m, &p)) return;
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
  long long p;
  if (!thread_point(m, &p)) return;
  const long long q = order[p];
  const int n[3] = {n0, n1, n2};
  for (int d = 0; d < 3; ++d) {
    stencil_weights(k[3 * q + d], n[d], width, beta, weights + (p * 3 + d) * width);
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
          add_run_atomic(tile + 2 * (((r0 + i0) * t1 + r1 + i1) * t2 + r2), kx, width,
                         ky[i1] * zr, ky[i1] * zi);
        }
      }
    }
    __syncthreads();
    R* plane = grid + 2 * b * plane_cells;
    for (int i = threadIdx.x; i < cells; i += blockDim.x) {
      const int c2 = i % t2, c1 = (i / t2) % t1, c0 = i / (t1 * t2);
      const R re = tile[2 * i], im = tile[2 * i + 1];
      if (c0 >= len0 + width - 1 || c1 >= len1 + width - 1 || c2 >= len2 + width - 1) continue;
      const long long g = ((long long)wrap_add(lo0, c0, n0) * n1 + wrap_add(lo1, c1, n1)) * n2 +
                          wrap_add(lo2, c2, n2);
      add_cell_atomic(plane + 2 * g, re, im);
    }
    __syncthreads();
  }
}

// A sorted point's stencil: its weights along each axis and its first cell per axis.
template <typename R>
struct Stencil3 {
  const R *kz, *ky, *kx;
  int s0, s1, s2;
};

template <typename R>
__device__ __forceinline__ Stencil3<R> stencil3(const R* __restrict__ weights,
                                                const int* __restrict__ start, long long p,
                                                int width) {
  Stencil3<R> st;
  st.kz = weights + p * 3 * width;
  st.ky = st.kz + width;
  st.kx = st.ky + width;
  st.s0 = start[3 * p];
  st.s1 = start[3 * p + 1];
  st.s2 = start[3 * p + 2];
  return st;
}

// Spreading with global atomics, for tiles too large for shared memory: one thread per
// (sorted point, plane).
template <typename R>
__device__ void spread3_global(const R* __restrict__ values, const long long* __restrict__ order,
                               const int* __restrict__ start, const R* __restrict__ weights,
                               long long batch, int m, int width, int n0, int n1, int n2,
                               R* __restrict__ grid) {
  long long p;
  if (!thread_point(m, &p)) return;
  const Stencil3<R> st = stencil3(weights, start, p, width);
  const long long plane_cells = (long long)n0 * n1 * n2;
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    const long long v = 2 * (b * m + order[p]);
    const R vr = values[v], vi = values[v + 1];
    R* plane = grid + 2 * b * plane_cells;
    for (int i0 = 0; i0 < width; ++i0) {
      const int c0 = wrap_add(st.s0, i0, n0);
      const R zr = st.kz[i0] * vr, zi = st.kz[i0] * vi;
      for (int i1 = 0; i1 < width; ++i1) {
        R* row = plane + 2 * ((long long)c0 * n1 + wrap_add(st.s1, i1, n1)) * n2;
        add_row_atomic(row, st.kx, st.s2, n2, width, st.ky[i1] * zr, st.ky[i1] * zi);
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
  long long p;
  if (!thread_point(m, &p)) return;
  const Stencil3<R> st = stencil3(weights, start, p, width);
  const long long q = order[p];
  const long long plane_cells = (long long)n0 * n1 * n2;
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    const R* plane = grid + 2 * b * plane_cells;
    R re = R(0), im = R(0);
    for (int i0 = 0; i0 < width; ++i0) {
      const int c0 = wrap_add(st.s0, i0, n0);
      for (int i1 = 0; i1 < width; ++i1) {
        const R* row = plane + 2 * ((long long)c0 * n1 + wrap_add(st.s1, i1, n1)) * n2;
        R ar, ai;
        dot_row(row, st.kx, st.s2, n2, width, &ar, &ai);
        const R y = st.kz[i0] * st.ky[i1];
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
