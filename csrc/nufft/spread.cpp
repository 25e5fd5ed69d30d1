// CPU kernels of the 2-D NUFFT: the plan (stencils, kernel weights and bin sort of a
// trajectory), spreading (points -> grid, type 1) and interpolation (grid -> points, type
// 2), registered as torch.ops.luser_fast._nufft_plan / _nufft_spread(_out) / _nufft_interp.
// luser_fast/ops/nufft.py wraps them with the FFTs and deapodisation into the public ops.
//
// Layout. A grid is [B, n_r, n_c] complex, rows of n_c cells contiguous; a plan speaks of
// "row" and "column" coordinates (the caller decides which image axis is which). Values
// are [B, M] complex. B (batch x coils) is looped inside each point, so a point's stencil
// and weights are loaded once and applied to all B planes.
//
// Plan (once per trajectory): every point's wrapped stencil start (row, column), its
// 2 x w separable weights evaluated in float64 by es_kernel.h, and a counting sort of the
// points by bin (row-major bins), so neighbouring points are processed together.
//
// Spreading: the values are first gathered into sorted order, planes innermost. Each bin
// spreads its points into a small private sub-grid (the bin plus a w - 1 cell halo) and
// adds it to the grid. Bins of one parity class (row bin mod 2, column bin mod 2) never
// touch the same cell (es_kernel.h), so the four classes run one after the other, each
// with its bins in parallel: no atomics, and the result is deterministic (each cell
// receives its contributions in the same order whatever the thread count). Interpolation
// is a gather, parallel over chunks of sorted points.
//
// Inner loops: per point and plane, one stencil row of w complex cells is a contiguous run
// of 2 w reals, updated as row[j] += ky[i] * kx_v[j] with kx_v = kx * value precomputed
// (interpolation: acc[j] += ky[i] * row[j], then a w-term dot with kx). The width is a
// template parameter (2 .. 16; wider kernels take a runtime-width loop), and the run is
// held in 64-byte vectors; the hot functions are compiled for the baseline ISA and, on
// x86-64, for AVX2 + FMA and AVX-512, chosen at run time (common/simd.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
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

// Sorted points per interpolation task.
constexpr int64_t kInterpChunk = 256;

// --- plan -------------------------------------------------------------------------------

void check_grid(int64_t n_r, int64_t n_c, int64_t width, const char* fn) {
  TORCH_CHECK(width >= 2 && width <= nu::kMaxWidth, fn, ": kernel width must be in [2, ",
              nu::kMaxWidth, "], got ", width);
  TORCH_CHECK(n_r >= 2 * width && n_c >= 2 * width && n_r <= kMaxGridSide && n_c <= kMaxGridSide,
              fn, ": grid size (", n_r, ", ", n_c, ") must be >= 2 * width = ", 2 * width,
              " and <= ", kMaxGridSide);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nufft_plan_cpu(
    const at::Tensor& ktraj, int64_t n_r, int64_t n_c, int64_t width, double beta,
    int64_t nb_r, int64_t nb_c) {
  const char* fn = "_nufft_plan";
  check_ktraj(ktraj, 2, fn);
  check_grid(n_r, n_c, width, fn);
  check_bins(n_r, nb_r, width, "nb_r", fn);
  check_bins(n_c, nb_c, width, "nb_c", fn);
  const at::Tensor k = checked_ktraj(ktraj, beta, fn);
  const double* kp = k.data_ptr<double>();
  const int64_t m = k.size(0);
  const int w = (int)width, nr = (int)n_r, nc = (int)n_c, br = (int)nb_r, bc = (int)nb_c;
  const int64_t n_bins = nb_r * nb_c;

  // wrapped stencil starts and bins, in the input order
  std::vector<int32_t> s_in(2 * m);
  std::vector<int32_t> bin(m);
  at::parallel_for(0, m, 4096, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int sr = nu::wrap_cell(nu::stencil_start(nu::grid_position(kp[2 * p], nr), w), nr);
      const int sc = nu::wrap_cell(nu::stencil_start(nu::grid_position(kp[2 * p + 1], nc), w), nc);
      s_in[2 * p] = sr;
      s_in[2 * p + 1] = sc;
      bin[p] = nu::bin_of_cell(sr, nr, br) * bc + nu::bin_of_cell(sc, nc, bc);
    }
  });
  const auto [order, offsets] = sort_by_bin(bin, m, n_bins, k);
  const int64_t* ord = order.data_ptr<int64_t>();
  at::Tensor start = at::empty({m, 2}, k.options().dtype(at::kInt));
  at::Tensor weights = at::empty({m, 2, width}, k.options());
  int32_t* st = start.data_ptr<int32_t>();
  double* wt = weights.data_ptr<double>();
  at::parallel_for(0, m, 1024, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t q = ord[p];
      st[2 * p] = s_in[2 * q];
      st[2 * p + 1] = s_in[2 * q + 1];
      for (int d = 0; d < 2; ++d) {
        nu::stencil_weights(kp[2 * q + d], d == 0 ? nr : nc, w, beta, wt + (2 * p + d) * w);
      }
    }
  });
  return {order, start, weights, offsets};
}

