// CPU kernels of the cone-beam (and parallel-beam 3-D) Joseph projector, registered as the
// private ops torch.ops.luser_fast._conebeam_forward / _conebeam_adjoint (the public
// conebeam_forward / conebeam_adjoint schemas are defined once, in Python:
// luser_fast/ops/conebeam.py, whose CPU kernels call these).
//
// The per-ray math is conebeam.h's (shared with the CUDA kernels). What is here is the
// mapping of work to threads and SIMD lanes:
//
// - A batch of volumes is processed in groups of V "lanes" (8 float32 or 4 float64
//   volumes, one 256-bit vector): the group is copied once into a zero-padded,
//   lane-interleaved volume vol[k + P][i + P][j + P][v] (P = kPad planes each side of every
//   axis), so every sample reads its four neighbours as four vector loads with no bounds
//   check (a sample's neighbours lie within [-1, n] on each minor axis: conebeam.h). Each
//   sample's position and weights are computed once (float64) and applied to V volumes.
// - Forward: a gather over rays, parallel over rays (computed on the fly from the angle's
//   cos/sin); each ray's sum is taken by one thread in a fixed order.
// - Adjoint: the volume is split into slabs of slices along k, one per thread, each with
//   its own padded accumulator (P halo slices each side). Rays come in chunks of angles
//   (a table computed once per chunk); every slab walks all rays of the chunk, skipping
//   detector rows and rays that miss it, and scatters only the steps whose samples touch
//   its slices (the steps with floor(f_k) in [z0 - 1, z1 - 1], found with conebeam.h's
//   own f); at the end each slab's own slices are copied out (halo slices are dropped:
//   the slab owning them scattered the same samples there). So every voxel is one sum
//   over (ray, step) in ascending order, whatever the number of slabs or threads: the
//   adjoint is deterministic and bitwise independent of the thread count, as is the
//   forward. An image's result does not depend on the rest of its batch either (no FMA
//   contraction anywhere in this file, so the vector and scalar lanes round alike).
//
// _conebeam_forward_gather / _conebeam_adjoint_scatter run the CUDA kernels' algorithms
// (one ray per thread over kConeImagesPerThread volumes, unpadded with bounds checks; the
// adjoint a scatter, here sequential over rays) on the CPU, with the same conebeam.h
// functions, so the GPU's math is tested without a GPU.

// No FMA contraction in this file (see above), before any code is seen: also the inline
// functions of conebeam.h run unfused here, as on the device (common/rounding.h).
#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/constants.h"
#include "common/cpu_projector.h"
#include "common/simd.h"
#include "conebeam/conebeam.h"

