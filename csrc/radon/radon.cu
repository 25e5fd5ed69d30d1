// CUDA kernels of the Radon transform (Joseph), launched through CuPy by
// luser_fast/ops/radon.py on torch's current stream. The math is joseph.h's, shared with
// the CPU kernels (and exercised on the CPU by _radon_forward_gather /
// _radon_adjoint_gather); what is here is only the mapping of threads to work.
// Only joseph.h (with common/) and CUDA builtins are included, so NVRTC compiles this file
// as well.
#include "radon/joseph.h"

namespace {

using luser_fast::radon::JosephRay;

// Images per thread: the ray (forward) or the pixel's candidate rays (adjoint) are set up
// once and applied to this many images (common/constants.h; the launcher sizes its grid
// from it).
constexpr int kImagesPerThread = luser_fast::kRadonImagesPerThread;

// Sizes. Offsets into the images, sinograms and outputs are 64-bit (n_images * n_rays and
// n_images * H * W pass 2^31 long before memory runs out); the image count itself is a
// long long. The launcher (luser_fast/ops/radon.py) keeps n_rays = A * D below 2^31 (ray
// indices, the ray table) and H, W, D, A below 2^24 (joseph.h's int indices), and caps
// gridDim.y at 65535: the image groups are a grid-stride loop over blockIdx.y, so any
// number of images runs.
//
// Rounding. joseph.h's per-sample math is written unfused on the device (mul_rn/add_rn),
// so these kernels compute what the CPU gather twins compute (docs/DESIGN.md, "Numerical
// contracts"); build with IEEE float32 (no --use_fast_math, -ftz=false: NVRTC's options
// in luser_fast/_ext.py say so explicitly, nvcc's defaults are these).

// Forward: one thread per (ray, group of kImagesPerThread images); blockIdx.y strides over
// the image groups. x-major rays read the transposed images, so the threads of a warp
// (adjacent detectors of one angle) read neighbouring addresses of one row.
template <typename T>
__device__ void radon_fwd(const T* __restrict__ img, const T* __restrict__ img_t,
                          const JosephRay* __restrict__ rays, long long n_images,
                          int n_rays, int height, int width, T* __restrict__ out) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const JosephRay ray = rays[r];
  const long long hw = (long long)height * width;
  const T* rows = ray.x_major ? img_t : img;
  const int n_min = ray.x_major ? height : width;
  const long long n_groups = (n_images + kImagesPerThread - 1) / kImagesPerThread;
  for (long long g = blockIdx.y; g < n_groups; g += gridDim.y) {  // as in radon_adj
    const long long n0 = g * kImagesPerThread;
    const int nb = g + 1 < n_groups ? kImagesPerThread : (int)(n_images - n0);
    T acc[kImagesPerThread];
    luser_fast::radon::joseph_forward_ray<T, kImagesPerThread>(rows + n0 * hw, hw, nb, n_min,
                                                              ray, acc);
#pragma unroll
    for (int b = 0; b < kImagesPerThread; ++b) {
      if (b < nb) out[(n0 + b) * n_rays + r] = acc[b];
    }
  }
}

// Adjoint: one thread per (pixel, group of kImagesPerThread images), gathering from every
// angle the rays whose samples touch the pixel, with the forward's own weights (exact
// transpose; each output written once, no atomics). trig holds (cos, sin) per angle.
template <typename T, bool FAN>
__device__ void radon_adj(const T* __restrict__ sino, const JosephRay* __restrict__ rays,
                          const double* __restrict__ trig, long long n_images, int n_angles,
                          int n_det, double spacing, double src, double det, int height,
                          int width, T* __restrict__ out) {
  const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long hw = (long long)height * width;
  if (p >= hw) return;
  const int i = (int)(p / width), j = (int)(p % width);
  const long long n_rays = (long long)n_angles * n_det;
  // image groups g = blockIdx.y, blockIdx.y + gridDim.y, ...; group g holds images
  // 4 g .. 4 g + nb - 1 (counting groups, not images, keeps the sm_80 register count of the
  // int image count it replaced, 63 / 69 for float / double, against 104 / 112 with a
  // 64-bit n0 < n_images test)
  const long long n_groups = (n_images + kImagesPerThread - 1) / kImagesPerThread;
  for (long long g = blockIdx.y; g < n_groups; g += gridDim.y) {
    const long long n0 = g * kImagesPerThread;
    const int nb = g + 1 < n_groups ? kImagesPerThread : (int)(n_images - n0);
    T acc[kImagesPerThread];
#pragma unroll
    for (int b = 0; b < kImagesPerThread; ++b) acc[b] = T(0);
#pragma unroll 1  // rolled: unrolling the angle loop only adds registers
    for (int a = 0; a < n_angles; ++a) {
      luser_fast::radon::joseph_adjoint_pixel<T, kImagesPerThread, FAN>(
          rays + (long long)a * n_det, sino + n0 * n_rays + (long long)a * n_det, n_rays, nb,
          n_det, trig[2 * a], trig[2 * a + 1], spacing, src, det, height, width, i, j, acc);
    }
#pragma unroll
    for (int b = 0; b < kImagesPerThread; ++b) {
      if (b < nb) out[(n0 + b) * hw + p] = acc[b];
    }
  }
}

}  // namespace

// Ray table: rays[a * D + d] for the line with origin (ox, oy) and unit direction (vx, vy)
// given per ray in lines[4 * r .. 4 * r + 3] (computed by torch exactly as the reference).
extern "C" __global__ void radon_rays_kernel(const double* __restrict__ lines, int n_rays,
                                             int height, int width,
                                             JosephRay* __restrict__ rays) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const double* l = lines + 4 * r;
  rays[r] = luser_fast::radon::joseph_ray_from_line(l[0], l[1], l[2], l[3], height, width);
}

extern "C" __global__ void radon_fwd_kernel_f32(const float* __restrict__ img,
                                                const float* __restrict__ img_t,
                                                const JosephRay* __restrict__ rays,
                                                long long n_images, int n_rays, int height,
                                                int width, float* __restrict__ out) {
  radon_fwd<float>(img, img_t, rays, n_images, n_rays, height, width, out);
}

extern "C" __global__ void radon_fwd_kernel_f64(const double* __restrict__ img,
                                                const double* __restrict__ img_t,
                                                const JosephRay* __restrict__ rays,
                                                long long n_images, int n_rays, int height,
                                                int width, double* __restrict__ out) {
  radon_fwd<double>(img, img_t, rays, n_images, n_rays, height, width, out);
}

// Adjoint kernels: parallel beam (src and det unused) and fan beam, float32 and float64.
#define LF_RADON_ADJ_KERNEL(NAME, T, FAN)                                                     \
  extern "C" __global__ void NAME(const T* __restrict__ sino,                                 \
                                  const JosephRay* __restrict__ rays,                         \
                                  const double* __restrict__ trig, long long n_images,        \
                                  int n_angles, int n_det, double spacing, double src,        \
                                  double det, int height, int width, T* __restrict__ out) {   \
    radon_adj<T, FAN>(sino, rays, trig, n_images, n_angles, n_det, spacing, src, det, height, \
                      width, out);                                                            \
  }

LF_RADON_ADJ_KERNEL(radon_adj_kernel_f32, float, false)
LF_RADON_ADJ_KERNEL(radon_adj_kernel_f64, double, false)
LF_RADON_ADJ_KERNEL(radon_adj_fan_kernel_f32, float, true)
LF_RADON_ADJ_KERNEL(radon_adj_fan_kernel_f64, double, true)
