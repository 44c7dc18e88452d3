// The CUDA implementation of Backend: weights resident in GPU memory (plain cudaMalloc),
// every operation a kernel on one stream, only token ids, index tables and logits crossing
// the bus. The pipeline above calls it exactly as it calls the CPU backend.
//
// Weight formats on the device (upload_weights):
//   F16, BF16      as in the file.
//   F32            converted to BF16 on upload (halves the bytes every decode step reads;
//                  the CPU backend keeps F32, so compare the two at BF16 tolerance), unless
//                  CudaBackendOptions::f32_weights_to_bf16 is false.
//   Q8_0, Q4_0     kept quantized, split into two arrays so the quants can be read with
//                  aligned 16-byte loads: [quants of every row][one f16 scale per 32 values].
//                  Q8_0 quants are int8 per value; Q4_0 quants are the file's 16 bytes per
//                  block (low nibbles values 0..15, high nibbles 16..31).
//   Q4_1, Q5_0, Q5_1, Q2_K..Q6_K
//                  kept in the file's block layout, decoded 16 values at a time by
//                  blocks.cuh (the same bit positions as kernels/tensor_type.cpp). Correct
//                  first: their products read bytes, not aligned 16-byte vectors.
// Every matrix needs cols % 32 == 0 (true of every Llama shape); upload refuses others.
//
// Products: up to kSkinnyTokens tokens read each weight row once per 8 tokens with one warp
// per row (decode is bandwidth-bound: each weight byte is read once per step); more tokens
// go through cuBLAS (BF16 inputs, FP32 accumulate and output), quantized weights first
// widened to BF16 in a scratch buffer.
//
// Host pointers in the interface (token ids, positions, block tables, row lists) are small;
// they are copied into a device staging arena per call, in stream order.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/blocks.cuh"
#include "kernels/cuda/cuda_backend.h"

namespace tutti {
namespace {

// ---- errors

[[noreturn]] void fail(const std::string& what, cudaError_t e) {
  throw std::runtime_error("CUDA: " + what + ": " + cudaGetErrorString(e));
}
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(what, e);
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string("cuBLAS: ") + what + " failed (status " + std::to_string(int(s)) + ")");
}
// After every launch: launch errors always; in debug builds also the kernel's own faults.
void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
#ifndef NDEBUG
  check(cudaDeviceSynchronize(), kernel);
#endif
}

