// Element-wise steps of a decoder layer fused into single memory passes (see fused.rs).
// Each candle op is one pass over [T, D] (or [T, F]) in HBM; at 16k tokens the layer's
// casts, additions, norms and activation moved ~6 GB per layer through unfused kernels.
// Arithmetic is f32 whatever the storage type; each result is rounded once.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
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

// Vectors of 4 (add_into) or 16 bytes where every pointer is aligned for them: scalar 2-byte
// accesses left the element-wise kernels well short of the memory bandwidth.
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
// norm and the cast to the matmul dtype in one pass. One block per row. Rows of up to
// RMS_VEC x 4 x blockDim floats are read once, as float4, into registers (a scalar loop
// reading the row twice ran at a third of the memory bandwidth); others take the loop.
#define RMS_VEC 8
template <typename T>
__device__ void rms_norm_to(const float *__restrict__ x, const float *__restrict__ w,
                            T *__restrict__ out, int d, float eps) {
  const float *xr = x + (size_t)blockIdx.x * d;
  T *orow = out + (size_t)blockIdx.x * d;
  int d4 = d / 4;
  bool vec = d % 4 == 0 && d4 <= RMS_VEC * (int)blockDim.x && aligned(x, 16) && aligned(w, 16) &&
             aligned(out, sizeof(Vec<T, 4>));
  if (vec) {
    float4 v[RMS_VEC];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < RMS_VEC; ++j) {
      int i = threadIdx.x + j * blockDim.x;
      if (i < d4) {
        v[j] = reinterpret_cast<const float4 *>(xr)[i];
        s += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
      }
    }
    s = block_sum(s);
    float m = sqrtf(s / (float)d + eps);
#pragma unroll
    for (int j = 0; j < RMS_VEC; ++j) {
      int i = threadIdx.x + j * blockDim.x;
      if (i < d4) {
        float4 g = reinterpret_cast<const float4 *>(w)[i];
        Vec<T, 4> o;
        o.v[0] = from_f<T>(v[j].x / m * g.x);
        o.v[1] = from_f<T>(v[j].y / m * g.y);
        o.v[2] = from_f<T>(v[j].z / m * g.z);
        o.v[3] = from_f<T>(v[j].w / m * g.w);
        reinterpret_cast<Vec<T, 4> *>(orow)[i] = o;
      }
    }
    return;
  }
  float s = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = xr[i];
    s += v * v;
  }
  s = block_sum(s);
  float m = sqrtf(s / (float)d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) orow[i] = from_f<T>(xr[i] / m * w[i]);
}

// q, k and v heads from the f32 output of the fused q|k|v projection, qkv [rows, heads x hd]
// (heads = nh + 2 nkv, in that order), written as T into out = [q: rows x nh x hd | k: rows x
// nkv x hd | v: rows x nkv x hd | flag]. q and k are rotated by position row % t with f32
// tables cos, sin [t, hd / 2], the halves convention ((x[i], x[i + hd/2]) rotate by angle
// i); v is converted; each value is rounded once from f32. A finite input whose T value is
// not (beyond f16's 65,504) sets the flag to 1; the caller zeroes it first. Each thread
// converts V pairs; V = 1 when hd / 2 or a pointer does not allow vectors. (One block per
// row, with 32-bit index arithmetic, measured slower on the H100.)
template <typename T, int V>
__device__ void qkv_pairs(const float *__restrict__ qkv, const float *__restrict__ cos,
                          const float *__restrict__ sin, T *__restrict__ out, size_t units,
                          size_t rows, unsigned t, unsigned nh, unsigned nkv, unsigned half) {
  unsigned heads = nh + 2 * nkv, per_head = half / V, hd = 2 * half;
  size_t stride = (size_t)blockDim.x * gridDim.x;
  bool overflow = false;
  for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
    size_t rh = u / per_head;
    unsigned j = (unsigned)(u - rh * per_head) * V;
    size_t row = rh / heads;
    unsigned h = (unsigned)(rh - row * heads);
    const float *src = qkv + rh * hd + j;
    T *dst = h < nh         ? out + (row * nh + h) * hd
             : h < nh + nkv ? out + rows * nh * hd + (row * nkv + h - nh) * hd
                            : out + rows * (nh + nkv) * hd + (row * nkv + h - nh - nkv) * hd;
    dst += j;
    Vec<float, V> a = *reinterpret_cast<const Vec<float, V> *>(src);
    Vec<float, V> b = *reinterpret_cast<const Vec<float, V> *>(src + half);
    Vec<T, V> oa, ob;
    if (h < nh + nkv) {
      size_t cs = (size_t)(row % t) * half + j;
      Vec<float, V> c = *reinterpret_cast<const Vec<float, V> *>(cos + cs);
      Vec<float, V> s = *reinterpret_cast<const Vec<float, V> *>(sin + cs);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float ra = a.v[k] * c.v[k] - b.v[k] * s.v[k], rb = a.v[k] * s.v[k] + b.v[k] * c.v[k];
        oa.v[k] = from_f<T>(ra);
        ob.v[k] = from_f<T>(rb);
        overflow |= (isfinite(ra) && !isfinite(to_f(oa.v[k]))) ||
                    (isfinite(rb) && !isfinite(to_f(ob.v[k])));
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        oa.v[k] = from_f<T>(a.v[k]);
        ob.v[k] = from_f<T>(b.v[k]);
        overflow |= (isfinite(a.v[k]) && !isfinite(to_f(oa.v[k]))) ||
                    (isfinite(b.v[k]) && !isfinite(to_f(ob.v[k])));
      }
    }
    *reinterpret_cast<Vec<T, V> *>(dst) = oa;
    *reinterpret_cast<Vec<T, V> *>(dst + half) = ob;
  }
  if (overflow) out[rows * heads * hd] = from_f<T>(1.f);
}

