// CPU kernels of the 3-D NUFFT: the plan (stencils, kernel weights and bin sort of a
// trajectory), spreading (points -> grid, type 1) and interpolation (grid -> points, type
// 2), registered as torch.ops.luser_fast._nufft3_plan / _nufft3_spread_out /
// _nufft3_interp. luser_fast/ops/nufft.py wraps them with the FFTs and deapodisation into
// the public 3-D ops. The per-point math (stencil start, wrap, ES weights, bins) is
// es_kernel.h's, shared with the 2-D kernels (spread.cpp) and the CUDA kernels; the
// helpers of the CPU spreaders (SIMD level, task scheduling, vector types) are
// spread_cpu.h's.
//
// Layout. A grid is [B, n0, n1, n2] complex, contiguous (the planes outermost, rows of n2
// cells contiguous); axes 0, 1, 2 are the plan's, in the caller's order (ops/nufft.py
// passes (D, H, W)). Values are [B, M] complex. B (batch x coils) is handled inside each
// point: a point's stencil and weights are loaded once and applied to all B planes.
//
// Plan (once per trajectory): every point's wrapped stencil start per axis, its 3 x w
// separable weights in float64, and a counting sort of the points by bin (bin id
// (b0 nb1 + b1) nb2 + b2), then within each bin by small tiles of cells, so consecutive
// points share most of their stencils.
//
// Spreading: the values are first gathered into sorted order, planes innermost ([M][B]).
// Each bin spreads its points into a private sub-grid covering the bin and its w - 1 cell
// halo, laid out [s0][s1][s2][planes] (the planes of a cell contiguous), so one stencil
// row of a point is a single contiguous run of 2 w Bc reals for the Bc planes of a task:
// the run is updated as row += (kz[i0] ky[i1]) * kv with kv = kx (x) values built once per
// point, in blocks of up to four 64-byte vectors held in registers while the w^2 rows
// stream past (no lanes wasted on short kernels as long as w Bc is not tiny). The sub-grid
// is then added to the grid, transposed to its planes-outer layout, with the periodic wrap.
// Bins of one parity class (b0 mod 2, b1 mod 2, b2 mod 2) never touch the same cell
// (es_kernel.h), so the eight classes run one after the other, each with its bins in
// parallel: no atomics, and every cell receives its contributions in the same order
// whatever the thread count (deterministic).
//
// Interpolation, a gather, parallel over chunks of sorted points: per point the w^2 row
// offsets and products kz[i0] ky[i1] are formed once; per plane, each stencil row of w
// complex cells is a run of 2 w reals, accumulated as acc += (kz ky) * row in 64-byte
// vectors (the width a template parameter 2 .. 16, so the run's vectors stay in
// registers), then a w-term dot with kx. Runs that cross the end of a grid row (the
// periodic wrap, or vectors reading past it) are first copied to a zero-padded buffer.
//
// Sizes: offsets into grids and sub-grids are 64-bit (a 3-D grid passes 2^31 cells long
// before its sides do); every argument is checked (TORCH_CHECK) before any memory is
// touched, so malformed plans raise instead of reading or writing out of bounds.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "common/constants.h"
#include "common/simd.h"
#include "nufft/es_kernel.h"
#include "nufft/spread_cpu.h"

namespace {

namespace nu = luser_fast::nufft;
using namespace luser_fast::nufft::cpu;  // NOLINT: the shared helpers of spread_cpu.h

// Largest grid, in cells (2^40: 64-bit offsets of B planes stay far from overflow).
constexpr int64_t kMaxGridCells = int64_t(1) << 40;
// Largest number of bins (bin ids are int64 in the plan; bin_offsets is allocated).
constexpr int64_t kMaxBins = int64_t(1) << 31;
// Reals of one spreading run (one stencil row, w cells x Bc planes): bounds Bc.
constexpr int kMaxRun = 1024;
// Lanes of the widest vector (Vec<float>): the slack after a sub-grid row and after kv.
constexpr int kMaxLanes = 16;
// Bytes a bin's sub-grid may take for the planes of one task (it stays in L2).
constexpr int64_t kSubGridBytes = int64_t(1) << 20;
// Largest sub-grid of one plane a task may need (a raw call with huge bins is refused).
constexpr int64_t kMaxSubGridReals = int64_t(1) << 30;
// Side of the cell tiles that order the points within a bin (the plan).
constexpr int kSortTile = luser_fast::kNufft3SortTile;
// Most sorted points per interpolation task.
constexpr int64_t kInterpChunk = 4096;

// --- plan -------------------------------------------------------------------------------

void check_grid3(int64_t n0, int64_t n1, int64_t n2, int64_t width, const char* fn) {
  TORCH_CHECK(width >= 2 && width <= nu::kMaxWidth, fn, ": kernel width must be in [2, ",
              nu::kMaxWidth, "], got ", width);
  const int64_t n[3] = {n0, n1, n2};
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(n[d] >= 2 * width && n[d] <= kMaxGridSide, fn, ": grid size (", n0, ", ", n1,
                ", ", n2, ") must be >= 2 * width = ", 2 * width, " and <= ", kMaxGridSide,
                " per side");
  }
  TORCH_CHECK(n0 * n1 <= kMaxGridCells / n2, fn, ": grid size (", n0, ", ", n1, ", ", n2,
              ") has more than ", kMaxGridCells, " cells");
}

