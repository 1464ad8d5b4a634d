// Element-wise steps of a decoder layer fused into single memory passes (see fused.rs).
// Each candle op is one pass over [T, D] (or [T, F]) in HBM; at 16k tokens the layer's
// casts, additions, norms and activation moved ~6 GB per layer through unfused kernels.
// Arithmetic is f32 whatever the storage type; each result is rounded once.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// Vectors of 4 (add_into) or 16 bytes (silu_mul) where every pointer is aligned for them:
// scalar 2-byte accesses left the element-wise kernels well short of the memory bandwidth.
template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

__device__ __forceinline__ bool aligned(const void *p, size_t bytes) {
  return (uintptr_t)p % bytes == 0;
}

// x[i] += y[i]: the f32 residual stream takes a sublayer's output without a cast pass.
template <typename T>
__device__ void add_into(float *__restrict__ x, const T *__restrict__ y, size_t n) {
  size_t stride = (size_t)blockDim.x * gridDim.x;
  size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t nv = aligned(x, 16) && aligned(y, sizeof(Vec<T, 4>)) ? n / 4 : 0;
  for (size_t i = tid; i < nv; i += stride) {
    Vec<float, 4> a = reinterpret_cast<Vec<float, 4> *>(x)[i];
    Vec<T, 4> b = reinterpret_cast<const Vec<T, 4> *>(y)[i];
#pragma unroll
    for (int j = 0; j < 4; ++j) a.v[j] += to_f(b.v[j]);
    reinterpret_cast<Vec<float, 4> *>(x)[i] = a;
  }
  for (size_t i = nv * 4 + tid; i < n; i += stride) x[i] += to_f(y[i]);
}

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = (int)threadIdx.x < warps ? part[threadIdx.x] : 0.f;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (lane == 0) part[0] = v;
  }
  __syncthreads();
  return part[0];
}

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, read as f32, written as T: the
// norm and the cast to the matmul dtype in one pass. One block per row.
template <typename T>
__device__ void rms_norm_to(const float *__restrict__ x, const float *__restrict__ w,
                            T *__restrict__ out, int d, float eps) {
  const float *xr = x + (size_t)blockIdx.x * d;
  T *orow = out + (size_t)blockIdx.x * d;
  float s = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = xr[i];
    s += v * v;
  }
  s = block_sum(s);
  float m = sqrtf(s / (float)d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) orow[i] = from_f<T>(xr[i] / m * w[i]);
}

// out = silu(a) * b, computed in f32 and rounded once (candle's silu and mul round twice).
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.f + expf(-g)) * u; }

template <typename T>
__device__ void silu_mul(const T *__restrict__ a, const T *__restrict__ b, T *__restrict__ out,
                         size_t n) {
  constexpr int V = 16 / sizeof(T);
  size_t stride = (size_t)blockDim.x * gridDim.x;
  size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t nv = aligned(a, 16) && aligned(b, 16) && aligned(out, 16) ? n / V : 0;
  for (size_t i = tid; i < nv; i += stride) {
    Vec<T, V> va = reinterpret_cast<const Vec<T, V> *>(a)[i];
    Vec<T, V> vb = reinterpret_cast<const Vec<T, V> *>(b)[i];
    Vec<T, V> vo;
#pragma unroll
    for (int j = 0; j < V; ++j) vo.v[j] = from_f<T>(silu_times(to_f(va.v[j]), to_f(vb.v[j])));
    reinterpret_cast<Vec<T, V> *>(out)[i] = vo;
  }
  for (size_t i = nv * V + tid; i < n; i += stride)
    out[i] = from_f<T>(silu_times(to_f(a[i]), to_f(b[i])));
}

#define FUSED(NAME, T)                                                                         \
  extern "C" __global__ void add_into_##NAME(float *x, const T *y, size_t n) {               \
    add_into<T>(x, y, n);                                                                    \
  }                                                                                          \
  extern "C" __global__ void rms_norm_to_##NAME(const float *x, const float *w, T *out,       \
                                                int d, float eps) {                           \
    rms_norm_to<T>(x, w, out, d, eps);                                                       \
  }                                                                                          \
  extern "C" __global__ void silu_mul_##NAME(const T *a, const T *b, T *out, size_t n) {      \
    silu_mul<T>(a, b, out, n);                                                               \
  }

FUSED(f32, float)
FUSED(bf16, __nv_bfloat16)
FUSED(f16, __half)
