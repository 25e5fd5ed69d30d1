// The one SIMD dispatcher of the CPU kernels (host only).
//
// A hot loop is written once, as an LF_ALWAYS_INLINE body, and compiled into one clone per
// instruction set by LF_SIMD_CLONES; simd::pick chooses the clone at run time from
// simd::best_level() (the CPU's features, read once) or a level the caller asks for:
//
//   template <typename T> LF_ALWAYS_INLINE void scale_body(T* x, int n) { ... }
//   LF_SIMD_CLONES((template <typename T>), scale, (T* x, int n), { scale_body<T>(x, n); })
//   ...
//   simd::pick(simd::best_level(), &scale_base<T>, &scale_avx2<T>)(x, n);
//
// Level 0 is the baseline ISA (x86-64: SSE2), 1 is AVX2 + FMA, 2 is AVX-512 (F, VL, DQ).
// Only the clones a caller names are instantiated. Where there is no x86-64 GCC/Clang, or
// when built with -DLF_SIMD_X86=0, every clone is baseline code and best_level() is 0.
#ifndef LUSER_FAST_COMMON_SIMD_H
#define LUSER_FAST_COMMON_SIMD_H

#include "common/device.h"

#if !defined(LF_SIMD_X86)
#if defined(__x86_64__) && defined(__GNUC__)
#define LF_SIMD_X86 1
#else
#define LF_SIMD_X86 0
#endif
#endif

#if LF_SIMD_X86
#define LF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define LF_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#else
#define LF_TARGET_AVX2
#define LF_TARGET_AVX512
#endif

#define LF_SIMD_UNPAREN(...) __VA_ARGS__
// Defines NAME_base, NAME_avx2 and NAME_avx512, each `TEMPLATE void NAME_x PARAMS BODY`
// compiled for its instruction set. TEMPLATE and PARAMS are parenthesised; BODY is the
// braced function body (last, so that its commas need no parentheses).
#define LF_SIMD_CLONES(TEMPLATE, NAME, PARAMS, ...)                           \
  LF_SIMD_UNPAREN TEMPLATE void NAME##_base PARAMS __VA_ARGS__                \
  LF_SIMD_UNPAREN TEMPLATE LF_TARGET_AVX2 void NAME##_avx2 PARAMS __VA_ARGS__ \
  LF_SIMD_UNPAREN TEMPLATE LF_TARGET_AVX512 void NAME##_avx512 PARAMS __VA_ARGS__

namespace luser_fast {
namespace simd {

enum Level : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best level this CPU runs.
inline int best_level() {
#if LF_SIMD_X86
  static const int best =
      (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
       __builtin_cpu_supports("avx512dq"))
          ? kAvx512
          : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? kAvx2
                                                                             : kBaseline);
  return best;
#else
  return kBaseline;
#endif
}

// The clone for `level` among those given (the highest at or below it).
template <typename F>
F pick(int level, F base, F avx2) {
  return level >= kAvx2 ? avx2 : base;
}
template <typename F>
F pick(int level, F base, F avx2, F avx512) {
  return level >= kAvx512 ? avx512 : pick(level, base, avx2);
}

}  // namespace simd
}  // namespace luser_fast

#endif  // LUSER_FAST_COMMON_SIMD_H