int64_t check_bins3(int64_t n0, int64_t n1, int64_t n2, int64_t nb0, int64_t nb1, int64_t nb2,
                    int64_t width, const char* fn) {
  check_bins(n0, nb0, width, "nb0", fn);
  check_bins(n1, nb1, width, "nb1", fn);
  check_bins(n2, nb2, width, "nb2", fn);
  // each nb <= n / width, so the product is below the grid's cells (<= 2^40)
  const int64_t n_bins = nb0 * nb1 * nb2;
  TORCH_CHECK(n_bins < kMaxBins, fn, ": too many bins (", n_bins, ")");
  return n_bins;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nufft3_plan_cpu(
    const at::Tensor& ktraj, int64_t n0, int64_t n1, int64_t n2, int64_t width, double beta,
    int64_t nb0, int64_t nb1, int64_t nb2) {
  const char* fn = "_nufft3_plan";
  check_ktraj(ktraj, 3, fn);
  check_grid3(n0, n1, n2, width, fn);
  const int64_t n_bins = check_bins3(n0, n1, n2, nb0, nb1, nb2, width, fn);
  const at::Tensor k = checked_ktraj(ktraj, beta, fn);
  const double* kp = k.data_ptr<double>();
  const int64_t m = k.size(0);
  const int w = (int)width;
  const int n[3] = {(int)n0, (int)n1, (int)n2};
  const int nb[3] = {(int)nb0, (int)nb1, (int)nb2};

  // wrapped stencil starts and bins, in the input order
  std::vector<int32_t> s_in(3 * m);
  std::vector<int64_t> bin(m);
  at::parallel_for(0, m, 4096, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int64_t id = 0;
      for (int d = 0; d < 3; ++d) {
        const int s = nu::wrap_cell(nu::stencil_start(nu::grid_position(kp[3 * p + d], n[d]), w),
                                    n[d]);
        s_in[3 * p + d] = s;
        id = id * nb[d] + nu::bin_of_cell(s, n[d], nb[d]);
      }
      bin[p] = id;
    }
  });
  const auto [order, offsets] = sort_by_bin(bin, m, n_bins, k);
  const int64_t* off = offsets.data_ptr<int64_t>();
  int64_t* ord = order.data_ptr<int64_t>();
  // within each bin, the points in the lexicographic order of the kSortTile^3 cell tiles
  // of their stencil starts, counted from the bin's first cell (input order within a
  // tile): consecutive points then share most of their stencils' cells, which stay in L1
  // between them. (The CUDA plan, ops/nufft.py, sorts by the same key.)
  at::parallel_for(0, n_bins, 16, [&](int64_t b0, int64_t b1) {
    std::vector<std::array<int32_t, 3>> keys;
    std::vector<int64_t> idx, moved;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t len = off[b + 1] - off[b];
      if (len < 2) continue;
      int bi[3], lo[3];
      bin_axes<3>(b, nb, bi);
      for (int d = 0; d < 3; ++d) lo[d] = nu::bin_start(bi[d], n[d], nb[d]);
      keys.resize(len);
      idx.resize(len);
      moved.assign(ord + off[b], ord + off[b + 1]);
      for (int64_t i = 0; i < len; ++i) {
        for (int d = 0; d < 3; ++d) keys[i][d] = (s_in[3 * moved[i] + d] - lo[d]) / kSortTile;
        idx[i] = i;
      }
      std::stable_sort(idx.begin(), idx.end(),
                       [&](int64_t x, int64_t y) { return keys[x] < keys[y]; });
      for (int64_t i = 0; i < len; ++i) ord[off[b] + i] = moved[idx[i]];
    }
  });
  at::Tensor start = at::empty({m, 3}, k.options().dtype(at::kInt));
  at::Tensor weights = at::empty({m, 3, width}, k.options());
  int32_t* st = start.data_ptr<int32_t>();
  double* wt = weights.data_ptr<double>();
  at::parallel_for(0, m, 1024, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t q = ord[p];
      for (int d = 0; d < 3; ++d) {
        st[3 * p + d] = s_in[3 * q + d];
        nu::stencil_weights(kp[3 * q + d], n[d], w, beta, wt + (3 * p + d) * w);
      }
    }
  });
  return {order, start, weights, offsets};
}

// --- argument checks of spread / interp ---------------------------------------------------

// Validates a plan against the data (spread_cpu.h's check_plan, with this grid's checks).
void check_plan3(const at::Tensor& order, const at::Tensor& start, const at::Tensor& weights,
                 int64_t m, int64_t n0, int64_t n1, int64_t n2, at::ScalarType real,
                 const char* fn) {
  check_plan<3>(order, start, weights, m, {n0, n1, n2}, real, fn,
                [&](int64_t width) { check_grid3(n0, n1, n2, width, fn); });
}

template <typename R>
struct Work3 {
  R* grid;          // [B, n0, n1, n2] complex, as interleaved reals
  R* values;        // interp: [B, M] out; spread: [M, B] in (sorted order); complex
  const int64_t* order;
  const int32_t* start;  // [M, 3]
  const R* weights;      // [M, 3, width]
  int64_t batch, n_points;
  int width;
  int n[3];
};

// One bin's spreading task: its points, first cell, sub-grid shape and planes.
struct Bin3 {
  int64_t p0, p1;  // sorted points
  int lo[3];       // first cell per axis
  int sub[3];      // sub-grid cells per axis (bin length + w - 1)
  int64_t ld;      // reals per sub-grid row: 2 sub[2] nb + one vector of slack
  int64_t b0, nb;  // planes b0 .. b0 + nb - 1
};

