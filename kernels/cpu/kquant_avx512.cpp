// AVX-512 kernels for the K-quants (compiled with AVX-512 flags, chosen at run time through
// the avx512 kernel set). Both paths multiply the unpacked form of kquant.h with Q8_K
// activations in exact integer arithmetic; only the float sums over super-blocks differ in
// order from ggml's.
//
// Decode (1-7 tokens): each super-block is unpacked in registers (per type: four 512-bit
// vectors of 64 quants in value order, the 16 scales and mins as int16) and multiplied with
// VPMADDUBSW (u8 quants x s8 activations -> s16 pairs) and VPMADDWD (pairs x the sub-block's
// scale -> s32), which applies the scales for free. The min term is one VPMADDWD of the mins
// with the activations' 16 block sums.
//
// GEMM (8 tokens and more): a panel of kPanelRows rows is unpacked once into memory (quants as
// bytes, scales and min pairs as int32) and multiplied with Q8_K lanes (tokens as vector
// lanes): per 4 columns one VPDPBUSD of the broadcast weights with 16 tokens' activations,
// per sub-block one VPMULLD by its scale, per super-block 8 VPDPWSSD for the min term.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm_avx512.h"
#include "kernels/cpu/kquant.h"
#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {

namespace {


// One super-block in registers.
struct KRegs {
  __m512i q[4];     // the 256 quants (0..63), 64 per register, in value order
  __m256i scale16;  // the 16 sub-block scales
  __m256i min16;    // the 16 mins (the symmetric types: offset * scale)
  float d, dmin;
};

inline float half(uint16_t h) { return _cvtsh_ss(h); }
inline __m512i bytes_of_halves(uint8_t lo, uint8_t hi) {  // bytes 0..31 = lo, 32..63 = hi
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(char(lo))), _mm256_set1_epi8(char(hi)), 1);
}
inline __m512i words_of_halves(short lo, short hi) {  // 16-bit lanes 0..15 = lo, 16..31 = hi
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(lo)), _mm256_set1_epi16(hi), 1);
}
inline __m512i broadcast256(const uint8_t* p) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <TensorType T>
struct KLoad;

template <>
struct KLoad<TensorType::Q4_K> {
  static void load(const uint8_t* blk, KRegs& k) {
    const auto& b = *reinterpret_cast<const BlockQ4_K*>(blk);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int h = 0; h < 2; ++h) {
      // 64 bytes = chunks 2h, 2h+1: low nibbles are values 128h + [0,32) and + [64,96),
      // high nibbles + [32,64) and + [96,128).
      const __m512i a = _mm512_loadu_si512(b.qs + 64 * h);
      const __m512i lo = _mm512_and_si512(a, m4), hi = _mm512_and_si512(_mm512_srli_epi16(a, 4), m4);
      k.q[2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
      k.q[2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
    }
    load_k4_scales(b.scales, k);
    k.d = half(b.d);
    k.dmin = half(b.dmin);
  }
  // The 8 scales and 8 mins of the 12 packed bytes (k4_scale_min for all j at once), each
  // duplicated for its two 16-value halves. In vector registers: a 16-byte load that goes
  // through the stack as four words defeats store forwarding and stalls every super-block.
  // With the packed words u0 u1 u2, the four result words are
  //   scales 0-3: u0 & 0x3f..   scales 4-7: (u2 & 0x0f..) | ((u0 >> 6) & 0x03..) << 4
  //   mins 0-3:   u1 & 0x3f..   mins 4-7:   ((u2 >> 4) & 0x0f..) | ((u1 >> 6) & 0x03..) << 4
  // (the 16-byte load reads 4 bytes past the scales, inside the block; they are masked away).
  static void load_k4_scales(const uint8_t* packed, KRegs& k) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));
    const __m128i low = _mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)), _mm_setr_epi32(0, 0, 0, 4));
    const __m128i low_masked = _mm_and_si128(low, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 6), _mm_set1_epi32(0x03030303));
    const __m128i top_masked = _mm_and_si128(_mm_slli_epi32(top, 4), _mm_setr_epi32(0, -1, 0, -1));
    const __m128i sm = _mm_or_si128(low_masked, top_masked);  // bytes 0-7 the scales, 8-15 the mins
    const __m128i dup_scales = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m128i dup_mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    k.scale16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_scales));
    k.min16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_mins));
  }
};

