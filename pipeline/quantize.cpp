#include "pipeline/quantize.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

namespace tutti {

namespace {

constexpr QuantizeMixInfo kMixes[] = {
    {QuantizeMix::Q8_0, "q8_0", TensorType::Q8_0, 7},     {QuantizeMix::Q4_0, "q4_0", TensorType::Q4_0, 2},
    {QuantizeMix::Q4_K_M, "q4_k_m", TensorType::Q4_K, 15}, {QuantizeMix::Q5_K_M, "q5_k_m", TensorType::Q5_K, 17},
    {QuantizeMix::Q6_K, "q6_k", TensorType::Q6_K, 18},     {QuantizeMix::Q3_K_M, "q3_k_m", TensorType::Q3_K, 12},
    {QuantizeMix::Q2_K, "q2_k", TensorType::Q2_K, 10},
};

const QuantizeMixInfo& mix_info(QuantizeMix mix) {
  return *std::find_if(std::begin(kMixes), std::end(kMixes), [&](const QuantizeMixInfo& m) { return m.mix == mix; });
}

bool has(const std::string& name, const char* part) { return name.find(part) != std::string::npos; }

// llama.cpp's choice of layers that get more bits in the "_M" mixes: the first and last
// eighth, and every third one between.
bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The type a row width forces when `t`'s blocks do not divide it.
TensorType fallback(TensorType t, uint64_t cols, std::string& reason) {
  if (cols % block_values(t) == 0) return t;
  TensorType f = TensorType::F16;
  switch (t) {
    case TensorType::Q2_K:
    case TensorType::Q3_K: f = TensorType::Q4_0; break;
    case TensorType::Q4_K: f = TensorType::Q5_0; break;
    case TensorType::Q5_K: f = TensorType::Q5_1; break;
    case TensorType::Q6_K: f = TensorType::Q8_0; break;
    default: break;
  }
  if (cols % block_values(f) != 0) f = TensorType::F16;
  reason = std::to_string(cols) + " columns do not divide into " + std::string(tensor_type_info(t).name) + " blocks";
  return f;
}

std::vector<uint64_t> shape_of(const GgufTensorInfo& t) { return std::vector<uint64_t>(t.ne, t.ne + t.n_dims); }

}  // namespace

std::optional<QuantizeMixInfo> parse_quantize_mix(std::string_view name) {
  for (const QuantizeMixInfo& m : kMixes)
    if (m.name == name) return m;
  return std::nullopt;
}

std::string quantize_mix_names() {
  std::string s;
  for (const QuantizeMixInfo& m : kMixes) s += std::string(s.empty() ? "" : ", ") + std::string(m.name);
  return s;
}

Expected<std::vector<TensorPlan>> plan_quantization(const GgufFile& file, QuantizeMix mix) {
  const QuantizeMixInfo& info = mix_info(mix);
  const bool has_output = file.find_tensor("output.weight") != nullptr;
  int n_attn_v = 0, n_ffn_down = 0;
  for (const GgufTensorInfo& t : file.tensors()) {
    n_attn_v += has(t.name, "attn_v.weight");
    n_ffn_down += has(t.name, "ffn_down");
  }
  int i_attn_v = 0, i_ffn_down = 0;
  // Query heads per KV head (Q2_K gives attn_v more bits from 4 on).
  uint64_t n_gqa = 1;
  if (auto arch = file.get_string("general.architecture"); arch && *arch) {
    auto heads = file.get_uint(**arch + ".attention.head_count");
    auto kv = file.get_uint(**arch + ".attention.head_count_kv");
    if (heads && *heads && **heads) n_gqa = (kv && *kv && **kv) ? **heads / **kv : 1;
  }
  std::vector<TensorPlan> plans;
  for (const GgufTensorInfo& t : file.tensors()) {
    TensorPlan p{t.name, t.type, t.type, shape_of(t), ""};
    const bool matrix = t.n_dims >= 2 && t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0 &&
                        t.name.rfind("codec.", 0) != 0;
    if (!matrix) {
      p.reason = "kept: not a weight matrix";
      plans.push_back(std::move(p));
      continue;
    }
    TensorType type = info.base;
    const auto more = [&](int i, int n, const char* what) { return std::string("more bits for ") + what + " (layer " + std::to_string(i + 1) + " of " + std::to_string(n) + ")"; };
    if (t.name == "output.weight" || (!has_output && t.name == "token_embd.weight")) {
      // The output projection: Q6_K in every K mix and in q4_0 (Q8_0 where rows do not divide).
      if (t.ne[0] % kSuperBlock != 0)
        type = TensorType::Q8_0, p.reason = "output: q8_0 (rows do not divide into super-blocks)";
      else if (type != TensorType::Q8_0)
        type = TensorType::Q6_K, p.reason = "output: q6_k";
    } else if (has(t.name, "attn_v.weight")) {
      if (mix == QuantizeMix::Q2_K) {
        type = n_gqa >= 4 ? TensorType::Q4_K : TensorType::Q3_K;
        p.reason = n_gqa >= 4 ? "attn_v (4+ query heads per KV head): q4_k" : "attn_v: q3_k";
      } else if (mix == QuantizeMix::Q3_K_M) {
        type = i_attn_v < 2 ? TensorType::Q5_K : TensorType::Q4_K;
        p.reason = i_attn_v < 2 ? "attn_v of the first two layers: q5_k" : "attn_v: q4_k";
      } else if ((mix == QuantizeMix::Q4_K_M || mix == QuantizeMix::Q5_K_M) && use_more_bits(i_attn_v, n_attn_v)) {
        type = TensorType::Q6_K;
        p.reason = more(i_attn_v, n_attn_v, "attn_v");
      }
      ++i_attn_v;
    } else if (has(t.name, "ffn_down")) {
      if (mix == QuantizeMix::Q2_K) {
        type = TensorType::Q3_K, p.reason = "ffn_down: q3_k";
      } else if (mix == QuantizeMix::Q3_K_M) {
        type = i_ffn_down < n_ffn_down / 16 ? TensorType::Q5_K : TensorType::Q4_K;
        p.reason = "ffn_down: " + std::string(tensor_type_info(type).name);
      } else if ((mix == QuantizeMix::Q4_K_M || mix == QuantizeMix::Q5_K_M) && use_more_bits(i_ffn_down, n_ffn_down)) {
        type = TensorType::Q6_K;
        p.reason = more(i_ffn_down, n_ffn_down, "ffn_down");
      }
      ++i_ffn_down;
    } else if (has(t.name, "attn_output.weight")) {
      if (mix == QuantizeMix::Q2_K) type = TensorType::Q3_K, p.reason = "attn_output: q3_k";
      if (mix == QuantizeMix::Q3_K_M) type = TensorType::Q4_K, p.reason = "attn_output: q4_k";
    }
    std::string why;
    const TensorType fitted = fallback(type, t.ne[0], why);
    if (fitted != type) p.reason = why + ": " + std::string(tensor_type_info(fitted).name);
    p.to = fitted;
    if (p.reason.empty()) p.reason = std::string(tensor_type_info(fitted).name);
    plans.push_back(std::move(p));
  }
  return plans;
}

Expected<QuantizeSummary> quantize_model(const std::string& in_path, const std::string& out_path, QuantizeMix mix,
                                         const QuantizeOptions& o) {
  auto opened = GgufFile::open(in_path);
  if (!opened) return opened.error();
  const std::shared_ptr<const GgufFile> file = *opened;
  auto planned = plan_quantization(*file, mix);
  if (!planned) return planned.error();
  const std::vector<TensorPlan> plans = std::move(planned).value();
  const QuantizeMixInfo& info = mix_info(mix);
  const int threads = o.threads > 0 ? o.threads : std::max(1, int(std::thread::hardware_concurrency()));

  GgufWriter w;
  for (const auto& [key, value] : file->metadata()) {
    if (key == "general.file_type" || key == "general.quantization_version" || key == "general.alignment") continue;
    w.set_value(key, value);
  }
  w.set_u32("general.file_type", info.file_type);
  w.set_u32("general.quantization_version", 2);

  QuantizeSummary sum;
  sum.bytes_in = file->file_size();
  for (size_t i = 0; i < plans.size(); ++i) {
    const TensorPlan& p = plans[i];
    const GgufTensorInfo& t = *file->find_tensor(p.name);
    if (p.from == p.to) {
      // Copied as it is, straight from the mapping when its turn comes.
      w.add_tensor(p.name, p.to, p.shape, [&, i, t_ptr = &t](std::vector<uint8_t>& out) {
        out.assign(t_ptr->data, t_ptr->data + t_ptr->n_bytes);
        if (o.progress) o.progress(i, plans.size(), plans[i]);
        return Status::Ok();
      });
      continue;
    }
    sum.weights += t.n_elements();
    sum.requantized += is_quantized(p.from);
    w.add_tensor(p.name, p.to, p.shape, [&, i, t_ptr = &t](std::vector<uint8_t>& out) -> Status {
      const GgufTensorInfo& src = *t_ptr;
      const TensorPlan& plan = plans[i];
      const size_t cols = size_t(src.ne[0]), rows = size_t(src.n_elements() / src.ne[0]);
      const size_t in_row = row_bytes(src.type, cols), out_row = row_bytes(plan.to, cols);
      out.resize(out_row * rows);
      // Rows in chunks handed out to the threads; each dequantizes its rows to f32 first.
      std::atomic<size_t> next{0};
      constexpr size_t kChunk = 16;
      auto work = [&] {
        std::vector<float> row(cols);
        for (size_t r0; (r0 = next.fetch_add(kChunk)) < rows;)
          for (size_t r = r0; r < std::min(rows, r0 + kChunk); ++r) {
            dequantize_row(src.type, src.data + r * in_row, row.data(), cols);
            quantize_row(plan.to, row.data(), out.data() + r * out_row, cols);
          }
      };
      std::vector<std::thread> pool;
      for (int k = 1; k < threads && size_t(k) * kChunk < rows; ++k) pool.emplace_back(work);
      work();
      for (auto& th : pool) th.join();
      if (o.progress) o.progress(i, plans.size(), plan);
      return Status::Ok();
    });
  }
  if (Status s = w.write(out_path); !s) return s.error();
  uint64_t quantized_bytes = 0;
  for (const TensorPlan& p : plans)
    if (p.from != p.to) {
      uint64_t rows = 1;
      for (size_t d = 1; d < p.shape.size(); ++d) rows *= p.shape[d];
      quantized_bytes += row_bytes(p.to, size_t(p.shape[0])) * rows;
    }
  auto written = GgufFile::open(out_path);
  if (!written) return Error{out_path + ": the file written does not read back: " + written.error().message};
  sum.bytes_out = (*written)->file_size();
  sum.bits_per_weight = sum.weights ? 8.0 * double(quantized_bytes) / double(sum.weights) : 0;
  return sum;
}

}  // namespace tutti
