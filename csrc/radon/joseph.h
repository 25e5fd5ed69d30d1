// Joseph's projector: the per-ray and per-pixel math shared by the C++ CPU kernels
// (radon.cpp) and the CUDA kernels (radon.cu), so the CPU tests exercise exactly what the
// GPU runs. Conventions are those of luser_fast/reference/radon.py (binding):
//
//   pixel (i, j) has centre x = j - (W - 1) / 2, y = (H - 1) / 2 - i;
//   detector d sits at u_d = (d - (D - 1) / 2) * spacing;
//   parallel: ray {p : p . n = u_d}, n = (cos, sin), traversed along e = (-sin, cos);
//   fan: ray from the source S = -R e through the detector point Dd e + u_d n.
//
// A ray o + t v is x-major when |v_x| >= |v_y| (ties go to x): it takes one sample per
// pixel column k ("major step"), at the fractional row f(k) = f0 + k * df, and
// interpolates linearly between rows floor(f) and floor(f) + 1 (rows outside the image
// count as zero); the sum is scaled by step = 1 / |v_x|. y-major rays swap rows and
// columns (f is then a fractional column). The adjoint uses the very same (pixel, weight)
// pairs, so it is the exact transpose.
//
// Compiles as plain C++ (g++), as CUDA (nvcc) and under NVRTC, which has no standard
// headers: only builtins (floor, sqrt, fabs, fma) are used, no <cmath>/<algorithm> there
// (common/device.h: the host/device qualifiers).
#ifndef LUSER_FAST_RADON_JOSEPH_H
#define LUSER_FAST_RADON_JOSEPH_H

#include "common/constants.h"
#include "common/device.h"
#include "common/rounding.h"

