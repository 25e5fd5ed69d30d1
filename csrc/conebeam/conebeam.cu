// CUDA kernels of the cone-beam (and parallel-beam 3-D) Joseph projector, launched through
// CuPy by luser_fast/ops/conebeam.py on torch's current stream. The math is conebeam.h's,
// shared with the CPU kernels (and run on the CPU, operation for operation, by
// _conebeam_forward_gather / _conebeam_adjoint_scatter); what is here is only the mapping
// of threads to work. Only conebeam.h (with common/) and CUDA builtins are included, so
// NVRTC compiles this file as well.
//
// Both kernels: one thread per (ray, group of kConeImagesPerThread volumes); the ray is
// computed on the fly from its angle's (cos, sin) (trig [A, 2] float64, torch's cos/sin of
// the angles, as the reference uses) and its detector pixel, so no ray table is stored
// (A x rows x cols rays would need tens of bytes each). blockIdx.y strides over the volume
// groups. Threads of a warp are adjacent detector columns of one row and angle, so they
// read (or add to) neighbouring voxels.
//
// Sizes. Offsets into volumes and projections are 64-bit (n_images * D * H * W and
// n_images * n_rays pass 2^31 long before memory runs out), and so is the volume count.
// The launcher keeps n_rays = A * rows * cols below 2^31 (ray indices), every side, rows,
// cols and A below 2^24 (conebeam.h's int indices), and caps gridDim.y at 65535.
//
// Rounding. conebeam.h's per-sample math is unfused on the device (common/rounding.h), so
// the forward computes exactly what its CPU twin computes (docs/DESIGN.md, "Numerical
// contracts"); build with IEEE float32 (no --use_fast_math, -ftz=false). The adjoint adds
// with atomics: each contribution is the twin's to the bit, but the order in which a
// voxel's m contributions c_1 .. c_m arrive changes from run to run. Any order of the m - 1
// additions (each rounding once) is within gamma_(m-1) * sum |c_i| of the exact sum
// (gamma_n = n u / (1 - n u), u the unit roundoff: 2^-24 float32, 2^-53 float64), as is the
// twin's (and the CPU's) sequential sum, so the two differ by at most twice that, and two
// runs likewise. m is at most the number of rays: a ray samples each voxel at most once
// (the voxel lies in one plane across the ray's major axis); the weights are >= 0, so
// sum |c_i| is the adjoint of |proj| at the voxel.
#include "common/constants.h"
#include "conebeam/conebeam.h"

namespace luser_fast {
namespace conebeam {

constexpr int kConeGroup = luser_fast::kConeImagesPerThread;

// Geometry of one launch, passed by value.
struct ConeLaunch {
  long long n_images;
  int n_angles, rows, cols, depth, height, width;
  double spacing_r, spacing_c, src, det;  // src <= 0: parallel beam
};

__device__ __forceinline__ ConeRay ray_at(const double* __restrict__ trig, long long r,
                                          const ConeLaunch& g) {
  const long long per_angle = (long long)g.rows * g.cols;
  const int a = (int)(r / per_angle);
  const int q = (int)(r - (long long)a * per_angle);
  const int row = q / g.cols, col = q - row * g.cols;
  return cone_ray(trig[2 * a], trig[2 * a + 1], row, col, g.rows, g.cols, g.spacing_r,
                  g.spacing_c, g.src, g.det, g.depth, g.height, g.width);
}

// The rays of a launch, A rows cols, one per thread along x.
__device__ __forceinline__ long long ray_count(const ConeLaunch& g) {
  return (long long)g.n_angles * g.rows * g.cols;
}

// Runs group(n0, nb) for the groups of kConeGroup volumes this block strides over
// (blockIdx.y): volumes n0 .. n0 + nb - 1.
template <typename Group>
__device__ __forceinline__ void for_volume_groups(const ConeLaunch& g, Group&& group) {
  const long long n_groups = (g.n_images + kConeGroup - 1) / kConeGroup;
  for (long long grp = blockIdx.y; grp < n_groups; grp += gridDim.y) {
    const long long n0 = grp * kConeGroup;
    group(n0, grp + 1 < n_groups ? kConeGroup : (int)(g.n_images - n0));
  }
}

template <typename T>
__device__ void cone_fwd(const T* __restrict__ vol, const double* __restrict__ trig,
                         const ConeLaunch g, T* __restrict__ out) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x, n_rays = ray_count(g);
  if (r >= n_rays) return;
  const ConeRay ray = ray_at(trig, r, g);
  const ConeStrides st = cone_strides(g.depth, g.height, g.width);
  const long long dhw = st.k * g.depth;
  for_volume_groups(g, [&](long long n0, int nb) {
    T acc[kConeGroup];
    cone_forward_ray<T, kConeGroup>(vol + n0 * dhw, dhw, nb, st, ray, acc);
#pragma unroll
    for (int b = 0; b < kConeGroup; ++b) {
      if (b < nb) out[(n0 + b) * n_rays + r] = acc[b];
    }
  });
}

// out must hold zeros: every sample adds its four weighted values with atomicAdd.
template <typename T>
__device__ void cone_adj(const T* __restrict__ proj, const double* __restrict__ trig,
                         const ConeLaunch g, T* __restrict__ out) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x, n_rays = ray_count(g);
  if (r >= n_rays) return;
  const ConeRay ray = ray_at(trig, r, g);
  if (ray.s_end <= ray.s_begin) return;
  const ConeStrides st = cone_strides(g.depth, g.height, g.width);
  const long long dhw = st.k * g.depth;
  const T step = (T)ray.step;
  for_volume_groups(g, [&](long long n0, int nb) {
    T val[kConeGroup];
#pragma unroll
    for (int b = 0; b < kConeGroup; ++b) {
      val[b] = b < nb ? proj[(n0 + b) * n_rays + r] * step : T(0);
    }
    T* o = out + n0 * dhw;
    cone_adjoint_ray<T, kConeGroup>(val, dhw, nb, st, ray,
                                    [&](long long i, T v) { atomicAdd(o + i, v); });
  });
}

}  // namespace conebeam
}  // namespace luser_fast

// Kernels, float32 and float64, parallel (src <= 0) and cone beam alike. Arguments:
// vol / proj, trig [A, 2] (cos, sin), the volume count, A, rows, cols, D, H, W, the row and
// column spacings, src and det (0 for parallel), and the output.
#define LF_CONE_KERNEL(NAME, FN, T)                                                           \
  extern "C" __global__ void NAME(const T* __restrict__ in, const double* __restrict__ trig,  \
                                  long long n_images, int n_angles, int rows, int cols,       \
                                  int depth, int height, int width, double spacing_r,         \
                                  double spacing_c, double src, double det,                   \
                                  T* __restrict__ out) {                                      \
    const luser_fast::conebeam::ConeLaunch g = {n_images, n_angles,  rows,      cols,         \
                                                depth,    height,    width,     spacing_r,    \
                                                spacing_c, src,      det};                    \
    luser_fast::conebeam::FN<T>(in, trig, g, out);                                            \
  }

LF_CONE_KERNEL(conebeam_fwd_kernel_f32, cone_fwd, float)
LF_CONE_KERNEL(conebeam_fwd_kernel_f64, cone_fwd, double)
LF_CONE_KERNEL(conebeam_adj_kernel_f32, cone_adj, float)
LF_CONE_KERNEL(conebeam_adj_kernel_f64, cone_adj, double)
