// CUDA kernels of the 2-D NUFFT, launched through CuPy by luser_fast/ops/nufft.py on
// torch's current stream. The per-point math (stencil start, bins, ES kernel weights) is
// es_kernel.h's, shared with the CPU kernels in spread.cpp; the plan produced here has the
// CPU plan's layout (order [M] int64, start [M, 2] int32, weights [M, 2, w], points sorted
// by bin), so spreading and interpolation read the same numbers on both devices. What is
// here is only the mapping of threads to work. Grids are [B, n_r, n_c] complex, values
// [B, M] complex, both as interleaved reals. Only es_kernel.h and spread_device.h (with
// common/) and CUDA builtins are included, so NVRTC compiles this file as well.
//
// Sizes. Point indices p are 64-bit wherever they are multiplied (2 p, 3 s, p 2 w pass
// 2^31 from M = 2^30 on), and so are the plane offsets (b n_r n_c, b M) and the batch B
// itself. The launcher (luser_fast/ops/nufft.py) keeps M and the number of bins below
// 2^31 and each grid side at most 2^28, and caps gridDim.y at 65535: the planes are a
// grid-stride loop over blockIdx.y, so any batch runs.
//
// Rounding. Spreading adds with atomics, in an order that changes from run to run, and
// interpolation sums a stencil row before the rows (the CPU sums the rows first): CPU and
// CUDA results agree within the bound of docs/DESIGN.md ("Numerical contracts"), not
// bitwise.
#include "common/device.h"
#include "nufft/es_kernel.h"
#include "nufft/spread_device.h"

namespace luser_fast {
namespace nufft {

// Plan, step 1: one thread per point (input order): wrapped stencil start and bin.
// krc [M, 2] float64 holds each point's (row, column) frequency.
__device__ void plan_points(const double* __restrict__ krc, int m, int n_r, int n_c, int nb_r,
                            int nb_c, int width, int* __restrict__ start, int* __restrict__ bins) {
  long long p;
  if (!thread_point(m, &p)) return;
  const int sr = wrap_cell(stencil_start(grid_position(krc[2 * p], n_r), width), n_r);
  const int sc = wrap_cell(stencil_start(grid_position(krc[2 * p + 1], n_c), width), n_c);
  start[2 * p] = sr;
  start[2 * p + 1] = sc;
  bins[p] = bin_of_cell(sr, n_r, nb_r) * nb_c + bin_of_cell(sc, n_c, nb_c);
}

// Plan, step 2: one thread per sorted point: its 2 x w weights, float64.
__device__ void plan_weights(const double* __restrict__ krc, const long long* __restrict__ order,
                             int m, int n_r, int n_c, int width, double beta,
                             double* __restrict__ weights) {
  long long p;
  if (!thread_point(m, &p)) return;
  const long long q = order[p];
  for (int d = 0; d < 2; ++d) {
    stencil_weights(krc[2 * q + d], d == 0 ? n_r : n_c, width, beta, weights + (p * 2 + d) * width);
  }
}

// Spreading with a shared-memory tile per subproblem (<= 1024 points of one bin):
// blockIdx.x is the subproblem, blockIdx.y strides over the planes. The tile covers the
// bin and its w - 1 cell halo, tile_r x tile_c cells (sized for the longest bin); the
// block's threads add their points' w x w stencils into it with shared-memory atomics,
// then add the tile to the grid with global atomics (tiles of neighbouring bins overlap).
// subproblems [S, 3] int32: (bin, first sorted point, end).
template <typename R>
__device__ void spread_tile(const R* __restrict__ values, const long long* __restrict__ order,
                            const int* __restrict__ start, const R* __restrict__ weights,
                            const int* __restrict__ subproblems, long long batch, int m,
                            int width,
                            int n_r, int n_c, int nb_r, int nb_c, int tile_r, int tile_c,
                            R* __restrict__ grid) {
  extern __shared__ double2 smem_raw[];
  R* tile = reinterpret_cast<R*>(smem_raw);
  const int* sub = subproblems + 3 * (long long)blockIdx.x;
  const int bin = sub[0];
  const long long p0 = sub[1], p1 = sub[2];
  const int br = bin / nb_c, bc = bin % nb_c;
  const int lo_r = bin_start(br, n_r, nb_r), lo_c = bin_start(bc, n_c, nb_c);
  const int len_r = bin_start(br + 1, n_r, nb_r) - lo_r;
  const int len_c = bin_start(bc + 1, n_c, nb_c) - lo_c;
  const int cells = tile_r * tile_c;
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    for (int i = threadIdx.x; i < 2 * cells; i += blockDim.x) tile[i] = R(0);
    __syncthreads();
    for (long long p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
      const int rr = start[2 * p] - lo_r, cc = start[2 * p + 1] - lo_c;
      // the plan puts every point in its bin; a point that is not is skipped, never
      // written outside the tile
      if (rr < 0 || rr >= len_r || cc < 0 || cc >= len_c) continue;
      const R* ky = weights + p * 2 * width;
      const R* kx = ky + width;
      const long long v = 2 * (b * m + order[p]);
      const R vr = values[v], vi = values[v + 1];
      for (int i = 0; i < width; ++i) {
        add_run_atomic(tile + 2 * ((rr + i) * tile_c + cc), kx, width, ky[i] * vr, ky[i] * vi);
      }
    }
    __syncthreads();
    R* plane = grid + 2 * b * n_r * n_c;
    for (int i = threadIdx.x; i < cells; i += blockDim.x) {
      const int tr = i / tile_c, tc = i - tr * tile_c;
      const R re = tile[2 * i], im = tile[2 * i + 1];
      if (tr >= len_r + width - 1 || tc >= len_c + width - 1) continue;
      const long long cell = (long long)wrap_add(lo_r, tr, n_r) * n_c + wrap_add(lo_c, tc, n_c);
      add_cell_atomic(plane + 2 * cell, re, im);
    }
    __syncthreads();
  }
}

// Spreading with global atomics, for kernels too wide for a shared-memory tile: one thread
// per (sorted point, plane).
template <typename R>
__device__ void spread_global(const R* __restrict__ values, const long long* __restrict__ order,
                              const int* __restrict__ start, const R* __restrict__ weights,
                              long long batch, int m, int width, int n_r, int n_c,
                              R* __restrict__ grid) {
  long long p;
  if (!thread_point(m, &p)) return;
  const R* ky = weights + p * 2 * width;
  const R* kx = ky + width;
  const int sr = start[2 * p], sc = start[2 * p + 1];
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    const long long v = 2 * (b * m + order[p]);
    const R vr = values[v], vi = values[v + 1];
    R* plane = grid + 2 * b * n_r * n_c;
    for (int i = 0; i < width; ++i) {
      add_row_atomic(plane + 2 * (long long)wrap_add(sr, i, n_r) * n_c, kx, sc, n_c, width,
                     ky[i] * vr, ky[i] * vi);
    }
  }
}

