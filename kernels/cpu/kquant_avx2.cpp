// AVX2 kernels for the K-quants (compiled with AVX2 flags, chosen at run time through the
// avx2 kernel set): the unpacked form of kquant.h against Q8_K activations, 32 values per
// VPMADDUBSW (u8 quants x s8 activations -> s16 pairs) and VPMADDWD (pairs x their
// sub-block's scale -> s32), as ggml's AVX2 dot products do.
//
// Each type unpacks register v (values 32v .. 32v + 31 of a super-block) and the int16 scales
// its VPMADDUBSW pairs need (KReg below). Decode (1-7 tokens) multiplies each register with
// every token as it is unpacked; GEMM (8 tokens and more) unpacks a whole row once into a
// thread's panel and runs it against the tokens four at a time.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kquant.h"
#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

namespace {

inline float half(uint16_t h) { return _cvtsh_ss(h); }
inline __m256i load256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// 0xFF in every byte whose `bit` is set in v.
inline __m256i bit_set(__m256i v, uint8_t bit) {
  const __m256i b = _mm256_set1_epi8(char(bit));
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, b), b);
}

// Shuffle patterns over int16 lanes (in-lane, as VPSHUFB works): word w of each 128-bit lane
// in every position (kOneWord), or word 2v in the low lane and 2v + 1 in the high one
// (kTwoWords, for the 16-value sub-blocks: a 32-value register spans two of them).
// constexpr, so it is built at compile time: a dynamic initializer in this file would be
// compiled for AVX2 and run at program start on every CPU.
struct WordPatterns {
  alignas(32) uint8_t one[8][32];
  alignas(32) uint8_t two[4][32];
  constexpr WordPatterns() : one{}, two{} {
    for (int w = 0; w < 8; ++w)
      for (int i = 0; i < 32; ++i) one[w][i] = uint8_t(2 * w + (i & 1));
    for (int v = 0; v < 4; ++v)
      for (int i = 0; i < 32; ++i) two[v][i] = uint8_t(2 * (2 * v + (i >= 16)) + (i & 1));
  }
};
constexpr WordPatterns kWords;
inline __m256i pattern(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

// The 16 scales of a 16-value-sub-block type as the 8 registers' pair scales: register v gets
// sub-block 2v for its low 8 pairs and 2v + 1 for its high 8.
struct SixteenScales {
  __m256i lo, hi;  // scales 0-7, 8-15, in both lanes
  explicit SixteenScales(__m256i s16)
      : lo(_mm256_permute4x64_epi64(s16, 0x44)), hi(_mm256_permute4x64_epi64(s16, 0xEE)) {}
  __m256i operator()(int v) const { return _mm256_shuffle_epi8(v < 4 ? lo : hi, pattern(kWords.two[v & 3])); }
};

// The 8 scales (and mins) of a Q4_K / Q5_K super-block, from its 12 packed bytes (see the
// avx512 set's load_k4_scales: the same arithmetic in 128-bit registers).
struct EightScales {
  __m256i s8;     // scales 0-7 as int16, in both lanes
  __m256i min16;  // min of each 16 values (each sub-block's twice)
  explicit EightScales(const uint8_t* packed) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));  // 4 bytes past: masked
    const __m128i low = _mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
    const __m128i low_masked = _mm_and_si128(low, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 6), _mm_set1_epi32(0x03030303));
    const __m128i sm = _mm_or_si128(low_masked, _mm_and_si128(_mm_slli_epi32(top, 4), _mm_setr_epi32(0, -1, 0, -1)));
    const __m256i wide = _mm256_cvtepu8_epi16(sm);  // [scales 0-7 | mins 0-7]
    s8 = _mm256_permute4x64_epi64(wide, 0x44);
    min16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
  }
  __m256i operator()(int v) const { return _mm256_shuffle_epi8(s8, pattern(kWords.one[v])); }
};

template <TensorType T>
struct KReg;

template <>
struct KReg<TensorType::Q4_K> {
  const BlockQ4_K& b;
  EightScales sc;
  float d, dmin;
  explicit KReg(const uint8_t* blk) : b(*reinterpret_cast<const BlockQ4_K*>(blk)), sc(b.scales), d(half(b.d)), dmin(half(b.dmin)) {}
  // Register v: the low (even v) or high (odd v) nibbles of qs chunk v / 2.
  __m256i q(int v) const {
    const __m256i raw = load256(b.qs + 32 * (v / 2));
    return _mm256_and_si256(v % 2 ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(0x0f));
  }
  __m256i scale(int v) const { return sc(v); }
  __m256i min16() const { return sc.min16; }
};

template <>
struct KReg<TensorType::Q5_K> {
  const BlockQ5_K& b;
  EightScales sc;
  float d, dmin;
  __m256i qh;
  explicit KReg(const uint8_t* blk)
      : b(*reinterpret_cast<const BlockQ5_K*>(blk)), sc(b.scales), d(half(b.d)), dmin(half(b.dmin)), qh(load256(b.qh)) {}
  __m256i q(int v) const {  // as Q4_K, plus 16 where bit v of qh[l] is set
    const __m256i raw = load256(b.qs + 32 * (v / 2));
    const __m256i q4 = _mm256_and_si256(v % 2 ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(0x0f));
    return _mm256_or_si256(q4, _mm256_and_si256(bit_set(qh, uint8_t(1 << v)), _mm256_set1_epi8(16)));
  }
  __m256i scale(int v) const { return sc(v); }
  __m256i min16() const { return sc.min16; }
};

