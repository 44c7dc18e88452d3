#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

void resize_quantized_input(QuantizedInput& q, int n_tokens, int64_t cols) {
  q.n_tokens = n_tokens;
  q.cols = cols;
  q.n_blocks = cols / 32;
  q.n_pairs = (q.n_blocks + 1) / 2;
  const size_t t = size_t(n_tokens);
  q.qs.resize(t * q.n_pairs * 64);
  q.qu.resize(t * q.n_pairs * 64);
  q.d.resize(t * q.n_blocks);
  q.s.resize(t * q.n_blocks);
  q.d_pair.resize(t * q.n_pairs * 16);
  q.s_pair.resize(t * q.n_pairs * 16);
  q.q4_bias.resize(t * q.n_pairs * 16);
  q.n_chunks = (q.n_blocks * 34 + 63) / 64;
  const size_t shadow_tokens = n_tokens <= kShadowMaxTokens ? t : 0;
  q.shadow.assign(shadow_tokens * q.n_chunks * 64, 0);
  q.shadow_bias.resize(shadow_tokens * q.n_chunks * 16);
  q.shadow_d.resize(shadow_tokens * q.n_chunks * 16);
}

void quantize_input_rows(const float* x, QuantizedInput& q, int t_begin, int t_end) {
  for (int t = t_begin; t < t_end; ++t) {
    const float* xr = x + size_t(t) * q.cols;
    int8_t* qs = q.qs.data() + size_t(t) * q.n_pairs * 64;
    uint8_t* qu = q.qu.data() + size_t(t) * q.n_pairs * 64;
    float* d = q.d.data() + size_t(t) * q.n_blocks;
    float* sums = q.s.data() + size_t(t) * q.n_blocks;
    float* dp = q.d_pair.data() + size_t(t) * q.n_pairs * 16;
    float* sp = q.s_pair.data() + size_t(t) * q.n_pairs * 16;
    int32_t* bias = q.q4_bias.data() + size_t(t) * q.n_pairs * 16;
    for (int64_t b = 0; b < q.n_blocks; ++b) {
      const float* v = xr + b * 32;
      float amax = 0.f;
#pragma omp simd reduction(max : amax)
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
      // As ggml: quantize with the exact scale, store the scale rounded to f16.
      const float scale = amax / 127.f;
      const float inv = scale != 0.f ? 1.f / scale : 0.f;
      int8_t* out = qs + b * 32;
#pragma omp simd
      for (int j = 0; j < 32; ++j) out[j] = int8_t(std::nearbyint(v[j] * inv));
#pragma omp simd
      for (int j = 0; j < 32; ++j) qu[b * 32 + j] = uint8_t(out[j] + 128);
      d[b] = fp16_to_fp32(fp32_to_fp16(scale));
      int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < 32; ++j) sum += out[j];
      sums[b] = fp16_to_fp32(fp32_to_fp16(scale * float(sum)));  // as ggml's Q8_1: d * sum, stored f16
    }
    if (q.n_blocks % 2) {  // zero the missing half of the last pair
      std::fill(qs + q.n_blocks * 32, qs + q.n_pairs * 64, 0);
      std::fill(qu + q.n_blocks * 32, qu + q.n_pairs * 64, 128);
    }
    if (!q.shadow.empty()) {
      // Lane l of the row's 64-byte chunks covers bytes [4l, 4l + 4): its block is that of
      // its first value byte (a lane never holds values of two blocks: block boundaries sit
      // at 34b + 2, and a lane's bytes after the boundary would have to start at an odd
      // position). The pattern repeats every 17 chunks (17 x 64 = 32 x 34 bytes).
      static const auto lane_block = [] {
        std::array<int8_t, 17 * 16> map{};
        for (int lane = 0; lane < 17 * 16; ++lane)
          for (int k = 0; k < 4; ++k)
            if ((lane * 4 + k) % 34 >= 2) {
              map[size_t(lane)] = int8_t((lane * 4 + k) / 34);
              break;
            }
        return map;
      }();
      int8_t* sh = q.shadow.data() + size_t(t) * q.n_chunks * 64;
      int32_t* sb = q.shadow_bias.data() + size_t(t) * q.n_chunks * 16;
      float* sd = q.shadow_d.data() + size_t(t) * q.n_chunks * 16;
      for (int64_t b = 0; b < q.n_blocks; ++b) std::memcpy(sh + b * 34 + 2, qs + b * 32, 32);
      const int64_t lanes = q.n_chunks * 16;
#pragma omp simd
      for (int64_t lane = 0; lane < lanes; ++lane)
        sb[lane] = -128 * (int32_t(sh[lane * 4]) + sh[lane * 4 + 1] + sh[lane * 4 + 2] + sh[lane * 4 + 3]);
      for (int64_t lane = 0; lane < lanes; ++lane) {
        const int64_t block = lane / (17 * 16) * 32 + lane_block[size_t(lane % (17 * 16))];
        sd[lane] = block < q.n_blocks ? d[block] : 0.f;
      }
    }
    for (int64_t p = 0; p < q.n_pairs; ++p) {
      const float d0 = d[2 * p], d1 = 2 * p + 1 < q.n_blocks ? d[2 * p + 1] : 0.f;
      const float s0 = sums[2 * p] / 8, s1 = 2 * p + 1 < q.n_blocks ? sums[2 * p + 1] / 8 : 0.f;
      for (int l = 0; l < 8; ++l) {
        dp[p * 16 + l] = d0;
        dp[p * 16 + 8 + l] = d1;
        sp[p * 16 + l] = s0;
        sp[p * 16 + 8 + l] = s1;
      }
      for (int l = 0; l < 16; ++l) {
        const int8_t* s = qs + p * 64 + l * 4;
        bias[p * 16 + l] = -8 * (int32_t(s[0]) + s[1] + s[2] + s[3]);
      }
    }
  }
}

