/* Copyright 2026 The optax_adaptive Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
==============================================================================*/

// CProp's per-element update as one loop over each leaf, for XLA:CPU.
//
// XLA:CPU writes every output array of an element-wise computation in its
// own loop, so CProp's update reads the gradient and the moments several
// times (17 array passes for the fused update against Adam's 9; see
// benchmarks/cprop_passes.py). These XLA FFI handlers read every input once
// and write every output once, in place on the state (the Python side
// aliases state inputs to outputs). The arithmetic mirrors
// optax_adaptive/_cprop.py operation by operation; that module is the
// reference, and tests/test_cpu_kernels.py compares the two.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The chunk loops are compiled for AVX2 + FMA and for baseline x86-64, and
// picked at load time; everything they call is inlined into each clone.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define OA_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OA_MULTIVERSION
#endif
#if defined(__GNUC__)
#define OA_INLINE inline __attribute__((always_inline))
#define OA_LAMBDA_INLINE __attribute__((always_inline))
#else
#define OA_INLINE inline
#define OA_LAMBDA_INLINE
#endif

// Coefficient layout shared with _COEFFICIENTS in optax_adaptive/_cprop.py.
enum Coefficient : int {
  kBeta = 0,          // CProp's EMA decay
  kOneMinusBeta,
  kInvBiasCorrection,  // 1 / (1 - beta^t)
  kInvDof,            // 1 / (max(n_t - 1, 0) + eps), 0 at t = 1
  kSeEps,             // eps added to the standard error (>= tiny)
  kC,
  kCdfA,
  kCdfB,
  kB1,                // Adam (fused handler only)
  kOneMinusB1,
  kInvBiasCorrection1,
  kB2,
  kOneMinusB2,
  kInvBiasCorrection2,
  kAdamEps,
  kNegLearningRate,
  kWeightDecay,
  kNumCoefficients,
};

enum Cdf : int32_t { kNormal = 0, kBft = 1, kBfo = 2, kLogistic = 3 };

// Eigen's float tanh rational, as _cprop._TANH_P / _TANH_Q, evaluated by
// Estrin's scheme in the same order as _cprop._polynomial.
constexpr float kTanhClamp = 7.99881172180175781f;

OA_INLINE float TanhOfNonnegative(float x) {
  const bool saturated = x > kTanhClamp;  // false for NaN
  x = saturated ? kTanhClamp : x;
  const float x2 = x * x;
  const float x4 = x2 * x2;
  const float x8 = x4 * x4;
  // P, lowest power first: p0 .. p6.
  const float p0 = 4.89352455891786e-03f, p1 = 6.37261928875436e-04f,
              p2 = 1.48572235717979e-05f, p3 = 5.12229709037114e-08f,
              p4 = -8.60467152213735e-11f, p5 = 2.00018790482477e-13f,
              p6 = -2.76076847742355e-16f;
  const float q0 = 4.89352518554385e-03f, q1 = 2.26843463243900e-03f,
              q2 = 1.18534705686654e-04f, q3 = 1.19825839466702e-06f;
  const float p01 = p0 + p1 * x2, p23 = p2 + p3 * x2, p45 = p4 + p5 * x2;
  const float p0123 = p01 + p23 * x4;
  const float p456 = p45 + p6 * x4;
  const float p = p0123 + p456 * x8;
  const float q01 = q0 + q1 * x2, q23 = q2 + q3 * x2;
  const float q = q01 + q23 * x4;
  const float rational = x * (p / q);
  return saturated ? 1.0f : rational;
}

// 2|P - 1/2| from the already updated EMAs (_cprop._conformity).
OA_INLINE float Conformity(float m, float v, const float* k, int32_t cdf) {
  const float m_hat = m * k[kInvBiasCorrection];
  const float v_hat = v * k[kInvBiasCorrection];
  const float spread = v_hat - m_hat * m_hat;
  const float variance = spread > 0.0f ? spread : 0.0f;
  const float inv_se =
      1.0f / (std::sqrt(variance * k[kInvDof]) + k[kSeEps]);
  const float abs_z = std::fabs(m_hat) * inv_se;
  const float arg = cdf == kBft
                        ? abs_z * (k[kCdfA] * (abs_z * abs_z) + k[kCdfB])
                        : abs_z * k[kCdfB];
  return cdf == kNormal ? std::erf(arg) : TanhOfNonnegative(arg);
}

