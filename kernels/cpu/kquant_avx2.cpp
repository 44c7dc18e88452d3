// AVX2 kernels for the K-quants (compiled with AVX2 flags, chosen at run time through the
// avx2 kernel set): the unpacked form of kquant.h against Q8_K activations, 32 values per
// VPMADDUBSW (u8 quants x s8 activations -> s16 pairs) and VPMADDWD (pairs x their
// sub-block's scale -> s32), as ggml's AVX2 dot products do.
//
// Decode (1-7 tokens) unpacks each super-block once per row into a small buffer and
// multiplies it with every token; GEMM (8 tokens and more) unpacks a whole row once into a
// thread's panel and runs it against the tokens four at a time.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/kquant.h"
#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

namespace {

// A super-block as the AVX2 dot reads it: the quants, and for each 32-value register v the
// 16 int16 scales its VPMADDUBSW pairs need (sub-block 2v for pairs 0..7, 2v + 1 for 8..15).
struct Avx2Block {
  alignas(32) uint8_t q[256];
  alignas(32) int16_t scales[8][16];
  alignas(32) int16_t min[16];
  float d, dmin;
};

template <TensorType T>
void unpack_avx2(const uint8_t* row, int64_t s, Avx2Block& out) {
  UnpackedSuperBlock u;
  unpack_super_block<T>(row, s, u);
  std::memcpy(out.q, u.q, 256);
  for (int v = 0; v < 8; ++v)
    for (int i = 0; i < 16; ++i) out.scales[v][i] = u.scale[2 * v + i / 8];
  std::memcpy(out.min, u.min, 32);
  out.d = u.d;
  out.dmin = u.dmin;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// acc += dx*d*sum_j scale_j (q.x)_j ; accm += dx*dmin*sum_j min_j bsum_j (8 lanes each).
inline void dot(const Avx2Block& b, const BlockQ8_K& x, __m256& acc, __m256& accm) {
  __m256i sumi = _mm256_setzero_si256();
  for (int v = 0; v < 8; ++v) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(b.q + 32 * v)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * v)));
    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_load_si256(reinterpret_cast<const __m256i*>(b.scales[v]))));
  }
  const __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)),
                                       _mm256_load_si256(reinterpret_cast<const __m256i*>(b.min)));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(b.d * x.d), acc);
  accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm), _mm256_set1_ps(b.dmin * x.d), accm);
}

template <TensorType T>
void decode_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const Q8KInput& qk = *a.qk;
  constexpr int kMaxTokens = 8;
  Avx2Block blk;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w.row(r);
    for (int c0 = 0; c0 < a.n_tokens; c0 += kMaxTokens) {
      const int n = std::min(kMaxTokens, a.n_tokens - c0);
      __m256 acc[kMaxTokens], accm[kMaxTokens];
      for (int c = 0; c < n; ++c) acc[c] = accm[c] = _mm256_setzero_ps();
      for (int64_t s = 0; s < qk.n_super; ++s) {
        unpack_avx2<T>(row, s, blk);
        for (int c = 0; c < n; ++c) dot(blk, qk.row(c0 + c)[s], acc[c], accm[c]);
      }
      for (int c = 0; c < n; ++c) a.y[size_t(c0 + c) * a.w.rows + r] = hsum(acc[c]) - hsum(accm[c]);
    }
  }
}

template <TensorType T>
void gemm_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const Q8KInput& qk = *a.qk;
  thread_local std::vector<Avx2Block> panel;
  panel.resize(size_t(qk.n_super));
  constexpr int C = 4;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w.row(r);
    for (int64_t s = 0; s < qk.n_super; ++s) unpack_avx2<T>(row, s, panel[size_t(s)]);
    for (int c0 = 0; c0 < a.n_tokens; c0 += C) {
      const int n = std::min(C, a.n_tokens - c0);
      __m256 acc[C], accm[C];
      for (int c = 0; c < C; ++c) acc[c] = accm[c] = _mm256_setzero_ps();
      for (int64_t s = 0; s < qk.n_super; ++s)
        for (int c = 0; c < n; ++c) dot(panel[size_t(s)], qk.row(c0 + c)[s], acc[c], accm[c]);
      for (int c = 0; c < n; ++c) a.y[size_t(c0 + c) * a.w.rows + r] = hsum(acc[c]) - hsum(accm[c]);
    }
  }
}

template <TensorType T>
TypeKernels entry() {
  return {decode_rows<T>, InputFormat::Q8KBlocks, gemm_rows<T>, InputFormat::Q8KBlocks};
}

}  // namespace

void add_kquant_kernels_avx2(MatmulKernels& k) {
  k.types[size_t(TensorType::Q2_K)] = entry<TensorType::Q2_K>();
  k.types[size_t(TensorType::Q3_K)] = entry<TensorType::Q3_K>();
  k.types[size_t(TensorType::Q4_K)] = entry<TensorType::Q4_K>();
  k.types[size_t(TensorType::Q5_K)] = entry<TensorType::Q5_K>();
  k.types[size_t(TensorType::Q6_K)] = entry<TensorType::Q6_K>();
}

}  // namespace tutti::cpu
