// Host-only helpers shared by the CPU spreaders of the 2-D (spread.cpp) and 3-D
// (spread3.cpp) NUFFT: argument limits and checks, the SIMD level and task scheduling,
// and the 64-byte vector types their hot loops are written in. Not compiled by nvcc or
// NVRTC (the CUDA kernels share only es_kernel.h).
#ifndef LUSER_FAST_NUFFT_SPREAD_CPU_H
#define LUSER_FAST_NUFFT_SPREAD_CPU_H

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common/constants.h"
#include "common/simd.h"
#include "nufft/es_kernel.h"

namespace luser_fast {
namespace nufft {
namespace cpu {

// Largest |k| accepted (radians): pi with the reference's slack for float32 pi.
constexpr double kMaxAbsK = luser_fast::kNufftMaxAbsK;
// Largest grid side; keeps cell indices (and 2 * cells + 2 * w) inside int32.
constexpr int64_t kMaxGridSide = int64_t(1) << 28;

// Instruction sets of the hot loops (common/simd.h): -1 best available, 0 baseline,
// 1 AVX2 + FMA, 2 AVX-512.
inline int resolve_simd(int64_t simd, const char* fn) {
  TORCH_CHECK(simd >= -1 && simd <= 2, fn, ": simd must be -1 (auto), 0, 1 or 2, got ", simd);
  const int best = luser_fast::simd::best_level();
  TORCH_CHECK(simd <= best, fn, ": simd level ", simd, " is not supported by this CPU (best ",
              best, ")");
  return simd < 0 ? best : (int)simd;
}

// Run f(i) for i in [0, n_tasks) on torch's intra-op threads, handing out tasks one at a
// time (the bins of a radial trajectory differ in load by orders of magnitude). The atomic
// is the task counter only; no data is shared between tasks.
template <typename F>
void run_dynamic(int64_t n_tasks, const F& f) {
  if (n_tasks <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  at::parallel_for(0, n_workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      for (int64_t i = next.fetch_add(1); i < n_tasks; i = next.fetch_add(1)) f(i);
    }
  });
}

// Bins along one side (es_kernel.h): even, >= 2, each at least width cells.
inline void check_bins(int64_t n, int64_t nb, int64_t width, const char* what, const char* fn) {
  TORCH_CHECK(nb >= 2 && nb % 2 == 0 && n / nb >= width, fn, ": ", what,
              " must be even, >= 2 and leave every bin >= width = ", width, " cells; got ", nb,
              " bins for ", n, " cells");
}

// The real type of a complex64 / complex128 tensor.
inline at::ScalarType real_type(at::ScalarType t) {
  return t == at::kComplexDouble ? at::kDouble : at::kFloat;
}

// --- plan and argument checks (any dimension D: 2 in spread.cpp, 3 in spread3.cpp) -----

// ktraj: float64 [M, D] on the CPU, fewer than 2^31 points.
inline void check_ktraj(const at::Tensor& ktraj, int64_t dims, const char* fn) {
  TORCH_CHECK(ktraj.device().is_cpu(), fn, ": ktraj must be a CPU tensor, got ", ktraj.device());
  TORCH_CHECK(ktraj.scalar_type() == at::kDouble, fn, ": ktraj must be float64, got ",
              ktraj.scalar_type());
  TORCH_CHECK(ktraj.dim() == 2 && ktraj.size(1) == dims, fn, ": ktraj must have shape [M, ", dims,
              "], got ", ktraj.sizes());
  TORCH_CHECK(ktraj.size(0) < (int64_t(1) << 31), fn, ": too many points (", ktraj.size(0), ")");
}

// The plan's beta and frequencies (after check_ktraj and the grid's checks): ktraj
// contiguous, every entry finite radians in [-pi, pi].
inline at::Tensor checked_ktraj(const at::Tensor& ktraj, double beta, const char* fn) {
  TORCH_CHECK(std::isfinite(beta) && beta > 0.0, fn, ": beta must be positive and finite, got ",
              beta);
  const at::Tensor k = ktraj.contiguous();
  const double* kp = k.data_ptr<double>();
  const int64_t n = k.numel();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(std::isfinite(kp[i]) && std::fabs(kp[i]) <= kMaxAbsK, fn,
                ": ktraj must be finite radians in [-pi, pi], got ", kp[i]);
  }
  return k;
}

// Counting sort of the m points by bin (stable: a bin keeps its points in input order):
// returns (order [M], offsets [n_bins + 1]), int64 with k's options.
template <typename BinId>
std::pair<at::Tensor, at::Tensor> sort_by_bin(const std::vector<BinId>& bin, int64_t m,
                                              int64_t n_bins, const at::Tensor& k) {
  at::Tensor offsets = at::zeros({n_bins + 1}, k.options().dtype(at::kLong));
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t p = 0; p < m; ++p) ++off[bin[p] + 1];
  for (int64_t b = 0; b < n_bins; ++b) off[b + 1] += off[b];
  at::Tensor order = at::empty({m}, k.options().dtype(at::kLong));
  int64_t* ord = order.data_ptr<int64_t>();
  std::vector<int64_t> fill(off, off + n_bins);
  for (int64_t p = 0; p < m; ++p) ord[fill[bin[p]]++] = p;
  return {order, offsets};
}