// Interpolation, a gather: one thread per (sorted point, plane); the threads of a warp hold
// neighbouring points of one bin, so their stencils overlap in cache.
template <typename R>
__device__ void interp(const R* __restrict__ grid, const long long* __restrict__ order,
                       const int* __restrict__ start, const R* __restrict__ weights,
                       long long batch, int m, int width, int n_r, int n_c,
                       R* __restrict__ out) {
  long long p;
  if (!thread_point(m, &p)) return;
  const R* ky = weights + p * 2 * width;
  const R* kx = ky + width;
  const int sr = start[2 * p], sc = start[2 * p + 1];
  const long long q = order[p];
  for (long long b = blockIdx.y; b < batch; b += gridDim.y) {
    const R* plane = grid + 2 * b * n_r * n_c;
    R re = R(0), im = R(0);
    for (int i = 0; i < width; ++i) {
      R ar, ai;
      dot_row(plane + 2 * (long long)wrap_add(sr, i, n_r) * n_c, kx, sc, n_c, width, &ar, &ai);
      re += ky[i] * ar;
      im += ky[i] * ai;
    }
    out[2 * (b * m + q)] = re;
    out[2 * (b * m + q) + 1] = im;
  }
}

}  // namespace nufft
}  // namespace luser_fast

LF_KERNEL nufft_plan_points_kernel(const double* krc, int m, int n_r, int n_c, int nb_r, int nb_c,
                                   int width, int* start, int* bins) {
  luser_fast::nufft::plan_points(krc, m, n_r, n_c, nb_r, nb_c, width, start, bins);
}

LF_KERNEL nufft_plan_weights_kernel(const double* krc, const long long* order, int m, int n_r,
                                    int n_c, int width, double beta, double* weights) {
  luser_fast::nufft::plan_weights(krc, order, m, n_r, n_c, width, beta, weights);
}

// Spreading (tile and global) and interpolation kernels, float32 and float64.
#define LF_NUFFT_KERNELS(SUFFIX, R)                                                            \
  LF_KERNEL nufft_spread_tile_kernel_##SUFFIX(                                                 \
      const R* values, const long long* order, const int* start, const R* weights,            \
      const int* subproblems, long long batch, int m, int width, int n_r, int n_c, int nb_r,   \
      int nb_c, int tile_r, int tile_c, R* grid) {                                             \
    luser_fast::nufft::spread_tile<R>(values, order, start, weights, subproblems, batch, m,    \
                                      width, n_r, n_c, nb_r, nb_c, tile_r, tile_c, grid);      \
  }                                                                                            \
  LF_KERNEL nufft_spread_global_kernel_##SUFFIX(const R* values, const long long* order,       \
                                                const int* start, const R* weights,            \
                                                long long batch, int m, int width, int n_r,    \
                                                int n_c, R* grid) {                            \
    luser_fast::nufft::spread_global<R>(values, order, start, weights, batch, m, width, n_r,   \
                                        n_c, grid);                                            \
  }                                                                                            \
  LF_KERNEL nufft_interp_kernel_##SUFFIX(const R* grid, const long long* order,                \
                                         const int* start, const R* weights, long long batch,  \
                                         int m, int width, int n_r, int n_c, R* out) {         \
    luser_fast::nufft::interp<R>(grid, order, start, weights, batch, m, width, n_r, n_c, out); \
  }

LF_NUFFT_KERNELS(f32, float)
LF_NUFFT_KERNELS(f64, double)

#undef LF_NUFFT_KERNELS
