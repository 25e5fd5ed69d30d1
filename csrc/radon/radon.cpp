// CPU kernels of the Radon transform (Joseph), registered as torch.ops.luser_fast.*.
//
// radon_forward / radon_adjoint are the fast paths. A batch of images is processed in
// groups of V "lanes" (8 float32 or 4 float64 images, one SIMD vector): every image of a
// group is copied once into two zero-padded, lane-interleaved planes, one per ray
// orientation, laid out so that a ray's major step k is a row and its two interpolation
// neighbours are adjacent:
//   plane_y[k][kPad + j][v] = x[v][k][j]   (y-major rays: row k, column j)
//   plane_x[k][kPad + i][v] = x[v][i][k]   (x-major rays: column k, row i)
// Each sample's position and weight (in float64: joseph_ray_samples, joseph.h, the walk
// the CUDA kernels take too) is then computed once and applied to V images with
// contiguous vector loads (joseph_lerp and its transpose), and the zero
// padding removes every bounds check from the inner loop. The forward is a gather over
// rays (parallel over rays); the adjoint scatters the same (pixel, weight) pairs into
// per-thread planes (each thread a contiguous range of angles), reduced at the end, so it
// is the exact transpose. Results are deterministic, and an image's result does not
// depend on the rest of its batch (the adjoint's rounding depends on the thread count).
//
// _radon_forward_gather / _radon_adjoint_gather run the CUDA kernels' algorithms (one ray
// per thread; one pixel per thread gathering its transpose weights) on the CPU, with the
// same joseph.h functions, so the GPU's math is tested here without a GPU.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_projector.h"
#include "common/simd.h"
#include "radon/joseph.h"

namespace {

using luser_fast::radon::JosephRay;
using namespace luser_fast::projector;  // NOLINT: the shared helpers of cpu_projector.h

// Zero entries either side of a plane row: a sample inside its ray's step range has
// -3 <= f < n_min + 2 (joseph.h), so floor(f) + kPad and floor(f) + 1 + kPad stay in
// [0, n_min + 2 * kPad).
constexpr int64_t kPad = 4;
// Images per thread in the gather algorithms (those of the CUDA kernels).
constexpr int kGatherImages = luser_fast::kRadonImagesPerThread;
struct Geometry {
  int64_t height, width, n_angles, n_det;
  double spacing, src, det;  // src <= 0: parallel beam
};

void check_geometry(int64_t height, int64_t width, int64_t n_det, double spacing,
                    const std::optional<double>& src, const std::optional<double>& det,
                    const char* fn) {
  TORCH_CHECK(height >= 1 && width >= 1 && height < kMaxCount && width < kMaxCount, fn,
              ": image size (height, width) must be positive, got (", height, ", ", width,
              ")");
  TORCH_CHECK(n_det >= 1 && n_det < kMaxCount, fn,
              ": n_detectors must be positive, got ", n_det);
  TORCH_CHECK(std::isfinite(spacing) && spacing > 0.0, fn,
              ": det_spacing must be positive and finite, got ", spacing);
  check_distances(src, det, 0.5 * std::hypot((double)height, (double)width),
                  ": source_distance must exceed the image half-diagonal ", fn);
}

// The ray table [A * D], ray index a * D + d. cos/sin come from ATen's own kernels on the
// same 1-D tensor as the reference's, so the x-/y-major choice matches it exactly.
std::vector<JosephRay> make_rays(const at::Tensor& angles64, const Geometry& g) {
  const at::Tensor c = at::cos(angles64), s = at::sin(angles64);
  const double* cp = c.data_ptr<double>();
  const double* sp = s.data_ptr<double>();
  std::vector<JosephRay> rays(g.n_angles * g.n_det);
  at::parallel_for(0, g.n_angles, grain(64 * g.n_det), [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      for (int64_t d = 0; d < g.n_det; ++d) {
        rays[a * g.n_det + d] = luser_fast::radon::joseph_ray(
            cp[a], sp[a], (int)d, (int)g.n_det, g.spacing, g.src, g.det, (int)g.height,
            (int)g.width);
      }
    }
  });
  return rays;
}

