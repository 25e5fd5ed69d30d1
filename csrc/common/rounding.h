// Products and sums that round once each, never fused into an FMA, on the host and on the
// device alike (host/device, common/device.h). nvcc and NVRTC contract a * b + c into an
// FMA by default; the CPU kernels are compiled without contraction (the baseline ISA has
// no FMA, and the SIMD clones are built with fp-contract=off), so code that must compute
// on the device what its CPU twin computes, operation for operation, writes its products
// and sums through these (docs/DESIGN.md, "Numerical contracts"). On the host they are the
// plain expressions.
//
// NVRTC compiles this header too: builtins only, no includes beyond common/device.h.
#ifndef LUSER_FAST_COMMON_ROUNDING_H
#define LUSER_FAST_COMMON_ROUNDING_H

#include "common/device.h"

namespace luser_fast {

LF_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

LF_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

LF_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LF_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

}  // namespace luser_fast

#endif  // LUSER_FAST_COMMON_ROUNDING_H