// Validates a D-dimensional plan (order [M] int64, start [M, D] int32, weights [M, D, w] of
// the data's real type) against the data and a grid of n[0] x .. x n[D - 1] cells
// (check_grid(w) checks the grid and the kernel width); every index the kernels use is
// checked here, so a malformed plan raises instead of reading or writing out of bounds.
template <int D, typename CheckGrid>
void check_plan(const at::Tensor& order, const at::Tensor& start, const at::Tensor& weights,
                int64_t m, const int64_t (&n)[D], at::ScalarType real, const char* fn,
                const CheckGrid& check_grid) {
  TORCH_CHECK(order.device().is_cpu() && start.device().is_cpu() && weights.device().is_cpu(), fn,
              ": the plan tensors must be on the CPU");
  TORCH_CHECK(order.scalar_type() == at::kLong && order.dim() == 1 && order.size(0) == m, fn,
              ": order must be int64 of shape [", m, "], got ", order.scalar_type(), " ",
              order.sizes());
  TORCH_CHECK(start.scalar_type() == at::kInt && start.dim() == 2 && start.size(0) == m &&
                  start.size(1) == D,
              fn, ": start must be int32 of shape [", m, ", ", D, "], got ", start.scalar_type(),
              " ", start.sizes());
  TORCH_CHECK(weights.scalar_type() == real && weights.dim() == 3 && weights.size(0) == m &&
                  weights.size(1) == D,
              fn, ": weights must be ", real, " of shape [", m, ", ", D, ", width], got ",
              weights.scalar_type(), " ", weights.sizes());
  check_grid(weights.size(2));
  TORCH_CHECK(order.is_contiguous() && start.is_contiguous() && weights.is_contiguous(), fn,
              ": the plan tensors must be contiguous");
  const int64_t* ord = order.data_ptr<int64_t>();
  const int32_t* st = start.data_ptr<int32_t>();
  bool ok = true;
  for (int64_t p = 0; p < m; ++p) {
    ok &= (ord[p] >= 0) & (ord[p] < m);
    for (int d = 0; d < D; ++d) ok &= (st[D * p + d] >= 0) & (st[D * p + d] < n[d]);
  }
  TORCH_CHECK(ok, fn, ": plan indices out of range (order in [0, M), start in [0, n))");
}

// Values [B, M] complex64 / complex128 on the CPU.
inline void check_values(const at::Tensor& values, const char* fn) {
  TORCH_CHECK(values.device().is_cpu(), fn, ": values must be a CPU tensor, got ", values.device());
  TORCH_CHECK(values.scalar_type() == at::kComplexFloat || values.scalar_type() == at::kComplexDouble,
              fn, ": values must be complex64 or complex128, got ", values.scalar_type());
  TORCH_CHECK(values.dim() == 2, fn, ": values must have shape [B, M], got ", values.sizes());
}