template <>
struct KReg<TensorType::Q6_K> {
  const BlockQ6_K& b;
  SixteenScales sc;
  __m256i mins;
  float d, dmin;
  explicit KReg(const uint8_t* blk)
      : b(*reinterpret_cast<const BlockQ6_K*>(blk)),
        sc(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)))),
        mins(_mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales))), 5)),
        d(half(b.d)),
        dmin(d) {}
  // Register v = 4h + w: quarter w of half h: the low (w < 2) or high nibbles of ql
  // [64h + 32 (w % 2), + 32), and bits 2w..2w+1 of qh[32h + l].
  __m256i q(int v) const {
    const int h = v / 4, w = v % 4;
    const __m256i raw = load256(b.ql + 64 * h + 32 * (w % 2));
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3);
    const __m256i low = _mm256_and_si256(w >= 2 ? _mm256_srli_epi16(raw, 4) : raw, m4);
    const __m256i top = _mm256_and_si256(_mm256_srli_epi16(load256(b.qh + 32 * h), 2 * w), m2);
    return _mm256_or_si256(low, _mm256_slli_epi16(top, 4));
  }
  __m256i scale(int v) const { return sc(v); }
  __m256i min16() const { return mins; }  // 32 * scale
};

template <>
struct KReg<TensorType::Q2_K> {
  const BlockQ2_K& b;
  SixteenScales sc;
  __m256i mins;
  float d, dmin;
  explicit KReg(const uint8_t* blk)
      : b(*reinterpret_cast<const BlockQ2_K*>(blk)),
        sc(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)), _mm_set1_epi8(0x0f)))),
        mins(_mm256_cvtepu8_epi16(
            _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)), 4), _mm_set1_epi8(0x0f)))),
        d(half(b.d)),
        dmin(half(b.dmin)) {}
  // Register v = 4h + s: bits 2s..2s+1 of qs[32h + l].
  __m256i q(int v) const {
    return _mm256_and_si256(_mm256_srli_epi16(load256(b.qs + 32 * (v / 4)), 2 * (v % 4)), _mm256_set1_epi8(3));
  }
  __m256i scale(int v) const { return sc(v); }
  __m256i min16() const { return mins; }
};

template <>
struct KReg<TensorType::Q3_K> {
  const BlockQ3_K& b;
  SixteenScales sc;
  __m256i mins;
  float d, dmin;
  __m256i hm;
  static __m256i scales16(const BlockQ3_K& b) {
    // q3k_scales in 128-bit registers, from exactly the 12 bytes (the block ends 2 bytes
    // after them, and the row may end the mapping); see the avx512 set.
    int32_t w2;
    std::memcpy(&w2, b.scales + 8, 4);
    const __m128i v = _mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.scales)), w2, 2);
    const __m128i low = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 1, 0)), _mm_setr_epi32(0, 0, 4, 4)),
                                      _mm_set1_epi32(0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 2, 2)), _mm_setr_epi32(0, 2, 4, 6)),
                                      _mm_set1_epi32(0x03030303));
    return _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi32(top, 4)), _mm_set1_epi8(32)));
  }
  explicit KReg(const uint8_t* blk)
      : b(*reinterpret_cast<const BlockQ3_K*>(blk)), sc(scales16(b)), mins(_mm256_slli_epi16(scales16(b), 2)),
        d(half(b.d)), dmin(d), hm(load256(b.hmask)) {}
  __m256i q(int v) const {  // as Q2_K, plus 4 where bit v of hmask[l] is set
    const __m256i q2 = _mm256_and_si256(_mm256_srli_epi16(load256(b.qs + 32 * (v / 4)), 2 * (v % 4)), _mm256_set1_epi8(3));
    return _mm256_or_si256(q2, _mm256_and_si256(bit_set(hm, uint8_t(1 << v)), _mm256_set1_epi8(4)));
  }
  __m256i scale(int v) const { return sc(v); }
  __m256i min16() const { return mins; }  // 4 * scale
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i pair_dot(__m256i q, const int8_t* x, __m256i scale) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))), scale);
}