namespace {

namespace cb = luser_fast::conebeam;
using cb::ConeRay;
using namespace luser_fast::projector;  // NOLINT: the shared helpers of cpu_projector.h

// Zero planes each side of every axis of the padded CPU volumes (and halo slices of the
// adjoint's slabs). One is enough (neighbours within [-1, n]); two leave a margin.
constexpr int64_t kPad = 2;
// Volumes per thread in the gather algorithms (those of the CUDA kernels).
constexpr int kGatherImages = luser_fast::kConeImagesPerThread;
// Samples per block of conebeam.h's walk (4 independent partial sums in the forward).
constexpr int kBlock = 4;
// Rays per chunk of the adjoint's ray table (whole angles, at least one).
constexpr int64_t kChunkRays = 1 << 14;

struct Geometry {
  int64_t depth, height, width, n_angles, rows, cols;
  double sr, sc, src, det;  // src <= 0: parallel beam
  int64_t per_angle() const { return rows * cols; }
  int64_t n_rays() const { return n_angles * rows * cols; }
  int64_t voxels() const { return depth * height * width; }
  int64_t max_side() const { return std::max({depth, height, width}); }
};

// --- argument checks ----------------------------------------------------------------------

void check_geometry(int64_t depth, int64_t height, int64_t width, int64_t rows, int64_t cols,
                    int64_t n_angles, double sr, double sc, const std::optional<double>& src,
                    const std::optional<double>& det, const char* fn) {
  TORCH_CHECK(depth >= 1 && height >= 1 && width >= 1 && depth < kMaxCount &&
                  height < kMaxCount && width < kMaxCount,
              fn, ": volume size (depth, height, width) must be positive and below 2^24, got (",
              depth, ", ", height, ", ", width, ")");
  TORCH_CHECK(rows >= 1 && cols >= 1 && rows < kMaxCount && cols < kMaxCount, fn,
              ": detector shape (rows, cols) must be positive and below 2^24, got (", rows,
              ", ", cols, ")");
  TORCH_CHECK((double)n_angles * (double)rows * (double)cols < 9007199254740992.0, fn,
              ": too many rays (", n_angles, " angles x ", rows, " x ", cols, ")");
  TORCH_CHECK((double)(depth + 2 * kPad) * (double)(height + 2 * kPad) *
                      (double)(width + 2 * kPad) < 1e15,
              fn, ": volume too large (", depth, " x ", height, " x ", width, ")");
  TORCH_CHECK(std::isfinite(sr) && sr > 0.0, fn,
              ": spacing_r (detector row spacing) must be positive and finite, got ", sr);
  TORCH_CHECK(std::isfinite(sc) && sc > 0.0, fn,
              ": spacing_c (detector column spacing) must be positive and finite, got ", sc);
  check_distances(src, det, 0.5 * std::hypot((double)height, (double)width),
                  ": source_distance must be finite and exceed the volume's in-plane "
                  "half-diagonal ",
                  fn);
}

Geometry make_geometry(int64_t depth, int64_t height, int64_t width, int64_t n_angles,
                       int64_t rows, int64_t cols, double sr, double sc,
                       const std::optional<double>& src, const std::optional<double>& det) {
  return Geometry{depth, height, width, n_angles, rows, cols, sr, sc, src.value_or(0.0),
                  det.value_or(0.0)};
}

// One op's checked arguments: the geometry, the output (allocated), the contiguous input,
// how many volumes (or projection stacks) it holds and the angles' (cos, sin) interleaved.
// cos/sin come from ATen's kernels on the same float64 tensor as the reference's, so the
// rays' major axes agree with it.
struct OpCall {
  Geometry g;
  at::Tensor in, out, trig;
  int64_t n_images = 0;
};

at::Tensor make_trig(const at::Tensor& angles64) {
  return at::stack({at::cos(angles64), at::sin(angles64)}, -1).contiguous();
}

OpCall forward_call(const at::Tensor& x, const at::Tensor& angles, int64_t rows, int64_t cols,
                    double sr, double sc, const std::optional<double>& src,
                    const std::optional<double>& det, const char* fn) {
  check_data(x, "x", 3, fn);
  const at::Tensor ang = check_angles(angles, x, fn);
  const int64_t d = x.size(-3), h = x.size(-2), w = x.size(-1);
  check_geometry(d, h, w, rows, cols, ang.numel(), sr, sc, src, det, fn);
  OpCall c;
  c.g = make_geometry(d, h, w, ang.numel(), rows, cols, sr, sc, src, det);
  c.out = at::empty(batch_shape(x, 3, {c.g.n_angles, rows, cols}), x.options());
  c.n_images = x.numel() / c.g.voxels();
  if (c.n_images > 0) {
    c.in = x.contiguous();
    c.trig = make_trig(ang);
  }
  return c;
}

OpCall adjoint_call(const at::Tensor& proj, const at::Tensor& angles, int64_t depth,
                    int64_t height, int64_t width, double sr, double sc,
                    const std::optional<double>& src, const std::optional<double>& det,
                    const char* fn) {
  check_data(proj, "proj", 3, fn);
  const at::Tensor ang = check_angles(angles, proj, fn);
  const int64_t rows = proj.size(-2), cols = proj.size(-1);
  TORCH_CHECK(proj.size(-3) == ang.numel(), fn,
              ": proj must end in (A, rows, cols) with A = ", ang.numel(),
              " angles, got shape ", proj.sizes());
  TORCH_CHECK(rows >= 1 && cols >= 1, fn,
              ": proj must have a non-empty detector (rows, cols), got shape ", proj.sizes());
  check_geometry(depth, height, width, rows, cols, ang.numel(), sr, sc, src, det, fn);
  OpCall c;
  c.g = make_geometry(depth, height, width, ang.numel(), rows, cols, sr, sc, src, det);
  c.out = at::empty(batch_shape(proj, 3, {depth, height, width}), proj.options());
  c.n_images = proj.numel() / c.g.n_rays();
  if (c.n_images > 0) {
    c.in = proj.contiguous();
    c.trig = make_trig(ang);
  }
  return c;
}

// The ray of angle a, detector pixel (row, col).
LF_ALWAYS_INLINE ConeRay ray_at(const Geometry& g, const double* trig, int64_t a, int row,
                                int col) {
  return cb::cone_ray(trig[2 * a], trig[2 * a + 1], row, col, (int)g.rows, (int)g.cols, g.sr,
                      g.sc, g.src, g.det, (int)g.depth, (int)g.height, (int)g.width);
}

// The ray of index r (a * rows * cols + row * cols + col).
LF_ALWAYS_INLINE ConeRay ray_of(const Geometry& g, const double* trig, int64_t r) {
  const int64_t a = r / g.per_angle(), q = r % g.per_angle();
  return ray_at(g, trig, a, (int)(q / g.cols), (int)(q % g.cols));
}

// --- fast path ----------------------------------------------------------------------------

// Element strides of the padded lane-interleaved volume (lanes included; sizes D, H, W).
template <int V>
cb::ConeStrides layout(const Geometry& g) {
  cb::ConeStrides l;
  l.j = V;
  l.i = (g.width + 2 * kPad) * V;
  l.k = (g.height + 2 * kPad) * l.i;
  l.depth = (int)g.depth;
  l.height = (int)g.height;
  l.width = (int)g.width;
  return l;
}

// Offset of voxel (0, 0, 0) in a buffer whose first slice is slice z_first - kPad.
int64_t origin_offset(const cb::ConeStrides& l, int64_t z_first) {
  return (kPad - z_first) * l.k + kPad * (l.i + l.j);
}

// Hot loops: compiled for the baseline ISA and, on x86-64, for AVX2 (one 256-bit vector
// holds the 8 float32 / 4 float64 lanes; floor is one instruction), chosen at run time
// (common/simd.h).

// sums[(r - r0) * V + v] = line integral of ray r through lane v, for rays r0 .. r1 - 1.
// vol: the padded volume's buffer, origin: offset of voxel (0, 0, 0) in it.
template <typename T, int V>
LF_ALWAYS_INLINE void forward_rays_body(const T* vol, int64_t origin, const cb::ConeStrides& l,
                                        const Geometry& g, const double* trig, int64_t r0,
                                        int64_t r1, T* sums) {
  using Vec = lanes_t<T, V>;
  // (angle, row, col) of ray r, stepped along with r
  int64_t a = r0 / g.per_angle();
  int row = (int)((r0 % g.per_angle()) / g.cols), col = (int)(r0 % g.cols);
  for (int64_t r = r0; r < r1; ++r) {
    const ConeRay ray = ray_at(g, trig, a, row, col);
    if (++col == g.cols) {
      col = 0;
      if (++row == g.rows) {
        row = 0;
        ++a;
      }
    }
    const cb::ConeAxes ax = cb::cone_axes(l, ray.major);
    const int64_t sm = ax.sm, sa = ax.sa, sb = ax.sb;
    Vec acc[kBlock] = {};
    cb::cone_ray_samples<kBlock, T>(ray, ray.s_begin, ray.s_end,
                                    [&](int s, int u, int ia, int ib, T wa, T wb) {
      const T* p = vol + (origin + s * sm + ia * sa + ib * sb);
      acc[u] += cb::cone_bilerp(load_lanes<Vec>(p), load_lanes<Vec>(p + sb),
                                load_lanes<Vec>(p + sa), load_lanes<Vec>(p + sa + sb), wa, wb);
    });
    store_lanes(sums + (r - r0) * V, ((acc[0] + acc[1]) + (acc[2] + acc[3])) * (T)ray.step);
  }
}

// One ray of the adjoint's chunk table: its parameters and the slices k_lo .. k_hi its
// samples touch (k_hi < k_lo: none).
struct ChunkRay {
  ConeRay ray;
  int k_lo, k_hi;
};

// Scatters the chunk's rays into the slab of slices z0 .. z1 - 1: rays of detector row q
// (n_rows rows of cols rays) are rays[q * cols ..]; row_k[2 q], row_k[2 q + 1] bound the
// slices that row touches; vals[r * V + v] is ray r's value in lane v times its step.
// slab: the slab's buffer, origin: offset of voxel (0, 0, 0) in it.
template <typename T, int V>
LF_ALWAYS_INLINE void adjoint_slab_body(const ChunkRay* rays, const int* row_k, const T* vals,
                                        int64_t n_rows, int64_t cols, int z0, int z1,
                                        const cb::ConeStrides& l, T* slab, int64_t origin) {
  using Vec = lanes_t<T, V>;
  for (int64_t q = 0; q < n_rows; ++q) {
    if (row_k[2 * q + 1] < z0 || row_k[2 * q] >= z1) continue;
    for (int64_t r = q * cols; r < (q + 1) * cols; ++r) {
      const ChunkRay& cr = rays[r];
      if (cr.k_hi < z0 || cr.k_lo >= z1) continue;
      const ConeRay& ray = cr.ray;
      int lo = ray.s_begin, hi = ray.s_end;
      if (ray.major == 0) {
        lo = std::max(lo, z0);
        hi = std::min(hi, z1);
      } else {  // minor axis a is k
        cb::cone_clip_steps(ray.fa0, ray.dfa, z0 - 1, z1 - 1, cb::cone_major_size(l, ray.major),
                            &lo, &hi);
      }
      if (lo >= hi) continue;
      const cb::ConeAxes ax = cb::cone_axes(l, ray.major);
      const int64_t sm = ax.sm, sa = ax.sa, sb = ax.sb;
      const Vec val = load_lanes<Vec>(vals + r * V);
      cb::cone_ray_samples<kBlock, T>(ray, lo, hi, [&](int s, int, int ia, int ib, T wa, T wb) {
        T* p = slab + (origin + s * sm + ia * sa + ib * sb);
        Vec d00, d01, d10, d11;
        cb::cone_bilerp_adjoint(val, wa, wb, &d00, &d01, &d10, &d11);
        store_lanes(p, load_lanes<Vec>(p) + d00);
        store_lanes(p + sb, load_lanes<Vec>(p + sb) + d01);
        store_lanes(p + sa, load_lanes<Vec>(p + sa) + d10);
        store_lanes(p + sa + sb, load_lanes<Vec>(p + sa + sb) + d11);
      });
    }
  }
}

// The adjoint's chunk table for detector rows q0 .. q1 - 1 of the chunk starting at angle
// a0 (row q is angle a0 + q / rows, detector row q % rows): each ray's parameters and the
// slices it touches, each row's union of those (row_k), and the rays' values in the nb
// lanes of proj (times the step; lanes past nb hold 0).
template <typename T, int V>
LF_ALWAYS_INLINE void chunk_table_body(const Geometry& g, const double* trig, const T* proj,
                                       int64_t n_rays, int64_t a0, int64_t q0, int64_t q1,
                                       int nb, ChunkRay* rays, int* row_k, T* vals) {
  const int64_t r_first = a0 * g.per_angle();
  for (int64_t q = q0; q < q1; ++q) {
    int lo = INT_MAX, hi = INT_MIN;
    const int64_t a = a0 + q / g.rows;
    const int row = (int)(q % g.rows);
    for (int col = 0; col < g.cols; ++col) {
      const int64_t r = q * g.cols + col;
      ChunkRay& cr = rays[r];
      cr.ray = ray_at(g, trig, a, row, col);
      const ConeRay& ray = cr.ray;
      cr.k_lo = INT_MAX;
      cr.k_hi = INT_MIN;
      if (ray.s_end > ray.s_begin) {
        if (ray.major == 0) {
          cr.k_lo = ray.s_begin;
          cr.k_hi = ray.s_end - 1;
        } else {  // minor axis a is k
          const int f1 = (int)std::floor(cb::cone_f(ray.fa0, ray.dfa, ray.s_begin));
          const int f2 = (int)std::floor(cb::cone_f(ray.fa0, ray.dfa, ray.s_end - 1));
          cr.k_lo = std::min(f1, f2);
          cr.k_hi = std::max(f1, f2) + 1;
        }
      }
      lo = std::min(lo, cr.k_lo);
      hi = std::max(hi, cr.k_hi);
      const T step = (T)ray.step;
      for (int v = 0; v < V; ++v) {
        vals[r * V + v] = v < nb ? proj[v * n_rays + r_first + r] * step : T(0);
      }
    }
    row_k[2 * q] = lo;
    row_k[2 * q + 1] = hi;
  }
}

LF_SIMD_CLONES((template <typename T, int V>), chunk_table,
               (const Geometry& g, const double* trig, const T* proj, int64_t n_rays,
                int64_t a0, int64_t q0, int64_t q1, int nb, ChunkRay* rays, int* row_k,
                T* vals),
               { chunk_table_body<T, V>(g, trig, proj, n_rays, a0, q0, q1, nb, rays, row_k,
                                        vals); })

LF_SIMD_CLONES((template <typename T, int V>), forward_rays,
               (const T* vol, int64_t origin, const cb::ConeStrides& l, const Geometry& g,
                const double* trig, int64_t r0, int64_t r1, T* sums),
               { forward_rays_body<T, V>(vol, origin, l, g, trig, r0, r1, sums); })

LF_SIMD_CLONES((template <typename T, int V>), adjoint_slab,
               (const ChunkRay* rays, const int* row_k, const T* vals, int64_t n_rows,
                int64_t cols, int z0, int z1, const cb::ConeStrides& l, T* slab, int64_t origin),
               { adjoint_slab_body<T, V>(rays, row_k, vals, n_rows, cols, z0, z1, l, slab,
                                         origin); })

template <typename T, int V>
auto forward_rays() {
  return luser_fast::simd::pick(luser_fast::simd::best_level(), &forward_rays_base<T, V>,
                                &forward_rays_avx2<T, V>);
}

template <typename T, int V>
auto chunk_table() {
  return luser_fast::simd::pick(luser_fast::simd::best_level(), &chunk_table_base<T, V>,
                                &chunk_table_avx2<T, V>);
}

template <typename T, int V>
auto adjoint_slab() {
  return luser_fast::simd::pick(luser_fast::simd::best_level(), &adjoint_slab_base<T, V>,
                                &adjoint_slab_avx2<T, V>);
}

// Forward projection of volumes n0 .. n0 + nb - 1 of x [N, D, H, W] (lanes V >= nb).
template <typename T, int V>
void forward_group(const T* x, int64_t n0, int nb, const Geometry& g, const double* trig,
                   T* out) {
  const cb::ConeStrides l = layout<V>(g);
  const at::Tensor buffer = zeros_of<T>((g.depth + 2 * kPad) * l.k);
  T* vol = buffer.data_ptr<T>();
  const int64_t origin = origin_offset(l, 0);
  const int64_t hw = g.height * g.width, dhw = g.voxels();
  at::parallel_for(0, g.depth, grain(hw * V), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int v = 0; v < nb; ++v) {
        const T* src = x + (n0 + v) * dhw + k * hw;
        for (int64_t i = 0; i < g.height; ++i) {
          T* dst = vol + origin + k * l.k + i * l.i + v;
          for (int64_t j = 0; j < g.width; ++j) dst[j * V] = src[i * g.width + j];
        }
      }
    }
  });
  const int64_t n_rays = g.n_rays();
  constexpr int64_t kChunk = 256;
  const auto rays_fn = forward_rays<T, V>();
  at::parallel_for(0, n_rays, grain(g.max_side() * V), [&](int64_t r0, int64_t r1) {
    T sums[kChunk * V];
    for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
      const int64_t c1 = std::min(r1, c0 + kChunk);
      rays_fn(vol, origin, l, g, trig, c0, c1, sums);
      for (int v = 0; v < nb; ++v) {
        T* dst = out + (n0 + v) * n_rays;
        for (int64_t r = c0; r < c1; ++r) dst[r] = sums[(r - c0) * V + v];
      }
    }
  });
}