// --- fast path --------------------------------------------------------------------------

struct Planes {
  int64_t row_y, row_x;  // plane row lengths in elements (including the V lanes)
  int64_t size_y, size_x;
};

template <int V>
Planes plane_layout(const Geometry& g) {
  Planes p;
  p.row_y = (g.width + 2 * kPad) * V;
  p.row_x = (g.height + 2 * kPad) * V;
  p.size_y = g.height * p.row_y;
  p.size_x = g.width * p.row_x;
  return p;
}

// Copy images n0 .. n0 + nb - 1 of x [N, H, W] into the two zeroed lane-interleaved planes.
template <typename T, int V>
void fill_planes(const T* x, int64_t n0, int nb, const Geometry& g, const Planes& pl,
                 T* plane_y, T* plane_x) {
  const int64_t hw = g.height * g.width;
  at::parallel_for(0, g.height, grain(2 * g.width * V), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T* py = plane_y + i * pl.row_y + kPad * V;
      for (int v = 0; v < nb; ++v) {
        const T* src = x + (n0 + v) * hw + i * g.width;
        for (int64_t j = 0; j < g.width; ++j) py[j * V + v] = src[j];
      }
      T* px = plane_x + (kPad + i) * V;
      for (int64_t j = 0; j < g.width; ++j) {
        for (int v = 0; v < V; ++v) px[j * pl.row_x + v] = py[j * V + v];
      }
    }
  });
}

// Hot loops: compiled for the baseline ISA and, on x86-64, also for AVX2 (one 256-bit
// vector holds the 8 float32 / 4 float64 lanes; floor is one instruction), chosen at run
// time (common/simd.h). The bodies are always-inline templates instantiated in both.

// Samples per block: their positions, floors and weights are computed together
// (joseph_ray_samples), then applied to the V lanes; 4 accumulators keep 4 independent
// addition chains in flight.
constexpr int kBlock = 4;

// No FMA contraction in the hot loops: g++ fuses a * b + c in vector code but not in the
// scalar parts of partly vectorised loops, which made an image's result depend on its
// batch size (the lanes per group) at the last bit. Unfused, every image gets the same
// bits in any batch.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
// (The lane vectors and their loads and stores are common/cpu_projector.h's.)

// Element of the sample u of a block at minor index i (lanes included), from the start of
// the block's first plane row.
template <int V>
LF_ALWAYS_INLINE int64_t plane_offset(int u, int i, int64_t row) {
  return u * row + ((int64_t)i + kPad) * V;
}

// Adds to sums[(r - r0) * V + v] the samples of rays r0 .. r1 - 1 at major steps
// k_lo .. k_hi - 1 through the V images in the planes (unscaled by the step length).
template <typename T, int V>
LF_ALWAYS_INLINE void forward_rays_body(const T* plane_y, const T* plane_x, const Planes& pl,
                                        const JosephRay* rays, int64_t r0, int64_t r1,
                                        int k_lo, int k_hi, T* sums) {
  using Vec = lanes_t<T, V>;
  for (int64_t r = r0; r < r1; ++r) {
    const JosephRay ray = rays[r];
    const T* base = ray.x_major ? plane_x : plane_y;
    const int64_t row = ray.x_major ? pl.row_x : pl.row_y;
    Vec acc[kBlock] = {};
    if (!luser_fast::radon::joseph_ray_samples<kBlock, T>(
            ray, k_lo, k_hi, base, row, [&](const T* row0, int u, int i, T w) {
              const T* p = row0 + plane_offset<V>(u, i, row);
              acc[u] += luser_fast::radon::joseph_lerp(load_lanes<Vec>(p),
                                                       load_lanes<Vec>(p + V), w);
            }))
      continue;  // no sample in these steps
    T* dst = sums + (r - r0) * V;
    store_lanes(dst, load_lanes<Vec>(dst) + ((acc[0] + acc[1]) + (acc[2] + acc[3])));
  }
}