template <>
struct KLoad<TensorType::Q5_K> {
  static void load(const uint8_t* blk, KRegs& k) {
    const auto& b = *reinterpret_cast<const BlockQ5_K*>(blk);
    const __m512i m4 = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(16);
    const __m512i qh = broadcast256(b.qh);  // byte i: qh[i % 32]
    for (int h = 0; h < 2; ++h) {
      const __m512i a = _mm512_loadu_si512(b.qs + 64 * h);
      const __m512i lo = _mm512_and_si512(a, m4), hi = _mm512_and_si512(_mm512_srli_epi16(a, 4), m4);
      k.q[2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
      k.q[2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
    }
    // Register c holds values 64c + [0,32) (fifth bit: bit 2c of qh) and 64c + [32,64) (2c+1).
    for (int c = 0; c < 4; ++c) {
      const __mmask64 bit = _mm512_test_epi8_mask(qh, bytes_of_halves(uint8_t(1 << (2 * c)), uint8_t(2 << (2 * c))));
      k.q[c] = _mm512_or_si512(k.q[c], _mm512_maskz_mov_epi8(bit, sixteen));
    }
    KLoad<TensorType::Q4_K>::load_k4_scales(b.scales, k);
    k.d = half(b.d);
    k.dmin = half(b.dmin);
  }
};

template <>
struct KLoad<TensorType::Q6_K> {
  static void load(const uint8_t* blk, KRegs& k) {
    const auto& b = *reinterpret_cast<const BlockQ6_K*>(blk);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(3);
    const __m512i shift01 = words_of_halves(0, 2), shift23 = words_of_halves(4, 6);
    for (int h = 0; h < 2; ++h) {
      // ql[64h + l]: low nibble value 128h + l, high nibble 128h + 64 + l (l < 64); the top
      // two bits of 128h + 32s + l (l < 32) are bits 2s..2s+1 of qh[32h + l].
      const __m512i a = _mm512_loadu_si512(b.ql + 64 * h);
      const __m512i top = broadcast256(b.qh + 32 * h);
      const __m512i t01 = _mm512_and_si512(_mm512_srlv_epi16(top, shift01), m2);
      const __m512i t23 = _mm512_and_si512(_mm512_srlv_epi16(top, shift23), m2);
      k.q[2 * h] = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi16(t01, 4));
      k.q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(a, 4), m4), _mm512_slli_epi16(t23, 4));
    }
    k.scale16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales)));
    k.min16 = _mm256_slli_epi16(k.scale16, 5);  // 32 * scale
    k.d = k.dmin = half(b.d);
  }
};

template <>
struct KLoad<TensorType::Q2_K> {
  static void load(const uint8_t* blk, KRegs& k) {
    const auto& b = *reinterpret_cast<const BlockQ2_K*>(blk);
    const __m512i m2 = _mm512_set1_epi8(3);
    const __m512i shift01 = words_of_halves(0, 2), shift23 = words_of_halves(4, 6);
    for (int h = 0; h < 2; ++h) {  // value 128h + 32s + l: bits 2s..2s+1 of qs[32h + l]
      const __m512i q = broadcast256(b.qs + 32 * h);
      k.q[2 * h] = _mm512_and_si512(_mm512_srlv_epi16(q, shift01), m2);
      k.q[2 * h + 1] = _mm512_and_si512(_mm512_srlv_epi16(q, shift23), m2);
    }
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
    const __m128i m4 = _mm_set1_epi8(0x0f);
    k.scale16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc, m4));
    k.min16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), m4));
    k.d = half(b.d);
    k.dmin = half(b.dmin);
  }
};