// min(c * conformity, 1), NaN propagating like jnp.minimum.
OA_INLINE float Scale(float conformity, const float* k) {
  const float scaled = k[kC] * conformity;
  return scaled > 1.0f ? 1.0f : scaled;
}

OA_INLINE float Ema(float moment, float value, float decay,
                 float one_minus_decay) {
  return one_minus_decay * value + decay * moment;
}

struct AdamLeaf {
  const float* g;
  const float* p;  // null without weight decay
  const float* mu;
  const float* nu;
  const float* m;
  const float* v;  // null when CProp's v is Adam's nu
  float* u;
  float* mu_out;
  float* nu_out;
  float* m_out;
  float* v_out;
};

// Updates element i and returns its scale s. The variants are template
// parameters so that the loop has no branches and vectorises.
template <int32_t kCdf, bool kDecay, bool kOwnV>
OA_INLINE float AdamElement(const AdamLeaf& leaf, const float* k, int64_t i) {
  float d = leaf.g[i];
  if constexpr (kDecay) d = d + k[kWeightDecay] * leaf.p[i];
  const float dd = d * d;
  const float mu = Ema(leaf.mu[i], d, k[kB1], k[kOneMinusB1]);
  const float nu = Ema(leaf.nu[i], dd, k[kB2], k[kOneMinusB2]);
  const float m = Ema(leaf.m[i], d, k[kBeta], k[kOneMinusBeta]);
  float v = nu;
  if constexpr (kOwnV) v = Ema(leaf.v[i], dd, k[kBeta], k[kOneMinusBeta]);
  const float s = Scale(Conformity(m, v, k, kCdf), k);
  const float nu_hat = nu * k[kInvBiasCorrection2];
  const float adam =
      (mu * k[kInvBiasCorrection1]) / (std::sqrt(nu_hat) + k[kAdamEps]);
  leaf.u[i] = k[kNegLearningRate] * adam * s;
  leaf.mu_out[i] = mu;
  leaf.nu_out[i] = nu;
  leaf.m_out[i] = m;
  if constexpr (kOwnV) leaf.v_out[i] = v;
  return s;
}

// Sums over kLanes interleaved accumulators, so that the loop vectorises
// (a single float accumulator is a serial chain under strict FP ordering).
constexpr int kLanes = 16;

template <typename Element>
OA_INLINE double SumOverRange(int64_t begin, int64_t end, Element element) {
  float lanes[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
#pragma GCC ivdep
    for (int j = 0; j < kLanes; ++j) lanes[j] += element(i + j);
  }
  double total = 0.0;
  for (; i < end; ++i) total += element(i);
  for (float lane : lanes) total += lane;
  return total;
}

template <int32_t kCdf, bool kDecay, bool kOwnV>
OA_MULTIVERSION double AdamChunk(const AdamLeaf& leaf, const float* k,
                                 int64_t begin, int64_t end) {
  return SumOverRange(begin, end, [&](int64_t i) OA_LAMBDA_INLINE {
    return AdamElement<kCdf, kDecay, kOwnV>(leaf, k, i);
  });
}

template <int32_t kCdf>
double AdamChunkFor(const AdamLeaf& leaf, const float* k, int64_t begin,
                    int64_t end) {
  const bool decay = leaf.p != nullptr, own_v = leaf.v != nullptr;
  if (decay && own_v) return AdamChunk<kCdf, true, true>(leaf, k, begin, end);
  if (decay) return AdamChunk<kCdf, true, false>(leaf, k, begin, end);
  if (own_v) return AdamChunk<kCdf, false, true>(leaf, k, begin, end);
  return AdamChunk<kCdf, false, false>(leaf, k, begin, end);
}

struct ScaleLeaf {
  const float* g;
  const float* inner;
  const float* m;
  const float* v;
  float* u;
  float* m_out;
  float* v_out;
};