class CudaOutOfMemory final : public std::bad_alloc {
 public:
  explicit CudaOutOfMemory(std::string m) : message_(std::move(m)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

std::string mib(size_t bytes) { return std::to_string((bytes + (1 << 19)) >> 20) + " MiB"; }

constexpr int kSkinnyTokens = 16;  // at or above: cuBLAS
constexpr int kWarp = 32;

// ---- weight layout helpers (device side)

struct DeviceMatrix {
  TensorType type;
  const uint8_t* quants;  // row-major values (or Q4_0 nibble bytes; or GGUF blocks, see in_file_layout)
  const __half* scales;   // Q8_0/Q4_0: rows * cols/32 scales
  int64_t rows, cols;
  int64_t row_bytes;      // bytes per row of the GGUF-layout types
};

// Types kept as the file stores them and read through blocks.cuh.
__host__ __device__ constexpr bool in_file_layout(TensorType t) {
  return t == TensorType::Q4_1 || t == TensorType::Q5_0 || t == TensorType::Q5_1 || t == TensorType::Q2_K ||
         t == TensorType::Q3_K || t == TensorType::Q4_K || t == TensorType::Q5_K || t == TensorType::Q6_K;
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }
__device__ __forceinline__ float half_bits_to_float(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// Dot products of 16 consecutive values of row r starting at k (k % 16 == 0) with NT tokens.
template <int NT>
__device__ __forceinline__ void dot16(const DeviceMatrix& w, int64_t r, int64_t k, const float* x, int64_t cols,
                                      float (&acc)[NT]) {
  float v[16];
  if (in_file_layout(w.type)) {
    cuda::decode16(w.type, w.quants + r * w.row_bytes, k, v);
  } else switch (w.type) {
    case TensorType::Q8_0: {
      const int4 q = *reinterpret_cast<const int4*>(w.quants + r * cols + k);
      const int8_t* qb = reinterpret_cast<const int8_t*>(&q);
      const float d = __half2float(w.scales[r * (cols / 32) + k / 32]);
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = d * float(qb[i]);
      break;
    }
    case TensorType::Q4_0: {
      // 16 values = half a block: the low (k % 32 == 0) or high nibbles of its 16 bytes.
      const int64_t block = k / 32;
      const int4 q = *reinterpret_cast<const int4*>(w.quants + r * (cols / 2) + block * 16);
      const uint8_t* qb = reinterpret_cast<const uint8_t*>(&q);
      const float d = __half2float(w.scales[r * (cols / 32) + block]);
      const int shift = (k % 32) ? 4 : 0;
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = d * float(int((qb[i] >> shift) & 15) - 8);
      break;
    }
    case TensorType::F32: {
      const float4* row = reinterpret_cast<const float4*>(reinterpret_cast<const float*>(w.quants) + r * cols + k);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 f = row[i];
        v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
      }
      break;
    }
    case TensorType::BF16:
    case TensorType::F16: {
      const uint16_t* row = reinterpret_cast<const uint16_t*>(w.quants) + r * cols + k;
      const int4 a = reinterpret_cast<const int4*>(row)[0], b = reinterpret_cast<const int4*>(row)[1];
      const uint16_t* ha = reinterpret_cast<const uint16_t*>(&a);
      const uint16_t* hb = reinterpret_cast<const uint16_t*>(&b);
      const bool bf = w.type == TensorType::BF16;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        v[i] = bf ? bf16_bits_to_float(ha[i]) : half_bits_to_float(ha[i]);
        v[i + 8] = bf ? bf16_bits_to_float(hb[i]) : half_bits_to_float(hb[i]);
      }
      break;
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float4* xv = reinterpret_cast<const float4*>(x + int64_t(t) * cols + k);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 xx = xv[i];
      s += v[4 * i] * xx.x + v[4 * i + 1] * xx.y + v[4 * i + 2] * xx.z + v[4 * i + 3] * xx.w;
    }
    acc[t] += s;
  }
}

// One warp per output row; NT tokens share each read of the row. Q4_0 lanes take 16-value
// halves of blocks (the same 16 bytes twice, from L1), others 16 consecutive values.
template <int NT>
__global__ void skinny_matmul(DeviceMatrix w, const float* __restrict__ x, float* __restrict__ out, int64_t out_stride) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= w.rows) return;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.f;
  for (int64_t k = int64_t(lane) * 16; k < w.cols; k += kWarp * 16) dot16<NT>(w, r, k, x, w.cols, acc);
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float s = acc[t];
    for (int o = kWarp / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[int64_t(t) * out_stride + r] = s;
  }
}

// Widens a weight matrix to BF16 (row-major) for cuBLAS.
__global__ void widen_to_bf16(DeviceMatrix w, __nv_bfloat16* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= w.rows * w.cols) return;
  const int64_t r = i / w.cols, k = i % w.cols;
  float v = 0.f;
  switch (w.type) {
    case TensorType::Q8_0:
      v = __half2float(w.scales[r * (w.cols / 32) + k / 32]) * float(reinterpret_cast<const int8_t*>(w.quants)[i]);
      break;
    case TensorType::Q4_0: {
      const uint8_t b = w.quants[r * (w.cols / 2) + (k / 32) * 16 + (k % 16)];
      v = __half2float(w.scales[r * (w.cols / 32) + k / 32]) * float(int(((k % 32) < 16 ? b : b >> 4) & 15) - 8);
      break;
    }
    case TensorType::F16: v = half_bits_to_float(reinterpret_cast<const uint16_t*>(w.quants)[i]); break;
    case TensorType::BF16: v = bf16_bits_to_float(reinterpret_cast<const uint16_t*>(w.quants)[i]); break;
    case TensorType::F32: v = reinterpret_cast<const float*>(w.quants)[i]; break;
    default: v = cuda::decode1(w.type, w.quants + r * w.row_bytes, k); break;
  }
  out[i] = __float2bfloat16(v);
}

__global__ void f32_to_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16(x[i]);
}