void resize_q8k_input(Q8KInput& q, int n_tokens, int64_t cols) {
  q.n_tokens = n_tokens;
  q.cols = cols;
  q.n_super = cols / 256;
  q.blocks.resize(size_t(n_tokens) * size_t(q.n_super));
}

void quantize_q8k_rows(const float* x, Q8KInput& q, int t_begin, int t_end) {
  for (int t = t_begin; t < t_end; ++t)
    quantize_row_q8_k(x + size_t(t) * size_t(q.cols), q.blocks.data() + size_t(t) * size_t(q.n_super), size_t(q.cols));
}

void resize_q8k_lanes(Q8KLanes& l, int n_tokens, int64_t cols) {
  l.n_tokens = n_tokens;
  l.cols = cols;
  l.n_super = cols / 256;
  l.n_groups = (n_tokens + 15) / 16;
  l.q.resize(size_t(l.n_groups) * size_t(cols) * 16);
  l.d.resize(size_t(l.n_groups) * size_t(l.n_super) * 16);
  l.bsums.resize(size_t(l.n_groups) * size_t(l.n_super) * 8 * 16);
}

void resize_bf16_input(Bf16Input& b, int n_tokens, int64_t cols) {
  b.n_tokens = n_tokens;
  b.cols = cols;
  b.n_groups = (n_tokens + 15) / 16;
  b.data.assign(size_t(b.n_groups) * size_t(cols) * 16, 0);
}

void resize_int8_lanes(Int8Lanes& l, int n_tokens, int64_t cols) {
  l.n_tokens = n_tokens;
  l.cols = cols;
  l.n_blocks = cols / 32;
  l.n_groups = (n_tokens + 15) / 16;
  l.q.resize(size_t(l.n_groups) * size_t(cols) * 16);
  l.d.resize(size_t(l.n_groups) * size_t(l.n_blocks) * 16);
  l.bias.resize(l.d.size());
}

}  // namespace tutti::cpu