template <int32_t kCdf>
OA_INLINE float ScaleElement(const ScaleLeaf& leaf, const float* k, int64_t i) {
  const float g = leaf.g[i];
  const float m = Ema(leaf.m[i], g, k[kBeta], k[kOneMinusBeta]);
  const float v = Ema(leaf.v[i], g * g, k[kBeta], k[kOneMinusBeta]);
  const float s = Scale(Conformity(m, v, k, kCdf), k);
  leaf.u[i] = leaf.inner[i] * s;
  leaf.m_out[i] = m;
  leaf.v_out[i] = v;
  return s;
}

template <int32_t kCdf>
OA_MULTIVERSION double ScaleChunk(const ScaleLeaf& leaf, const float* k,
                                  int64_t begin, int64_t end) {
  return SumOverRange(begin, end, [&](int64_t i) OA_LAMBDA_INLINE {
    return ScaleElement<kCdf>(leaf, k, i);
  });
}

// Elements per task: large enough to amortise scheduling; each of the
// kLanes float accumulators then adds at most 1024 scales s in [0, 1].
constexpr int64_t kChunk = 1 << 14;

// Runs chunk(c) for every chunk index on the caller and the intra-op pool,
// and returns the sum of the results in chunk order (deterministic).
template <typename ChunkFn>
double ParallelSum(ffi::ThreadPool& pool, int64_t size, ChunkFn chunk) {
  const int64_t num_chunks = (size + kChunk - 1) / kChunk;
  if (num_chunks == 0) return 0.0;
  struct Job {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::vector<double> partial;
    ChunkFn chunk;
    int64_t size;
    explicit Job(ChunkFn fn, int64_t n, int64_t chunks)
        : partial(chunks), chunk(std::move(fn)), size(n) {}
  };
  auto job = std::make_shared<Job>(std::move(chunk), size, num_chunks);
  auto work = [job, num_chunks]() {
    for (;;) {
      const int64_t c = job->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= num_chunks) return;
      const int64_t begin = c * kChunk;
      const int64_t end = std::min(begin + kChunk, job->size);
      job->partial[c] = job->chunk(begin, end);
      job->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers =
      std::min<int64_t>(pool.num_threads() - 1, num_chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) {
    auto copy = work;  // Schedule takes ownership of a callable by value
    pool.Schedule(std::move(copy));
  }
  work();
  while (job->done.load(std::memory_order_acquire) < num_chunks) {
    std::this_thread::yield();
  }
  double total = 0.0;
  for (double x : job->partial) total += x;
  return total;
}

template <typename Leaf, typename Dispatch>
ffi::Error RunLeaf(ffi::ThreadPool& pool, int64_t size, const Leaf& leaf,
                   const float* k, int32_t cdf, float* sum_out,
                   Dispatch dispatch) {
  if (cdf < kNormal || cdf > kLogistic) {
    return ffi::Error::InvalidArgument("cdf must be 0, 1, 2 or 3");
  }
  *sum_out = static_cast<float>(ParallelSum(
      pool, size, [leaf, k, cdf, dispatch](int64_t begin, int64_t end) {
        return dispatch(leaf, k, cdf, begin, end);
      }));
  return ffi::Error::Success();
}

double DispatchAdam(const AdamLeaf& leaf, const float* k, int32_t cdf,
                    int64_t begin, int64_t end) {
  switch (cdf) {
    case kNormal: return AdamChunkFor<kNormal>(leaf, k, begin, end);
    case kBft: return AdamChunkFor<kBft>(leaf, k, begin, end);
    default: return AdamChunkFor<kBfo>(leaf, k, begin, end);  // bfo, logistic
  }
}

double DispatchScale(const ScaleLeaf& leaf, const float* k, int32_t cdf,
                     int64_t begin, int64_t end) {
  switch (cdf) {
    case kNormal: return ScaleChunk<kNormal>(leaf, k, begin, end);
    case kBft: return ScaleChunk<kBft>(leaf, k, begin, end);
    default: return ScaleChunk<kBfo>(leaf, k, begin, end);
  }
}

bool CoefficientsOk(const ffi::Buffer<ffi::F32>& k) {
  return k.element_count() == kNumCoefficients;
}

ffi::Error CPropAdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                         ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> mu,
                         ffi::Buffer<ffi::F32> nu, ffi::Buffer<ffi::F32> m,
                         ffi::Buffer<ffi::F32> v,
                         ffi::Buffer<ffi::F32> coefficients, int32_t cdf,
                         ffi::ResultBuffer<ffi::F32> u,
                         ffi::ResultBuffer<ffi::F32> mu_out,
                         ffi::ResultBuffer<ffi::F32> nu_out,
                         ffi::ResultBuffer<ffi::F32> m_out,
                         ffi::ResultBuffer<ffi::F32> v_out,
                         ffi::ResultBuffer<ffi::F32> scale_sum) {
  const int64_t size = g.element_count();
  const bool decay = p.element_count() != 0;
  const bool own_v = v.element_count() != 0;
  if (!CoefficientsOk(coefficients) || mu.element_count() != size ||
      nu.element_count() != size || m.element_count() != size ||
      (decay && p.element_count() != size) ||
      (own_v && v.element_count() != size)) {
    return ffi::Error::InvalidArgument("cprop_adam kernel: shape mismatch");
  }
  const AdamLeaf leaf{g.typed_data(),       decay ? p.typed_data() : nullptr,
                      mu.typed_data(),      nu.typed_data(),
                      m.typed_data(),       own_v ? v.typed_data() : nullptr,
                      u->typed_data(),      mu_out->typed_data(),
                      nu_out->typed_data(), m_out->typed_data(),
                      own_v ? v_out->typed_data() : nullptr};
  return RunLeaf(pool, size, leaf, coefficients.typed_data(), cdf,
                 scale_sum->typed_data(), DispatchAdam);
}