// --- argument checks of spread / interp ---------------------------------------------------

// Validates a plan against the data (spread_cpu.h's check_plan, with this grid's checks).
void check_plan2(const at::Tensor& order, const at::Tensor& start, const at::Tensor& weights,
                 int64_t m, int64_t n_r, int64_t n_c, at::ScalarType real, const char* fn) {
  check_plan<2>(order, start, weights, m, {n_r, n_c}, real, fn,
                [&](int64_t width) { check_grid(n_r, n_c, width, fn); });
}

template <typename R>
struct Work {
  R* grid;          // [B, n_r, n_c] complex, as interleaved reals
  R* values;        // interp: [B, M] out; spread: [M, B] in (sorted order); complex
  const int64_t* order;
  const int32_t* start;
  const R* weights;  // [M, 2, width]
  int64_t batch, n_points;
  int width, n_r, n_c;
};

// One bin's spreading task: its points, its first cell, its sub-grid shape, and the
// planes (batch entries) it covers.
struct Bin {
  int64_t p0, p1;    // sorted points
  int lo_r, lo_c;    // first cell
  int sub_r, sub_c;  // sub-grid rows and columns (bin length + w - 1)
  int64_t sub_ld;    // reals per sub-grid row: 2 sub_c + one vector of slack
  int64_t b0, nb;    // planes b0 .. b0 + nb - 1
};

// A bin's points spread into a private sub-grid [nb][sub_r][sub_ld] (complex cells as
// interleaved reals) holding the bin and its w - 1 cell halo, for planes b0 .. b0 + nb - 1.
// The sub-grid is small and contiguous; spreading straight into the big grid would cycle
// through rows 2 n0 reals apart (a power of two), all in the same few cache sets. The
// vector stores run past a row's 2 w reals into the row's slack (or the next cells of the
// row, with the zero lanes), never past sub_ld. Values come gathered in sorted order,
// [M][B] (a.values, see spread_into), so a point's planes are one contiguous run.
template <typename R, int W>
LF_ALWAYS_INLINE void spread_body(const Work<R>& a, const Bin& bin, R* __restrict__ sub) {
  const int64_t ld = bin.sub_ld;
  const int64_t plane = ld * bin.sub_r;
  const int64_t n_weights = a.n_points * 2 * a.width;
  for (int64_t p = bin.p0; p < bin.p1; ++p) {
    const R* __restrict__ ky = a.weights + p * 2 * a.width;
    const R* __restrict__ kx = ky + a.width;
    R* corner = sub + (a.start[2 * p] - bin.lo_r) * ld + 2 * (a.start[2 * p + 1] - bin.lo_c);
    const R* __restrict__ v = a.values + 2 * (p * a.batch + bin.b0);
    bool scalar = true;
    if constexpr (kVectorWidth<W>) {
      using V = typename Vec<R>::type;
      constexpr int NV = Row<R, W>::kVectors, L = Vec<R>::kLanes;
      if (p * 2 * W + W + Row<R, W>::kReads <= n_weights) {
        scalar = false;
        V kxp[NV];
        Row<R, W>::kx_pairs(kx, kxp);
        for (int64_t b = 0; b < bin.nb; ++b) {
          const V vp = Vec<R>::pair(v + 2 * b);
          V kv[NV];
          for (int u = 0; u < NV; ++u) kv[u] = kxp[u] * vp;
          R* s = corner + b * plane;
          for (int i = 0; i < W; ++i) {
            R* row = s + i * ld;
            const R y = ky[i];
            for (int u = 0; u < NV; ++u) vstore(row + u * L, vload(row + u * L) + y * kv[u]);
          }
        }
      }
    }
    if (scalar) {
      const int w = a.width;
      for (int64_t b = 0; b < bin.nb; ++b) {
        const R vr = v[2 * b], vi = v[2 * b + 1];
        R* s = corner + b * plane;
        for (int i = 0; i < w; ++i) {
          R* row = s + i * ld;
          for (int j = 0; j < w; ++j) {
            const R k = ky[i] * kx[j];
            row[2 * j] += k * vr;
            row[2 * j + 1] += k * vi;
          }
        }
      }
    }
  }
}

