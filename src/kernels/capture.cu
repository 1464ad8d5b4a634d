// The CAM attention capture in three kernels (see capture.rs), for 16-bit q and k:
//   stats: per (head, captured row), max and sum of exp2 of the scaled scores over the
//          row's visible keys, for one slice of the keys (several slices run in parallel);
//   merge: the slices combined into c = max + log2(sum), the row's log-normalizer;
//   cols:  per (head, key), the sum over captured rows of exp2(score - c), the probability.
// Scores come from tensor-core products of the 16-bit inputs with f32 accumulation; scaling,
// exponentials and sums are f32. No score matrix ever reaches device memory: a 64 x 64 tile
// lives in shared memory between the product and the reduction.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

#define TILE 64
#define THREADS 128
// Row stride of the f32 score tile: a multiple of 4 (wmma's store), and not of 32, so the
// lane pairs reading 16 different rows spread over the banks.
#define SLD 68

// A 64-row tile of 16-bit vectors (HD elements each) in shared memory, row stride HD + 8
// (16 bytes of padding keep the fragment loads off a single bank).
template <typename T, int HD>
__device__ __forceinline__ void load_tile(T *buf, const T *__restrict__ base, long stride,
                                          int valid) {
  constexpr int VPR = HD / 8;
  for (int i = threadIdx.x; i < TILE * VPR; i += THREADS) {
    int r = i / VPR, c = (i % VPR) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4 *>(base + (long)r * stride + c);
    *reinterpret_cast<uint4 *>(buf + r * (HD + 8) + c) = v;
  }
}

// One warp's 16 rows of the left operand, held in registers for the whole block.
template <typename T, int HD> struct Strip {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[HD / 16];

  __device__ __forceinline__ void load(const T *buf, int warp) {
#pragma unroll
    for (int k = 0; k < HD / 16; ++k)
      wmma::load_matrix_sync(a[k], buf + warp * 16 * (HD + 8) + k * 16, HD + 8);
  }

  // s (16 x 64, row stride SLD) = strip (16 x HD) x tile^T (tile: 64 rows of HD).
  __device__ __forceinline__ void product(const T *tile, float *s) const {
#pragma unroll
    for (int n = 0; n < TILE / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int k = 0; k < HD / 16; ++k) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(b, tile + n * 16 * (HD + 8) + k * 16, HD + 8);
        wmma::mma_sync(acc, a[k], b, acc);
      }
      wmma::store_matrix_sync(s + n * 16, acc, SLD, wmma::mem_row_major);
    }
  }
};

// q: [B, R, H, HD] (the captured rows, position split + r), k: [B, T, KV, HD].
// Grid (row tiles, H, B x slices); slice s covers key tiles [s x per, (s + 1) x per).
// m, l: [slices, B, H, R]. Each lane pair owns one row: 32 of the tile's 64 keys each.
template <typename T, int HD>
__device__ void stats(const T *__restrict__ q, const T *__restrict__ k, float *m_out,
                      float *l_out, int B, int R, int Tn, int H, int KV, int split,
                      float scale2, int per) {
  __shared__ __align__(128) T buf[TILE * (HD + 8)];
  __shared__ __align__(128) float S[TILE * SLD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = blockIdx.x * TILE, h = blockIdx.y;
  const int slices = gridDim.z / B, b = blockIdx.z / slices, s = blockIdx.z % slices;
  const int kvh = h / (H / KV);

  load_tile<T, HD>(buf, q + (((long)b * R + r0) * H + h) * HD, (long)H * HD, min(TILE, R - r0));
  __syncthreads();
  Strip<T, HD> strip;
  strip.load(buf, warp);
  __syncthreads();

  const int row = warp * 16 + lane / 2, half = lane & 1;
  const int p = split + r0 + row;
  const int last = min(split + min(R, r0 + TILE) - 1, Tn - 1);
  const int tiles = last / TILE + 1;
  const int t_end = min(tiles, (s + 1) * per);
  const float *srow = S + row * SLD;
  float m = -INFINITY, l = 0.f;
  for (int t = s * per; t < t_end; ++t) {
    const int j0 = t * TILE;
    load_tile<T, HD>(buf, k + (((long)b * Tn + j0) * KV + kvh) * HD, (long)KV * HD,
                     min(TILE, Tn - j0));
    __syncthreads();
    strip.product(buf, S + warp * 16 * SLD);
    __syncwarp();
    float v[32];
    float tmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int c = 2 * i + half;
      v[i] = (j0 + c <= p) ? srow[c] * scale2 : -INFINITY;
      tmax = fmaxf(tmax, v[i]);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffff, tmax, 1));
    const float mn = fmaxf(m, tmax);
    // A row with no visible key yet keeps m = -inf and l = 0 (no inf - inf).
    const float ref = mn == -INFINITY ? 0.f : mn;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) sum += exp2f(v[i] - ref);
    sum += __shfl_xor_sync(0xffffffff, sum, 1);
    l = l * exp2f(m - ref) + sum;
    m = mn;
    __syncthreads();
  }
  if (half == 0 && r0 + row < R) {
    const long i = (((long)s * B + b) * H + h) * R + r0 + row;
    m_out[i] = m;
    l_out[i] = l;
  }
}