// A grid to interpolate from: complex64 / complex128 on the CPU, of shape [B, n...] (D + 1
// dims; shape names them).
inline void check_grid_tensor(const at::Tensor& grid, int64_t dims, const char* shape,
                              const char* fn) {
  TORCH_CHECK(grid.device().is_cpu(), fn, ": grid must be a CPU tensor, got ", grid.device());
  TORCH_CHECK(grid.scalar_type() == at::kComplexFloat || grid.scalar_type() == at::kComplexDouble,
              fn, ": grid must be complex64 or complex128, got ", grid.scalar_type());
  TORCH_CHECK(grid.dim() == dims + 1, fn, ": grid must have shape ", shape, ", got ",
              grid.sizes());
}

// A spreading output: contiguous, of the values' dtype, on the CPU, of shape `shape`.
inline void check_out(const at::Tensor& grid, const at::Tensor& values,
                      const std::vector<int64_t>& shape, const char* fn) {
  TORCH_CHECK(grid.device().is_cpu() && grid.scalar_type() == values.scalar_type() &&
                  grid.sizes() == at::IntArrayRef(shape) && grid.is_contiguous(),
              fn, ": out must be a contiguous ", values.scalar_type(), " CPU tensor of shape ",
              at::IntArrayRef(shape), ", got ", grid.scalar_type(), " ", grid.sizes());
}

// bin_offsets: contiguous int64 [n_bins + 1] on the CPU, from 0 to m, non-decreasing.
inline const int64_t* check_bin_offsets(const at::Tensor& bin_offsets, int64_t n_bins, int64_t m,
                                        const char* fn) {
  TORCH_CHECK(bin_offsets.device().is_cpu() && bin_offsets.scalar_type() == at::kLong &&
                  bin_offsets.dim() == 1 && bin_offsets.size(0) == n_bins + 1 &&
                  bin_offsets.is_contiguous(),
              fn, ": bin_offsets must be contiguous int64 of shape [", n_bins + 1, "], got ",
              bin_offsets.scalar_type(), " ", bin_offsets.sizes());
  const int64_t* off = bin_offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[n_bins] == m, fn, ": bin_offsets must run from 0 to M = ", m);
  for (int64_t b = 0; b < n_bins; ++b) {
    TORCH_CHECK(off[b] <= off[b + 1], fn, ": bin_offsets must be non-decreasing");
  }
  return off;
}

// Bins of a D-dimensional grid, nb[0] x .. x nb[D - 1].
template <int D>
LF_ALWAYS_INLINE int64_t bin_count(const int (&nb)[D]) {
  int64_t n_bins = 1;
  for (int d = 0; d < D; ++d) n_bins *= nb[d];
  return n_bins;
}

// Bin id (row-major over the axes) -> its index along each of the D axes.
template <int D>
LF_ALWAYS_INLINE void bin_axes(int64_t id, const int (&nb)[D], int (&bi)[D]) {
  for (int d = D - 1; d >= 0; --d) {
    bi[d] = (int)(id % nb[d]);
    id /= nb[d];
  }
}

// Every point's stencil start lies in its bin (a stale plan raises).
template <int D>
void check_points_in_bins(const int32_t* st, const int64_t* off, const int (&n)[D],
                          const int (&nb)[D], const char* fn) {
  bool inside = true;
  for (int64_t b = 0; b < bin_count<D>(nb); ++b) {
    int bi[D];
    bin_axes<D>(b, nb, bi);
    for (int64_t p = off[b]; p < off[b + 1]; ++p) {
      for (int d = 0; d < D; ++d) {
        inside &= luser_fast::nufft::bin_of_cell(st[D * p + d], n[d], nb[d]) == bi[d];
      }
    }
  }
  TORCH_CHECK(inside, fn, ": a point's stencil start lies outside its bin (stale plan?)");
}