// Decode: each register of each super-block unpacked once and multiplied with the C tokens.
template <TensorType T, int C>
void decode_row(const MatmulArgs& a, int64_t r, int c0) {
  const Q8KInput& qk = *a.qk;
  constexpr size_t kBlock = sizeof(typename KQuant<T>::Block);
  const uint8_t* row = a.w.row(r);
  __m256 acc[C], accm[C];
  for (int c = 0; c < C; ++c) acc[c] = accm[c] = _mm256_setzero_ps();
  for (int64_t s = 0; s < qk.n_super; ++s) {
    const uint8_t* blk = row + size_t(s) * kBlock;
    _mm_prefetch(reinterpret_cast<const char*>(blk + 8192), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(blk + 8192 + 64), _MM_HINT_T0);
    const KReg<T> k(blk);
    __m256i sumi[C];
    for (int c = 0; c < C; ++c) sumi[c] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) {
      const __m256i q = k.q(v), sc = k.scale(v);
      for (int c = 0; c < C; ++c) sumi[c] = _mm256_add_epi32(sumi[c], pair_dot(q, qk.row(c0 + c)[s].qs + 32 * v, sc));
    }
    for (int c = 0; c < C; ++c) {
      const BlockQ8_K& x = qk.row(c0 + c)[s];
      const __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)), k.min16());
      acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[c]), _mm256_set1_ps(k.d * x.d), acc[c]);
      accm[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm), _mm256_set1_ps(k.dmin * x.d), accm[c]);
    }
  }
  for (int c = 0; c < C; ++c) a.y[size_t(c0 + c) * a.w.rows + r] = hsum(acc[c]) - hsum(accm[c]);
}

template <TensorType T>
void decode_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    int c = 0;
    for (; c + 2 <= a.n_tokens; c += 2) decode_row<T, 2>(a, r, c);
    if (c < a.n_tokens) decode_row<T, 1>(a, r, c);
  }
}

// GEMM: a row's super-blocks unpacked once into the panel (quants and pair scales as they
// are multiplied), then 4 tokens at a time.
struct Avx2Block {
  alignas(32) uint8_t q[256];
  alignas(32) int16_t scales[8][16];
  alignas(32) int16_t min[16];
  float d, dmin;
};

template <TensorType T>
void unpack_avx2(const uint8_t* blk, Avx2Block& out) {
  const KReg<T> k(blk);
  for (int v = 0; v < 8; ++v) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out.q + 32 * v), k.q(v));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out.scales[v]), k.scale(v));
  }
  _mm256_store_si256(reinterpret_cast<__m256i*>(out.min), k.min16());
  out.d = k.d;
  out.dmin = k.dmin;
}

// acc += dx*d*sum_j scale_j (q.x)_j ; accm += dx*dmin*sum_j min_j bsum_j (8 lanes each).
inline void dot(const Avx2Block& b, const BlockQ8_K& x, __m256& acc, __m256& accm) {
  __m256i sumi = _mm256_setzero_si256();
  for (int v = 0; v < 8; ++v)
    sumi = _mm256_add_epi32(sumi, pair_dot(_mm256_load_si256(reinterpret_cast<const __m256i*>(b.q + 32 * v)), x.qs + 32 * v,
                                           _mm256_load_si256(reinterpret_cast<const __m256i*>(b.scales[v]))));
  const __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)),
                                       _mm256_load_si256(reinterpret_cast<const __m256i*>(b.min)));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(b.d * x.d), acc);
  accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm), _mm256_set1_ps(b.dmin * x.d), accm);
}

template <TensorType T>
void gemm_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const Q8KInput& qk = *a.qk;
  constexpr size_t kBlock = sizeof(typename KQuant<T>::Block);
  thread_local std::vector<Avx2Block> panel;
  panel.resize(size_t(qk.n_super));
  constexpr int C = 4;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w.row(r);
    for (int64_t s = 0; s < qk.n_super; ++s) unpack_avx2<T>(row + size_t(s) * kBlock, panel[size_t(s)]);
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

// Q8_K activations, vectorized (the scalar reference's arithmetic exactly: scale -127 / the
// first value of largest magnitude, round to nearest even).
void quantize_q8k_rows_avx2(const float* x, Q8KInput& in, int t_begin, int t_end) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int t = t_begin; t < t_end; ++t)
    for (int64_t s = 0; s < in.n_super; ++s) {
      const float* xr = x + size_t(t) * size_t(in.cols) + size_t(s) * 256;
      BlockQ8_K& b = in.blocks[size_t(t) * size_t(in.n_super) + size_t(s)];
      __m256 amax = _mm256_setzero_ps();
      for (int i = 0; i < 32; ++i) amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(xr + 8 * i), abs_mask));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float am = _mm_cvtss_f32(m4);
      if (am == 0.f) {
        std::memset(&b, 0, sizeof b);
        continue;
      }
      float max = 0.f;
      for (int j = 0; j < 256; ++j)
        if (std::fabs(xr[j]) == am) {
          max = xr[j];
          break;
        }
      const float iscale = -127.f / max;
      const __m256 vs = _mm256_set1_ps(iscale);
      for (int i = 0; i < 16; ++i) {
        const __m256i q0 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + 16 * i), vs)), _mm256_set1_epi32(127));
        const __m256i q1 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + 16 * i + 8), vs)), _mm256_set1_epi32(127));
        const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);  // 16 int16 in order
        const __m128i b8 = _mm_packs_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(b.qs + 16 * i), b8);
        const __m256i s32 = _mm256_add_epi32(q0, q1);
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
        s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
        b.bsums[i] = int16_t(_mm_cvtsi128_si32(s4));
      }
      b.d = 1 / iscale;
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
  k.quantize_k_rows = quantize_q8k_rows_avx2;
}

}  // namespace tutti::cpu