// One interpolation task: a run of sorted points, the box of grid cells their stencils
// cover (gathered into a private sub-grid, planes innermost, as spreading lays it out)
// and the planes.
struct Box3 {
  int64_t p0, p1;  // sorted points
  int lo[3];       // first cell per axis (in [0, n); the box wraps past n)
  int ext[3];      // cells per axis
  int64_t ld;      // reals per sub-grid row: 2 ext[2] nb + one vector of slack
  int64_t b0, nb;  // planes b0 .. b0 + nb - 1
};

// --- hot loops (always inlined into one function per instruction set) -----------------

// row_r += kzy[r] * kv for the n_rows rows at corner + roff[r], over K vectors of the run:
// the K vectors of kv stay in registers while the rows stream past.
template <typename R, int K>
LF_ALWAYS_INLINE void axpy_rows(R* __restrict__ corner, const int64_t* __restrict__ roff,
                                const R* __restrict__ kzy, int n_rows, const R* __restrict__ kv) {
  using V = typename Vec<R>::type;
  constexpr int L = Vec<R>::kLanes;
  V k[K];
  for (int q = 0; q < K; ++q) k[q] = vload(kv + q * L);
  for (int r = 0; r < n_rows; ++r) {
    R* row = corner + roff[r];
    const R y = kzy[r];
    for (int q = 0; q < K; ++q) vstore(row + q * L, vload(row + q * L) + y * k[q]);
  }
}

// A bin's points spread into its sub-grid [sub0][sub1][ld] (ld >= 2 sub2 nb + kMaxLanes),
// a row holding sub2 cells of nb planes each. A point's stencil row is the run of 2 w nb
// reals at its corner; the run's last vector reaches up to kMaxLanes - 1 reals past it,
// into the next cells of the row (or the row's slack), adding exact zeros (kv's padding).
template <typename R>
LF_ALWAYS_INLINE void spread3_body(const Work3<R>& a, const Bin3& bin, R* __restrict__ sub) {
  constexpr int L = Vec<R>::kLanes;
  const int w = a.width;
  const int64_t nbp = bin.nb;
  const int run = 2 * w * (int)nbp;
  const int nv = (run + L - 1) / L;
  alignas(64) R kv[kMaxRun + kMaxLanes];
  std::fill(kv + run, kv + (int64_t)nv * L, R(0));
  int64_t roff[nu::kMaxWidth * nu::kMaxWidth];
  R kzy[nu::kMaxWidth * nu::kMaxWidth];
  for (int i0 = 0; i0 < w; ++i0) {
    for (int i1 = 0; i1 < w; ++i1) roff[i0 * w + i1] = ((int64_t)i0 * bin.sub[1] + i1) * bin.ld;
  }
  const int n_rows = w * w;
  for (int64_t p = bin.p0; p < bin.p1; ++p) {
    const R* __restrict__ kz = a.weights + p * 3 * w;
    const R* __restrict__ ky = kz + w;
    const R* __restrict__ kx = ky + w;
    const int32_t* s = a.start + 3 * p;
    R* corner = sub + ((int64_t)(s[0] - bin.lo[0]) * bin.sub[1] + (s[1] - bin.lo[1])) * bin.ld +
                2 * (int64_t)(s[2] - bin.lo[2]) * nbp;
    const R* __restrict__ v = a.values + 2 * (p * a.batch + bin.b0);
    for (int j = 0; j < w; ++j) {
      const R k = kx[j];
      R* o = kv + 2 * j * nbp;
      for (int64_t b = 0; b < 2 * nbp; ++b) o[b] = k * v[b];
    }
    for (int i0 = 0; i0 < w; ++i0) {
      for (int i1 = 0; i1 < w; ++i1) kzy[i0 * w + i1] = kz[i0] * ky[i1];
    }
    int u = 0;
    for (; u + 4 <= nv; u += 4) axpy_rows<R, 4>(corner + u * L, roff, kzy, n_rows, kv + u * L);
    switch (nv - u) {
      case 3: axpy_rows<R, 3>(corner + u * L, roff, kzy, n_rows, kv + u * L); break;
      case 2: axpy_rows<R, 2>(corner + u * L, roff, kzy, n_rows, kv + u * L); break;
      case 1: axpy_rows<R, 1>(corner + u * L, roff, kzy, n_rows, kv + u * L); break;
      default: break;
    }
  }
}

// Prefetches the cells lo .. lo + len - 1 (wrapped at n) of one grid row of each of nbp
// planes: the short row segments a sub-grid exchanges with the grid are too many and too
// short for the hardware prefetcher, so the next row's are requested one row ahead.
template <typename R>
LF_ALWAYS_INLINE void prefetch_rows(const R* row, int64_t plane, int64_t nbp, int lo, int len,
                                    int n, bool write) {
  const int first = std::min(len, n - lo);
  constexpr int kPerLine = 64 / (2 * (int)sizeof(R));  // complex cells per cache line
  for (int64_t b = 0; b < nbp; ++b) {
    const R* r = row + b * plane;
    for (int c = 0; c < first; c += kPerLine) {
      if (write) __builtin_prefetch(r + 2 * (int64_t)(lo + c), 1, 3);
      else __builtin_prefetch(r + 2 * (int64_t)(lo + c), 0, 3);
    }
    for (int c = 0; c < len - first; c += kPerLine) {
      if (write) __builtin_prefetch(r + 2 * (int64_t)c, 1, 3);
      else __builtin_prefetch(r + 2 * (int64_t)c, 0, 3);
    }
  }
}