template <typename T>
__device__ void qkv_heads(const float *qkv, const float *cos, const float *sin, T *out,
                          size_t rows, unsigned t, unsigned nh, unsigned nkv, unsigned hd) {
  constexpr int V = 16 / sizeof(T);
  unsigned half = hd / 2;
  size_t pairs = rows * (nh + 2 * nkv) * half;
  if (half % V == 0 && aligned(qkv, 4 * V) && aligned(out, 16) && aligned(cos, 4 * V) &&
      aligned(sin, 4 * V))
    qkv_pairs<T, V>(qkv, cos, sin, out, pairs / V, rows, t, nh, nkv, half);
  else
    qkv_pairs<T, 1>(qkv, cos, sin, out, pairs, rows, t, nh, nkv, half);
}

// nll[r] = logsumexp(logits[r, :]) - logits[r, target[r]]: log-softmax and the gather in
// one read of the f32 row (candle's log_softmax made five passes and wrote the row back),
// with an online maximum. One block per row.
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  float hi = fmaxf(m, m2);
  s = s * expf(m - hi) + s2 * expf(m2 - hi);
  m = hi;
}

__device__ __forceinline__ void lse_add(float &m, float &s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.f;
    m = x;
  } else {
    s += expf(x - m);
  }
}

extern "C" __global__ void nll_rows(const float *__restrict__ logits,
                                    const unsigned *__restrict__ target,
                                    float *__restrict__ nll, int v) {
  const float *row = logits + (size_t)blockIdx.x * v;
  float m = -INFINITY, s = 0.f;
  if (v % 4 == 0 && aligned(logits, 16)) {
    for (int i = threadIdx.x; i < v / 4; i += blockDim.x) {
      float4 q = reinterpret_cast<const float4 *>(row)[i];
      lse_add(m, s, q.x);
      lse_add(m, s, q.y);
      lse_add(m, s, q.z);
      lse_add(m, s, q.w);
    }
  } else {
    for (int i = threadIdx.x; i < v; i += blockDim.x) lse_add(m, s, row[i]);
  }
  for (int o = 16; o > 0; o >>= 1)
    lse_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
  __shared__ float pm[32], ps[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    pm[warp] = m;
    ps[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < (int)((blockDim.x + 31) >> 5); ++k) lse_merge(m, s, pm[k], ps[k]);
    unsigned t = target[blockIdx.x];
    nll[blockIdx.x] = t < (unsigned)v ? m + logf(s) - row[t] : NAN;
  }
}

// silu(g) * u in f32, rounded once by the caller (candle's silu and mul round twice).
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.f + expf(-g)) * u; }

// out[r, i] = silu(gu[r, i]) * gu[r, f + i] from the f32 output of the fused gate|up
// projection, gu [rows, 2f], rounded once to T: gate and up are never rounded to 16 bits.
// V = 4 floats a thread where f and the pointers allow, else 1.
template <typename T, int V>
__device__ void silu_mul_halves_v(const float *__restrict__ gu, T *__restrict__ out,
                                  size_t units, unsigned f) {
  unsigned per_row = f / V;
  size_t stride = (size_t)blockDim.x * gridDim.x;
  for (size_t u = (size_t)blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
    size_t row = u / per_row;
    unsigned j = (unsigned)(u - row * per_row) * V;
    const float *g = gu + row * 2 * f + j;
    Vec<float, V> a = *reinterpret_cast<const Vec<float, V> *>(g);
    Vec<float, V> b = *reinterpret_cast<const Vec<float, V> *>(g + f);
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_f<T>(silu_times(a.v[k], b.v[k]));
    *reinterpret_cast<Vec<T, V> *>(out + row * f + j) = o;
  }
}

