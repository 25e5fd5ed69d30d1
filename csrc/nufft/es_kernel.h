// The NUFFT's per-point math, shared by the C++ CPU kernels (spread.cpp) and the CUDA
// kernels (spread.cu), so the CPU tests exercise what the GPU runs. Conventions are those
// of luser_fast/reference/nufft.py (binding):
//
//   a point's position in grid cells is t = k n / (2 pi) (k in radians, n grid cells);
//   its stencil is the w cells l = s + a, a = 0 .. w - 1, with s = ceil(t - w / 2), taken
//   modulo n; cell l gets the weight psi(t - l) = phi(2 (t - l) / w),
//   phi(z) = exp(beta (sqrt(1 - z^2) - 1)) on |z| <= 1, the "exponential of semicircle".
//
// Positions and weights are evaluated in float64 (as the reference does) and rounded to
// the data's precision only when stored, so the weights agree with the reference to
// float64 rounding.
//
// Bins: the n cells of a dimension are cut into nb (even, >= 2) bins with boundaries
// lo(b) = b n / nb (integer division), each at least w cells long. A point belongs to the
// bin of its stencil start s, so its cells lie in [lo(b), lo(b + 1) + w - 1): bins two
// apart (b and b + 2, also across the periodic wrap, nb being even) never touch the same
// cell. The CPU spreader relies on this to spread bins of one parity in parallel with no
// atomics; the CUDA spreader sizes its shared-memory tiles from it. In 3-D (spread3.cpp,
// spread3.cu) every axis is cut so, the bin id is (b0 nb1 + b1) nb2 + b2, and the eight
// parity classes (b0, b1, b2 mod 2) play the role of the 2-D four.
//
// Compiles as plain C++ (g++), as CUDA (nvcc) and under NVRTC, which has no standard
// headers: only builtins (ceil, floor, sqrt, exp) are used (common/device.h: the
// host/device qualifiers).
#ifndef LUSER_FAST_NUFFT_ES_KERNEL_H
#define LUSER_FAST_NUFFT_ES_KERNEL_H

#include "common/constants.h"
#include "common/device.h"

namespace luser_fast {
namespace nufft {

// Widest kernel whose weights the kernels keep in fixed-size arrays: kNufftMaxWidth
// (common/constants.h; w = 25 is reached at tol = 1e-14 with oversampling 1.25; the
// Python side serves wider plans with the reference).
constexpr int kMaxWidth = kNufftMaxWidth;

constexpr double kTwoPi = 6.283185307179586476925286766559;

// phi(z) = exp(beta (sqrt(1 - z^2) - 1)) for |z| <= 1, else 0.
LF_HD double es_kernel(double z, double beta) {
  const double s = 1.0 - z * z;
  return s >= 0.0 ? exp(beta * (sqrt(s) - 1.0)) : 0.0;
}

// Position of frequency k (radians) on a grid of n cells, in cells.
LF_HD double grid_position(double k, int n) { return k * (double)n / kTwoPi; }

// First stencil cell s = ceil(t - w / 2) (not yet wrapped; may be negative or >= n).
LF_HD long long stencil_start(double t, int width) {
  return (long long)ceil(t - 0.5 * (double)width);
}

// s modulo n, in [0, n).
LF_HD int wrap_cell(long long s, int n) {
  long long r = s % n;
  return (int)(r < 0 ? r + n : r);
}

// Cell s + i, wrapped, of a side of n cells (0 <= s < n, 0 <= i < n): a stencil's cell i.
LF_HD int wrap_add(int s, int i, int n) { return s + i < n ? s + i : s + i - n; }

// Weight of stencil cell a (0 <= a < w) of a point at t whose (unwrapped) start is s.
LF_HD double stencil_weight(double t, long long s, int a, int width, double beta) {
  const double u = t - (double)(s + a);
  return es_kernel(u / (0.5 * (double)width), beta);
}

// The w weights of a point at frequency k (radians) on a side of n cells, in float64:
// out[a] is the weight of its stencil cell a (the plans, CPU and CUDA, store these).
LF_HD void stencil_weights(double k, int n, int width, double beta, double* out) {
  const double t = grid_position(k, n);
  const long long s = stencil_start(t, width);
  for (int a = 0; a < width; ++a) out[a] = stencil_weight(t, s, a, width, beta);
}

// Bin of cell c (0 <= c < n) among nb bins with boundaries lo(b) = b n / nb.
LF_HD int bin_of_cell(int c, int n, int nb) {
  return (int)((((long long)c + 1) * nb - 1) / n);
}

// First cell of bin b (b = nb gives n).
LF_HD int bin_start(int b, int n, int nb) { return (int)(((long long)b * n) / nb); }

}  // namespace nufft
}  // namespace luser_fast

#endif  // LUSER_FAST_NUFFT_ES_KERNEL_H