// Adds a bin's sub-grid into the grid (rows and columns wrapped). Bins of one parity
// class never overlap, so this needs no atomics.
template <typename R>
LF_ALWAYS_INLINE void add_sub_body(const Work<R>& a, const Bin& bin, const R* __restrict__ sub) {
  const int64_t grid_len = 2 * (int64_t)a.n_c;
  const int64_t sub_len = 2 * (int64_t)bin.sub_c;
  // columns lo_c .. lo_c + sub_c - 1: a first run up to the grid's edge, then the wrap
  const int64_t first = 2 * (int64_t)std::min(bin.sub_c, a.n_c - bin.lo_c);
  for (int64_t b = 0; b < bin.nb; ++b) {
    for (int i = 0; i < bin.sub_r; ++i) {
      const int r = bin.lo_r + i < a.n_r ? bin.lo_r + i : bin.lo_r + i - a.n_r;
      R* __restrict__ g = a.grid + ((bin.b0 + b) * a.n_r + r) * grid_len;
      const R* __restrict__ s = sub + (b * bin.sub_r + i) * bin.sub_ld;
      R* __restrict__ g0 = g + 2 * (int64_t)bin.lo_c;
      for (int64_t j = 0; j < first; ++j) g0[j] += s[j];
      for (int64_t j = first; j < sub_len; ++j) g[j - first] += s[j];
    }
  }
}

// Interpolation of sorted points p0 .. p1 - 1 from the grid, for all planes. Rows wrap
// through a per-point table; a stencil whose vectors would cross the row's end takes the
// scalar loop (which also wraps columns).
template <typename R, int W>
LF_ALWAYS_INLINE void interp_body(const Work<R>& a, int64_t p0, int64_t p1) {
  const int w = a.width;
  const int64_t row_len = 2 * (int64_t)a.n_c;
  const int64_t plane = row_len * a.n_r;
  const int64_t stride = 2 * a.n_points;
  for (int64_t p = p0; p < p1; ++p) {
    const R* __restrict__ ky = a.weights + p * 2 * w;
    const R* __restrict__ kx = ky + w;
    const int sr = a.start[2 * p], sc = a.start[2 * p + 1];
    int64_t rows[nu::kMaxWidth];
    for (int i = 0; i < w; ++i) rows[i] = (sr + i < a.n_r ? sr + i : sr + i - a.n_r) * row_len;
    R* __restrict__ out = a.values + 2 * a.order[p];
    bool scalar = true;
    if constexpr (kVectorWidth<W>) {
      using V = typename Vec<R>::type;
      constexpr int NV = Row<R, W>::kVectors, L = Vec<R>::kLanes;
      if (2 * (int64_t)sc + NV * L <= row_len &&
          p * 2 * W + W + Row<R, W>::kReads <= a.n_points * 2 * (int64_t)w) {
        scalar = false;
        V kxp[NV];
        Row<R, W>::kx_pairs(kx, kxp);
        for (int64_t b = 0; b < a.batch; ++b) {
          const R* __restrict__ g = a.grid + b * plane + 2 * (int64_t)sc;
          V acc[NV] = {};
          for (int i = 0; i < W; ++i) {
            const R* row = g + rows[i];
            const R y = ky[i];
            for (int u = 0; u < NV; ++u) acc[u] += y * vload(row + u * L);
          }
          V t = acc[0] * kxp[0];
          for (int u = 1; u < NV; ++u) t += acc[u] * kxp[u];
          Vec<R>::fold(t, out + b * stride, out + b * stride + 1);
        }
      }
    }
    if (scalar) {
      for (int64_t b = 0; b < a.batch; ++b) {
        const R* __restrict__ g = a.grid + b * plane;
        R re = R(0), im = R(0);
        for (int i = 0; i < w; ++i) {
          const R* row = g + rows[i];
          R ar = R(0), ai = R(0);
          for (int j = 0; j < w; ++j) {
            const int c = sc + j < a.n_c ? sc + j : sc + j - a.n_c;
            ar += kx[j] * row[2 * c];
            ai += kx[j] * row[2 * c + 1];
          }
          re += ky[i] * ar;
          im += ky[i] * ai;
        }
        out[b * stride] = re;
        out[b * stride + 1] = im;
      }
    }
  }
}

