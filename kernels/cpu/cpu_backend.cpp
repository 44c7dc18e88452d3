// The CPU implementation of Backend: a fixed worker pool, kernels chosen once at start-up
// from what the CPU supports (AVX-512 VNNI/BF16, AVX2, or portable scalar code), weights
// used in place from the mmap.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <thread>

#include "kernels/backend.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/memory_bandwidth.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/vec_ops.h"

namespace tutti {

namespace cpu {

bool cpu_has_avx2() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

namespace {

const MatmulKernels& choose_kernels(const std::string& isa) {
  const MatmulKernels* k512 = avx512_kernels();
  const MatmulKernels* k2 = avx2_kernels();
  if (isa == "scalar") return scalar_kernels();
  if (isa == "avx512") {
    if (!k512 || !cpu_has_avx512()) throw std::runtime_error("this CPU or build has no AVX-512 VNNI/BF16 kernels");
    return *k512;
  }
  if (isa == "avx2") {
    if (!k2 || !cpu_has_avx2()) throw std::runtime_error("this CPU or build has no AVX2 kernels");
    return *k2;
  }
  if (isa != "auto") throw std::runtime_error("unknown kernel set '" + isa + "' (auto, avx512, avx2, scalar)");
  if (k512 && cpu_has_avx512()) return *k512;
  if (k2 && cpu_has_avx2()) return *k2;
  return scalar_kernels();
}

int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& o)
      : kernels_(choose_kernels(o.isa)), pool_(o.threads > 0 ? o.threads : default_threads()) {
    scratch_.resize(size_t(pool_.size()));
    run_state_ = std::make_unique<std::atomic<uint64_t>[]>(size_t(pool_.size()) + 1);
  }

