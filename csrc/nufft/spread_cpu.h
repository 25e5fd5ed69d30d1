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
#include <cstdint>
#include <cstring>

#include "common/constants.h"
#include "common/simd.h"

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