// The values [B, M] (complex, as interleaved reals) in sorted point order with the planes
// innermost, [M][B]: one pass with many independent loads in flight, instead of B
// scattered loads inside every stencil.
template <typename R>
void gather_sorted(const R* src, const int64_t* ord, int64_t m, int64_t batch, R* dst) {
  at::parallel_for(0, m, 2048, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t q = ord[p];
      for (int64_t b = 0; b < batch; ++b) {
        dst[2 * (p * batch + b)] = src[2 * (b * m + q)];
        dst[2 * (p * batch + b) + 1] = src[2 * (b * m + q) + 1];
      }
    }
  });
}

// The non-empty bins of one parity class (bit D - 1 - d of parity: the parity along axis
// d), heaviest first (ties in id order). Bins of one class never touch the same cell.
template <int D>
std::vector<int64_t> parity_class_bins(int parity, const int (&nb)[D], const int64_t* off) {
  std::vector<int64_t> bins;
  for (int64_t id = 0; id < bin_count<D>(nb); ++id) {
    if (off[id + 1] == off[id]) continue;
    int bi[D];
    bin_axes<D>(id, nb, bi);
    bool in_class = true;
    for (int d = 0; d < D; ++d) in_class &= (bi[d] & 1) == ((parity >> (D - 1 - d)) & 1);
    if (in_class) bins.push_back(id);
  }
  std::stable_sort(bins.begin(), bins.end(), [&](int64_t x, int64_t y) {
    return off[x + 1] - off[x] > off[y + 1] - off[y];
  });
  return bins;
}

// --- hot loops (always inlined into one function per instruction set) -----------------
//
// 64-byte vectors of reals (GCC/Clang vector extensions), which the compiler maps to one
// AVX-512 register, two AVX2 or four SSE2 registers per the enclosing function's target.
// The typedefs lower the alignment to the element's, so loads and stores are unaligned.
typedef float vf32 __attribute__((vector_size(64), aligned(4)));
typedef double vf64 __attribute__((vector_size(64), aligned(8)));
typedef float vf32x8 __attribute__((vector_size(32), aligned(4)));
typedef float vf32x4 __attribute__((vector_size(16), aligned(4)));
typedef float vf32x2 __attribute__((vector_size(8), aligned(4)));
typedef double vf64x4 __attribute__((vector_size(32), aligned(8)));
typedef double vf64x2 __attribute__((vector_size(16), aligned(8)));