template <typename T>
__device__ void silu_mul_halves(const float *gu, T *out, size_t rows, unsigned f) {
  if (f % 4 == 0 && aligned(gu, 16) && aligned(out, sizeof(Vec<T, 4>)))
    silu_mul_halves_v<T, 4>(gu, out, rows * (f / 4), f);
  else
    silu_mul_halves_v<T, 1>(gu, out, rows * f, f);
}


// --dtype fp8: per-row E4M3 quantization of a GEMM operand (see fused/fp8.rs): a weight's row
// is an output channel, an activation's a token.
// row_absmax: amax[r] = max |x[r, :]| over a row of k elements, one block per row. A max is
// exact whatever the order, so this equals the CPU twin's.
template <typename T>
__device__ void row_absmax(const T *__restrict__ x, unsigned k, float *__restrict__ amax) {
  const T *row = x + (size_t)blockIdx.x * k;
  float m = 0.f;
  constexpr int V = 16 / sizeof(T);
  unsigned nv = aligned(row, 16) ? k / V : 0;
  for (unsigned i = threadIdx.x; i < nv; i += blockDim.x) {
    Vec<T, V> a = reinterpret_cast<const Vec<T, V> *>(row)[i];
#pragma unroll
    for (int j = 0; j < V; ++j) m = fmaxf(m, fabsf(to_f(a.v[j])));
  }
  for (unsigned i = nv * V + threadIdx.x; i < k; i += blockDim.x) m = fmaxf(m, fabsf(to_f(row[i])));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ float warp_max[32];
  unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
  if (lane == 0) warp_max[w] = m;
  __syncthreads();
  if (w == 0) {
    m = lane < (blockDim.x + 31) / 32 ? warp_max[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) amax[blockIdx.x] = m;
  }
}

// codes = E4M3(x * (448 / amax[row])), rounded to nearest even and saturated to +-448 (the
// conversion the CPU twin, float8's from_f32, ports); amax 0 (an all-zero row) gives codes 0.
__device__ __forceinline__ uint8_t e4m3(float v) {
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float inverse_scale(float a) { return a > 0.f ? 448.f / a : 0.f; }

template <typename T>
__device__ void quant_rows_e4m3(const T *__restrict__ x, size_t n, unsigned k,
                                const float *__restrict__ amax, uint8_t *__restrict__ q) {
  size_t stride = (size_t)blockDim.x * gridDim.x;
  size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  constexpr int V = 16 / sizeof(T);
  // Whole vectors stay in one row when k is a multiple of V.
  size_t nv = k % V == 0 && aligned(x, 16) && aligned(q, V) ? n / V : 0;
  for (size_t i = tid; i < nv; i += stride) {
    float inv = inverse_scale(amax[i * V / k]);
    Vec<T, V> a = reinterpret_cast<const Vec<T, V> *>(x)[i];
    Vec<uint8_t, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = e4m3(to_f(a.v[j]) * inv);
    reinterpret_cast<Vec<uint8_t, V> *>(q)[i] = o;
  }
  for (size_t i = nv * V + tid; i < n; i += stride) q[i] = e4m3(to_f(x[i]) * inverse_scale(amax[i / k]));
}

#define FUSED(NAME, T)                                                                         \
  extern "C" __global__ void add_into_##NAME(float *x, const T *y, size_t n) {               \
    add_into<T>(x, y, n);                                                                    \
  }                                                                                          \
  extern "C" __global__ void rms_norm_to_##NAME(const float *x, const float *w, T *out,       \
                                                int d, float eps) {                           \
    rms_norm_to<T>(x, w, out, d, eps);                                                       \
  }                                                                                          \
  extern "C" __global__ void silu_mul_halves_##NAME(const float *gu, T *out, size_t rows,      \
                                                    unsigned f) {                             \
    silu_mul_halves<T>(gu, out, rows, f);                                                    \
  }                                                                                          \
  extern "C" __global__ void qkv_heads_##NAME(const float *qkv, const float *cos,             \
                                              const float *sin, T *out, size_t rows,          \
                                              unsigned t, unsigned nh, unsigned nkv,          \
                                              unsigned hd) {                                  \
    qkv_heads<T>(qkv, cos, sin, out, rows, t, nh, nkv, hd);                                  \
  }                                                                                          \
  extern "C" __global__ void row_absmax_##NAME(const T *x, unsigned k, float *amax) {        \
    row_absmax<T>(x, k, amax);                                                               \
  }                                                                                          \
  extern "C" __global__ void quant_rows_e4m3_##NAME(const T *x, size_t n, unsigned k,         \
                                                    const float *amax, uint8_t *q) {          \
    quant_rows_e4m3<T>(x, n, k, amax, q);                                                    \
  }

FUSED(f32, float)
FUSED(bf16, __nv_bfloat16)
FUSED(f16, __half)
