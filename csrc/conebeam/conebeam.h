// Cone-beam (and parallel-beam 3-D) Joseph projector: the per-ray math shared by the C++
// CPU kernels (conebeam.cpp) and the CUDA kernels (conebeam.cu), so the CPU tests exercise
// exactly what the GPU runs. Conventions are those of luser_fast/core/conebeam_geometry.py
// and luser_fast/reference/conebeam.py (binding):
//
//   volume [D, H, W]: voxel (k, i, j) has centre (z, y, x) = (k - (D-1)/2, (H-1)/2 - i,
//     j - (W-1)/2); so the fractional indices of a point p are f_k = p_z + (D-1)/2,
//     f_i = (H-1)/2 - p_y, f_j = p_x + (W-1)/2;
//   angle t: n = (cos t, sin t, 0), e = (-sin t, cos t, 0); detector pixel (r, c) at
//     u = (c - (cols-1)/2) s_c, v = (r - (rows-1)/2) s_r;
//   cone beam (source distance R > 0): the ray from S = -R e through
//     P = Dd e + u n + v z, direction (P - S) / |P - S|;
//   parallel (R <= 0 here): origin u n + v z, direction e.
//
// A ray o + t d is x-, y- or z-major by its largest |d| component (ties: x, then y, then
// z). It takes one sample per voxel plane across its major axis ("step" s: the column j,
// row i or slice k), where its fractional indices along the two other ("minor") axes are
// affine in s, f(s) = f0 + s df with |df| <= 1, and interpolates bilinearly between the
// four voxels around them (voxels outside the volume count as zero); the sum is scaled by
// the path length per step, 1 / |d_major|. The adjoint scatters the very same (voxel,
// weight) pairs, so it is the exact transpose.
//
// Axes are numbered in memory order, 0: k (D, z), 1: i (H, y), 2: j (W, x); a ray's
// minor axes are (a, b) with a before b in memory order: x-major (k, i), y-major (k, j),
// z-major (i, j).
//
// Every sample position f(s) is computed as f0 + s * df, one product and one sum, never
// fused (common/rounding.h): the step ranges below are found with that same function, so
// a sample inside its ray's range has its neighbours in [-1, n] on each minor axis, on the
// CPU and on the device alike. Geometry and positions are float64; weights and values are
// in the data's type.
//
// Compiles as plain C++ (g++), as CUDA (nvcc) and under NVRTC, which has no standard
// headers: only builtins (floor, ceil, sqrt, fabs, fma) are used (common/device.h).
#ifndef LUSER_FAST_CONEBEAM_CONEBEAM_H
#define LUSER_FAST_CONEBEAM_CONEBEAM_H

#include "common/device.h"
#include "common/rounding.h"