template <>
struct KLoad<TensorType::Q3_K> {
  static void load(const uint8_t* blk, KRegs& k) {
    const auto& b = *reinterpret_cast<const BlockQ3_K*>(blk);
    const __m512i m2 = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
    const __m512i shift01 = words_of_halves(0, 2), shift23 = words_of_halves(4, 6);
    const __m512i hm = broadcast256(b.hmask);  // byte i: hmask[i % 32]
    for (int h = 0; h < 2; ++h) {
      // As Q2_K, plus 4 where bit 4h + s of hmask[l] is set.
      const __m512i q = broadcast256(b.qs + 32 * h);
      __m512i q01 = _mm512_and_si512(_mm512_srlv_epi16(q, shift01), m2);
      __m512i q23 = _mm512_and_si512(_mm512_srlv_epi16(q, shift23), m2);
      const uint8_t s = uint8_t(4 * h);
      const __mmask64 h01 = _mm512_test_epi8_mask(hm, bytes_of_halves(uint8_t(1 << s), uint8_t(2 << s)));
      const __mmask64 h23 = _mm512_test_epi8_mask(hm, bytes_of_halves(uint8_t(4 << s), uint8_t(8 << s)));
      k.q[2 * h] = _mm512_or_si512(q01, _mm512_maskz_mov_epi8(h01, four));
      k.q[2 * h + 1] = _mm512_or_si512(q23, _mm512_maskz_mov_epi8(h23, four));
    }
    // The 16 6-bit scales (q3k_scales for all j at once), minus 32, in vector registers (see
    // load_k4_scales). With the packed words u0 u1 and top = u2, result word w is
    //   (u(w % 2) >> 4 * (w / 2)) & 0x0f..  |  ((top >> 2w) & 0x03..) << 4
    // 12 bytes exactly: the block ends 2 bytes after them, and the row may end the mapping.
    int32_t w2;
    std::memcpy(&w2, b.scales + 8, 4);
    const __m128i v = _mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.scales)), w2, 2);
    const __m128i low = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 1, 0)), _mm_setr_epi32(0, 0, 4, 4)),
                                      _mm_set1_epi32(0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 2, 2)), _mm_setr_epi32(0, 2, 4, 6)),
                                      _mm_set1_epi32(0x03030303));
    const __m128i sc = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi32(top, 4)), _mm_set1_epi8(32));
    k.scale16 = _mm256_cvtepi8_epi16(sc);
    k.min16 = _mm256_slli_epi16(k.scale16, 2);  // 4 * scale
    k.d = k.dmin = half(b.d);
  }
};

// For register v of a super-block, the 16-bit lanes of VPMADDUBSW's output (value pairs
// 64v + 2i, 64v + 2i + 1) and the scale each needs: sub-block 4v + i/8.
// constexpr, so it is built at compile time: a dynamic initializer in this file would be
// compiled for AVX-512 and run at program start on every CPU, with or without it.
struct ScaleIndex {
  alignas(64) int16_t idx[4][32];
  constexpr ScaleIndex() : idx{} {
    for (int v = 0; v < 4; ++v)
      for (int i = 0; i < 32; ++i) idx[v][i] = int16_t(4 * v + i / 8);
  }
};
constexpr ScaleIndex kScaleIndex;

template <TensorType T>
struct KDecode {
  static constexpr size_t kBlock = sizeof(typename KQuant<T>::Block);

  template <int R, int C>
  static void tile(const MatmulArgs& a, int64_t r0, int c0) {
    const Q8KInput& qk = *a.qk;
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = a.w.row(r0 + r);
    __m512 acc[R][C];
    __m256 accm[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps(), accm[r][c] = _mm256_setzero_ps();
    for (int64_t s = 0; s < qk.n_super; ++s) {
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = rows[r] + size_t(s) * kBlock;
        for (size_t off = 0; off < kBlock; off += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchBytes + off), _MM_HINT_T0);
        KRegs k;
        KLoad<T>::load(blk, k);
        __m512i sc[4];
        const __m512i scales = _mm512_castsi256_si512(k.scale16);
        for (int v = 0; v < 4; ++v) sc[v] = _mm512_permutexvar_epi16(_mm512_load_si512(kScaleIndex.idx[v]), scales);
        for (int c = 0; c < C; ++c) {
          const BlockQ8_K& x = qk.row(c0 + c)[s];
          __m512i sumi = _mm512_setzero_si512();
          for (int v = 0; v < 4; ++v) {
            const __m512i p = _mm512_maddubs_epi16(k.q[v], _mm512_loadu_si512(x.qs + 64 * v));
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, sc[v]));
          }
          const __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)), k.min16);
          acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(k.d * x.d), acc[r][c]);
          accm[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm), _mm256_set1_ps(k.dmin * x.d), accm[r][c]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        const __m256 m = accm[r][c];
        __m128 m4 = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_add_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_add_ss(m4, _mm_movehdup_ps(m4));
        a.y[size_t(c0 + c) * a.w.rows + r0 + r] = _mm512_reduce_add_ps(acc[r][c]) - _mm_cvtss_f32(m4);
      }
  }

  static void rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
    prefetch_first_rows(a.w, r0, r1);
    if (a.n_tokens <= 2)
      TileDriver<KDecode, 2, 2>::run(a, r0, r1);
    else
      TileDriver<KDecode, 2, 4>::run(a, r0, r1);
  }
};

