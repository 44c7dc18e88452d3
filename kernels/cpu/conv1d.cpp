#include "kernels/cpu/conv1d.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/thread_pool.h"

namespace tutti::cpu::conv {

PackedMatrix pack_matrix(const float* a, int m, int k, int lda) {
  PackedMatrix p;
  p.m = m;
  p.k = k;
  p.data.assign(size_t(p.panels()) * size_t(k) * kPanelRows, 0.0f);
  for (int i = 0; i < m; ++i) {
    float* dst = p.data.data() + size_t(i / kPanelRows) * size_t(k) * kPanelRows + (i % kPanelRows);
    for (int l = 0; l < k; ++l) dst[size_t(l) * kPanelRows] = a[size_t(i) * lda + l];
  }
  return p;
}

namespace {

GemmIsa detect() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return GemmIsa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return GemmIsa::Avx2;
#endif
  return GemmIsa::Scalar;
}

// Chosen on first use (not at static initialisation, which may come after a caller's).
GemmIsa& current_isa() {
  static GemmIsa isa = detect();
  return isa;
}

detail::TileKernel kernel_for(GemmIsa isa) {
#if defined(__x86_64__)
  if (isa == GemmIsa::Avx512) return detail::tile_avx512;
  if (isa == GemmIsa::Avx2) return detail::tile_avx2;
#endif
  return detail::tile_scalar;
}

// K is cut into blocks so that one tile's share of b (kKBlock x 32 floats, 32 KiB) stays in
// L1 while kMBlock panels of a (48 KiB each per block) come from L2.
constexpr int kKBlock = 256;
constexpr int kMBlock = 8;

}  // namespace

GemmIsa best_gemm_isa() { return detect(); }
void force_gemm_isa(GemmIsa isa) { current_isa() = std::min(isa, detect()); }
const char* gemm_isa_name(GemmIsa isa) {
  switch (isa) {
    case GemmIsa::Avx512: return "avx512";
    case GemmIsa::Avx2: return "avx2";
    default: return "scalar";
  }
}

void gemm(const PackedMatrix& a, const float* b, int ldb, int n, float* c, int ldc, const float* bias, ThreadPool* pool) {
  if (n <= 0 || a.m <= 0) return;
  const detail::TileKernel tile = kernel_for(current_isa());
  const int col_tiles = (n + kGemmColumns - 1) / kGemmColumns;
  const int panels = a.panels();
  const int m_blocks = (panels + kMBlock - 1) / kMBlock;
  if (a.k == 0) {  // no reduction: the bias alone
    for (int i = 0; i < a.m; ++i)
      for (int j = 0; j < n; ++j) c[size_t(i) * ldc + j] = bias ? bias[i] : 0.0f;
    return;
  }
  // A task is one m-block over a run of column tiles, for every k block in order (so each
  // output is accumulated by one thread in a fixed order: results do not depend on threads).
  const int threads = pool ? pool->size() : 1;
  int col_groups = 1;
  if (threads > 1 && m_blocks < 2 * threads) col_groups = std::min(col_tiles, (2 * threads + m_blocks - 1) / m_blocks);
  const int tiles_per_group = (col_tiles + col_groups - 1) / col_groups;
  auto run = [&](int task, int) {
    const int mb = task / col_groups, cg = task % col_groups;
    const int p_begin = mb * kMBlock, p_end = std::min(panels, p_begin + kMBlock);
    const int t_begin = cg * tiles_per_group, t_end = std::min(col_tiles, t_begin + tiles_per_group);
    for (int k0 = 0; k0 < a.k; k0 += kKBlock) {
      const int kc = std::min(kKBlock, a.k - k0);
      for (int t = t_begin; t < t_end; ++t) {
        const float* bt = b + size_t(k0) * ldb + size_t(t) * kGemmColumns;
        for (int p = p_begin; p < p_end; ++p) {
          const int rows = std::min(kPanelRows, a.m - p * kPanelRows);
          tile(a.panel(p) + size_t(k0) * kPanelRows, kc, bt, ldb, c + size_t(p) * kPanelRows * ldc + size_t(t) * kGemmColumns, ldc,
               rows, bias ? bias + p * kPanelRows : nullptr, k0 > 0);
        }
      }
    }
  };
  const int tasks = m_blocks * col_groups;
  if (pool && tasks > 1)
    pool->run(tasks, run);
  else
    for (int i = 0; i < tasks; ++i) run(i, 0);
}

namespace detail {
void tile_scalar(const float* a, int k, const float* b, int ldb, float* c, int ldc, int rows, const float* bias, bool accumulate) {
  float acc[kPanelRows][kGemmColumns];
  for (int i = 0; i < kPanelRows; ++i)
    for (int j = 0; j < kGemmColumns; ++j) acc[i][j] = 0.0f;
  for (int l = 0; l < k; ++l)
    for (int i = 0; i < kPanelRows; ++i) {
      const float w = a[l * kPanelRows + i];
      for (int j = 0; j < kGemmColumns; ++j) acc[i][j] += w * b[size_t(l) * ldb + j];
    }
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < kGemmColumns; ++j) {
      float* out = c + size_t(i) * ldc + j;
      *out = (accumulate ? *out : (bias ? bias[i] : 0.0f)) + acc[i][j];
    }
}
}  // namespace detail

// sin(x)^2 to float rounding for |x| up to ~1e4: x reduced by multiples of pi (three-part
// Cody-Waite constants), then the Taylor series of sin to x^13 on [-pi/2, pi/2]. sin^2 has
// period pi, so the reduction needs no sign. Inline so that the loops below vectorise.
static inline float sin_squared(float x) {
  const float k = std::nearbyint(x * 0.318309886183790672f);
  float r = x - k * 3.140625f;
  r = r - k * 9.67502593994140625e-4f;
  r = r - k * 1.509957990978376432e-7f;
  const float r2 = r * r;
  float p = 1.6059043836821614599e-10f;  // 1/13!
  p = p * r2 - 2.5052108385441718775e-8f;
  p = p * r2 + 2.7557319223985890653e-6f;
  p = p * r2 - 1.9841269841269841270e-4f;
  p = p * r2 + 8.3333333333333333333e-3f;
  p = p * r2 - 1.6666666666666666667e-1f;
  const float s = r + r * r2 * p;
  return s * s;
}

TUTTI_CLONES void snake_row(float* x, int n, float alpha) {
  const float inv = 1.0f / (alpha + 1e-9f);
  for (int t = 0; t < n; ++t) x[t] = x[t] + inv * sin_squared(alpha * x[t]);
}

TUTTI_CLONES void depthwise_row(const float* x, int n, const float* w, int k, int dilation, float bias, float* y) {
  if (k == 7) {  // every SNAC depthwise convolution: unrolled so the loop over t vectorises
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6];
    const int d = dilation;
    for (int t = 0; t < n; ++t)
      y[t] = bias + w0 * x[t] + w1 * x[t + d] + w2 * x[t + 2 * d] + w3 * x[t + 3 * d] + w4 * x[t + 4 * d] + w5 * x[t + 5 * d] +
             w6 * x[t + 6 * d];
    return;
  }
  for (int t = 0; t < n; ++t) y[t] = bias;
  for (int j = 0; j < k; ++j) {
    const float wj = w[j];
    const float* xj = x + size_t(j) * dilation;
    for (int t = 0; t < n; ++t) y[t] += wj * xj[t];
  }
}

}  // namespace tutti::cpu::conv