// One row of a table, dequantized, per block of threads.
__global__ void embed_rows(DeviceMatrix table, const int32_t* __restrict__ ids, float* __restrict__ out) {
  const int64_t row = ids[blockIdx.x];
  float* o = out + int64_t(blockIdx.x) * table.cols;
  for (int64_t k = threadIdx.x; k < table.cols; k += blockDim.x) {
    float v = 0.f;
    switch (table.type) {
      case TensorType::Q8_0:
        v = __half2float(table.scales[row * (table.cols / 32) + k / 32]) *
            float(reinterpret_cast<const int8_t*>(table.quants)[row * table.cols + k]);
        break;
      case TensorType::Q4_0: {
        const uint8_t b = table.quants[row * (table.cols / 2) + (k / 32) * 16 + (k % 16)];
        v = __half2float(table.scales[row * (table.cols / 32) + k / 32]) * float(int(((k % 32) < 16 ? b : b >> 4) & 15) - 8);
        break;
      }
      case TensorType::F16: v = half_bits_to_float(reinterpret_cast<const uint16_t*>(table.quants)[row * table.cols + k]); break;
      case TensorType::BF16: v = bf16_bits_to_float(reinterpret_cast<const uint16_t*>(table.quants)[row * table.cols + k]); break;
      case TensorType::F32: v = reinterpret_cast<const float*>(table.quants)[row * table.cols + k]; break;
      default: v = cuda::decode1(table.type, table.quants + row * table.row_bytes, k); break;
    }
    o[k] = v;
  }
}

// ---- element-wise and row kernels