// Adds a bin's sub-grid (planes innermost) into the grid (planes outermost), every axis
// wrapped. Bins of one parity class never overlap, so this needs no atomics.
template <typename R>
LF_ALWAYS_INLINE void add_sub3_body(const Work3<R>& a, const Bin3& bin, const R* __restrict__ sub) {
  const int64_t nbp = bin.nb;
  const int64_t row_len = 2 * (int64_t)a.n[2];
  const int64_t plane = row_len * a.n[1] * a.n[0];
  // cells lo2 .. lo2 + sub2 - 1 of a row: a first run up to the grid's edge, then the wrap
  const int first = std::min(bin.sub[2], a.n[2] - bin.lo[2]);
  for (int i0 = 0; i0 < bin.sub[0]; ++i0) {
    const int c0 = bin.lo[0] + i0 < a.n[0] ? bin.lo[0] + i0 : bin.lo[0] + i0 - a.n[0];
    for (int i1 = 0; i1 < bin.sub[1]; ++i1) {
      const int c1 = bin.lo[1] + i1 < a.n[1] ? bin.lo[1] + i1 : bin.lo[1] + i1 - a.n[1];
      const R* __restrict__ s = sub + ((int64_t)i0 * bin.sub[1] + i1) * bin.ld;
      R* g = a.grid + bin.b0 * plane + ((int64_t)c0 * a.n[1] + c1) * row_len;
      {
        // the next row of the sub-grid, in the grid
        const int j1 = i1 + 1 < bin.sub[1] ? i1 + 1 : 0;
        const int j0 = i1 + 1 < bin.sub[1] ? i0 : i0 + 1;
        if (j0 < bin.sub[0]) {
          const int d0 = bin.lo[0] + j0 < a.n[0] ? bin.lo[0] + j0 : bin.lo[0] + j0 - a.n[0];
          const int d1 = bin.lo[1] + j1 < a.n[1] ? bin.lo[1] + j1 : bin.lo[1] + j1 - a.n[1];
          prefetch_rows(a.grid + bin.b0 * plane + ((int64_t)d0 * a.n[1] + d1) * row_len, plane,
                        nbp, bin.lo[2], bin.sub[2], a.n[2], true);
        }
      }
      // cell by cell, the nb planes side by side (nb independent streams in flight)
      R* dst[kMaxRun / 4];
      for (int64_t b = 0; b < nbp; ++b) dst[b] = g + b * plane;
      for (int c = 0; c < bin.sub[2]; ++c) {
        const int64_t at = 2 * (int64_t)(c < first ? bin.lo[2] + c : c - first);
        const R* __restrict__ v = s + 2 * c * nbp;
        for (int64_t b = 0; b < nbp; ++b) {
          dst[b][at] += v[2 * b];
          dst[b][at + 1] += v[2 * b + 1];
        }
      }
    }
  }
}

// acc = sum_r kzy[r] * row_r over K vectors of the run (rows at corner + roff[r]), stored
// to out: the K accumulators stay in registers while the rows stream past.
template <typename R, int K>
LF_ALWAYS_INLINE void dot_rows(const R* __restrict__ corner, const int64_t* __restrict__ roff,
                               const R* __restrict__ kzy, int n_rows, R* __restrict__ out) {
  using V = typename Vec<R>::type;
  constexpr int L = Vec<R>::kLanes;
  V acc[K] = {};
  for (int r = 0; r < n_rows; ++r) {
    const R* row = corner + roff[r];
    const R y = kzy[r];
    for (int q = 0; q < K; ++q) acc[q] += y * vload(row + q * L);
  }
  for (int q = 0; q < K; ++q) vstore(out + q * L, acc[q]);
}

// Copies a box of the grid (planes b0 .. b0 + nb - 1, every axis wrapped) into the
// sub-grid [ext0][ext1][ld], planes innermost, and zeroes each row's slack.
template <typename R>
LF_ALWAYS_INLINE void gather_box_body(const Work3<R>& a, const Box3& box, R* __restrict__ sub) {
  const int64_t nbp = box.nb;
  const int64_t row_len = 2 * (int64_t)a.n[2];
  const int64_t plane = row_len * a.n[1] * a.n[0];
  const int first = std::min(box.ext[2], a.n[2] - box.lo[2]);
  const int64_t used = 2 * (int64_t)box.ext[2] * nbp;
  for (int i0 = 0; i0 < box.ext[0]; ++i0) {
    const int c0 = box.lo[0] + i0 < a.n[0] ? box.lo[0] + i0 : box.lo[0] + i0 - a.n[0];
    for (int i1 = 0; i1 < box.ext[1]; ++i1) {
      const int c1 = box.lo[1] + i1 < a.n[1] ? box.lo[1] + i1 : box.lo[1] + i1 - a.n[1];
      R* __restrict__ s = sub + ((int64_t)i0 * box.ext[1] + i1) * box.ld;
      const R* g = a.grid + box.b0 * plane + ((int64_t)c0 * a.n[1] + c1) * row_len;
      {
        // the next row of the box, in the grid
        const int j1 = i1 + 1 < box.ext[1] ? i1 + 1 : 0;
        const int j0 = i1 + 1 < box.ext[1] ? i0 : i0 + 1;
        if (j0 < box.ext[0]) {
          const int d0 = box.lo[0] + j0 < a.n[0] ? box.lo[0] + j0 : box.lo[0] + j0 - a.n[0];
          const int d1 = box.lo[1] + j1 < a.n[1] ? box.lo[1] + j1 : box.lo[1] + j1 - a.n[1];
          prefetch_rows(a.grid + box.b0 * plane + ((int64_t)d0 * a.n[1] + d1) * row_len, plane,
                        nbp, box.lo[2], box.ext[2], a.n[2], false);
        }
      }
      // cell by cell, the nb planes' values side by side: nb independent loads in flight
      const R* src[kMaxRun / 4];
      for (int64_t b = 0; b < nbp; ++b) src[b] = g + b * plane;
      for (int c = 0; c < box.ext[2]; ++c) {
        const int64_t at = 2 * (int64_t)(c < first ? box.lo[2] + c : c - first);
        R* __restrict__ d = s + 2 * c * nbp;
        for (int64_t b = 0; b < nbp; ++b) {
          d[2 * b] = src[b][at];
          d[2 * b + 1] = src[b][at + 1];
        }
      }
      std::fill(s + used, s + box.ld, R(0));
    }
  }
}