namespace luser_fast {
namespace conebeam {

// One ray's Joseph parameters.
struct ConeRay {
  double fa0, dfa;  // fractional index along minor axis a at step 0, and its change per step
  double fb0, dfb;  // the same along minor axis b
  double step;      // path length per step, 1 / |d_major|
  int major;        // major axis: 0 (z: steps are slices k), 1 (y: rows i), 2 (x: columns j)
  int s_begin;      // first step whose sample touches the volume
  int s_end;        // one past the last (s_begin == s_end: the ray misses)
  int unused;
};

// Fractional minor index at step s: f0 + s * df, unfused (see above).
LF_HD double cone_f(double f0, double df, double s) { return add_rn(f0, mul_rn(s, df)); }

// The first step s in [0, n] with cone_f(f0, df, s) >= t for increasing f (df > 0), or
// with cone_f(...) < t for decreasing f (df < 0); n when there is none. The computed f is
// monotone in s (a correctly rounded product and sum are monotone in s), so the answer is
// a threshold: found from the real-number estimate and corrected by the computed f itself
// (a step or two; more only for |df| so small that f barely moves, never more than n).
// inv_df: 1 / df (the estimate only).
LF_HD int cone_first_step(double f0, double df, double inv_df, double t, int n) {
  double e = (t - f0) * inv_df;
  e = e > 0.0 ? e : 0.0;  // also NaN -> 0
  e = e < (double)n ? e : (double)n;
  int s = (int)ceil(e);
  if (df > 0.0) {
    while (s > 0 && cone_f(f0, df, s - 1) >= t) --s;
    while (s < n && !(cone_f(f0, df, s) >= t)) ++s;
  } else {
    while (s > 0 && cone_f(f0, df, s - 1) < t) --s;
    while (s < n && !(cone_f(f0, df, s) < t)) ++s;
  }
  return s;
}

// Narrows the step range [*lo, *hi) (within [0, n)) to the steps whose sample has
// lo_idx <= floor(f(s)) <= hi_idx, i.e. lo_idx <= f(s) < hi_idx + 1.
LF_HD void cone_clip_steps(double f0, double df, int lo_idx, int hi_idx, int n, int* lo,
                           int* hi) {
  const double tl = (double)lo_idx, tu = (double)hi_idx + 1.0;
  int b = 0, e = 0;
  if (df > 0.0) {
    const double inv = 1.0 / df;
    b = cone_first_step(f0, df, inv, tl, n);
    e = cone_first_step(f0, df, inv, tu, n);
  } else if (df < 0.0) {
    const double inv = 1.0 / df;
    b = cone_first_step(f0, df, inv, tu, n);
    e = cone_first_step(f0, df, inv, tl, n);
  } else if (f0 >= tl && f0 < tu) {
    e = n;
  }
  *lo = *lo > b ? *lo : b;
  *hi = *hi < e ? *hi : e;
  if (*hi < *lo) *hi = *lo;
}

// Joseph parameters of the ray through origin o with unit direction d, in a D x H x W
// volume: the minor positions and the steps whose samples touch the volume (neighbour
// indices within [-1, n] on each minor axis, at least one of the four inside). Non-finite
// input gives an empty range.
LF_HD ConeRay cone_ray_from_line(double ox, double oy, double oz, double dx, double dy,
                                 double dz, int depth, int height, int width) {
  const double ax = fabs(dx), ay = fabs(dy), az = fabs(dz);
  const int major = (ax >= ay && ax >= az) ? 2 : (ay >= az ? 1 : 0);
  const double cz = (depth - 1) * 0.5, cy = (height - 1) * 0.5, cx = (width - 1) * 0.5;
  ConeRay r;
  r.major = major;
  r.unused = 0;
  if (major == 2) {
    // column j: x = j - cx, t = (x - ox) / dx; f_k = oz + t dz + cz, f_i = cy - (oy + t dy)
    const double sy = dy / dx, sz = dz / dx;
    r.fa0 = add_rn(oz + cz, -mul_rn(cx + ox, sz));
    r.dfa = sz;
    r.fb0 = add_rn(cy - oy, mul_rn(cx + ox, sy));
    r.dfb = -sy;
    r.step = 1.0 / ax;
  } else if (major == 1) {
    // row i: y = cy - i, t = (y - oy) / dy; f_k = oz + t dz + cz, f_j = ox + t dx + cx
    const double sx = dx / dy, sz = dz / dy;
    r.fa0 = add_rn(oz + cz, mul_rn(cy - oy, sz));
    r.dfa = -sz;
    r.fb0 = add_rn(ox + cx, mul_rn(cy - oy, sx));
    r.dfb = -sx;
    r.step = 1.0 / ay;
  } else {
    // slice k: z = k - cz, t = (z - oz) / dz; f_i = cy - (oy + t dy), f_j = ox + t dx + cx
    const double sx = dx / dz, sy = dy / dz;
    r.fa0 = add_rn(cy - oy, mul_rn(cz + oz, sy));
    r.dfa = -sy;
    r.fb0 = add_rn(ox + cx, -mul_rn(cz + oz, sx));
    r.dfb = sx;
    r.step = 1.0 / az;
  }
  const int n_maj = major == 0 ? depth : (major == 1 ? height : width);
  const int n_a = major == 0 ? height : depth;
  const int n_b = major == 2 ? height : width;
  r.s_begin = 0;
  r.s_end = 0;
  // NaN and infinities fail these (so does anything absurdly far from the volume)
  if (!(fabs(r.fa0) < 1e15 && fabs(r.fb0) < 1e15 && fabs(r.dfa) <= 1.0 &&
        fabs(r.dfb) <= 1.0)) {
    return r;
  }
  int lo = 0, hi = n_maj;
  cone_clip_steps(r.fa0, r.dfa, -1, n_a - 1, n_maj, &lo, &hi);
  cone_clip_steps(r.fb0, r.dfb, -1, n_b - 1, n_maj, &lo, &hi);
  if (hi > lo) {
    r.s_begin = lo;
    r.s_end = hi;
  }
  return r;
}

// The ray of detector pixel (row, col) at the angle with cos_t, sin_t; src <= 0 means
// parallel beam. Built with the reference's roundings (products and sums as its separate
// elementwise torch ops; the norm as torch's vector_norm of three components computes it,
// sqrt(fma(z, z, fma(y, y, x * x)))), so the major-axis choice agrees with it bit for bit.
LF_HD ConeRay cone_ray(double cos_t, double sin_t, int row, int col, int rows, int cols,
                       double spacing_r, double spacing_c, double src, double det, int depth,
                       int height, int width) {
  const double u = mul_rn((double)col - (cols - 1) * 0.5, spacing_c);
  const double v = mul_rn((double)row - (rows - 1) * 0.5, spacing_r);
  if (src <= 0.0) {
    return cone_ray_from_line(mul_rn(u, cos_t), mul_rn(u, sin_t), v, -sin_t, cos_t, 0.0,
                              depth, height, width);
  }
  const double sd = src + det;
  const double dx = add_rn(mul_rn(sd, -sin_t), mul_rn(u, cos_t));
  const double dy = add_rn(mul_rn(sd, cos_t), mul_rn(u, sin_t));
  const double norm = sqrt(fma(v, v, fma(dy, dy, mul_rn(dx, dx))));
  return cone_ray_from_line(mul_rn(-src, -sin_t), mul_rn(-src, cos_t), 0.0, dx / norm,
                            dy / norm, v / norm, depth, height, width);
}

// The samples of ray r at its steps s in [s_lo, s_hi) (clipped to [s_begin, s_end)), in
// order of s: visit(s, u, ia, ib, wa, wb) with ia = floor(fa), wa = fa - ia (as WT), the
// same along b; the sample interpolates voxels (ia, ib), (ia, ib + 1), (ia + 1, ib) and
// (ia + 1, ib + 1) of plane s with weights (1 - wa)(1 - wb), (1 - wa) wb, wa (1 - wb),
// wa wb. This is the one definition of a ray's samples: every forward and adjoint kernel,
// CPU and CUDA, walks it.
//   BLOCK: samples handled together; their positions are computed first, independently
//     (their latencies overlap), then visited with u = 0 .. BLOCK - 1 (u can index BLOCK
//     independent partial sums); the last samples, which fill no block, come with u = 0.
// Returns whether there was any sample.
template <int BLOCK, typename WT, typename Visit>
LF_HD bool cone_ray_samples(const ConeRay& r, int s_lo, int s_hi, Visit&& visit) {
  int s = r.s_begin > s_lo ? r.s_begin : s_lo;
  const int s_end = r.s_end < s_hi ? r.s_end : s_hi;
  if (s >= s_end) return false;
  // s as a double: on the host stepped alongside s (an add costs less than a conversion),
  // on the device converted per block (a double induction variable costs two registers);
  // both are exact (s < 2^24)
  double sd = s;
LF_NO_UNROLL
  for (; s + BLOCK <= s_end; s += BLOCK) {
#if defined(__CUDA_ARCH__)
    sd = s;
#endif
    int ia[BLOCK], ib[BLOCK];
    WT wa[BLOCK], wb[BLOCK];
LF_UNROLL
    for (int u = 0; u < BLOCK; ++u) {
      const double fa = cone_f(r.fa0, r.dfa, sd + u), fb = cone_f(r.fb0, r.dfb, sd + u);
      const double fla = floor(fa), flb = floor(fb);
      ia[u] = (int)fla;
      ib[u] = (int)flb;
      wa[u] = (WT)(fa - fla);
      wb[u] = (WT)(fb - flb);
    }
LF_UNROLL
    for (int u = 0; u < BLOCK; ++u) visit(s + u, u, ia[u], ib[u], wa[u], wb[u]);
#if !defined(__CUDA_ARCH__)
    sd += BLOCK;
#endif
  }
  if constexpr (BLOCK > 1) {
    for (; s < s_end; ++s, sd += 1.0) {
      const double fa = cone_f(r.fa0, r.dfa, sd), fb = cone_f(r.fb0, r.dfb, sd);
      const double fla = floor(fa), flb = floor(fb);
      visit(s, 0, (int)fla, (int)flb, (WT)(fa - fla), (WT)(fb - flb));
    }
  }
  return true;
}

// Linear interpolation v0 + w (v1 - v0), unfused on the device; on the host V may be a
// vector of lanes (GCC vector extension) with a scalar w.
template <typename V, typename W>
LF_HD V cone_lerp(const V& v0, const V& v1, W w) {
#if defined(__CUDA_ARCH__)
  return add_rn(v0, mul_rn(w, v1 - v0));
#else
  return v0 + w * (v1 - v0);
#endif
}

// A sample's value from its four neighbours (along b first, then along a).
template <typename V, typename W>
LF_HD V cone_bilerp(const V& v00, const V& v01, const V& v10, const V& v11, W wa, W wb) {
  return cone_lerp(cone_lerp(v00, v01, wb), cone_lerp(v10, v11, wb), wa);
}

// The transpose of cone_bilerp: what a value val at a sample adds to its four neighbours.
template <typename V, typename W>
LF_HD void cone_bilerp_adjoint(const V& val, W wa, W wb, V* d00, V* d01, V* d10, V* d11) {
  const V v0 = (W(1) - wa) * val, v1 = wa * val;
  *d00 = (W(1) - wb) * v0;
  *d01 = wb * v0;
  *d10 = (W(1) - wb) * v1;
  *d11 = wb * v1;
}

// Element strides of a volume along k, i and j, and its sizes D, H, W.
struct ConeStrides {
  long long k, i, j;
  int depth, height, width;
};

// A contiguous D x H x W volume's.
LF_HD ConeStrides cone_strides(int depth, int height, int width) {
  ConeStrides st;
  st.k = (long long)height * width;
  st.i = width;
  st.j = 1;
  st.depth = depth;
  st.height = height;
  st.width = width;
  return st;
}

// A ray's axes in a volume: strides along its major axis (sm) and minor axes (sa, sb),
// and the sizes of the minor axes (na, nb). Selected, not indexed, so that the device
// keeps them in registers.
struct ConeAxes {
  long long sm, sa, sb;
  int na, nb;
};

LF_HD ConeAxes cone_axes(const ConeStrides& st, int major) {
  ConeAxes x;
  x.sm = major == 0 ? st.k : (major == 1 ? st.i : st.j);
  x.sa = major == 0 ? st.i : st.k;
  x.sb = major == 2 ? st.i : st.j;
  x.na = major == 0 ? st.height : st.depth;
  x.nb = major == 2 ? st.height : st.width;
  return x;
}

// Size of the volume along a ray's major axis.
LF_HD int cone_major_size(const ConeStrides& st, int major) {
  return major == 0 ? st.depth : (major == 1 ? st.height : st.width);
}

// Ray r's samples in a contiguous volume as st says, with bounds checks on every neighbour
// (no padding: the gather and scatter algorithms of the CUDA kernels, which the CPU twins
// run too): visit(off, nb, wa, wb) for every sample, off the offset of its neighbour
// (ia, ib) (those along b and a are at off + nb.sb and off + nb.sa) and nb which of its
// four neighbours lie inside the volume.
struct ConeNeighbours {
  long long sa, sb;  // strides along the minor axes a and b
  bool a0, a1, b0, b1;  // ia, ia + 1, ib, ib + 1 inside
};

template <typename T, typename Visit>
LF_HD void cone_checked_samples(const ConeStrides& st, const ConeRay& r, Visit&& visit) {
  const ConeAxes ax = cone_axes(st, r.major);
  const long long sm = ax.sm, sa = ax.sa, sb = ax.sb;
  const int na = ax.na, nbb = ax.nb;
  cone_ray_samples<1, T>(r, r.s_begin, r.s_end, [&](int s, int, int ia, int ib, T wa, T wb) {
    ConeNeighbours nb;
    nb.sa = sa;
    nb.sb = sb;
    nb.a0 = ia >= 0 && ia < na;
    nb.a1 = ia >= -1 && ia < na - 1;
    nb.b0 = ib >= 0 && ib < nbb;
    nb.b1 = ib >= -1 && ib < nbb - 1;
    visit(s * sm + ia * sa + ib * sb, nb, wa, wb);
  });
}

// Forward projection of ray r through nb <= NB volumes (gather, the CUDA kernel's
// algorithm; the CPU twin runs it too): volume b starts at vol + b * vol_stride, laid out
// contiguously as st says (cone_checked_samples). acc[b] receives the line integral of
// volume b.
template <typename T, int NB>
LF_HD void cone_forward_ray(const T* vol, long long vol_stride, int nb, const ConeStrides& st,
                            const ConeRay& r, T* acc) {
LF_UNROLL
  for (int b = 0; b < NB; ++b) acc[b] = T(0);
  cone_checked_samples<T>(st, r, [&](long long off, const ConeNeighbours& n, T wa, T wb) {
LF_UNROLL
    for (int b = 0; b < NB; ++b) {
      if (b < nb) {
        const long long o = b * vol_stride + off;
        const T v00 = n.a0 && n.b0 ? vol[o] : T(0), v01 = n.a0 && n.b1 ? vol[o + n.sb] : T(0);
        const T v10 = n.a1 && n.b0 ? vol[o + n.sa] : T(0);
        const T v11 = n.a1 && n.b1 ? vol[o + n.sa + n.sb] : T(0);
#if defined(__CUDA_ARCH__)
        acc[b] = add_rn(acc[b], cone_bilerp(v00, v01, v10, v11, wa, wb));
#else
        acc[b] += cone_bilerp(v00, v01, v10, v11, wa, wb);
#endif
      }
    }
  });
  const T step = (T)r.step;
LF_UNROLL
  for (int b = 0; b < NB; ++b) acc[b] *= step;
}

// Adjoint of cone_forward_ray for nb <= NB volumes (scatter, the CUDA kernel's algorithm):
// val[b] is the projection value of ray r in volume b times the ray's step (as T); for
// every sample, add(index, value) is called for each neighbour inside the volume, index
// counted from volume 0 (volume b at b * vol_stride). The caller adds (atomically on the
// device).
template <typename T, int NB, typename Add>
LF_HD void cone_adjoint_ray(const T* val, long long vol_stride, int nb, const ConeStrides& st,
                            const ConeRay& r, Add&& add) {
  cone_checked_samples<T>(st, r, [&](long long off, const ConeNeighbours& n, T wa, T wb) {
LF_UNROLL
    for (int b = 0; b < NB; ++b) {
      if (b < nb) {
        T d00, d01, d10, d11;
        cone_bilerp_adjoint(val[b], wa, wb, &d00, &d01, &d10, &d11);
        const long long o = b * vol_stride + off;
        if (n.a0 && n.b0) add(o, d00);
        if (n.a0 && n.b1) add(o + n.sb, d01);
        if (n.a1 && n.b0) add(o + n.sa, d10);
        if (n.a1 && n.b1) add(o + n.sa + n.sb, d11);
      }
    }
  });
}

}  // namespace conebeam
}  // namespace luser_fast

#endif  // LUSER_FAST_CONEBEAM_CONEBEAM_H