ffi::Error CPropScaleImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                          ffi::Buffer<ffi::F32> inner,
                          ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> v,
                          ffi::Buffer<ffi::F32> coefficients, int32_t cdf,
                          ffi::ResultBuffer<ffi::F32> u,
                          ffi::ResultBuffer<ffi::F32> m_out,
                          ffi::ResultBuffer<ffi::F32> v_out,
                          ffi::ResultBuffer<ffi::F32> scale_sum) {
  const int64_t size = g.element_count();
  if (!CoefficientsOk(coefficients) || inner.element_count() != size ||
      m.element_count() != size || v.element_count() != size) {
    return ffi::Error::InvalidArgument("cprop kernel: shape mismatch");
  }
  const ScaleLeaf leaf{g.typed_data(),      inner.typed_data(),
                       m.typed_data(),      v.typed_data(),
                       u->typed_data(),     m_out->typed_data(),
                       v_out->typed_data()};
  return RunLeaf(pool, size, leaf, coefficients.typed_data(), cdf,
                 scale_sum->typed_data(), DispatchScale);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OptaxAdaptiveCPropAdam, CPropAdamImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()  // g
        .Arg<ffi::Buffer<ffi::F32>>()  // p, or empty
        .Arg<ffi::Buffer<ffi::F32>>()  // mu
        .Arg<ffi::Buffer<ffi::F32>>()  // nu
        .Arg<ffi::Buffer<ffi::F32>>()  // m
        .Arg<ffi::Buffer<ffi::F32>>()  // v, or empty when shared with nu
        .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
        .Attr<int32_t>("cdf")
        .Ret<ffi::Buffer<ffi::F32>>()  // u
        .Ret<ffi::Buffer<ffi::F32>>()  // mu
        .Ret<ffi::Buffer<ffi::F32>>()  // nu
        .Ret<ffi::Buffer<ffi::F32>>()  // m
        .Ret<ffi::Buffer<ffi::F32>>()  // v, or empty
        .Ret<ffi::Buffer<ffi::F32>>());  // sum of s over the leaf

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OptaxAdaptiveCPropScale, CPropScaleImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()  // g
        .Arg<ffi::Buffer<ffi::F32>>()  // inner updates
        .Arg<ffi::Buffer<ffi::F32>>()  // m
        .Arg<ffi::Buffer<ffi::F32>>()  // v
        .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
        .Attr<int32_t>("cdf")
        .Ret<ffi::Buffer<ffi::F32>>()  // u
        .Ret<ffi::Buffer<ffi::F32>>()  // m
        .Ret<ffi::Buffer<ffi::F32>>()  // v
        .Ret<ffi::Buffer<ffi::F32>>());  // sum of s over the leaf