namespace luser_fast {
namespace radon {

// One ray's Joseph parameters. Plain old data of kRadonRayBytes (common/constants.h) bytes;
// the CUDA launcher allocates the ray table as raw bytes, so the layout is fixed.
struct JosephRay {
  double f0;    // fractional minor-axis index at major step 0
  double df;    // change of f per major step (-v_minor / v_major, |df| <= 1)
  double step;  // path length per major step, 1 / |v_major|
  int x_major;  // 1: major steps are columns, the minor index is a row; 0: swapped
  int k_begin;  // first major step whose sample can touch the image
  int k_end;    // one past the last such step (k_begin == k_end: the ray misses)
  int unused;
};
static_assert(sizeof(JosephRay) == kRadonRayBytes,
              "sizeof(JosephRay) must equal kRadonRayBytes (common/constants.h): the CUDA "
              "launcher sizes the ray table from it");

// Products and sums that must round like PyTorch's separate elementwise ops (the
// reference builds ray directions with them) and like the CPU's gather kernels
// (_radon_forward_gather / _radon_adjoint_gather, compiled for the baseline ISA, which has
// no FMA): no FMA contraction on the device (common/rounding.h). Every product-then-sum
// of the per-sample math below goes through mul_rn / add_rn on the device, so a CUDA
// kernel computes what its CPU gather twin computes, operation for operation.
using luser_fast::add_rn;
using luser_fast::mul_rn;

// Joseph parameters of the ray through origin o with unit direction v, and the range of
// major steps whose samples can touch an H x W image. A sample touches the image while
// -1 <= f < n_minor; the range is widened by one step each side against rounding, so a
// sample inside it has -3 <= f < n_minor + 2 (|df| <= 1). Non-finite input gives an
// empty range and a NaN step (so a NaN line integral, never an out-of-range access).
LF_HD JosephRay joseph_ray_from_line(double ox, double oy, double vx, double vy, int height,
                                     int width) {
  JosephRay r;
  const int x_major = fabs(vx) >= fabs(vy);
  const double v_maj = x_major ? vx : vy, v_min = x_major ? vy : vx;
  const double o_maj = x_major ? ox : oy, o_min = x_major ? oy : ox;
  const double slope = v_min / v_maj;
  const double cx = (width - 1) * 0.5, cy = (height - 1) * 0.5;
  // x-major: column k is x = k - cx, where the ray's y gives the row f = cy - y;
  // y-major: row k is y = cy - k, where the ray's x gives the column f = x + cx.
  r.f0 = x_major ? add_rn(cy - o_min, mul_rn(cx + o_maj, slope))
                 : add_rn(o_min + cx, mul_rn(cy - o_maj, slope));
  r.df = -slope;
  r.step = 1.0 / fabs(v_maj);
  r.x_major = x_major;
  r.unused = 0;
  r.k_begin = 0;
  r.k_end = 0;
  const int n_min = x_major ? height : width, n_maj = x_major ? width : height;
  if (r.df == 0.0) {
    if (r.f0 >= -1.0 && r.f0 < (double)n_min) r.k_end = n_maj;
    return r;
  }
  const double ka = (-1.0 - r.f0) / r.df, kb = ((double)n_min - r.f0) / r.df;
  double lo = ka < kb ? ka : kb, hi = ka < kb ? kb : ka;
  // NaN fails every comparison, so non-finite geometry leaves the range empty
  if (!(lo < n_maj + 1.0 && hi > -2.0)) return r;
  lo = lo > -2.0 ? lo : -2.0;
  hi = hi < n_maj + 1.0 ? hi : n_maj + 1.0;
  int k0 = (int)ceil(lo) - 1, k1 = (int)floor(hi) + 2;
  k0 = k0 > 0 ? k0 : 0;
  k1 = k1 < n_maj ? k1 : n_maj;
  if (k1 > k0) {
    r.k_begin = k0;
    r.k_end = k1;
  }
  return r;
}

// Origin and unit direction of detector d's ray at the angle with cos_t, sin_t, built
// with the same roundings as the reference's _rays (its norm is sqrt(fma(dy, dy, dx*dx)),
// as torch's vector_norm computes it), so the x-/y-major choice agrees with it bit for bit.
// src <= 0 means parallel beam.
LF_HD JosephRay joseph_ray(double cos_t, double sin_t, int d, int n_det, double spacing,
                           double src, double det, int height, int width) {
  const double u = mul_rn((double)d - (n_det - 1) * 0.5, spacing);
  if (src <= 0.0) {
    return joseph_ray_from_line(mul_rn(u, cos_t), mul_rn(u, sin_t), -sin_t, cos_t, height,
                                width);
  }
  const double sd = src + det;
  const double dx = add_rn(mul_rn(sd, -sin_t), mul_rn(u, cos_t));
  const double dy = add_rn(mul_rn(sd, cos_t), mul_rn(u, sin_t));
  const double norm = sqrt(fma(dy, dy, mul_rn(dx, dx)));
  return joseph_ray_from_line(mul_rn(-src, -sin_t), mul_rn(-src, cos_t), dx / norm,
                              dy / norm, height, width);
}

// Fractional minor-axis index of a ray's sample at major step k.
LF_HD double joseph_f(const JosephRay& r, int k) {
#if defined(__CUDA_ARCH__)
  return add_rn(r.f0, mul_rn((double)k, r.df));
#else
  return r.f0 + (double)k * r.df;
#endif
}

// The samples of ray r at its major steps k in [k_lo, k_hi) (clipped to [k_begin, k_end)),
// in order of k, through an image laid out so that row k is the ray's major step k (rows,
// with row_stride elements from one row to the next): sample k sits at f = joseph_f(r, k)
// and interpolates between the minor indices i = floor(f) and i + 1 of row k with weights
// 1 - w and w, w = f - i (as WT). This is the one definition of a ray's samples: the
// forward (joseph_forward_ray, the CPU fast path) and the CPU adjoint's scatter walk it.
//   BLOCK: samples handled together. Their positions are computed first, independently
//     of each other (their latencies overlap), then visit(row, u, i, w) is called for
//     u = 0 .. BLOCK - 1, the sample at step k0 + u: row = rows + k0 * row_stride is the
//     row of the block's first step k0 (the sample's own row is row + u * row_stride),
//     and u can index BLOCK independent partial sums. The last (count % BLOCK) samples,
//     which fill no block, come one at a time with u = 0.
// Returns whether there was any sample.
template <int BLOCK, typename WT, typename P, typename Visit>
LF_HD bool joseph_ray_samples(const JosephRay& r, int k_lo, int k_hi, P rows,
                              long long row_stride, Visit&& visit) {
  int k = r.k_begin > k_lo ? r.k_begin : k_lo;
  const int k_end = r.k_end < k_hi ? r.k_end : k_hi;
  if (k >= k_end) return false;
  // k as a double: on the host stepped alongside k (an add costs less than a conversion),
  // on the device converted per block (a double induction variable costs two registers)
  double kd = k;
LF_NO_UNROLL
  for (; k + BLOCK <= k_end; k += BLOCK) {
#if defined(__CUDA_ARCH__)
    kd = k;
#endif
    const P row = rows + k * row_stride;
    int i[BLOCK];
    WT w[BLOCK];
LF_UNROLL
    for (int u = 0; u < BLOCK; ++u) {
#if defined(__CUDA_ARCH__)
      const double f = add_rn(r.f0, mul_rn(u == 0 ? kd : kd + u, r.df));  // joseph_f(r, k + u)
#else
      const double f = r.f0 + (u == 0 ? kd : kd + u) * r.df;  // joseph_f(r, k + u)
#endif
      const double fl = floor(f);
      i[u] = (int)fl;
      w[u] = (WT)(f - fl);
    }
LF_UNROLL
    for (int u = 0; u < BLOCK; ++u) visit(row, u, i[u], w[u]);
#if !defined(__CUDA_ARCH__)
    kd += BLOCK;
#endif
  }
  if constexpr (BLOCK > 1) {
    for (; k < k_end; ++k, kd += 1.0) {
#if defined(__CUDA_ARCH__)
      const double f = add_rn(r.f0, mul_rn(kd, r.df));  // joseph_f(r, k)
#else
      const double f = r.f0 + kd * r.df;  // joseph_f(r, k)
#endif
      const double fl = floor(f);
      visit(rows + k * row_stride, 0, (int)fl, (WT)(f - fl));
    }
  }
  return true;
}

// A sample's value from its two neighbours v0 (index i) and v1 (i + 1) and weight w.
template <typename V, typename W>
LF_HD V joseph_lerp(const V& v0, const V& v1, W w) {
#if defined(__CUDA_ARCH__)
  return add_rn(v0, mul_rn(w, v1 - v0));  // V = W = float or double on the device
#else
  return v0 + w * (v1 - v0);
#endif
}

// The transpose of joseph_lerp: what a value val at a sample of weight w adds to the two
// neighbours, (1 - w) val and w val.
template <typename V, typename W>
LF_HD void joseph_lerp_adjoint(const V& val, W w, V* d0, V* d1) {
  *d0 = (W(1) - w) * val;
  *d1 = w * val;
}

// Forward projection of one ray through nb <= NB images (gather). rows points at the
// first image laid out so that row k is the ray's major step k: the image itself for
// y-major rays, its transpose for x-major rays (so both read along rows); each row has
// n_min entries and image b starts at rows + b * image_stride. acc[b] receives the line
// integral of image b. Neighbours outside the image count as zero.
template <typename T, int NB>
LF_HD void joseph_forward_ray(const T* rows, long long image_stride, int nb, int n_min,
                              const JosephRay& r, T* acc) {
LF_UNROLL
  for (int b = 0; b < NB; ++b) acc[b] = T(0);
  joseph_ray_samples<1, T>(r, r.k_begin, r.k_end, rows, n_min, [&](const T* row0, int u, int i,
                                                                   T w1) {
    const bool ok0 = i >= 0 && i < n_min, ok1 = i >= -1 && i < n_min - 1;
    const T* row = row0 + (long long)u * n_min;
LF_UNROLL
    for (int b = 0; b < NB; ++b) {
      if (b < nb) {
        const T* p = row + b * image_stride;
        const T v0 = ok0 ? p[i] : T(0), v1 = ok1 ? p[i + 1] : T(0);
        acc[b] += joseph_lerp(v0, v1, w1);
      }
    }
  });
  const T step = (T)r.step;
LF_UNROLL
  for (int b = 0; b < NB; ++b) acc[b] *= step;
}

// Fractional detector index of the ray through point (px, py): its detector coordinate
// times inv_spacing plus center ((D - 1) / 2). Fan beam: u = (R + Dd) (p . n) / (R + p . e);
// returns false when the point is not in front of the source (u is then undefined).
template <bool FAN>
LF_HD bool joseph_detector_index(double px, double py, double cos_t, double sin_t,
                                 double inv_spacing, double center, double src, double det,
                                 double* t) {
#if defined(__CUDA_ARCH__)
  // unfused, as on the host (only the candidate window depends on these, with a margin,
  // but the same roundings keep the device's candidates the host's)
  const double pn = add_rn(mul_rn(px, cos_t), mul_rn(py, sin_t));
  if (!FAN) {
    *t = add_rn(mul_rn(pn, inv_spacing), center);
    return true;
  }
  const double depth = src + (mul_rn(py, cos_t) - mul_rn(px, sin_t));  // R + p . e
  if (!(depth > 1e-9 * src)) return false;
  *t = add_rn(mul_rn((src + det) * pn / depth, inv_spacing), center);
  return true;
#else
  const double pn = px * cos_t + py * sin_t;
  if (!FAN) {
    *t = pn * inv_spacing + center;
    return true;
  }
  const double depth = src + (py * cos_t - px * sin_t);  // R + p . e
  if (!(depth > 1e-9 * src)) return false;
  *t = (src + det) * pn / depth * inv_spacing + center;
  return true;
#endif
}

// Adjoint (back-projection) at pixel (i, j) of the rays of one angle, as a gather: adds
// to acc[b] the sum over the rays whose Joseph samples touch the pixel of (that sample's
// weight for the pixel) * sino_a[b * sino_stride + d], for nb <= NB sinograms. This is
// exactly the transpose of joseph_forward_ray: a ray of major step k touches minor pixel
// m with weight step * (1 - frac(f)) when floor(f) == m and step * frac(f) when
// floor(f) == m - 1. The candidate rays are found by projecting the segment of sample
// positions that can touch the pixel (one pixel either side along the minor axis) onto
// the detector; each candidate is then checked with the forward's own f.
//   rays_a: the angle's D rays (parallel beam: all of one orientation, that of rays_a[0]).
//   FAN: fan beam (src > 0); else parallel, and src, det are unused.
template <typename T, int NB, bool FAN>
LF_HD void joseph_adjoint_pixel(const JosephRay* rays_a, const T* sino_a,
                                long long sino_stride, int nb, int n_det, double cos_t,
                                double sin_t, double spacing, double src, double det,
                                int height, int width, int i, int j, T* acc) {
  const double px = j - (width - 1) * 0.5, py = (height - 1) * 0.5 - i;
  const double inv_spacing = 1.0 / spacing, center = (n_det - 1) * 0.5;
  // Index tolerance against rounding in the projection and in the rays' f (relative to
  // the coordinates' magnitudes, in detector units).
  const double scale = (width + height + 4.0) + (FAN ? src + det : 0.0);
#if defined(__CUDA_ARCH__)
  const double tol = 1e-6 * add_rn(1.0, mul_rn(scale, inv_spacing));
#else
  const double tol = 1e-6 * (1.0 + scale * inv_spacing);
#endif
  for (int orient = 0; orient < 2; ++orient) {  // 0: y-major rays, 1: x-major rays
    if (!FAN && orient != rays_a[0].x_major) continue;
    // sample positions touching the pixel: x-major rays at column j with the row within
    // one of i; y-major rays at row i with the column within one of j
    const double ax = orient ? px : px - 1.0, ay = orient ? py - 1.0 : py;
    const double bx = orient ? px : px + 1.0, by = orient ? py + 1.0 : py;
    double ta, tb;
    int d0 = 0, d1 = n_det - 1;
    if (joseph_detector_index<FAN>(ax, ay, cos_t, sin_t, inv_spacing, center, src, det, &ta) &&
        joseph_detector_index<FAN>(bx, by, cos_t, sin_t, inv_spacing, center, src, det, &tb)) {
      double lo = (ta < tb ? ta : tb) - tol, hi = (ta < tb ? tb : ta) + tol;
      if (!(hi >= 0.0 && lo <= n_det - 1.0)) continue;  // also false for NaN
      lo = lo > 0.0 ? lo : 0.0;
      hi = hi < n_det - 1.0 ? hi : n_det - 1.0;
      d0 = (int)ceil(lo);
      d1 = (int)floor(hi);
    }
    const int k = orient ? j : i;
    const double m = orient ? (double)i : (double)j;
    for (int d = d0; d <= d1; ++d) {
      const JosephRay r = rays_a[d];
      if (r.x_major != orient) continue;
      const double f = joseph_f(r, k);
      const double fl = floor(f);
      double w;
      if (fl == m) {
        w = 1.0 - (f - fl);
      } else if (fl == m - 1.0) {
        w = f - fl;
      } else {
        continue;
      }
      const T wt = (T)(w * r.step);
LF_UNROLL
      for (int b = 0; b < NB; ++b) {
#if defined(__CUDA_ARCH__)
        if (b < nb) acc[b] = add_rn(acc[b], mul_rn(wt, sino_a[b * sino_stride + d]));
#else
        if (b < nb) acc[b] += wt * sino_a[b * sino_stride + d];
#endif
      }
    }
  }
}

}  // namespace radon
}  // namespace luser_fast

#endif  // LUSER_FAST_RADON_JOSEPH_H