// Slices [ks[s], ks[s + 1]) of slab s.
std::vector<int64_t> slab_bounds(const Geometry& g, int64_t lanes) {
  const int64_t work = g.n_rays() * g.max_side() * lanes;
  const int64_t n = std::max<int64_t>(
      1, std::min<int64_t>({(int64_t)at::get_num_threads(), g.depth, work / kMinWork}));
  std::vector<int64_t> ks(n + 1);
  for (int64_t s = 0; s <= n; ++s) ks[s] = g.depth * s / n;
  return ks;
}

// Adjoint of volumes n0 .. n0 + nb - 1 from proj [N, A, rows, cols] (lanes V >= nb).
template <typename T, int V>
void adjoint_group(const T* proj, int64_t n0, int nb, const Geometry& g, const double* trig,
                   T* out) {
  const cb::ConeStrides l = layout<V>(g);
  const std::vector<int64_t> ks = slab_bounds(g, V);
  const int64_t n_slabs = (int64_t)ks.size() - 1;
  std::vector<int64_t> slab_start(n_slabs + 1, 0);  // element offsets of the slab buffers
  for (int64_t s = 0; s < n_slabs; ++s) {
    slab_start[s + 1] = slab_start[s] + (ks[s + 1] - ks[s] + 2 * kPad) * l.k;
  }
  const at::Tensor buffer = zeros_of<T>(slab_start[n_slabs]);
  T* slabs = buffer.data_ptr<T>();

  const int64_t per_angle = g.per_angle(), n_rays = g.n_rays();
  const int64_t chunk_angles = std::max<int64_t>(1, kChunkRays / per_angle);
  std::vector<ChunkRay> rays(chunk_angles * per_angle);
  std::vector<T> vals(chunk_angles * per_angle * V);
  std::vector<int> row_k(2 * chunk_angles * g.rows);
  const auto slab_fn = adjoint_slab<T, V>();
  const auto table_fn = chunk_table<T, V>();
  for (int64_t a0 = 0; a0 < g.n_angles; a0 += chunk_angles) {
    const int64_t a1 = std::min(g.n_angles, a0 + chunk_angles);
    const int64_t n_rows = (a1 - a0) * g.rows;
    // the chunk's ray table, the slices each ray and each detector row touch, and the
    // values (times the step)
    at::parallel_for(0, n_rows, grain(16 * g.cols * V), [&](int64_t q0, int64_t q1) {
      table_fn(g, trig, proj + n0 * n_rays, n_rays, a0, q0, q1, nb, rays.data(), row_k.data(),
               vals.data());
    });
    at::parallel_for(0, n_slabs, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        slab_fn(rays.data(), row_k.data(), vals.data(), n_rows, g.cols, (int)ks[s],
                (int)ks[s + 1], l, slabs + slab_start[s], origin_offset(l, ks[s]));
      }
    });
  }
  // each slab's own slices to the output
  const int64_t hw = g.height * g.width, dhw = g.voxels();
  at::parallel_for(0, g.depth, grain(hw * V), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t s = std::upper_bound(ks.begin(), ks.end(), k) - ks.begin() - 1;
      const T* slab = slabs + slab_start[s] + origin_offset(l, ks[s]) + k * l.k;
      for (int v = 0; v < nb; ++v) {
        T* dst = out + (n0 + v) * dhw + k * hw;
        for (int64_t i = 0; i < g.height; ++i) {
          const T* src = slab + i * l.i + v;
          for (int64_t j = 0; j < g.width; ++j) dst[i * g.width + j] = src[j * V];
        }
      }
    }
  });
}