// Scatters the values vals[(r - r0) * V + v] (sinogram times step length) of rays
// r0 .. r1 - 1 at major steps k_lo .. k_hi - 1 into the planes.
template <typename T, int V>
LF_ALWAYS_INLINE void adjoint_rays_body(const T* vals, const Planes& pl, const JosephRay* rays,
                                        int64_t r0, int64_t r1, int k_lo, int k_hi,
                                        T* plane_y, T* plane_x) {
  using Vec = lanes_t<T, V>;
  for (int64_t r = r0; r < r1; ++r) {
    const JosephRay ray = rays[r];
    const Vec val = load_lanes<Vec>(vals + (r - r0) * V);
    T* base = ray.x_major ? plane_x : plane_y;
    const int64_t row = ray.x_major ? pl.row_x : pl.row_y;
    luser_fast::radon::joseph_ray_samples<kBlock, T>(
        ray, k_lo, k_hi, base, row, [&](T* row0, int u, int i, T w) {
          T* p = row0 + plane_offset<V>(u, i, row);
          Vec d0, d1;
          luser_fast::radon::joseph_lerp_adjoint(val, w, &d0, &d1);
          store_lanes(p, load_lanes<Vec>(p) + d0);
          store_lanes(p + V, load_lanes<Vec>(p + V) + d1);
        });
  }
}

LF_SIMD_CLONES((template <typename T, int V>), forward_rays,
               (const T* plane_y, const T* plane_x, const Planes& pl, const JosephRay* rays,
                int64_t r0, int64_t r1, int k_lo, int k_hi, T* sums),
               { forward_rays_body<T, V>(plane_y, plane_x, pl, rays, r0, r1, k_lo, k_hi, sums); })

LF_SIMD_CLONES((template <typename T, int V>), adjoint_rays,
               (const T* vals, const Planes& pl, const JosephRay* rays, int64_t r0,
                int64_t r1, int k_lo, int k_hi, T* plane_y, T* plane_x),
               { adjoint_rays_body<T, V>(vals, pl, rays, r0, r1, k_lo, k_hi, plane_y, plane_x); })

#pragma GCC pop_options

// The clones for this CPU: AVX2 where it has it (the AVX-512 clone is not used: the lanes
// are one 256-bit vector).
template <typename T, int V>
auto forward_rays() {
  return luser_fast::simd::pick(luser_fast::simd::best_level(), &forward_rays_base<T, V>,
                                &forward_rays_avx2<T, V>);
}

template <typename T, int V>
auto adjoint_rays() {
  return luser_fast::simd::pick(luser_fast::simd::best_level(), &adjoint_rays_base<T, V>,
                                &adjoint_rays_avx2<T, V>);
}

// Cache blocking. Rays are processed in chunks of kChunkAngles angles, and each chunk in
// tiles of major steps, so that the plane rows of a tile (~256 KB) stay in L2 while every
// ray of the chunk passes through them: the planes of a 256 x 256 group (2 x 2.1 MB)
// would otherwise stream from L3 once per angle. The tile length depends on the geometry
// only (not on V), so an image's sums do not depend on its batch.
#ifndef LF_TILE_BYTES
#define LF_TILE_BYTES (256 << 10)
#endif
constexpr int64_t kChunkAngles = 16;
constexpr int64_t kTileBytes = LF_TILE_BYTES;

int tile_steps(const Geometry& g) {
  const int64_t row_bytes = (std::max(g.height, g.width) + 2 * kPad) * 32;
  return (int)std::max<int64_t>(16, (kTileBytes / row_bytes) / kBlock * kBlock);
}

