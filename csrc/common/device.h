// The one header of host/device qualifiers, for code that compiles as plain C++ (g++), as
// CUDA (nvcc) and under NVRTC. NVRTC has no standard headers: code it may compile uses
// builtins only (floor, sqrt, exp, ...), for which this header includes <cmath> on the
// other two.
//
//   LF_HD             a function for the host and the device, always inlined (the
//                     per-ray / per-point math called from hot loops on both);
//   LF_UNROLL         unroll the next loop on the device (a no-op on the host, where the
//                     loops it marks have compile-time trip counts anyway);
//   LF_NO_UNROLL      keep the next loop rolled on the device (a no-op on the host);
//   LF_ALWAYS_INLINE  a host-only function that must be inlined into its caller (the
//                     bodies of the SIMD clones, see simd.h);
//   LF_KERNEL         (CUDA only) an exported kernel, launched by name through CuPy. The
//                     kernels take any block size (luser_fast/ops/cuda_common.py picks it);
//                     no __launch_bounds__: with one, ptxas allocates registers quite
//                     differently (spills in six kernels with (256), up to +35 registers
//                     with (256, 1), sm_80 / sm_90, nvcc 13.0).
#ifndef LUSER_FAST_COMMON_DEVICE_H
#define LUSER_FAST_COMMON_DEVICE_H

#if defined(__GNUC__) || defined(__clang__)
#define LF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define LF_ALWAYS_INLINE inline
#endif

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define LF_HD __host__ __device__ __forceinline__
#define LF_UNROLL _Pragma("unroll")
#define LF_NO_UNROLL _Pragma("unroll 1")
#define LF_KERNEL extern "C" __global__ void
#else
#define LF_HD LF_ALWAYS_INLINE
#define LF_UNROLL
#define LF_NO_UNROLL
#endif

#if !defined(__CUDACC_RTC__)
#include <cmath>
#endif

#endif  // LUSER_FAST_COMMON_DEVICE_H