// The hot functions, one clone per instruction set (common/simd.h). A bin: zero its
// sub-grid, spread its points, add the sub-grid to the grid.
LF_SIMD_CLONES((template <typename R>), spread_bin, (const Work<R>& a, const Bin& bin, R* sub), {
  std::fill(sub, sub + bin.nb * bin.sub_r * bin.sub_ld, R(0));
  LF_NUFFT_WIDTH_SWITCH(spread_body, a, bin, sub)
  add_sub_body<R>(a, bin, sub);
})
LF_SIMD_CLONES((template <typename R>), interp_range, (const Work<R>& a, int64_t p0, int64_t p1),
               { LF_NUFFT_WIDTH_SWITCH(interp_body, a, p0, p1) })

template <typename R>
void spread_bin(const Work<R>& a, const Bin& bin, R* sub, int level) {
  luser_fast::simd::pick(level, &spread_bin_base<R>, &spread_bin_avx2<R>,
                         &spread_bin_avx512<R>)(a, bin, sub);
}

template <typename R>
void interp_range(const Work<R>& a, int64_t p0, int64_t p1, int level) {
  luser_fast::simd::pick(level, &interp_range_base<R>, &interp_range_avx2<R>,
                         &interp_range_avx512<R>)(a, p0, p1);
}

// --- ops ---------------------------------------------------------------------------------

// Spreads values into grid [B, n_r, n_c] (zeroed first; contiguous, values' dtype).
void spread_into(const at::Tensor& values, const at::Tensor& order, const at::Tensor& start,
                 const at::Tensor& weights, const at::Tensor& bin_offsets, int64_t n_r,
                 int64_t n_c, int64_t nb_r, int64_t nb_c, int64_t simd, at::Tensor& grid,
                 const char* fn) {
  check_values(values, fn);
  const int64_t batch = values.size(0), m = values.size(1);
  check_plan2(order, start, weights, m, n_r, n_c, real_type(values.scalar_type()), fn);
  const int64_t width = weights.size(2);
  check_bins(n_r, nb_r, width, "nb_r", fn);
  check_bins(n_c, nb_c, width, "nb_c", fn);
  const int64_t* off = check_bin_offsets(bin_offsets, nb_r * nb_c, m, fn);
  const int32_t* st = start.data_ptr<int32_t>();
  const int nb[2] = {(int)nb_r, (int)nb_c};
  check_points_in_bins<2>(st, off, {(int)n_r, (int)n_c}, nb, fn);
  const int level = resolve_simd(simd, fn);
  check_out(grid, values, {batch, n_r, n_c}, fn);
  const at::Tensor v = values.contiguous();
  grid.zero_();
  if (m == 0 || batch == 0) return;

  // the values in sorted point order with the planes innermost, [M][B]
  at::Tensor gathered = at::empty({m, batch}, v.options());
  AT_DISPATCH_FLOATING_TYPES(real_type(v.scalar_type()), "_nufft_spread", [&] {
    using R = scalar_t;
    R* dst = reinterpret_cast<R*>(gathered.data_ptr());
    const int64_t* ord = order.data_ptr<int64_t>();
    gather_sorted(reinterpret_cast<const R*>(v.data_ptr()), ord, m, batch, dst);
    Work<R> a{reinterpret_cast<R*>(grid.data_ptr()), dst, ord, st, weights.data_ptr<R>(), batch,
              m, (int)width, (int)n_r, (int)n_c};
    // planes per task: a bin's sub-grid for that many planes stays within ~64 KiB
    const int64_t cells = (n_r / nb_r + width) * (n_c / nb_c + width);
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(batch, (int64_t(4) << 10) / cells));
    const int64_t n_chunks = (batch + chunk - 1) / chunk;
    for (int parity = 0; parity < 4; ++parity) {
      // this parity class's non-empty bins x plane chunks, heaviest bins first
      const std::vector<int64_t> bins = parity_class_bins<2>(parity, nb, off);
      run_dynamic((int64_t)bins.size() * n_chunks, [&](int64_t task) {
        const int64_t id = bins[task / n_chunks], c = task % n_chunks;
        const int br = (int)(id / nb_c), bc = (int)(id % nb_c);
        Bin bin;
        bin.p0 = off[id];
        bin.p1 = off[id + 1];
        bin.lo_r = nu::bin_start(br, (int)n_r, (int)nb_r);
        bin.lo_c = nu::bin_start(bc, (int)n_c, (int)nb_c);
        bin.sub_r = nu::bin_start(br + 1, (int)n_r, (int)nb_r) - bin.lo_r + (int)width - 1;
        bin.sub_c = nu::bin_start(bc + 1, (int)n_c, (int)nb_c) - bin.lo_c + (int)width - 1;
        bin.sub_ld = 2 * (int64_t)bin.sub_c + 16;
        bin.b0 = c * chunk;
        bin.nb = std::min(chunk, batch - bin.b0);
        thread_local std::vector<R> sub;
        sub.resize(bin.nb * bin.sub_r * bin.sub_ld);
        spread_bin<R>(a, bin, sub.data(), level);
      });
    }
  });
}