// ---- GEMM

// 6 rows x 2 groups of 16 tokens: 12 independent VPDPBUSD chains (its latency is 4 cycles
// at 2 per cycle: 8 chains measured 8% short of the peak, 4 half of it), and each broadcast
// weight word serves 2 groups, each activation vector 6 rows.
constexpr int kPanelRows = 6;

// kPanelRows rows unpacked, super-block-major so one super-block's rows sit together.
struct KPanel {
  int64_t n_super = 0;
  std::vector<uint8_t> q;           // [s][r][256]
  std::vector<int32_t> scale;       // [s][r][16]
  std::vector<int32_t> min_pairs;   // [s][r][8]: min 2i in the low half, 2i + 1 in the high
  std::vector<float> d, dmin;       // [s][r]
  void resize(int64_t supers) {
    n_super = supers;
    q.resize(size_t(supers) * kPanelRows * 256);
    scale.resize(size_t(supers) * kPanelRows * 16);
    min_pairs.resize(size_t(supers) * kPanelRows * 8);
    d.resize(size_t(supers) * kPanelRows);
    dmin.resize(size_t(supers) * kPanelRows);
  }
};

template <TensorType T>
void fill_panel(const MatrixView& w, int64_t r0, int rows, KPanel& p) {
  constexpr size_t kBlock = sizeof(typename KQuant<T>::Block);
  for (int r = 0; r < kPanelRows; ++r) {
    const uint8_t* row = w.row(r0 + std::min(r, rows - 1));  // short panels repeat their last row
    for (int64_t s = 0; s < p.n_super; ++s) {
      KRegs k;
      KLoad<T>::load(row + size_t(s) * kBlock, k);
      const size_t at = size_t(s) * kPanelRows + size_t(r);
      for (int v = 0; v < 4; ++v) _mm512_storeu_si512(p.q.data() + at * 256 + 64 * v, k.q[v]);
      _mm512_storeu_si512(p.scale.data() + at * 16, _mm512_cvtepi16_epi32(k.scale16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.min_pairs.data() + at * 8), k.min16);
      p.d[at] = k.d;
      p.dmin[at] = k.dmin;
    }
  }
}