// Interpolation of a box's points from its gathered sub-grid: per point, the sums over the
// w^2 stencil rows of the whole run (w cells x nb planes), then per plane the w-term dot
// with kx. The run's last vector reads up to kMaxLanes - 1 reals past it (other cells of
// the row or its zeroed slack), into lanes that are never used.
template <typename R>
LF_ALWAYS_INLINE void interp3_box_body(const Work3<R>& a, const Box3& box,
                                       const R* __restrict__ sub) {
  constexpr int L = Vec<R>::kLanes;
  const int w = a.width;
  const int64_t nbp = box.nb;
  const int run = 2 * w * (int)nbp;
  const int nv = (run + L - 1) / L;
  const int64_t stride = 2 * a.n_points;
  alignas(64) R acc[kMaxRun + kMaxLanes];
  int64_t roff[nu::kMaxWidth * nu::kMaxWidth];
  R kzy[nu::kMaxWidth * nu::kMaxWidth];
  for (int i0 = 0; i0 < w; ++i0) {
    for (int i1 = 0; i1 < w; ++i1) roff[i0 * w + i1] = ((int64_t)i0 * box.ext[1] + i1) * box.ld;
  }
  const int n_rows = w * w;
  for (int64_t p = box.p0; p < box.p1; ++p) {
    const R* __restrict__ kz = a.weights + p * 3 * w;
    const R* __restrict__ ky = kz + w;
    const R* __restrict__ kx = ky + w;
    const int32_t* s = a.start + 3 * p;
    const R* corner = sub + ((int64_t)(s[0] - box.lo[0]) * box.ext[1] + (s[1] - box.lo[1])) * box.ld +
                      2 * (int64_t)(s[2] - box.lo[2]) * nbp;
    for (int i0 = 0; i0 < w; ++i0) {
      for (int i1 = 0; i1 < w; ++i1) kzy[i0 * w + i1] = kz[i0] * ky[i1];
    }
    int u = 0;
    for (; u + 4 <= nv; u += 4) dot_rows<R, 4>(corner + u * L, roff, kzy, n_rows, acc + u * L);
    switch (nv - u) {
      case 3: dot_rows<R, 3>(corner + u * L, roff, kzy, n_rows, acc + u * L); break;
      case 2: dot_rows<R, 2>(corner + u * L, roff, kzy, n_rows, acc + u * L); break;
      case 1: dot_rows<R, 1>(corner + u * L, roff, kzy, n_rows, acc + u * L); break;
      default: break;
    }
    R* __restrict__ out = a.values + box.b0 * stride + 2 * a.order[p];
    for (int64_t b = 0; b < nbp; ++b) {
      R re = R(0), im = R(0);
      for (int j = 0; j < w; ++j) {
        re += kx[j] * acc[2 * (j * nbp + b)];
        im += kx[j] * acc[2 * (j * nbp + b) + 1];
      }
      out[b * stride] = re;
      out[b * stride + 1] = im;
    }
  }
}