template <typename R>
struct Vec;
template <>
struct Vec<float> {
  using type = vf32;
  static constexpr int kLanes = 16;
  // the complex value at p as (re, im, re, im, ...): one 64-bit broadcast
  static LF_ALWAYS_INLINE type pair(const float* p) {
    double bits;
    std::memcpy(&bits, p, sizeof(bits));
    return (type)(vf64{} + bits);
  }
  // (x0, x0, x1, x1, ..., x7, x7) and (x8, x8, ..., x15, x15)
  static LF_ALWAYS_INLINE type dup_lo(type x) {
    return __builtin_shufflevector(x, x, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  }
  static LF_ALWAYS_INLINE type dup_hi(type x) {
    return __builtin_shufflevector(x, x, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  }
  static LF_ALWAYS_INLINE type iota() {
    return type{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  }
  // (sum of even lanes, sum of odd lanes)
  static LF_ALWAYS_INLINE void fold(type t, float* re, float* im) {
    const vf32x8 a = __builtin_shufflevector(t, t, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(t, t, 8, 9, 10, 11, 12, 13, 14, 15);
    const vf32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    const vf32x2 c = __builtin_shufflevector(b, b, 0, 1) + __builtin_shufflevector(b, b, 2, 3);
    *re = c[0];
    *im = c[1];
  }
};
template <>
struct Vec<double> {
  using type = vf64;
  static constexpr int kLanes = 8;
  static LF_ALWAYS_INLINE type pair(const double* p) {
    vf64x2 q;
    std::memcpy(&q, p, sizeof(q));
    return __builtin_shufflevector(q, q, 0, 1, 0, 1, 0, 1, 0, 1);
  }
  static LF_ALWAYS_INLINE type dup_lo(type x) {
    return __builtin_shufflevector(x, x, 0, 0, 1, 1, 2, 2, 3, 3);
  }
  static LF_ALWAYS_INLINE type dup_hi(type x) {
    return __builtin_shufflevector(x, x, 4, 4, 5, 5, 6, 6, 7, 7);
  }
  static LF_ALWAYS_INLINE type iota() { return type{0, 1, 2, 3, 4, 5, 6, 7}; }
  static LF_ALWAYS_INLINE void fold(type t, double* re, double* im) {
    const vf64x4 a = __builtin_shufflevector(t, t, 0, 1, 2, 3) + __builtin_shufflevector(t, t, 4, 5, 6, 7);
    const vf64x2 b = __builtin_shufflevector(a, a, 0, 1) + __builtin_shufflevector(a, a, 2, 3);
    *re = b[0];
    *im = b[1];
  }
};

template <typename R>
LF_ALWAYS_INLINE typename Vec<R>::type vload(const R* p) {
  typename Vec<R>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename R>
LF_ALWAYS_INLINE void vstore(R* p, typename Vec<R>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// A stencil row of w complex cells is 2 w reals, covered by NV vectors. kx_pairs turns the
// w column weights into NV vectors (kx0, kx0, kx1, kx1, ...), zero past 2 w, so one complex
// value times kx is a vector product and the padding lanes add exact zeros. It loads whole
// vectors from kx: kReads reals must exist there (the last points of a plan, whose loads
// would run past the weights, take the scalar loops).
template <typename R, int W>
struct Row {
  using V = typename Vec<R>::type;
  static constexpr int kLanes = Vec<R>::kLanes;
  static constexpr int kVectors = (2 * W + kLanes - 1) / kLanes;
  static constexpr int kReads = ((kVectors + 1) / 2) * kLanes;
  static LF_ALWAYS_INLINE void kx_pairs(const R* kx, V* out) {
    for (int u = 0; u < kVectors; ++u) {
      const V src = vload(kx + (u / 2) * kLanes);
      const V d = u % 2 == 0 ? Vec<R>::dup_lo(src) : Vec<R>::dup_hi(src);
      out[u] = Vec<R>::iota() < R(2 * W - u * kLanes) ? d : V{};
    }
  }
};

// Widths with a compiled template (the switch below); wider kernels take the scalar loops.
template <int W>
constexpr bool kVectorWidth = W >= 2 && W <= 16;

// One switch over the compiled widths (a.width: 2 .. 16, else the runtime-width body
// BODY<R, 0>), expanded inside each instruction-set function.
#define LF_NUFFT_WIDTH_SWITCH(BODY, ...)              \
  switch (a.width) {                                  \
    case 2: BODY<R, 2>(__VA_ARGS__); break;           \
    case 3: BODY<R, 3>(__VA_ARGS__); break;           \
    case 4: BODY<R, 4>(__VA_ARGS__); break;           \
    case 5: BODY<R, 5>(__VA_ARGS__); break;           \
    case 6: BODY<R, 6>(__VA_ARGS__); break;           \
    case 7: BODY<R, 7>(__VA_ARGS__); break;           \
    case 8: BODY<R, 8>(__VA_ARGS__); break;           \
    case 9: BODY<R, 9>(__VA_ARGS__); break;           \
    case 10: BODY<R, 10>(__VA_ARGS__); break;         \
    case 11: BODY<R, 11>(__VA_ARGS__); break;         \
    case 12: BODY<R, 12>(__VA_ARGS__); break;         \
    case 13: BODY<R, 13>(__VA_ARGS__); break;         \
    case 14: BODY<R, 14>(__VA_ARGS__); break;         \
    case 15: BODY<R, 15>(__VA_ARGS__); break;         \
    case 16: BODY<R, 16>(__VA_ARGS__); break;         \
    default: BODY<R, 0>(__VA_ARGS__); break;          \
  }

}  // namespace cpu
}  // namespace nufft
}  // namespace luser_fast

#endif  // LUSER_FAST_NUFFT_SPREAD_CPU_H