// R panel rows x G groups of 16 tokens. kSub: values per distinct scale (16, or 32 for Q4_K
// and Q5_K, whose sub-blocks are 32 values).
template <int kSub, int G>
void kgemm_tile(const MatmulArgs& a, const KPanel& p, const Q8KLanes& xl, int64_t r0, int rows, int g0) {
  constexpr int R = kPanelRows;
  const int64_t k4s = xl.cols / 4;
  // The float totals live in memory (touched once per super-block): the registers go to the
  // integer chains.
  alignas(64) float f[R][G][16] = {};
  for (int64_t s = 0; s < xl.n_super; ++s) {
    const size_t at = size_t(s) * R;
    __m512i sumi[R][G];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) sumi[r][g] = _mm512_setzero_si512();
    for (int j = 0; j < 256 / kSub; ++j) {
      __m512i acc[R][G];
      for (int r = 0; r < R; ++r)
        for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int k4 = 0; k4 < kSub / 4; ++k4) {
        const int64_t col4 = s * 64 + j * (kSub / 4) + k4;
        __m512i x[G];
        for (int g = 0; g < G; ++g) x[g] = _mm512_loadu_si512(xl.q.data() + ((size_t(g0 + g) * size_t(k4s) + size_t(col4)) * 16) * 4);
        for (int r = 0; r < R; ++r) {
          int32_t w4;
          std::memcpy(&w4, p.q.data() + (at + size_t(r)) * 256 + size_t(col4 - s * 64) * 4, 4);
          const __m512i w = _mm512_set1_epi32(w4);
          for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], w, x[g]);
        }
      }
      for (int r = 0; r < R; ++r) {
        const __m512i sc = _mm512_set1_epi32(p.scale[(at + size_t(r)) * 16 + size_t(j * kSub / 16)]);
        for (int g = 0; g < G; ++g) sumi[r][g] = _mm512_add_epi32(sumi[r][g], _mm512_mullo_epi32(acc[r][g], sc));
      }
    }
    __m512i summ[R][G];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) summ[r][g] = _mm512_setzero_si512();
    for (int i = 0; i < 8; ++i) {
      __m512i bs[G];
      for (int g = 0; g < G; ++g) bs[g] = _mm512_loadu_si512(xl.bsums.data() + ((size_t(g0 + g) * size_t(xl.n_super) + size_t(s)) * 8 + size_t(i)) * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i m = _mm512_set1_epi32(p.min_pairs[(at + size_t(r)) * 8 + size_t(i)]);
        for (int g = 0; g < G; ++g) summ[r][g] = _mm512_dpwssd_epi32(summ[r][g], bs[g], m);
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m512 dx = _mm512_loadu_ps(xl.d.data() + (size_t(g0 + g) * size_t(xl.n_super) + size_t(s)) * 16);
      for (int r = 0; r < R; ++r) {
        __m512 t = _mm512_load_ps(f[r][g]);
        t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[r][g]), _mm512_mul_ps(_mm512_set1_ps(p.d[at + size_t(r)]), dx), t);
        t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(summ[r][g]), _mm512_mul_ps(_mm512_set1_ps(p.dmin[at + size_t(r)]), dx), t);
        _mm512_store_ps(f[r][g], t);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    const int t0 = (g0 + g) * 16, n = std::min(16, a.n_tokens - t0);
    for (int t = 0; t < n; ++t) {
      float* y = a.y + size_t(t0 + t) * size_t(a.w.rows) + size_t(r0);
      for (int r = 0; r < rows; ++r) y[r] = f[r][g][t];
    }
  }
}

template <TensorType T>
void kgemm_rows(const MatmulArgs& a, int64_t r0, int64_t r1) {
  constexpr int kSub = (T == TensorType::Q4_K || T == TensorType::Q5_K) ? 32 : 16;
  const Q8KLanes& xl = *a.xkl;
  thread_local KPanel panel;
  panel.resize(xl.n_super);
  const size_t panel_bytes = a.w.row_bytes() * kPanelRows;
  for (int64_t r = r0; r < r1; r += kPanelRows) {
    const int rows = int(std::min<int64_t>(kPanelRows, r1 - r));
    // The next panel's rows start on their way from DRAM while this one computes.
    if (r + kPanelRows < r1) {
      const char* next = reinterpret_cast<const char*>(a.w.row(r + kPanelRows));
      const size_t bytes = std::min(panel_bytes, size_t(r1 - r - kPanelRows) * a.w.row_bytes());
      for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T1);
    }
    fill_panel<T>(a.w, r, rows, panel);
    int g = 0;
    for (; g + 2 <= xl.n_groups; g += 2) kgemm_tile<kSub, 2>(a, panel, xl, r, rows, g);
    if (g < xl.n_groups) kgemm_tile<kSub, 1>(a, panel, xl, r, rows, g);
  }
}

template <TensorType T>
TypeKernels entry() {
  return {KDecode<T>::rows, InputFormat::Q8KBlocks, kgemm_rows<T>, InputFormat::Q8KLanes};
}

}  // namespace