// Interpolation of sorted points p0 .. p1 - 1 straight from the grid (planes outermost),
// for all planes: the path of points too sparse for a gathered box.
template <typename R, int W>
LF_ALWAYS_INLINE void interp3_body(const Work3<R>& a, int64_t p0, int64_t p1) {
  const int w = a.width;
  const int64_t row_len = 2 * (int64_t)a.n[2];
  const int64_t plane = row_len * a.n[1] * a.n[0];
  const int64_t stride = 2 * a.n_points;
  const int n_rows = w * w;
  int64_t roff[nu::kMaxWidth * nu::kMaxWidth];
  R kzy[nu::kMaxWidth * nu::kMaxWidth];
  int64_t cols[nu::kMaxWidth];
  for (int64_t p = p0; p < p1; ++p) {
    const R* __restrict__ kz = a.weights + p * 3 * w;
    const R* __restrict__ ky = kz + w;
    const R* __restrict__ kx = ky + w;
    const int32_t* s = a.start + 3 * p;
    int64_t off1[nu::kMaxWidth];
    for (int i1 = 0; i1 < w; ++i1) {
      const int c1 = s[1] + i1 < a.n[1] ? s[1] + i1 : s[1] + i1 - a.n[1];
      off1[i1] = c1 * row_len;
    }
    for (int i0 = 0; i0 < w; ++i0) {
      const int c0 = s[0] + i0 < a.n[0] ? s[0] + i0 : s[0] + i0 - a.n[0];
      const int64_t off0 = (int64_t)c0 * a.n[1] * row_len;
      for (int i1 = 0; i1 < w; ++i1) {
        roff[i0 * w + i1] = off0 + off1[i1];
        kzy[i0 * w + i1] = kz[i0] * ky[i1];
      }
    }
    for (int j = 0; j < w; ++j) cols[j] = 2 * (int64_t)(s[2] + j < a.n[2] ? s[2] + j : s[2] + j - a.n[2]);
    R* __restrict__ out = a.values + 2 * a.order[p];
    if constexpr (kVectorWidth<W>) {
      using V = typename Vec<R>::type;
      constexpr int NV = Row<R, W>::kVectors, L = Vec<R>::kLanes;
      // kx, zero-padded to the reals kx_pairs reads
      alignas(64) R kxl[Row<R, W>::kReads + W] = {};
      for (int j = 0; j < W; ++j) kxl[j] = kx[j];
      V kxp[NV];
      Row<R, W>::kx_pairs(kxl, kxp);
      const int64_t s2 = 2 * (int64_t)s[2];
      if (s2 + NV * L <= row_len) {
        for (int64_t b = 0; b < a.batch; ++b) {
          const R* __restrict__ g = a.grid + b * plane + s2;
          V acc[NV] = {};
          for (int r = 0; r < W * W; ++r) {
            const R* row = g + roff[r];
            const R y = kzy[r];
            for (int u = 0; u < NV; ++u) acc[u] += y * vload(row + u * L);
          }
          V t = acc[0] * kxp[0];
          for (int u = 1; u < NV; ++u) t += acc[u] * kxp[u];
          Vec<R>::fold(t, out + b * stride, out + b * stride + 1);
        }
      } else {
        // the run wraps, or its vectors would read past the row's end: copy each stencil
        // row to a zero-padded buffer first
        alignas(64) R tmp[NV * L] = {};
        for (int64_t b = 0; b < a.batch; ++b) {
          const R* __restrict__ g = a.grid + b * plane;
          V acc[NV] = {};
          for (int r = 0; r < W * W; ++r) {
            const R* row = g + roff[r];
            for (int j = 0; j < W; ++j) {
              tmp[2 * j] = row[cols[j]];
              tmp[2 * j + 1] = row[cols[j] + 1];
            }
            const R y = kzy[r];
            for (int u = 0; u < NV; ++u) acc[u] += y * vload(tmp + u * L);
          }
          V t = acc[0] * kxp[0];
          for (int u = 1; u < NV; ++u) t += acc[u] * kxp[u];
          Vec<R>::fold(t, out + b * stride, out + b * stride + 1);
        }
      }
    } else {
      for (int64_t b = 0; b < a.batch; ++b) {
        const R* __restrict__ g = a.grid + b * plane;
        R re = R(0), im = R(0);
        for (int r = 0; r < n_rows; ++r) {
          const R* row = g + roff[r];
          R ar = R(0), ai = R(0);
          for (int j = 0; j < w; ++j) {
            ar += kx[j] * row[cols[j]];
            ai += kx[j] * row[cols[j] + 1];
          }
          re += kzy[r] * ar;
          im += kzy[r] * ai;
        }
        out[b * stride] = re;
        out[b * stride + 1] = im;
      }
    }
  }
}

// The hot functions, one clone per instruction set (common/simd.h). A bin: zero its
// sub-grid, spread its points, add the sub-grid to the grid.
LF_SIMD_CLONES((template <typename R>), spread3_bin, (const Work3<R>& a, const Bin3& bin, R* sub), {
  std::fill(sub, sub + (int64_t)bin.sub[0] * bin.sub[1] * bin.ld, R(0));
  spread3_body<R>(a, bin, sub);
  add_sub3_body<R>(a, bin, sub);
})
LF_SIMD_CLONES((template <typename R>), interp3_range,
               (const Work3<R>& a, int64_t p0, int64_t p1),
               { LF_NUFFT_WIDTH_SWITCH(interp3_body, a, p0, p1) })
LF_SIMD_CLONES((template <typename R>), interp3_box, (const Work3<R>& a, const Box3& box, R* sub), {
  gather_box_body<R>(a, box, sub);
  interp3_box_body<R>(a, box, sub);
})

template <typename R>
void spread3_bin(const Work3<R>& a, const Bin3& bin, R* sub, int level) {
  luser_fast::simd::pick(level, &spread3_bin_base<R>, &spread3_bin_avx2<R>,
                         &spread3_bin_avx512<R>)(a, bin, sub);
}

template <typename R>
void interp3_range(const Work3<R>& a, int64_t p0, int64_t p1, int level) {
  luser_fast::simd::pick(level, &interp3_range_base<R>, &interp3_range_avx2<R>,
                         &interp3_range_avx512<R>)(a, p0, p1);
}

template <typename R>
void interp3_box(const Work3<R>& a, const Box3& box, R* sub, int level) {
  luser_fast::simd::pick(level, &interp3_box_base<R>, &interp3_box_avx2<R>,
                         &interp3_box_avx512<R>)(a, box, sub);
}

// A thread's scratch of at least n reals, 64-byte aligned (runs of 8 complex64 planes are
// then whole cache lines).
template <typename R>
R* scratch(int64_t n) {
  thread_local std::vector<R> buf;
  buf.resize(n + 64 / sizeof(R));
  return buf.data() + ((64 - (reinterpret_cast<uintptr_t>(buf.data()) & 63)) & 63) / sizeof(R);
}

