// The constants that C++, CUDA and Python share, defined here and nowhere else.
//
// The kernels use them as the constexprs below (luser_fast::kName); Python reads the very
// same list from luser_fast.constants, which takes it from the extension
// (luser_fast._C.constants(), built from LF_CONSTANTS) or, when the extension is not built,
// parses this file as shipped in the package (luser_fast/_cuda/src/common/constants.h).
// So: one entry per line, X(type, kName, value), type int or double, the value a literal
// or an arithmetic expression (+ - * / and parentheses) of literals and earlier entries;
// comments only as /* */ (a // comment would swallow the line continuation). Python names
// are the C++ names without the k, in upper snake case (kRadonRayBytes: RADON_RAY_BYTES).
//
// NVRTC compiles this header too: no includes.
#ifndef LUSER_FAST_COMMON_CONSTANTS_H
#define LUSER_FAST_COMMON_CONSTANTS_H

// clang-format off
#define LF_CONSTANTS(X)                                                                    \
  /* Bytes of one Radon ray (sizeof(JosephRay), radon/joseph.h, which asserts it): the    \
     CUDA launcher allocates the ray table as raw bytes. */                               \
  X(int, kRadonRayBytes, 40)                                                               \
  /* Images per thread of the Radon gather kernels (CUDA, and their CPU twins): a ray or  \
     a pixel's candidate rays are set up once and applied to this many images. */         \
  X(int, kRadonImagesPerThread, 4)                                                         \
  /* Volumes per thread of the cone-beam CUDA kernels (and their CPU twins): a ray is set \
     up once and applied to this many volumes. */                                         \
  X(int, kConeImagesPerThread, 4)                                                          \
  /* Widest NUFFT kernel (stencil cells per dimension) the compiled kernels take; wider   \
     plans are served by the reference. */                                                \
  X(int, kNufftMaxWidth, 32)                                                               \
  /* Relative slack on the NUFFT's [-pi, pi] frequency range, so that float32 pi          \
     (slightly above pi) passes. */                                                       \
  X(double, kNufftRangeSlack, 1e-5)                                                        \
  /* Largest |k| (radians) a NUFFT trajectory may hold. */                                \
  X(double, kNufftMaxAbsK, 3.14159265358979323846 * (1.0 + kNufftRangeSlack))             \
  /* Side of the cell tiles that order a 3-D NUFFT plan's points within a bin (the C++    \
     plan and the CUDA plan's sort key). */                                               \
  X(int, kNufft3SortTile, 2)
// clang-format on

namespace luser_fast {

#define LF_DEFINE_CONSTANT(TYPE, NAME, VALUE) constexpr TYPE NAME = VALUE;
LF_CONSTANTS(LF_DEFINE_CONSTANT)
#undef LF_DEFINE_CONSTANT

}  // namespace luser_fast

#endif  // LUSER_FAST_COMMON_CONSTANTS_H