at::Tensor conebeam_forward_cpu(const at::Tensor& x, const at::Tensor& angles, int64_t rows,
                                int64_t cols, double spacing_r, double spacing_c,
                                std::optional<double> src, std::optional<double> det) {
  const OpCall c =
      forward_call(x, angles, rows, cols, spacing_r, spacing_c, src, det, "conebeam_forward");
  run_lane_groups(c.in, c.out, c.n_images, [&](auto lanes, auto in, int64_t n0, int nb, auto out) {
    forward_group<std::remove_pointer_t<decltype(out)>, decltype(lanes)::value>(
        in, n0, nb, c.g, c.trig.data_ptr<double>(), out);
  });
  return c.out;
}

at::Tensor conebeam_adjoint_cpu(const at::Tensor& proj, const at::Tensor& angles, int64_t depth,
                                int64_t height, int64_t width, double spacing_r,
                                double spacing_c, std::optional<double> src,
                                std::optional<double> det) {
  const OpCall c = adjoint_call(proj, angles, depth, height, width, spacing_r, spacing_c, src,
                                det, "conebeam_adjoint");
  run_lane_groups(c.in, c.out, c.n_images, [&](auto lanes, auto in, int64_t n0, int nb, auto out) {
    adjoint_group<std::remove_pointer_t<decltype(out)>, decltype(lanes)::value>(
        in, n0, nb, c.g, c.trig.data_ptr<double>(), out);
  });
  return c.out;
}