// Interpolates sorted points p0 .. p1 - 1: through a gathered box of the grid when the box
// is no larger than the points' stencils together (the points of a bin), else straight
// from the grid.
template <typename R>
void interp3_points(const Work3<R>& a, int64_t p0, int64_t p1, int level) {
  const int w = a.width;
  int lo[3], hi[3];
  for (int d = 0; d < 3; ++d) {
    lo[d] = a.n[d];
    hi[d] = -1;
  }
  for (int64_t p = p0; p < p1; ++p) {
    for (int d = 0; d < 3; ++d) {
      lo[d] = std::min(lo[d], a.start[3 * p + d]);
      hi[d] = std::max(hi[d], a.start[3 * p + d]);
    }
  }
  int64_t ext[3], cells = 1;
  for (int d = 0; d < 3; ++d) {
    ext[d] = hi[d] - lo[d] + w;
    cells *= ext[d];
  }
  const int64_t plane_bytes = cells * 2 * (int64_t)sizeof(R);
  if (cells > (p1 - p0) * w * w * w || plane_bytes > kSubGridBytes) {
    interp3_range<R>(a, p0, p1, level);
    return;
  }
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(kSubGridBytes / plane_bytes,
                                                              kMaxRun / (2 * w)));
  const int64_t n_chunks = (a.batch + most - 1) / most;
  const int64_t chunk = (a.batch + n_chunks - 1) / n_chunks;
  for (int64_t c = 0; c < n_chunks; ++c) {
    Box3 box;
    box.p0 = p0;
    box.p1 = p1;
    for (int d = 0; d < 3; ++d) {
      box.lo[d] = lo[d];
      box.ext[d] = (int)ext[d];
    }
    box.b0 = c * chunk;
    box.nb = std::min(chunk, a.batch - box.b0);
    box.ld = 2 * ext[2] * box.nb + kMaxLanes;
    interp3_box<R>(a, box, scratch<R>(ext[0] * ext[1] * box.ld), level);
  }
}

// Cuts the sorted points into interpolation tasks: runs of at most kInterpChunk points
// whose box (the cells their stencils cover) stays within the cells a task's sub-grid may
// hold for min(B, 8) planes, so a task is (part of) one or two neighbouring bins, never a
// run that jumps across the grid. Returns the task boundaries (first point of each, then M).
std::vector<int64_t> interp_tasks(const int32_t* start, int64_t m, int width, int64_t max_cells) {
  std::vector<int64_t> cuts{0};
  int64_t p = 0;
  while (p < m) {
    int lo[3], hi[3];
    for (int d = 0; d < 3; ++d) lo[d] = hi[d] = start[3 * p + d];
    int64_t q = p + 1;
    for (; q < m && q - p < kInterpChunk; ++q) {
      int nlo[3], nhi[3];
      int64_t cells = 1;
      for (int d = 0; d < 3; ++d) {
        nlo[d] = std::min(lo[d], start[3 * q + d]);
        nhi[d] = std::max(hi[d], start[3 * q + d]);
        cells *= (int64_t)(nhi[d] - nlo[d] + width);
      }
      if (cells > max_cells) break;
      for (int d = 0; d < 3; ++d) {
        lo[d] = nlo[d];
        hi[d] = nhi[d];
      }
    }
    cuts.push_back(q);
    p = q;
  }
  return cuts;
}

// --- ops ---------------------------------------------------------------------------------

// Spreads values into grid [B, n0, n1, n2] (zeroed first; contiguous, values' dtype).
void spread3_into(const at::Tensor& values, const at::Tensor& order, const at::Tensor& start,
                  const at::Tensor& weights, const at::Tensor& bin_offsets, int64_t n0,
                  int64_t n1, int64_t n2, int64_t nb0, int64_t nb1, int64_t nb2, int64_t simd,
                  at::Tensor& grid, const char* fn) {
  check_values(values, fn);
  const int64_t batch = values.size(0), m = values.size(1);
  check_plan3(order, start, weights, m, n0, n1, n2, real_type(values.scalar_type()), fn);
  const int64_t width = weights.size(2);
  const int64_t n_bins = check_bins3(n0, n1, n2, nb0, nb1, nb2, width, fn);
  const int64_t* off = check_bin_offsets(bin_offsets, n_bins, m, fn);
  const int32_t* st = start.data_ptr<int32_t>();
  const int n[3] = {(int)n0, (int)n1, (int)n2};
  const int nb[3] = {(int)nb0, (int)nb1, (int)nb2};
  // the largest sub-grid (longest bin per axis plus the halo) for one plane
  int64_t longest[3];
  for (int d = 0; d < 3; ++d) longest[d] = (n[d] + nb[d] - 1) / nb[d] + width - 1;
  const int64_t cells = longest[0] * longest[1] * longest[2];
  TORCH_CHECK(longest[0] * longest[1] * (2 * longest[2] + kMaxLanes) <= kMaxSubGridReals, fn,
              ": bins too large (", longest[0], " x ", longest[1], " x ", longest[2],
              " cells with the halo); use more bins");
  check_points_in_bins<3>(st, off, n, nb, fn);
  const int level = resolve_simd(simd, fn);
  check_out(grid, values, {batch, n0, n1, n2}, fn);
  const at::Tensor v = values.contiguous();
  grid.zero_();
  if (m == 0 || batch == 0) return;

  AT_DISPATCH_FLOATING_TYPES(real_type(v.scalar_type()), "_nufft3_spread", [&] {
    using R = scalar_t;
    // the values in sorted point order with the planes innermost, [M][B]
    at::Tensor gathered = at::empty({m, batch}, v.options());
    R* dst = reinterpret_cast<R*>(gathered.data_ptr());
    const int64_t* ord = order.data_ptr<int64_t>();
    gather_sorted(reinterpret_cast<const R*>(v.data_ptr()), ord, m, batch, dst);
    Work3<R> a{reinterpret_cast<R*>(grid.data_ptr()), dst, ord, st, weights.data_ptr<R>(), batch,
               m, (int)width, {n[0], n[1], n[2]}};
    // planes per task: the sub-grid stays within kSubGridBytes and a run within kMaxRun
    // (the planes split evenly between the chunks)
    const int64_t fit = kSubGridBytes / (cells * 2 * (int64_t)sizeof(R));
    const int64_t most = std::max<int64_t>(1, std::min<int64_t>(fit, kMaxRun / (2 * width)));
    int64_t n_chunks = (batch + most - 1) / most;
    // more chunks where a parity class has fewer bins than there are threads (small grids)
    const int64_t class_bins = (nb0 / 2) * (nb1 / 2) * (nb2 / 2);
    const int64_t threads = at::get_num_threads();
    if (class_bins * n_chunks < threads) {
      n_chunks = std::min<int64_t>(batch, (threads + class_bins - 1) / class_bins);
    }
    const int64_t chunk = (batch + n_chunks - 1) / n_chunks;
    for (int parity = 0; parity < 8; ++parity) {
      // this parity class's non-empty bins x plane chunks, heaviest bins first
      const std::vector<int64_t> bins = parity_class_bins<3>(parity, nb, off);
      run_dynamic((int64_t)bins.size() * n_chunks, [&](int64_t task) {
        const int64_t id = bins[task / n_chunks], c = task % n_chunks;
        int bi[3];
        bin_axes<3>(id, nb, bi);
        Bin3 bin;
        bin.p0 = off[id];
        bin.p1 = off[id + 1];
        for (int d = 0; d < 3; ++d) {
          bin.lo[d] = nu::bin_start(bi[d], n[d], nb[d]);
          bin.sub[d] = nu::bin_start(bi[d] + 1, n[d], nb[d]) - bin.lo[d] + (int)width - 1;
        }
        bin.b0 = c * chunk;
        bin.nb = std::min(chunk, batch - bin.b0);
        bin.ld = 2 * (int64_t)bin.sub[2] * bin.nb + kMaxLanes;
        spread3_bin<R>(a, bin, scratch<R>((int64_t)bin.sub[0] * bin.sub[1] * bin.ld), level);
      });
    }
  });
}