void add_kquant_kernels_avx512(MatmulKernels& k) {
  k.types[size_t(TensorType::Q2_K)] = entry<TensorType::Q2_K>();
  k.types[size_t(TensorType::Q3_K)] = entry<TensorType::Q3_K>();
  k.types[size_t(TensorType::Q4_K)] = entry<TensorType::Q4_K>();
  k.types[size_t(TensorType::Q5_K)] = entry<TensorType::Q5_K>();
  k.types[size_t(TensorType::Q6_K)] = entry<TensorType::Q6_K>();
}

namespace {

// One 256-value super-block of activations as quantize_row_q8_k makes it: scale -127 / (the
// value of largest magnitude, the first one in order), round to nearest even, clamp to 127.
// Returns false (nothing written) for an all-zero block. q: the 256 quants; sums: per 16.
bool quantize_q8k_block(const float* xr, int8_t* q, int32_t* sums, float& d) {
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  __m512 v[16];
  __m512 amax = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    v[i] = _mm512_loadu_ps(xr + 16 * i);
    amax = _mm512_max_ps(amax, _mm512_and_ps(v[i], abs_mask));
  }
  const float am = _mm512_reduce_max_ps(amax);
  if (am == 0.f) return false;
  float max = 0.f;
  for (int i = 0; i < 16; ++i) {
    const __mmask16 at = _mm512_cmp_ps_mask(_mm512_and_ps(v[i], abs_mask), _mm512_set1_ps(am), _CMP_EQ_OQ);
    if (at) {
      max = xr[16 * i + __builtin_ctz(unsigned(at))];
      break;
    }
  }
  const float iscale = -127.f / max;
  const __m512 vs = _mm512_set1_ps(iscale);
  for (int i = 0; i < 16; ++i) {
    const __m512i qi = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v[i], vs)), _mm512_set1_epi32(127));
    sums[i] = _mm512_reduce_add_epi32(qi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * i), _mm512_cvtsepi32_epi8(qi));
  }
  d = 1 / iscale;
  return true;
}

}  // namespace

void quantize_q8k_rows_avx512(const float* x, Q8KInput& in, int t_begin, int t_end) {
  for (int t = t_begin; t < t_end; ++t)
    for (int64_t s = 0; s < in.n_super; ++s) {
      BlockQ8_K& b = in.blocks[size_t(t) * size_t(in.n_super) + size_t(s)];
      int32_t sums[16];
      if (!quantize_q8k_block(x + size_t(t) * size_t(in.cols) + size_t(s) * 256, b.qs, sums, b.d)) {
        std::memset(&b, 0, sizeof b);
        continue;
      }
      for (int i = 0; i < 16; ++i) b.bsums[i] = int16_t(sums[i]);
    }
}

// Quantizes the 16 tokens of group g into Q8KLanes with quantize_q8k_block's arithmetic.
void quantize_q8k_lanes_avx512(const float* x, Q8KLanes& l, int g) {
  auto* dst = reinterpret_cast<int32_t*>(l.q.data()) + size_t(g) * size_t(l.cols / 4) * 16;
  for (int lane = 0; lane < 16; ++lane) {
    const int t = g * 16 + lane;
    for (int64_t s = 0; s < l.n_super; ++s) {
      float* d = l.d.data() + (size_t(g) * size_t(l.n_super) + size_t(s)) * 16 + size_t(lane);
      int32_t* bsums = l.bsums.data() + (size_t(g) * size_t(l.n_super) + size_t(s)) * 8 * 16 + size_t(lane);
      int32_t* words = dst + size_t(s) * 64 * 16 + size_t(lane);
      alignas(16) int8_t q[256];
      int32_t sums[16];
      if (t >= l.n_tokens || !quantize_q8k_block(x + size_t(t) * size_t(l.cols) + size_t(s) * 256, q, sums, *d)) {
        *d = 0.f;
        for (int i = 0; i < 8; ++i) bsums[i * 16] = 0;
        for (int w = 0; w < 64; ++w) words[w * 16] = 0;
        continue;
      }
      for (int w = 0; w < 64; ++w) std::memcpy(&words[w * 16], q + 4 * w, 4);
      for (int i = 0; i < 8; ++i) bsums[i * 16] = int32_t(uint32_t(uint16_t(sums[2 * i])) | uint32_t(uint16_t(sums[2 * i + 1])) << 16);
    }
  }
}

}  // namespace tutti::cpu