template <typename T, int V>
void forward_group(const T* x, int64_t n0, int nb, const Geometry& g,
                   const std::vector<JosephRay>& rays, T* out) {
  const Planes pl = plane_layout<V>(g);
  const at::Tensor buffer = zeros_of<T>(pl.size_y + pl.size_x);
  T* planes = buffer.data_ptr<T>();
  fill_planes<T, V>(x, n0, nb, g, pl, planes, planes + pl.size_y);
  const int64_t n_rays = g.n_angles * g.n_det, n_steps = std::max(g.height, g.width);
  const int64_t chunk = kChunkAngles * g.n_det;
  const int tile = tile_steps(g);
  const auto rays_fn = forward_rays<T, V>();
  at::parallel_for(0, n_rays, grain(n_steps * V), [&](int64_t r0, int64_t r1) {
    std::vector<T> sums(std::min(chunk, r1 - r0) * V);
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
      const int64_t c1 = std::min(r1, c0 + chunk);
      std::fill(sums.begin(), sums.end(), T(0));
      for (int k = 0; k < n_steps; k += tile) {
        rays_fn(planes, planes + pl.size_y, pl, rays.data(), c0, c1, k, k + tile, sums.data());
      }
      for (int64_t r = c0; r < c1; ++r) {
        const T step = (T)rays[r].step;
        for (int v = 0; v < nb; ++v) out[(n0 + v) * n_rays + r] = sums[(r - c0) * V + v] * step;
      }
    }
  });
}

template <typename T, int V>
void adjoint_group(const T* sino, int64_t n0, int nb, const Geometry& g,
                   const std::vector<JosephRay>& rays, T* out) {
  const Planes pl = plane_layout<V>(g);
  const int64_t n_rays = g.n_angles * g.n_det, n_steps = std::max(g.height, g.width);
  // workers: each a contiguous range of angles and its own planes (at least kMinWork each)
  const int64_t work = n_rays * n_steps * V;
  const int64_t n_workers = std::max<int64_t>(
      1, std::min<int64_t>({(int64_t)at::get_num_threads(), g.n_angles, work / kMinWork}));
  const int64_t per = pl.size_y + pl.size_x;
  const int tile = tile_steps(g);
  const auto rays_fn = adjoint_rays<T, V>();
  const at::Tensor buffer = zeros_of<T>(per * n_workers);
  T* planes = buffer.data_ptr<T>();
  at::parallel_for(0, n_workers, 1, [&](int64_t w0, int64_t w1) {
    std::vector<T> vals(kChunkAngles * g.n_det * V);
    for (int64_t w = w0; w < w1; ++w) {
      T* py = planes + w * per;
      const int64_t a0 = g.n_angles * w / n_workers, a1 = g.n_angles * (w + 1) / n_workers;
      for (int64_t c0 = a0 * g.n_det; c0 < a1 * g.n_det; c0 += kChunkAngles * g.n_det) {
        const int64_t c1 = std::min(a1 * g.n_det, c0 + kChunkAngles * g.n_det);
        std::fill(vals.begin(), vals.end(), T(0));
        for (int64_t r = c0; r < c1; ++r) {
          const T step = (T)rays[r].step;
          for (int v = 0; v < nb; ++v) vals[(r - c0) * V + v] = sino[(n0 + v) * n_rays + r] * step;
        }
        for (int k = 0; k < n_steps; k += tile) {
          rays_fn(vals.data(), pl, rays.data(), c0, c1, k, k + tile, py, py + pl.size_y);
        }
      }
    }
  });
  const int64_t hw = g.height * g.width;
  at::parallel_for(0, g.height, grain(2 * g.width * V * n_workers), [&](int64_t i0, int64_t i1) {
    std::vector<T> row(g.width * V);
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(row.begin(), row.end(), T(0));
      for (int64_t w = 0; w < n_workers; ++w) {
        const T* py = planes + w * per + i * pl.row_y + kPad * V;
        const T* px = planes + w * per + pl.size_y + (kPad + i) * V;
        for (int64_t j = 0; j < g.width; ++j) {
          for (int v = 0; v < V; ++v) row[j * V + v] += py[j * V + v] + px[j * pl.row_x + v];
        }
      }
      for (int v = 0; v < nb; ++v) {
        T* dst = out + (n0 + v) * hw + i * g.width;
        for (int64_t j = 0; j < g.width; ++j) dst[j] = row[j * V + v];
      }
    }
  });
}