void nufft3_spread_out_cpu(const at::Tensor& values, const at::Tensor& order,
                           const at::Tensor& start, const at::Tensor& weights,
                           const at::Tensor& bin_offsets, int64_t n0, int64_t n1, int64_t n2,
                           int64_t nb0, int64_t nb1, int64_t nb2, int64_t simd, at::Tensor out) {
  spread3_into(values, order, start, weights, bin_offsets, n0, n1, n2, nb0, nb1, nb2, simd, out,
               "_nufft3_spread_out");
}

at::Tensor nufft3_interp_cpu(const at::Tensor& grid, const at::Tensor& order,
                             const at::Tensor& start, const at::Tensor& weights, int64_t simd) {
  const char* fn = "_nufft3_interp";
  check_grid_tensor(grid, 3, "[B, n0, n1, n2]", fn);
  const int64_t batch = grid.size(0), n0 = grid.size(1), n1 = grid.size(2), n2 = grid.size(3);
  TORCH_CHECK(order.dim() == 1, fn, ": order must be 1-D, got ", order.sizes());
  const int64_t m = order.size(0);
  check_plan3(order, start, weights, m, n0, n1, n2, real_type(grid.scalar_type()), fn);
  const int level = resolve_simd(simd, fn);
  const at::Tensor g = grid.contiguous();
  at::Tensor out = at::empty({batch, m}, g.options());
  if (m == 0 || batch == 0) return out;

  AT_DISPATCH_FLOATING_TYPES(real_type(g.scalar_type()), "_nufft3_interp", [&] {
    using R = scalar_t;
    Work3<R> a{const_cast<R*>(reinterpret_cast<const R*>(g.data_ptr())),
               reinterpret_cast<R*>(out.data_ptr()), order.data_ptr<int64_t>(),
               start.data_ptr<int32_t>(), weights.data_ptr<R>(), batch, m,
               (int)weights.size(2), {(int)n0, (int)n1, (int)n2}};
    const int64_t max_cells =
        kSubGridBytes / (2 * (int64_t)sizeof(R) * std::max<int64_t>(1, std::min<int64_t>(batch, 8)));
    const std::vector<int64_t> cuts = interp_tasks(a.start, m, a.width, max_cells);
    run_dynamic((int64_t)cuts.size() - 1, [&](int64_t i) {
      interp3_points<R>(a, cuts[i], cuts[i + 1], level);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(luser_fast, m) {
  m.def(
      "_nufft3_plan(Tensor ktraj, int n0, int n1, int n2, int width, float beta, int nb0, "
      "int nb1, int nb2) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_nufft3_spread_out(Tensor values, Tensor order, Tensor start, Tensor weights, "
      "Tensor bin_offsets, int n0, int n1, int n2, int nb0, int nb1, int nb2, int simd, "
      "Tensor(a!) out) -> ()");
  m.def(
      "_nufft3_interp(Tensor grid, Tensor order, Tensor start, Tensor weights, int simd=-1) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(luser_fast, CPU, m) {
  m.impl("_nufft3_plan", &nufft3_plan_cpu);
  m.impl("_nufft3_spread_out", &nufft3_spread_out_cpu);
  m.impl("_nufft3_interp", &nufft3_interp_cpu);
}