// --- the CUDA kernels' algorithms on the CPU ----------------------------------------------

at::Tensor conebeam_forward_gather_cpu(const at::Tensor& x, const at::Tensor& angles,
                                       int64_t rows, int64_t cols, double spacing_r,
                                       double spacing_c, std::optional<double> src,
                                       std::optional<double> det) {
  const OpCall c = forward_call(x, angles, rows, cols, spacing_r, spacing_c, src, det,
                                "_conebeam_forward_gather");
  if (c.n_images == 0) return c.out;
  const Geometry& g = c.g;
  const int64_t n_rays = g.n_rays(), dhw = g.voxels(), n_images = c.n_images;
  const int64_t n_groups = (n_images + kGatherImages - 1) / kGatherImages;
  const cb::ConeStrides st = cb::cone_strides((int)g.depth, (int)g.height, (int)g.width);
  AT_DISPATCH_FLOATING_TYPES(c.in.scalar_type(), "conebeam_forward_gather_cpu", [&] {
    const scalar_t* in = c.in.data_ptr<scalar_t>();
    scalar_t* out = c.out.data_ptr<scalar_t>();
    const double* trig = c.trig.data_ptr<double>();
    at::parallel_for(0, n_groups * n_rays, grain(g.max_side() * kGatherImages),
                     [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = (t / n_rays) * kGatherImages, r = t % n_rays;
        const int nb = (int)std::min<int64_t>(kGatherImages, n_images - n0);
        scalar_t acc[kGatherImages];
        cb::cone_forward_ray<scalar_t, kGatherImages>(in + n0 * dhw, dhw, nb, st,
                                                      ray_of(g, trig, r), acc);
        for (int b = 0; b < nb; ++b) out[(n0 + b) * n_rays + r] = acc[b];
      }
    });
  });
  return c.out;
}