Geometry make_geometry(int64_t height, int64_t width, int64_t n_angles, int64_t n_det,
                       double spacing, const std::optional<double>& src,
                       const std::optional<double>& det) {
  return Geometry{height, width, n_angles, n_det, spacing, src.value_or(0.0), det.value_or(0.0)};
}

// One op's checked arguments: the geometry, its output (allocated, [..., A, D] for a
// forward, [..., H, W] for an adjoint), the contiguous input, how many images (or
// sinograms) it holds and, when there are any, the ray table.
struct OpCall {
  Geometry g;
  at::Tensor in, angles, out;
  int64_t n_images = 0;
  std::vector<JosephRay> rays;
};

OpCall forward_call(const at::Tensor& x, const at::Tensor& angles, int64_t n_det,
                    double spacing, const std::optional<double>& src,
                    const std::optional<double>& det, const char* fn) {
  check_data(x, "x", 2, fn);
  OpCall c;
  c.angles = check_angles(angles, x, fn);
  const int64_t h = x.size(-2), w = x.size(-1);
  check_geometry(h, w, n_det, spacing, src, det, fn);
  c.g = make_geometry(h, w, c.angles.numel(), n_det, spacing, src, det);
  c.out = at::empty(batch_shape(x, 2, {c.g.n_angles, c.g.n_det}), x.options());
  c.n_images = h * w == 0 ? 0 : x.numel() / (h * w);
  if (c.n_images > 0) {
    c.in = x.contiguous();
    c.rays = make_rays(c.angles, c.g);
  }
  return c;
}

OpCall adjoint_call(const at::Tensor& sino, const at::Tensor& angles, int64_t height,
                    int64_t width, double spacing, const std::optional<double>& src,
                    const std::optional<double>& det, const char* fn) {
  check_data(sino, "sino", 2, fn);
  OpCall c;
  c.angles = check_angles(angles, sino, fn);
  const int64_t n_det = sino.size(-1);
  TORCH_CHECK(sino.size(-2) == c.angles.numel(), fn, ": sino must end in (A, D) with A = ",
              c.angles.numel(), " angles, got shape ", sino.sizes());
  TORCH_CHECK(n_det >= 1, fn, ": sino must have at least one detector (D >= 1), got shape ",
              sino.sizes());
  check_geometry(height, width, n_det, spacing, src, det, fn);
  c.g = make_geometry(height, width, c.angles.numel(), n_det, spacing, src, det);
  c.out = at::empty(batch_shape(sino, 2, {height, width}), sino.options());
  c.n_images = sino.numel() / (c.g.n_angles * c.g.n_det);
  if (c.n_images > 0) {
    c.in = sino.contiguous();
    c.rays = make_rays(c.angles, c.g);
  }
  return c;
}

at::Tensor radon_forward_cpu(const at::Tensor& x, const at::Tensor& angles, int64_t n_det,
                             double spacing, std::optional<double> src,
                             std::optional<double> det) {
  const OpCall c = forward_call(x, angles, n_det, spacing, src, det, "radon_forward");
  run_lane_groups(c.in, c.out, c.n_images, [&](auto lanes, auto in, int64_t n0, int nb, auto out) {
    forward_group<std::remove_pointer_t<decltype(out)>, decltype(lanes)::value>(in, n0, nb, c.g,
                                                                                 c.rays, out);
  });
  return c.out;
}

