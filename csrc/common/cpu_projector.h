// Host-only helpers shared by the CPU kernels of the Joseph projectors, 2-D (radon/radon.cpp)
// and 3-D (conebeam/conebeam.cpp): thread grain, the argument checks both make alike, and
// the lane machinery of their fast paths (a batch processed in groups of V lanes, one SIMD
// vector, lane arithmetic written vector-wide with the GCC/Clang vector extension). Not
// compiled by nvcc or NVRTC (the CUDA kernels share only joseph.h / conebeam.h).
//
// Everything here is inline or a template, so a hot loop that uses it compiles to what it
// would with its own copy (the lane helpers only move bytes: no rounding to contract).
#ifndef LUSER_FAST_COMMON_CPU_PROJECTOR_H
#define LUSER_FAST_COMMON_CPU_PROJECTOR_H

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/device.h"

namespace luser_fast {
namespace projector {

// Least work (samples times lanes, or output elements) worth a thread: smaller problems run
// on the calling thread, where a parallel region costs more than it saves (and much more on
// an oversubscribed machine).
constexpr int64_t kMinWork = 1 << 16;
// Sides, detector sizes and angle counts stay below this (int indices in the shared math).
constexpr int64_t kMaxCount = 1 << 24;

// Grain (items per chunk) for at::parallel_for over items of ~work_per_item each.
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_item));
}

// --- argument checks ------------------------------------------------------------------------

// angles: non-empty 1-D real floating, finite, on data's device; returned as float64.
inline at::Tensor check_angles(const at::Tensor& angles, const at::Tensor& data, const char* fn) {
  TORCH_CHECK(angles.dim() == 1 && angles.numel() >= 1, fn,
              ": angles must be a non-empty 1-D tensor, got shape ", angles.sizes());
  TORCH_CHECK(at::isFloatingType(angles.scalar_type()), fn,
              ": angles must be a real floating tensor, got ", angles.scalar_type());
  TORCH_CHECK(angles.device() == data.device(), fn, ": angles must be on ", data.device(),
              ", got ", angles.device());
  TORCH_CHECK(angles.numel() < kMaxCount, fn, ": too many angles (", angles.numel(), ")");
  // a NaN angle would give a NaN row in the forward and no rays in the adjoint: refuse it
  // in both, as the Python kernels and the reference do
  TORCH_CHECK(at::isfinite(angles).all().item<bool>(), fn, ": angles must be finite");
  return angles.to(at::kDouble).contiguous();
}

// t: a float32 / float64 CPU tensor of at least min_dims dims.
inline void check_data(const at::Tensor& t, const char* name, int64_t min_dims, const char* fn) {
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor here, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, fn, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() >= min_dims, fn, ": ", name, " must have at least ", min_dims,
              " dims, got shape ", t.sizes());
}

// The source and detector distances of a divergent beam (none: parallel). source_msg
// (": source_distance must ...") is the op's wording of the bound half_diagonal.
inline void check_distances(const std::optional<double>& src, const std::optional<double>& det,
                            double half_diagonal, const char* source_msg, const char* fn) {
  if (src.has_value()) {
    TORCH_CHECK(std::isfinite(*src) && *src > half_diagonal, fn, source_msg, half_diagonal,
                ", got ", *src);
  }
  if (det.has_value()) {
    TORCH_CHECK(src.has_value(), fn, ": detector_distance needs source_distance");
    TORCH_CHECK(std::isfinite(*det) && *det >= 0.0, fn,
                ": detector_distance must be finite and >= 0, got ", *det);
  }
}

// t's leading (batch) sizes, all but its last n_last, followed by tail: an op's output shape.
inline std::vector<int64_t> batch_shape(const at::Tensor& t, int64_t n_last,
                                        std::initializer_list<int64_t> tail) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end() - n_last);
  shape.insert(shape.end(), tail.begin(), tail.end());
  return shape;
}

// --- lanes ----------------------------------------------------------------------------------

// V lanes of T as one vector of the GCC/Clang vector extension (V == 1: a plain scalar): the
// lane arithmetic is written once, vector-wide, instead of left to the vectoriser, which
// turned the per-lane loops into scalar shuffles through the stack.
template <typename T, int V>
struct LaneVec {
  typedef T type __attribute__((vector_size(V * sizeof(T))));
};
template <typename T>
struct LaneVec<T, 1> {
  typedef T type;
};
template <typename T, int V>
using lanes_t = typename LaneVec<T, V>::type;

// Internal linkage (a TU's own copy, as when each file defined them): with vague linkage
// g++ compiled radon.cpp's forward_rays clones differently (same math, other code).
namespace {

template <typename Vec, typename T>
LF_ALWAYS_INLINE Vec load_lanes(const T* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

template <typename Vec, typename T>
LF_ALWAYS_INLINE void store_lanes(T* p, const Vec& v) {
  std::memcpy(p, &v, sizeof(Vec));
}

}  // namespace

// A zeroed buffer of n elements of T, 64-byte aligned (ATen's CPU allocator), so that every
// lane vector of a padded buffer sits inside one cache line.
template <typename T>
at::Tensor zeros_of(int64_t n) {
  return at::zeros({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Lanes per group for n images left: a full SIMD vector, or the next power of two.
inline int lanes_for(int64_t left, int full) {
  int v = 1;
  while (v < full && v < left) v *= 2;
  return v;
}

// Runs fn(lanes, n0, nb) over the batch in groups of lanes (FULL for full groups; lanes an
// std::integral_constant, nb <= lanes the images of the group).
template <int FULL, typename F>
void for_lane_groups(int64_t n_images, F&& fn) {
  int64_t n0 = 0;
  while (n0 < n_images) {
    const int v = lanes_for(n_images - n0, FULL);
    const int nb = (int)std::min<int64_t>(v, n_images - n0);
    switch (v) {
      case 1: fn(std::integral_constant<int, 1>{}, n0, nb); break;
      case 2: fn(std::integral_constant<int, 2>{}, n0, nb); break;
      case 4: fn(std::integral_constant<int, 4>{}, n0, nb); break;
      default: fn(std::integral_constant<int, (FULL > 4 ? FULL : 4)>{}, n0, nb); break;
    }
    n0 += nb;
  }
}

template <typename T>
constexpr int full_lanes() {
  return 32 / (int)sizeof(T);  // one 256-bit vector
}

// Runs group(lanes, in, n0, nb, out) over the n_images images of in (float32 or float64,
// contiguous: check_data) in groups of SIMD lanes, in and out as pointers of in's dtype.
template <typename Group>
void run_lane_groups(const at::Tensor& in, const at::Tensor& out, int64_t n_images,
                     const Group& group) {
  if (n_images == 0) return;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "projector_lane_groups", [&] {
    const scalar_t* ip = in.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_lane_groups<full_lanes<scalar_t>()>(n_images, [&](auto lanes, int64_t n0, int nb) {
      group(lanes, ip, n0, nb, op);
    });
  });
}

}  // namespace projector
}  // namespace luser_fast

#endif  // LUSER_FAST_COMMON_CPU_PROJECTOR_H