at::Tensor conebeam_adjoint_scatter_cpu(const at::Tensor& proj, const at::Tensor& angles,
                                        int64_t depth, int64_t height, int64_t width,
                                        double spacing_r, double spacing_c,
                                        std::optional<double> src, std::optional<double> det) {
  OpCall c = adjoint_call(proj, angles, depth, height, width, spacing_r, spacing_c, src, det,
                          "_conebeam_adjoint_scatter");
  c.out.zero_();
  if (c.n_images == 0) return c.out;
  const Geometry& g = c.g;
  const int64_t n_rays = g.n_rays(), dhw = g.voxels(), n_images = c.n_images;
  const int64_t n_groups = (n_images + kGatherImages - 1) / kGatherImages;
  const cb::ConeStrides st = cb::cone_strides((int)g.depth, (int)g.height, (int)g.width);
  AT_DISPATCH_FLOATING_TYPES(c.in.scalar_type(), "conebeam_adjoint_scatter_cpu", [&] {
    const scalar_t* in = c.in.data_ptr<scalar_t>();
    scalar_t* out = c.out.data_ptr<scalar_t>();
    const double* trig = c.trig.data_ptr<double>();
    // groups write disjoint volumes; within one, the rays in order (deterministic)
    at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t n0 = grp * kGatherImages;
        const int nb = (int)std::min<int64_t>(kGatherImages, n_images - n0);
        scalar_t* o = out + n0 * dhw;
        for (int64_t r = 0; r < n_rays; ++r) {
          const ConeRay ray = ray_of(g, trig, r);
          scalar_t val[kGatherImages] = {};
          for (int b = 0; b < nb; ++b) val[b] = in[(n0 + b) * n_rays + r] * (scalar_t)ray.step;
          cb::cone_adjoint_ray<scalar_t, kGatherImages>(
              val, dhw, nb, st, ray, [&](long long i, scalar_t v) { o[i] += v; });
        }
      }
    });
  });
  return c.out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(luser_fast, m) {
  m.def(
      "_conebeam_forward(Tensor x, Tensor angles, int rows, int cols, float spacing_r, "
      "float spacing_c, float? source_distance, float? detector_distance) -> Tensor");
  m.def(
      "_conebeam_adjoint(Tensor proj, Tensor angles, int depth, int height, int width, "
      "float spacing_r, float spacing_c, float? source_distance, "
      "float? detector_distance) -> Tensor");
  m.def(
      "_conebeam_forward_gather(Tensor x, Tensor angles, int rows, int cols, "
      "float spacing_r, float spacing_c, float? source_distance, "
      "float? detector_distance) -> Tensor");
  m.def(
      "_conebeam_adjoint_scatter(Tensor proj, Tensor angles, int depth, int height, "
      "int width, float spacing_r, float spacing_c, float? source_distance, "
      "float? detector_distance) -> Tensor");
}

TORCH_LIBRARY_IMPL(luser_fast, CPU, m) {
  m.impl("_conebeam_forward", &conebeam_forward_cpu);
  m.impl("_conebeam_adjoint", &conebeam_adjoint_cpu);
  m.impl("_conebeam_forward_gather", &conebeam_forward_gather_cpu);
  m.impl("_conebeam_adjoint_scatter", &conebeam_adjoint_scatter_cpu);
}