at::Tensor nufft_spread_cpu(const at::Tensor& values, const at::Tensor& order, const at::Tensor& start,
                            const at::Tensor& weights, const at::Tensor& bin_offsets, int64_t n_r,
                            int64_t n_c, int64_t nb_r, int64_t nb_c, int64_t simd) {
  TORCH_CHECK(values.dim() == 2, "_nufft_spread: values must have shape [B, M], got ",
              values.sizes());
  TORCH_CHECK(n_r >= 1 && n_c >= 1 && n_r <= kMaxGridSide && n_c <= kMaxGridSide,
              "_nufft_spread: grid size (", n_r, ", ", n_c, ") out of range");
  at::Tensor grid = at::empty({values.size(0), n_r, n_c}, values.options());
  spread_into(values, order, start, weights, bin_offsets, n_r, n_c, nb_r, nb_c, simd, grid,
              "_nufft_spread");
  return grid;
}

void nufft_spread_out_cpu(const at::Tensor& values, const at::Tensor& order, const at::Tensor& start,
                          const at::Tensor& weights, const at::Tensor& bin_offsets, int64_t n_r,
                          int64_t n_c, int64_t nb_r, int64_t nb_c, int64_t simd, at::Tensor out) {
  spread_into(values, order, start, weights, bin_offsets, n_r, n_c, nb_r, nb_c, simd, out,
              "_nufft_spread_out");
}


at::Tensor nufft_interp_cpu(const at::Tensor& grid, const at::Tensor& order, const at::Tensor& start,
                            const at::Tensor& weights, int64_t simd) {
  const char* fn = "_nufft_interp";
  check_grid_tensor(grid, 2, "[B, n_r, n_c]", fn);
  const int64_t batch = grid.size(0), n_r = grid.size(1), n_c = grid.size(2);
  TORCH_CHECK(order.dim() == 1, fn, ": order must be 1-D, got ", order.sizes());
  const int64_t m = order.size(0);
  check_plan2(order, start, weights, m, n_r, n_c, real_type(grid.scalar_type()), fn);
  const int level = resolve_simd(simd, fn);
  const at::Tensor g = grid.contiguous();
  at::Tensor out = at::empty({batch, m}, g.options());
  if (m == 0 || batch == 0) return out;

  AT_DISPATCH_FLOATING_TYPES(real_type(g.scalar_type()), "_nufft_interp", [&] {
    using R = scalar_t;
    Work<R> a{const_cast<R*>(reinterpret_cast<const R*>(g.data_ptr())),
              reinterpret_cast<R*>(out.data_ptr()), order.data_ptr<int64_t>(),
              start.data_ptr<int32_t>(), weights.data_ptr<R>(), batch, m,
              (int)weights.size(2), (int)n_r, (int)n_c};
    run_dynamic((m + kInterpChunk - 1) / kInterpChunk, [&](int64_t i) {
      interp_range<R>(a, i * kInterpChunk, std::min(m, (i + 1) * kInterpChunk), level);
    });
  });
  return out;
}

int64_t nufft_simd_level_cpu() { return luser_fast::simd::best_level(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(luser_fast, m) {
  m.def(
      "_nufft_plan(Tensor ktraj, int n_r, int n_c, int width, float beta, int nb_r, int nb_c) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_nufft_spread(Tensor values, Tensor order, Tensor start, Tensor weights, "
      "Tensor bin_offsets, int n_r, int n_c, int nb_r, int nb_c, int simd=-1) -> Tensor");
  m.def(
      "_nufft_spread_out(Tensor values, Tensor order, Tensor start, Tensor weights, "
      "Tensor bin_offsets, int n_r, int n_c, int nb_r, int nb_c, int simd, Tensor(a!) out) -> ()");
  m.def(
      "_nufft_interp(Tensor grid, Tensor order, Tensor start, Tensor weights, int simd=-1) "
      "-> Tensor");
  m.def("_nufft_simd_level() -> int", &nufft_simd_level_cpu);
}

TORCH_LIBRARY_IMPL(luser_fast, CPU, m) {
  m.impl("_nufft_plan", &nufft_plan_cpu);
  m.impl("_nufft_spread", &nufft_spread_cpu);
  m.impl("_nufft_spread_out", &nufft_spread_out_cpu);
  m.impl("_nufft_interp", &nufft_interp_cpu);
}