at::Tensor radon_adjoint_cpu(const at::Tensor& sino, const at::Tensor& angles, int64_t height,
                             int64_t width, double spacing, std::optional<double> src,
                             std::optional<double> det) {
  const OpCall c = adjoint_call(sino, angles, height, width, spacing, src, det, "radon_adjoint");
  run_lane_groups(c.in, c.out, c.n_images, [&](auto lanes, auto in, int64_t n0, int nb, auto out) {
    adjoint_group<std::remove_pointer_t<decltype(out)>, decltype(lanes)::value>(in, n0, nb, c.g,
                                                                                 c.rays, out);
  });
  return c.out;
}

// --- the CUDA kernels' algorithms on the CPU --------------------------------------------

at::Tensor radon_forward_gather_cpu(const at::Tensor& x, const at::Tensor& angles,
                                    int64_t n_det, double spacing, std::optional<double> src,
                                    std::optional<double> det) {
  const OpCall c = forward_call(x, angles, n_det, spacing, src, det, "_radon_forward_gather");
  if (c.n_images == 0) return c.out;
  const Geometry& g = c.g;
  const int64_t h = g.height, w = g.width, n_images = c.n_images;
  const at::Tensor xt = c.in.transpose(-1, -2).contiguous();
  const int64_t n_rays = g.n_angles * g.n_det, hw = h * w;
  const int64_t n_groups = (n_images + kGatherImages - 1) / kGatherImages;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "radon_forward_gather_cpu", [&] {
    const scalar_t* img = c.in.data_ptr<scalar_t>();
    const scalar_t* img_t = xt.data_ptr<scalar_t>();
    scalar_t* op = c.out.data_ptr<scalar_t>();
    at::parallel_for(0, n_groups * n_rays, grain(std::max(h, w) * kGatherImages),
                     [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = (t / n_rays) * kGatherImages, r = t % n_rays;
        const int nb = (int)std::min<int64_t>(kGatherImages, n_images - n0);
        const JosephRay ray = c.rays[r];
        const scalar_t* rows = (ray.x_major ? img_t : img) + n0 * hw;
        scalar_t acc[kGatherImages];
        luser_fast::radon::joseph_forward_ray<scalar_t, kGatherImages>(
            rows, hw, nb, ray.x_major ? (int)h : (int)w, ray, acc);
        for (int b = 0; b < nb; ++b) op[(n0 + b) * n_rays + r] = acc[b];
      }
    });
  });
  return c.out;
}

at::Tensor radon_adjoint_gather_cpu(const at::Tensor& sino, const at::Tensor& angles,
                                    int64_t height, int64_t width, double spacing,
                                    std::optional<double> src, std::optional<double> det) {
  const OpCall c =
      adjoint_call(sino, angles, height, width, spacing, src, det, "_radon_adjoint_gather");
  if (c.n_images == 0) return c.out;
  const Geometry& g = c.g;
  const int64_t n_images = c.n_images;
  const at::Tensor cos_t = at::cos(c.angles), sin_t = at::sin(c.angles);
  const double* cp = cos_t.data_ptr<double>();
  const double* spp = sin_t.data_ptr<double>();
  const int64_t n_rays = g.n_angles * g.n_det, hw = height * width;
  const int64_t n_groups = (n_images + kGatherImages - 1) / kGatherImages;
  AT_DISPATCH_FLOATING_TYPES(sino.scalar_type(), "radon_adjoint_gather_cpu", [&] {
    const scalar_t* sp = c.in.data_ptr<scalar_t>();
    scalar_t* op = c.out.data_ptr<scalar_t>();
    at::parallel_for(0, n_groups * hw, grain(4 * g.n_angles * kGatherImages),
                     [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = (t / hw) * kGatherImages, p = t % hw;
        const int nb = (int)std::min<int64_t>(kGatherImages, n_images - n0);
        scalar_t acc[kGatherImages] = {};
        const int i = (int)(p / width), j = (int)(p % width);
        for (int64_t a = 0; a < g.n_angles; ++a) {
          const JosephRay* rays_a = c.rays.data() + a * g.n_det;
          const scalar_t* sino_a = sp + n0 * n_rays + a * g.n_det;
          if (g.src > 0.0) {
            luser_fast::radon::joseph_adjoint_pixel<scalar_t, kGatherImages, true>(
                rays_a, sino_a, n_rays, nb, (int)g.n_det, cp[a], spp[a], g.spacing, g.src,
                g.det, (int)height, (int)width, i, j, acc);
          } else {
            luser_fast::radon::joseph_adjoint_pixel<scalar_t, kGatherImages, false>(
                rays_a, sino_a, n_rays, nb, (int)g.n_det, cp[a], spp[a], g.spacing, g.src,
                g.det, (int)height, (int)width, i, j, acc);
          }
        }
        for (int b = 0; b < nb; ++b) op[(n0 + b) * hw + p] = acc[b];
      }
    });
  });
  return c.out;
}