  Device device() const override { return Device::Cpu; }
  std::string describe() const override {
    return std::string("cpu ") + kernels_.isa + ", " + std::to_string(pool_.size()) + " threads";
  }
  int threads() const override { return pool_.size(); }
  double measure_bandwidth() override { return cpu::measure_read_bandwidth(pool_.size()); }

  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(64, (std::max<size_t>(bytes, 1) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void free(void* p) override { std::free(p); }
  MatrixView upload_weights(const MatrixView& host) override { return host; }
  void copy_to_host(void* dst, const void* src, size_t n) override { std::memcpy(dst, src, n); }
  void copy_to_device(void* dst, const void* src, size_t n) override { std::memcpy(dst, src, n); }

  void matmul(std::span<const MatmulTask> tasks, const float* x, int n_tokens) override {
    if (tasks.empty() || n_tokens <= 0) return;
    const int64_t cols = tasks[0].weight.cols;
    // Each task's kernel, and every activation layout they read, prepared once.
    std::array<bool, cpu::kInputFormats> needed{};
    kernel_of_.clear();
    for (auto& t : tasks) {
      if (t.weight.cols != cols) throw std::logic_error("matmul tasks must share the input width");
      cpu::InputFormat input;
      const cpu::MatmulRowsFn fn = kernels_.kernel(t.weight.type, n_tokens, input);
      if (!fn)
        throw std::logic_error(std::string("the ") + kernels_.isa + " kernels have no product for " +
                               std::string(tensor_type_info(t.weight.type).name) + " weights");
      kernel_of_.push_back(fn);
      needed[size_t(input)] = true;
    }
    prepare_inputs(needed, x, n_tokens, cols);
    weights_.clear();
    for (auto& t : tasks) weights_.push_back(t.weight);
    split_rows(weights_, chunks_, runs_);
    using F = cpu::InputFormat;
    auto prepared = [&](F f) { return needed[size_t(f)]; };
    // Each thread streams its own run from the front; one that finishes early takes work
    // from the back of the others' (whole units of kUnitBytes), so the two meet where the
    // slower one has got to instead of one waiting for the other.
    cut_units(weights_);
    auto run_unit = [&](const Chunk& u) {
      const MatmulTask& t = tasks[size_t(u.task)];
      cpu::MatmulArgs args;
      args.w = t.weight;
      args.x = x;
      args.qx = prepared(F::Q8Blocks) ? &qx_ : nullptr;
      args.qk = prepared(F::Q8KBlocks) ? &qk_ : nullptr;
      args.xb = prepared(F::Bf16Lanes) ? &xb_ : nullptr;
      args.xl = prepared(F::Int8Lanes) ? &xl_ : nullptr;
      args.xkl = prepared(F::Q8KLanes) ? &xkl_ : nullptr;
      args.y = t.out;
      args.n_tokens = n_tokens;
      kernel_of_[size_t(u.task)](args, u.begin, u.end);
    };
    const int n_runs = int(runs_.size()) - 1;
    pool_.run(n_runs, [&](int run, int) {
      for (int u; (u = claim(run, true)) >= 0;) run_unit(units_[size_t(u)]);
      for (int other = 0; other < n_runs; ++other)
        if (other != run)
          for (int u; (u = claim(other, false)) >= 0;) run_unit(units_[size_t(u)]);
    });
  }

  void prefetch_weights(std::span<const MatrixView> weights) override {
    // The first rows of each chunk matmul() will hand out (a thread's own stream prefetches
    // ahead of itself once it runs). Lines land in this core's L2; those of the other
    // workers' chunks reach them through the shared L3.
    split_rows(weights, prefetch_chunks_, prefetch_runs_);
    for (const Chunk& c : prefetch_chunks_) {
      const MatrixView& w = weights[size_t(c.task)];
      const char* p = reinterpret_cast<const char*>(w.row(c.begin));
      const size_t bytes = std::min<size_t>(size_t(16) << 10, size_t(c.end - c.begin) * w.row_bytes());
      for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
    }
  }

  void embed(const MatrixView& table, const int32_t* ids, int n, float* out) override {
    for (int i = 0; i < n; ++i) dequantize_row(table.type, table.row(ids[i]), out + size_t(i) * table.cols, size_t(table.cols));
  }

  void rms_norm(const float* x, const float* w, float* y, int n, int dim, float eps) override {
    auto one = [&](int t) {
      const float* xr = x + size_t(t) * dim;
      float* yr = y + size_t(t) * dim;
      const float mean = float(cpu::sum_squares(xr, size_t(dim)) / dim);
      const float scale = 1.0f / std::sqrt(mean + eps);
      for (int i = 0; i < dim; ++i) yr[i] = (xr[i] * scale) * w[i];
    };
    if (n < 8) {
      for (int t = 0; t < n; ++t) one(t);
    } else {
      pool_.run(n, [&](int t, int) { one(t); });
    }
  }

  void rope(float* x, const int32_t* positions, int n, int n_heads, int head_dim, const RopeParams& p) override {
    // Angles as ggml computes them: theta_i = pos * base^(-2i/n_rot), built by repeated
    // multiplication in float, divided by the pair's frequency factor and scaled, so that
    // results match files converted for that engine.
    const float theta_scale = std::pow(p.base, -2.0f / float(p.n_rot));
    const int pairs = p.n_rot / 2;
    // Normal: pair i is (2i, 2i+1); Neox: (i, i + n_rot/2).
    const int first_step = p.layout == RopeLayout::Normal ? 2 : 1, second = p.layout == RopeLayout::Normal ? 1 : pairs;
    auto rows = [&](int t_begin, int t_end) {
      for (int t = t_begin; t < t_end; ++t) {
        float* row = x + size_t(t) * n_heads * head_dim;
        float theta = float(positions[t]);
        for (int i = 0; i < pairs; ++i) {
          const float angle = p.freq_scale * (p.freq_factors ? theta / p.freq_factors[i] : theta);
          const float c = std::cos(angle), s = std::sin(angle);
          for (int h = 0; h < n_heads; ++h) {
            float* a = row + size_t(h) * head_dim + i * first_step;
            const float x0 = a[0], x1 = a[second];
            a[0] = x0 * c - x1 * s;
            a[second] = x0 * s + x1 * c;
          }
          theta *= theta_scale;
        }
      }
    };
    if (n < 16) {
      rows(0, n);
    } else {
      pool_.run(pool_.size(), [&](int part, int) { rows(n * part / pool_.size(), n * (part + 1) / pool_.size()); });
    }
  }

  void add_rows(float* x, const float* bias, int n, int dim) override {
    for (int t = 0; t < n; ++t) cpu::add_f32(x + size_t(t) * dim, bias, size_t(dim));
  }

  void kv_store(const KvLayerView& kv, std::span<const AttentionSeq> seqs, const float* k, const float* v) override {
    const int n_heads = kv.kv_dim / kv.head_dim;
    for (const AttentionSeq& s : seqs)
      for (int i = 0; i < s.n_tokens; ++i) {
        const int pos = s.first_pos + i;
        const size_t block = size_t(s.block_table[pos / kv.block_tokens]);
        for (int h = 0; h < n_heads; ++h) {
          const float* ks = k + size_t(s.row + i) * kv.kv_dim + size_t(h) * kv.head_dim;
          const float* vs = v + size_t(s.row + i) * kv.kv_dim + size_t(h) * kv.head_dim;
          const size_t v_dst = kv.v_index(block, h, pos, 0), k_dst = kv.k_index(block, h, pos, 0);
          const size_t k_stride = size_t(kv.block_tokens);  // K is dimension-major
          if (kv.type == TensorType::F16) {
            auto* pool = static_cast<uint16_t*>(kv.pool);
            cpu::f32_to_f16(vs, pool + v_dst, size_t(kv.head_dim));
            for (int d = 0; d < kv.head_dim; ++d) pool[k_dst + size_t(d) * k_stride] = fp32_to_fp16(ks[d]);
          } else {
            auto* pool = static_cast<float*>(kv.pool);
            std::memcpy(pool + v_dst, vs, size_t(kv.head_dim) * 4);
            for (int d = 0; d < kv.head_dim; ++d) pool[k_dst + size_t(d) * k_stride] = ks[d];
          }
        }
      }
  }

  void prefetch_attention(const KvLayerView& kv, std::span<const AttentionSeq> seqs) override {
    // Streaming the weights evicts the cache from every level each step, and attention is
    // then bound by DRAM latency, one short run per block. Touch the runs now, before the
    // layer's QKV product: they land in L2 and, evicted by the weights, in the shared L3,
    // where the attention workers find them (measured: attention 0.7 -> 0.3 ms per step
    // at 400 positions, 250M model). Capped so a long context cannot flush the caches.
    const size_t elem = kv.type == TensorType::F16 ? 2 : 4;
    const size_t run = size_t(kv.block_tokens) * size_t(kv.kv_dim) * elem;  // all heads of a block
    size_t budget = size_t(1) << 20;
    for (const AttentionSeq& s : seqs) {
      const int blocks = (s.first_pos + s.n_tokens - 1) / kv.block_tokens + 1;
      for (int b = 0; b < blocks && budget >= 2 * run; ++b, budget -= 2 * run)
        for (int which = 0; which < 2; ++which) {
          const char* base = static_cast<const char*>(kv.pool) + kv.run(size_t(s.block_table[b]), which, 0) * elem;
          for (size_t off = 0; off < run; off += 64) __builtin_prefetch(base + off, 0, 1);
        }
    }
  }

  void attention(const KvLayerView& kv, std::span<const AttentionSeq> seqs, const AttentionShape& sh, const float* q,
                 float* out) override {
    // Work items: (row, kv head). Each handles the query heads that share that KV head, so
    // every K/V row is read (and converted from f16) once per group, not once per head.
    items_.clear();
    for (int s = 0; s < int(seqs.size()); ++s)
      for (int i = 0; i < seqs[size_t(s)].n_tokens; ++i) items_.push_back({s, i});
    const int group = sh.n_head / sh.n_head_kv;
    const size_t q_stride = size_t(sh.n_head) * sh.head_dim;
    int max_ctx = 0;
    for (auto& s : seqs) max_ctx = std::max(max_ctx, s.first_pos + s.n_tokens);
    for (auto& buf : scratch_) buf.resize(size_t(group) * size_t(max_ctx + 16) + size_t(sh.head_dim));
    const bool vector = kernels_.avx512_attention;
    pool_.run(int(items_.size()) * sh.n_head_kv, [&](int item, int thread) {
      const Item& it = items_[size_t(item / sh.n_head_kv)];
      const int g = item % sh.n_head_kv;
      const AttentionSeq& s = seqs[size_t(it.seq)];
      const size_t offset = size_t(s.row + it.i) * q_stride + size_t(g) * group * sh.head_dim;
      float* scratch = scratch_[size_t(thread)].data();
      const int pos = s.first_pos + it.i;
      // Items are short and bound by the latency of the cache's runs: start the first
      // blocks of the item two ahead (likely this thread's next but one).
      if (item + 2 < int(items_.size()) * sh.n_head_kv) {
        const Item& ahead = items_[size_t((item + 2) / sh.n_head_kv)];
        const AttentionSeq& as = seqs[size_t(ahead.seq)];
        const int ag = (item + 2) % sh.n_head_kv;
        const size_t elem = kv.type == TensorType::F16 ? 2 : 4;
        const int blocks = std::min(2, (as.first_pos + ahead.i) / kv.block_tokens + 1);
        for (int b = 0; b < blocks; ++b)
          for (int which = 0; which < 2; ++which) {
            const char* base = static_cast<const char*>(kv.pool) + kv.run(size_t(as.block_table[b]), which, ag) * elem;
            for (size_t off = 0; off < size_t(kv.block_tokens) * size_t(sh.head_dim) * elem; off += 64) __builtin_prefetch(base + off);
          }
      }
      if (!vector || !cpu::attend_group_avx512(kv, s, pos, g, group, sh.head_dim, sh.scale, q + offset, out + offset, scratch))
        cpu::attend_group(kv, s, pos, g, group, sh.head_dim, sh.scale, q + offset, out + offset, scratch);
    });
  }

  void swiglu(const float* gate, const float* up, float* out, size_t n) override {
    parallel_ranges(n, [&](size_t b, size_t e) { cpu::silu_mul(gate + b, up + b, out + b, e - b); });
  }

  void gather_rows(const float* src, const int32_t* rows, int n, int dim, float* dst) override {
    for (int i = 0; i < n; ++i) std::memcpy(dst + size_t(i) * dim, src + size_t(rows[i]) * dim, size_t(dim) * 4);
  }

  void add(float* x, const float* y, size_t n) override {
    parallel_ranges(n, [&](size_t b, size_t e) { cpu::add_f32(x + b, y + b, e - b); });
  }

 private:
  struct Chunk {  // rows [begin, end) of task `task`
    int task;
    int64_t begin, end;
  };

  // Fills the activation layouts the kernels of one product read (Float needs nothing).
  void prepare_inputs(const std::array<bool, cpu::kInputFormats>& needed, const float* x, int n_tokens, int64_t cols) {
    using F = cpu::InputFormat;
    const int chunks = std::min(n_tokens, pool_.size() * 4);
    auto token_chunks = [&](auto&& fill) {
      pool_.run(chunks, [&](int c, int) { fill(int(int64_t(n_tokens) * c / chunks), int(int64_t(n_tokens) * (c + 1) / chunks)); });
    };
    if (needed[size_t(F::Q8Blocks)]) {
      cpu::resize_quantized_input(qx_, n_tokens, cols);
      token_chunks([&](int b, int e) { cpu::quantize_input_rows(x, qx_, b, e); });
    }
    if (needed[size_t(F::Q8KBlocks)]) {
      cpu::resize_q8k_input(qk_, n_tokens, cols);
      const auto rows = kernels_.quantize_k_rows ? kernels_.quantize_k_rows : cpu::quantize_q8k_rows;
      token_chunks([&](int b, int e) { rows(x, qk_, b, e); });
    }
    if (needed[size_t(F::Bf16Lanes)]) {
      cpu::resize_bf16_input(xb_, n_tokens, cols);
      token_chunks([&](int b, int e) { kernels_.pack_bf16(x, xb_, b, e); });
    }
    if (needed[size_t(F::Int8Lanes)]) {
      cpu::resize_int8_lanes(xl_, n_tokens, cols);
      pool_.run(xl_.n_groups, [&](int g, int) { kernels_.quantize_lanes(x, xl_, g); });
    }
    if (needed[size_t(F::Q8KLanes)]) {
      cpu::resize_q8k_lanes(xkl_, n_tokens, cols);
      pool_.run(xkl_.n_groups, [&](int g, int) { kernels_.quantize_k_lanes(x, xkl_, g); });
    }
  }

  // Splits the rows of a matmul's weights into one contiguous run per thread, of equal bytes
  // (the tasks' types may differ: Q6_K value rows beside Q4_K query rows), a run crossing
  // from one task into the next where it must: every run start is a cold stream (DRAM
  // latency before the prefetch runs ahead), and finer chunks measured slower at batch 1
  // (3.9 ms vs 4.6 ms of matrix products per step, 250M Q8_0). chunks[runs[i], runs[i+1])
  // are run i's pieces, in order.
  template <class Weights>
  void split_rows(const Weights& weights, std::vector<Chunk>& chunks, std::vector<int>& runs) const {  // NOLINT
    uint64_t total = 0;
    for (const MatrixView& w : weights) total += uint64_t(w.rows) * w.row_bytes();
    const int parts = pool_.size();
    const int64_t tile = kernels_.row_tile;
    chunks.clear();
    runs.assign(1, 0);
    uint64_t done = 0;  // bytes assigned to finished runs and the current one
    int part = 0;
    for (int i = 0; i < int(std::size(weights)); ++i) {
      const MatrixView& w = weights[size_t(i)];
      const uint64_t rb = std::max<uint64_t>(1, w.row_bytes());
      int64_t r = 0;
      while (r < w.rows) {
        // Rows of this task that fill the current run up to its share of the bytes.
        const uint64_t goal = total * uint64_t(part + 1) / uint64_t(parts);
        int64_t take = part + 1 == parts ? w.rows - r : int64_t(((goal > done ? goal - done : 0) + rb - 1) / rb);
        take = std::min(w.rows - r, (take + tile - 1) / tile * tile);
        if (take > 0) {
          chunks.push_back({i, r, r + take});
          r += take;
          done += uint64_t(take) * rb;
        }
        if (part + 1 < parts && done >= goal) {
          runs.push_back(int(chunks.size()));
          ++part;
        }
      }
    }
    if (runs.back() != int(chunks.size())) runs.push_back(int(chunks.size()));
  }

  // The runs' chunks cut into units of about kUnitBytes (whole row tiles), the smallest work
  // a thread takes from another's run; run r owns units [unit_runs_[r], unit_runs_[r + 1]),
  // and run_state_[r] packs its unclaimed range (front << 32 | back).
  static constexpr uint64_t kUnitBytes = 64 << 10;
  template <class Weights>
  void cut_units(const Weights& weights) {
    units_.clear();
    const int n_runs = int(runs_.size()) - 1;
    for (int r = 0; r < n_runs; ++r) {
      const int first = int(units_.size());
      for (int c = runs_[size_t(r)]; c < runs_[size_t(r) + 1]; ++c) {
        const Chunk& ch = chunks_[size_t(c)];
        const uint64_t rb = std::max<uint64_t>(1, weights[size_t(ch.task)].row_bytes());
        const int64_t tile = kernels_.row_tile;
        const int64_t rows = std::max<int64_t>(tile, int64_t(kUnitBytes / rb) / tile * tile);
        for (int64_t b = ch.begin; b < ch.end; b += rows) units_.push_back({ch.task, b, std::min(ch.end, b + rows)});
      }
      run_state_[size_t(r)].store(uint64_t(first) << 32 | uint64_t(units_.size()), std::memory_order_relaxed);
    }
  }
  // The next unclaimed unit of run r, from its front (its owner) or back (a helper); -1 when
  // none is left.
  int claim(int r, bool front) {
    std::atomic<uint64_t>& st = run_state_[size_t(r)];
    uint64_t cur = st.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t f = uint32_t(cur >> 32), b = uint32_t(cur);
      if (f >= b) return -1;
      const uint64_t next = front ? (uint64_t(f + 1) << 32 | b) : (uint64_t(f) << 32 | (b - 1));
      if (st.compare_exchange_weak(cur, next, std::memory_order_acq_rel, std::memory_order_relaxed)) return int(front ? f : b - 1);
    }
  }

  // Runs fn over [0, n) split between the threads, or inline when n is too small for the
  // hand-out to pay (element-wise ops of a decode step).
  template <class Fn>
  void parallel_ranges(size_t n, const Fn& fn) {
    constexpr size_t kMinPerThread = 16384;
    const int parts = int(std::min<size_t>(size_t(pool_.size()), n / kMinPerThread));
    if (parts <= 1) {
      fn(size_t(0), n);
      return;
    }
    pool_.run(parts, [&](int p, int) {
      // Boundaries on multiples of 16 floats keep each part's vectors aligned alike.
      const size_t b = n * size_t(p) / size_t(parts) / 16 * 16;
      const size_t e = p + 1 == parts ? n : n * size_t(p + 1) / size_t(parts) / 16 * 16;
      fn(b, e);
    });
  }

  struct Item {  // token i of sequence seq
    int seq, i;
  };

  const cpu::MatmulKernels& kernels_;
  ThreadPool pool_;
  // Reused across calls so the step loop does not allocate.
  cpu::QuantizedInput qx_;
  cpu::Q8KInput qk_;
  cpu::Bf16Input xb_;
  cpu::Int8Lanes xl_;
  cpu::Q8KLanes xkl_;
  std::vector<cpu::MatmulRowsFn> kernel_of_;  // per task of the current product
  std::vector<Chunk> chunks_, prefetch_chunks_;
  std::vector<int> runs_, prefetch_runs_;
  std::vector<Chunk> units_;
  std::unique_ptr<std::atomic<uint64_t>[]> run_state_;  // one per thread
  std::vector<MatrixView> weights_;
  std::vector<Item> items_;
  std::vector<std::vector<float>> scratch_;  // per thread: attention scores
};

}  // namespace
}  // namespace cpu

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options) {
  return std::make_unique<cpu::CpuBackend>(options);
}

}  // namespace tutti