__device__ float block_sum(float v, float* shared32) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();  // shared32 may still be read by a previous call
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  v = lane < warps ? shared32[lane] : 0.f;
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float block_max(float v, float* shared32) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  v = lane < warps ? shared32[lane] : -INFINITY;
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void rms_norm_rows(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, int dim, float eps) {
  __shared__ float red[32];
  const float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = y + int64_t(blockIdx.x) * dim;
  float s = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
  s = block_sum(s, red);
  const float scale = rsqrtf(s / float(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = (xr[i] * scale) * w[i];
}

// One thread per (row, rotated pair); every head of the row shares the angle. The angle is
// built by repeated multiplication in float, as the CPU backend (and ggml) does, then divided
// by the pair's frequency factor and scaled. Normal layout: pair (2p, 2p+1); Neox: (p, p + n_rot/2).
__global__ void rope_rows(float* x, const int32_t* __restrict__ positions, int n, int n_heads, int head_dim, int n_rot,
                          float theta_scale, float freq_scale, bool neox, const float* __restrict__ freq_factors) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int pairs = n_rot / 2;
  if (i >= int64_t(n) * pairs) return;
  const int t = int(i / pairs), p = int(i % pairs);
  float theta = float(positions[t]);
  for (int j = 0; j < p; ++j) theta *= theta_scale;
  const float angle = freq_scale * (freq_factors ? theta / freq_factors[p] : theta);
  const float c = cosf(angle), s = sinf(angle);
  const int first = neox ? p : 2 * p, second = neox ? pairs : 1;
  float* row = x + int64_t(t) * n_heads * head_dim;
  for (int h = 0; h < n_heads; ++h) {
    float* q = row + int64_t(h) * head_dim + first;
    const float x0 = q[0], x1 = q[second];
    q[0] = x0 * c - x1 * s;
    q[second] = x0 * s + x1 * c;
  }
}

// x[t] += bias over rows of dim values.
__global__ void add_rows_kernel(float* x, const float* __restrict__ bias, int64_t n, int dim) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += bias[i % dim];
}

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const float g = gate[i];
    out[i] = g / (1.f + expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* __restrict__ y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

__global__ void gather_kernel(const float* __restrict__ src, const int32_t* __restrict__ rows, int dim, float* __restrict__ dst) {
  const float* s = src + int64_t(rows[blockIdx.x]) * dim;
  float* d = dst + int64_t(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
}

// ---- paged KV cache

// Per batch row: the sequence's position and where its block table starts in the flat
// table (both uploaded per call).
struct RowInfo {
  int32_t pos;
  int32_t table;
};

template <class T>
__device__ __forceinline__ T to_kv(float v);
template <>
__device__ __forceinline__ float to_kv<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half to_kv<__half>(float v) { return __float2half(v); }
__device__ __forceinline__ float from_kv(float v) { return v; }
__device__ __forceinline__ float from_kv(__half v) { return __half2float(v); }

struct KvGeometry {
  int n_layers, layer, block_tokens, kv_dim, head_dim;
  __device__ int64_t run(int64_t block, int which, int h) const {
    return ((block * n_layers + layer) * 2 + which) * int64_t(block_tokens) * kv_dim + int64_t(h) * block_tokens * head_dim;
  }
};

// One block per batch row; threads over kv_dim.
template <class T>
__global__ void kv_store_kernel(T* pool, KvGeometry g, const RowInfo* __restrict__ rows, const int32_t* __restrict__ tables,
                                const float* __restrict__ k, const float* __restrict__ v) {
  const RowInfo ri = rows[blockIdx.x];
  if (ri.pos < 0) return;  // a batch row no sequence claims
  const int64_t block = tables[ri.table + ri.pos / g.block_tokens];
  const int p = ri.pos % g.block_tokens;
  for (int e = threadIdx.x; e < g.kv_dim; e += blockDim.x) {
    const int h = e / g.head_dim, i = e % g.head_dim;
    pool[g.run(block, 0, h) + int64_t(i) * g.block_tokens + p] = to_kv<T>(k[int64_t(blockIdx.x) * g.kv_dim + e]);
    pool[g.run(block, 1, h) + int64_t(p) * g.head_dim + i] = to_kv<T>(v[int64_t(blockIdx.x) * g.kv_dim + e]);
  }
}

// Causal attention, one block per (batch row, query head), over positions 0..pos in tiles:
// scores of a tile into shared memory, a running max and sum (online softmax), each thread
// accumulating one dimension of the output. Threads >= head_dim only help with scores.
constexpr int kAttnThreads = 128;
constexpr int kAttnTile = 256;

template <class T>
__global__ void attention_kernel(const T* __restrict__ pool, KvGeometry g, const RowInfo* __restrict__ rows,
                                 const int32_t* __restrict__ tables, int n_head, int group, float scale,
                                 const float* __restrict__ q, float* __restrict__ out) {
  __shared__ float qs[256];
  __shared__ float scores[kAttnTile];
  __shared__ float red[32];
  const int row = blockIdx.x / n_head, h = blockIdx.x % n_head, hk = h / group;
  const RowInfo ri = rows[row];
  if (ri.pos < 0) return;
  const float* qr = q + (int64_t(row) * n_head + h) * g.head_dim;
  for (int i = threadIdx.x; i < g.head_dim; i += blockDim.x) qs[i] = qr[i] * scale;
  __syncthreads();
  float m = -INFINITY, l = 0.f, acc = 0.f;
  const int n_pos = ri.pos + 1;
  for (int start = 0; start < n_pos; start += kAttnTile) {
    const int len = min(kAttnTile, n_pos - start);
    float tile_max = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
      const int p = start + j;
      const int64_t block = tables[ri.table + p / g.block_tokens];
      const T* kr = pool + g.run(block, 0, hk) + p % g.block_tokens;
      float s = 0.f;
      for (int i = 0; i < g.head_dim; ++i) s += qs[i] * from_kv(kr[int64_t(i) * g.block_tokens]);
      scores[j] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = block_max(tile_max, red);
    const float m_new = fmaxf(m, tile_max);
    float part = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
      const float e = expf(scores[j] - m_new);
      scores[j] = e;
      part += e;
    }
    part = block_sum(part, red);  // also orders the score writes before the reads below
    const float correction = expf(m - m_new);
    l = l * correction + part;
    if (threadIdx.x < g.head_dim) {
      float a = acc * correction;
      for (int j = 0; j < len; ++j) {
        const int p = start + j;
        const int64_t block = tables[ri.table + p / g.block_tokens];
        a += scores[j] * from_kv(pool[g.run(block, 1, hk) + int64_t(p % g.block_tokens) * g.head_dim + threadIdx.x]);
      }
      acc = a;
    }
    m = m_new;
    __syncthreads();  // scores are rewritten by the next tile
  }
  if (threadIdx.x < g.head_dim) out[(int64_t(row) * n_head + h) * g.head_dim + threadIdx.x] = acc / l;
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// ---- the backend

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& o) : device_(o.device), f32_to_bf16_(o.f32_weights_to_bf16) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
      throw std::runtime_error(std::string("no CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "none found"));
    if (device_ < 0 || device_ >= count)
      throw std::runtime_error("CUDA device " + std::to_string(device_) + " does not exist (" + std::to_string(count) + " found)");
    check(cudaSetDevice(device_), "cudaSetDevice");
    // The step loop's thread sleeps while it waits for the GPU instead of spinning, so the
    // host's cores stay free for I/O (and its CPU time per step measures host overhead).
    cudaSetDeviceFlags(cudaDeviceScheduleBlockingSync);
    cudaGetLastError();  // already set on a context made earlier: keep its flags
    check(cudaGetDeviceProperties(&props_, device_), "cudaGetDeviceProperties");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cublasCreate(&cublas_), "cublasCreate");
    check(cublasSetStream(cublas_, stream_), "cublasSetStream");
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (auto& [p, w] : weights_) cudaFree(p);
    if (staging_) cudaFree(staging_);
    if (wide_) cudaFree(wide_);
    if (xb_) cudaFree(xb_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device::Cuda; }
  std::string describe() const override {
    return std::string("cuda ") + props_.name + " (sm_" + std::to_string(props_.major) + std::to_string(props_.minor) + ", " +
           mib(props_.totalGlobalMem) + ")";
  }
  int threads() const override { return 1; }

  double measure_bandwidth() override {
    const size_t bytes = size_t(1) << 30;
    void* a = device_alloc(bytes, "bandwidth test");
    void* b = device_alloc(bytes, "bandwidth test");
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    check(cudaMemsetAsync(a, 1, bytes, stream_), "cudaMemset");
    float best_ms = 1e30f;
    for (int rep = 0; rep < 6; ++rep) {
      check(cudaEventRecord(start, stream_), "cudaEventRecord");
      check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream_), "device copy");
      check(cudaEventRecord(stop, stream_), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      if (rep > 0) best_ms = std::min(best_ms, ms);  // the first pass warms up
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    free(a);
    free(b);
    return 2.0 * double(bytes) / (double(best_ms) * 1e-3);  // read + write
  }

  void* alloc(size_t bytes) override { return device_alloc(bytes, "buffer"); }
  void free(void* p) override {
    if (!p) return;
    cudaStreamSynchronize(stream_);
    cudaFree(p);
  }

  MatrixView upload_weights(const MatrixView& host) override {
    if (host.cols % 32 != 0)
      throw std::runtime_error("CUDA backend: a weight matrix of " + std::to_string(host.cols) + " columns (needs a multiple of 32)");
    const size_t n = size_t(host.rows) * size_t(host.cols);
    MatrixView dev = host;
    std::vector<uint8_t> staged;
    switch (host.type) {
      case TensorType::F32: {  // to BF16 (documented above)
        if (!f32_to_bf16_) {
          staged.assign(static_cast<const uint8_t*>(host.data), static_cast<const uint8_t*>(host.data) + n * 4);
          break;
        }
        staged.resize(n * 2);
        const float* f = static_cast<const float*>(host.data);
        uint16_t* b = reinterpret_cast<uint16_t*>(staged.data());
        for (size_t i = 0; i < n; ++i) b[i] = fp32_to_bf16(f[i]);
        dev.type = TensorType::BF16;
        break;
      }
      case TensorType::F16:
      case TensorType::BF16:
        staged.assign(static_cast<const uint8_t*>(host.data), static_cast<const uint8_t*>(host.data) + n * 2);
        break;
      default: {  // in the file's block layout (blocks.cuh reads it)
        if (!in_file_layout(host.type))
          throw std::runtime_error("CUDA backend: no kernels for " + std::string(tensor_type_info(host.type).name) + " weights");
        const size_t bytes = host.row_bytes() * size_t(host.rows);
        staged.assign(static_cast<const uint8_t*>(host.data), static_cast<const uint8_t*>(host.data) + bytes);
        break;
      }
      case TensorType::Q8_0:
      case TensorType::Q4_0: {
        const bool q8 = host.type == TensorType::Q8_0;
        const size_t qbytes = q8 ? n : n / 2, blocks = n / 32;
        staged.resize(qbytes + blocks * 2);
        uint16_t* scales = reinterpret_cast<uint16_t*>(staged.data() + qbytes);
        for (size_t b = 0; b < blocks; ++b) {
          if (q8) {
            const BlockQ8_0& blk = static_cast<const BlockQ8_0*>(host.data)[b];
            scales[b] = blk.d;
            std::memcpy(staged.data() + b * 32, blk.q, 32);
          } else {
            const BlockQ4_0& blk = static_cast<const BlockQ4_0*>(host.data)[b];
            scales[b] = blk.d;
            std::memcpy(staged.data() + b * 16, blk.qs, 16);
          }
        }
        break;
      }
    }
    void* p = device_alloc(staged.size(), "weights");
    check(cudaMemcpy(p, staged.data(), staged.size(), cudaMemcpyHostToDevice), "upload weights");
    dev.data = p;
    weights_.push_back({p, dev});
    return dev;
  }

  void copy_to_host(void* dst, const void* src, size_t n) override {
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_), "copy to host");
    check(cudaStreamSynchronize(stream_), "copy to host");
  }
  void copy_to_device(void* dst, const void* src, size_t n) override {
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_), "copy to device");
    check(cudaStreamSynchronize(stream_), "copy to device");
  }

  void matmul(std::span<const MatmulTask> tasks, const float* x, int n_tokens) override {
    if (tasks.empty() || n_tokens <= 0) return;
    const int64_t cols = tasks[0].weight.cols;
    for (const MatmulTask& t : tasks) {
      if (t.weight.cols != cols) throw std::logic_error("matmul tasks must share the input width");
      const DeviceMatrix w = device_matrix(t.weight);
      if (n_tokens < kSkinnyTokens) {
        skinny(w, x, t.out, n_tokens);
      } else {
        gemm(w, x, t.out, n_tokens);
      }
    }
  }

  void embed(const MatrixView& table, const int32_t* ids, int n, float* out) override {
    if (n <= 0) return;
    const int32_t* d_ids = stage(ids, size_t(n));
    embed_rows<<<unsigned(n), 256, 0, stream_>>>(device_matrix(table), d_ids, out);
    check_launch("embed");
  }

  void rms_norm(const float* x, const float* w, float* y, int n, int dim, float eps) override {
    if (n <= 0) return;
    rms_norm_rows<<<unsigned(n), 256, 0, stream_>>>(x, w, y, dim, eps);
    check_launch("rms_norm");
  }

  void rope(float* x, const int32_t* positions, int n, int n_heads, int head_dim, const RopeParams& p) override {
    if (n <= 0) return;
    const int32_t* d_pos = stage(positions, size_t(n));
    const int64_t work = int64_t(n) * (p.n_rot / 2);
    rope_rows<<<blocks_for(work, 256), 256, 0, stream_>>>(x, d_pos, n, n_heads, head_dim, p.n_rot,
                                                          std::pow(p.base, -2.0f / float(p.n_rot)), p.freq_scale,
                                                          p.layout == RopeLayout::Neox, p.freq_factors);
    check_launch("rope");
  }

  void add_rows(float* x, const float* bias, int n, int dim) override {
    if (n <= 0) return;
    const int64_t total = int64_t(n) * dim;
    add_rows_kernel<<<blocks_for(total, 256), 256, 0, stream_>>>(x, bias, total, dim);
    check_launch("add_rows");
  }

  void kv_store(const KvLayerView& kv, std::span<const AttentionSeq> seqs, const float* k, const float* v) override {
    const int n_rows = stage_rows(kv, seqs);
    if (n_rows == 0) return;
    const KvGeometry g{kv.n_layers, kv.layer, kv.block_tokens, kv.kv_dim, kv.head_dim};
    if (kv.type == TensorType::F16)
      kv_store_kernel<__half><<<unsigned(n_rows), 128, 0, stream_>>>(static_cast<__half*>(kv.pool), g, rows_dev_, tables_dev_, k, v);
    else
      kv_store_kernel<float><<<unsigned(n_rows), 128, 0, stream_>>>(static_cast<float*>(kv.pool), g, rows_dev_, tables_dev_, k, v);
    check_launch("kv_store");
  }

  void attention(const KvLayerView& kv, std::span<const AttentionSeq> seqs, const AttentionShape& shape, const float* q,
                 float* out) override {
    if (shape.head_dim > 256 || shape.head_dim > kAttnThreads * 2)
      throw std::runtime_error("CUDA attention supports head_dim up to 256");
    const int n_rows = stage_rows(kv, seqs);
    if (n_rows == 0) return;
    const KvGeometry g{kv.n_layers, kv.layer, kv.block_tokens, kv.kv_dim, kv.head_dim};
    const int threads = std::max(kAttnThreads, (shape.head_dim + 31) / 32 * 32);
    const unsigned blocks = unsigned(n_rows) * unsigned(shape.n_head);
    const int group = shape.n_head / shape.n_head_kv;
    if (kv.type == TensorType::F16)
      attention_kernel<__half><<<blocks, threads, 0, stream_>>>(static_cast<const __half*>(kv.pool), g, rows_dev_, tables_dev_,
                                                              shape.n_head, group, shape.scale, q, out);
    else
      attention_kernel<float><<<blocks, threads, 0, stream_>>>(static_cast<const float*>(kv.pool), g, rows_dev_, tables_dev_,
                                                             shape.n_head, group, shape.scale, q, out);
    check_launch("attention");
  }

  void swiglu(const float* gate, const float* up, float* out, size_t n) override {
    if (n == 0) return;
    swiglu_kernel<<<blocks_for(int64_t(n), 256), 256, 0, stream_>>>(gate, up, out, int64_t(n));
    check_launch("swiglu");
  }

  void gather_rows(const float* src, const int32_t* rows, int n, int dim, float* dst) override {
    if (n <= 0) return;
    const int32_t* d_rows = stage(rows, size_t(n));
    gather_kernel<<<unsigned(n), 256, 0, stream_>>>(src, d_rows, dim, dst);
    check_launch("gather_rows");
  }

  void add(float* x, const float* y, size_t n) override {
    if (n == 0) return;
    add_kernel<<<blocks_for(int64_t(n), 256), 256, 0, stream_>>>(x, y, int64_t(n));
    check_launch("add");
  }

 private:
  struct Resident {
    void* data;
    MatrixView view;
  };

  void* device_alloc(size_t bytes, const char* what) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw CudaOutOfMemory("CUDA out of memory allocating " + mib(bytes) + " for " + what + " on " + props_.name + " (" +
                            mib(free_b) + " free of " + mib(total_b) + ")");
    }
    return p;
  }

  DeviceMatrix device_matrix(const MatrixView& w) const {
    DeviceMatrix d{w.type, static_cast<const uint8_t*>(w.data), nullptr, w.rows, w.cols, int64_t(w.row_bytes())};
    const size_t n = size_t(w.rows) * size_t(w.cols);
    if (w.type == TensorType::Q8_0) d.scales = reinterpret_cast<const __half*>(d.quants + n);
    if (w.type == TensorType::Q4_0) d.scales = reinterpret_cast<const __half*>(d.quants + n / 2);
    return d;
  }

  void skinny(const DeviceMatrix& w, const float* x, float* out, int n_tokens) {
    constexpr int kRowsPerBlock = 4;  // warps per block
    const unsigned blocks = unsigned((w.rows + kRowsPerBlock - 1) / kRowsPerBlock);
    for (int t0 = 0; t0 < n_tokens; t0 += 8) {
      const int nt = std::min(8, n_tokens - t0);
      const float* xt = x + int64_t(t0) * w.cols;
      float* ot = out + int64_t(t0) * w.rows;
      switch (nt) {
#define TUTTI_SKINNY(N) \
  case N: skinny_matmul<N><<<blocks, kRowsPerBlock * kWarp, 0, stream_>>>(w, xt, ot, w.rows); break;
        TUTTI_SKINNY(1) TUTTI_SKINNY(2) TUTTI_SKINNY(3) TUTTI_SKINNY(4) TUTTI_SKINNY(5) TUTTI_SKINNY(6) TUTTI_SKINNY(7) TUTTI_SKINNY(8)
#undef TUTTI_SKINNY
      }
      check_launch("skinny matmul");
    }
  }

  void gemm(const DeviceMatrix& w, const float* x, float* out, int n_tokens) {
    const size_t wn = size_t(w.rows) * size_t(w.cols), xn = size_t(n_tokens) * size_t(w.cols);
    const void* wb = w.quants;
    if (w.type != TensorType::BF16) {
      grow(wide_, wide_bytes_, wn * 2, "BF16 widening scratch");
      widen_to_bf16<<<blocks_for(int64_t(wn), 256), 256, 0, stream_>>>(w, static_cast<__nv_bfloat16*>(wide_));
      check_launch("widen_to_bf16");
      wb = wide_;
    }
    grow(xb_, xb_bytes_, xn * 2, "BF16 activations");
    f32_to_bf16<<<blocks_for(int64_t(xn), 256), 256, 0, stream_>>>(x, static_cast<__nv_bfloat16*>(xb_), int64_t(xn));
    check_launch("f32_to_bf16");
    // Row-major out[T][rows] is column-major rows x T: out = W (rows x cols) * X^T.
    const float alpha = 1.f, beta = 0.f;
    check(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), n_tokens, int(w.cols), &alpha, wb, CUDA_R_16BF,
                       int(w.cols), xb_, CUDA_R_16BF, int(w.cols), &beta, out, CUDA_R_32F, int(w.rows), CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  }

  void grow(void*& buf, size_t& have, size_t need, const char* what) {
    if (need <= have) return;
    if (buf) {
      check(cudaStreamSynchronize(stream_), "grow scratch");
      cudaFree(buf);
      buf = nullptr;
      have = 0;
    }
    buf = device_alloc(need, what);
    have = need;
  }

  // Makes room for `bytes` more staged data. Staged arrays are read by kernels later in the
  // stream, so the arena starts over (or grows) only after the stream has caught up; call
  // it once for all the arrays one operation stages, so none of them moves.
  void reserve_staging(size_t bytes) {
    if (align(staged_) + bytes <= staging_bytes_) return;
    check(cudaStreamSynchronize(stream_), "staging");
    staged_ = 0;
    if (bytes > staging_bytes_) grow(staging_, staging_bytes_, std::max(bytes * 2, size_t(1) << 20), "staging");
  }
  static size_t align(size_t n) { return (n + 255) / 256 * 256; }

  // Copies a small host array into the staging arena (room reserved by the caller).
  template <class T>
  const T* stage_reserved(const T* host, size_t n) {
    const size_t offset = align(staged_), bytes = n * sizeof(T);
    uint8_t* dst = static_cast<uint8_t*>(staging_) + offset;
    check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_), "stage indices");
    staged_ = offset + bytes;
    return reinterpret_cast<const T*>(dst);
  }
  template <class T>
  const T* stage(const T* host, size_t n) {
    reserve_staging(n * sizeof(T) + 256);
    return stage_reserved(host, n);
  }

  // Per-row positions and flat block tables for kv_store and attention.
  int stage_rows(const KvLayerView& kv, std::span<const AttentionSeq> seqs) {
    rows_host_.clear();
    tables_host_.clear();
    for (const AttentionSeq& s : seqs) {
      const int32_t table = int32_t(tables_host_.size());
      const int blocks = (s.first_pos + s.n_tokens + kv.block_tokens - 1) / kv.block_tokens;
      tables_host_.insert(tables_host_.end(), s.block_table, s.block_table + blocks);
      if (int(rows_host_.size()) < s.row + s.n_tokens) rows_host_.resize(size_t(s.row + s.n_tokens), RowInfo{-1, 0});
      for (int i = 0; i < s.n_tokens; ++i) rows_host_[size_t(s.row + i)] = RowInfo{s.first_pos + i, table};
    }
    if (rows_host_.empty()) return 0;
    reserve_staging(rows_host_.size() * sizeof(RowInfo) + tables_host_.size() * 4 + 512);
    rows_dev_ = stage_reserved(rows_host_.data(), rows_host_.size());
    tables_dev_ = stage_reserved(tables_host_.data(), std::max<size_t>(tables_host_.size(), 1));
    return int(rows_host_.size());
  }

  int device_;
  bool f32_to_bf16_;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::vector<Resident> weights_;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0, staged_ = 0;
  void* wide_ = nullptr;
  size_t wide_bytes_ = 0;
  void* xb_ = nullptr;
  size_t xb_bytes_ = 0;
  std::vector<RowInfo> rows_host_;
  std::vector<int32_t> tables_host_;
  const RowInfo* rows_dev_ = nullptr;
  const int32_t* tables_dev_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) { return std::make_unique<CudaBackend>(options); }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

bool cuda_backend_built() { return true; }

}  // namespace tutti