// c[i] = M + log2(sum_s l_s 2^(m_s - M)), M = max_s m_s, over n = B x H x R rows.
__device__ void merge(const float *m, const float *l, float *c, int n, int slices) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    float mx = -INFINITY;
    for (int s = 0; s < slices; ++s) mx = fmaxf(mx, m[(long)s * n + i]);
    float sum = 0.f;
    for (int s = 0; s < slices; ++s) {
      const float ms = m[(long)s * n + i];
      if (ms != -INFINITY) sum += l[(long)s * n + i] * exp2f(ms - mx);
    }
    c[i] = mx + log2f(sum);
  }
}

// Grid (key tiles, H, B); out: [H, B, T], the mass head h's captured rows pay to each key.
// Each lane pair owns one key and reads 32 of the tile's 64 rows.
template <typename T, int HD>
__device__ void cols(const T *__restrict__ q, const T *__restrict__ k,
                     const float *__restrict__ c, float *out, int B, int R, int Tn, int H,
                     int KV, int split, float scale2) {
  __shared__ __align__(128) T buf[TILE * (HD + 8)];
  __shared__ __align__(128) float S[TILE * SLD];
  __shared__ float cs[TILE];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (H / KV);

  load_tile<T, HD>(buf, k + (((long)b * Tn + j0) * KV + kvh) * HD, (long)KV * HD,
                   min(TILE, Tn - j0));
  __syncthreads();
  Strip<T, HD> strip;
  strip.load(buf, warp);
  __syncthreads();

  const int key = warp * 16 + lane / 2, half = lane & 1;
  const int j = j0 + key;
  const float *srow = S + key * SLD;
  float acc = 0.f;
  // Rows before position j0 see none of this tile's keys.
  for (int r0 = max(0, j0 - split) / TILE * TILE; r0 < R; r0 += TILE) {
    const int valid = min(TILE, R - r0);
    load_tile<T, HD>(buf, q + (((long)b * R + r0) * H + h) * HD, (long)H * HD, valid);
    // A padding row's normalizer is +inf: its probabilities are exp2(-inf) = 0.
    if (threadIdx.x < TILE)
      cs[threadIdx.x] =
          (int)threadIdx.x < valid ? c[((long)b * H + h) * R + r0 + threadIdx.x] : INFINITY;
    __syncthreads();
    strip.product(buf, S + warp * 16 * SLD);
    __syncwarp();
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int rr = 2 * i + half;
      sum += (j <= split + r0 + rr) ? exp2f(srow[rr] * scale2 - cs[rr]) : 0.f;
    }
    acc += sum;
    __syncthreads();
  }
  acc += __shfl_xor_sync(0xffffffff, acc, 1);
  if (half == 0 && j < Tn) out[((long)h * B + b) * Tn + j] = acc;
}

#define CAPTURE(NAME, T, HD)                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS)                                       \
      capture_stats_##NAME##_##HD(const T *q, const T *k, float *m, float *l, int B, int R,   \
                                  int Tn, int H, int KV, int split, float scale2, int per) {  \
    stats<T, HD>(q, k, m, l, B, R, Tn, H, KV, split, scale2, per);                            \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS)                                       \
      capture_cols_##NAME##_##HD(const T *q, const T *k, const float *c, float *out, int B,   \
                                 int R, int Tn, int H, int KV, int split, float scale2) {     \
    cols<T, HD>(q, k, c, out, B, R, Tn, H, KV, split, scale2);                                \
  }

// bf16 tensor-core fragments exist from sm_80 on (candle's bf16 kernels need it too).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
CAPTURE(bf16, __nv_bfloat16, 64)
CAPTURE(bf16, __nv_bfloat16, 128)
#endif
CAPTURE(f16, __half, 64)
CAPTURE(f16, __half, 128)

extern "C" __global__ void capture_merge(const float *m, const float *l, float *c, int n,
                                         int slices) {
  merge(m, l, c, n, slices);
}