// The ray table as float64 [A, D, 6]: f0, df, step, x_major, k_begin, k_end (for tests and
// for inspecting the discretisation).
at::Tensor radon_rays_cpu(const at::Tensor& angles, int64_t height, int64_t width,
                          int64_t n_det, double spacing, std::optional<double> src,
                          std::optional<double> det) {
  const char* fn = "_radon_rays";
  const at::Tensor ang = check_angles(angles, angles, fn);
  check_geometry(height, width, n_det, spacing, src, det, fn);
  const Geometry g = make_geometry(height, width, ang.numel(), n_det, spacing, src, det);
  const std::vector<JosephRay> rays = make_rays(ang, g);
  at::Tensor out = at::empty({g.n_angles, g.n_det, 6}, ang.options());
  double* op = out.data_ptr<double>();
  for (size_t r = 0; r < rays.size(); ++r) {
    op[6 * r + 0] = rays[r].f0;
    op[6 * r + 1] = rays[r].df;
    op[6 * r + 2] = rays[r].step;
    op[6 * r + 3] = rays[r].x_major;
    op[6 * r + 4] = rays[r].k_begin;
    op[6 * r + 5] = rays[r].k_end;
  }
  return out;
}

}  // namespace

// Private CPU kernel ops: the public radon_forward / radon_adjoint schemas are defined once,
// in Python (luser_fast/ops/radon.py), whose CPU kernels call these.
TORCH_LIBRARY_FRAGMENT(luser_fast, m) {
  m.def(
      "_radon_forward(Tensor x, Tensor angles, int n_detectors, float det_spacing, "
      "float? source_distance, float? detector_distance) -> Tensor");
  m.def(
      "_radon_adjoint(Tensor sino, Tensor angles, int height, int width, float det_spacing, "
      "float? source_distance, float? detector_distance) -> Tensor");
  m.def(
      "_radon_forward_gather(Tensor x, Tensor angles, int n_detectors, float det_spacing, "
      "float? source_distance, float? detector_distance) -> Tensor");
  m.def(
      "_radon_adjoint_gather(Tensor sino, Tensor angles, int height, int width, "
      "float det_spacing, float? source_distance, float? detector_distance) -> Tensor");
  m.def(
      "_radon_rays(Tensor angles, int height, int width, int n_detectors, float det_spacing, "
      "float? source_distance, float? detector_distance) -> Tensor");
}

TORCH_LIBRARY_IMPL(luser_fast, CPU, m) {
  m.impl("_radon_forward", &radon_forward_cpu);
  m.impl("_radon_adjoint", &radon_adjoint_cpu);
  m.impl("_radon_forward_gather", &radon_forward_gather_cpu);
  m.impl("_radon_adjoint_gather", &radon_adjoint_gather_cpu);
  m.impl("_radon_rays", &radon_rays_cpu);
}
