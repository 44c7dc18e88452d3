#include "codecs/snac_import.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/tensor_type.h"

#ifndef TUTTI_SOURCE_DIR
#define TUTTI_SOURCE_DIR "."
#endif

namespace tutti::codecs {

std::string tools_dir() {
  if (const char* d = std::getenv("TUTTI_TOOLS_DIR"); d && *d) return d;
  return std::string(TUTTI_SOURCE_DIR) + "/tools";
}

namespace {

using Kind = SnacTensorSpec::Kind;

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A state-dict tensor as floats in PyTorch order (the helper wrote ne reversed).
struct Source {
  const GgufFile& f;
  const std::string& what;
  std::set<std::string> used;

  const GgufTensorInfo* find(const std::string& name) const { return f.find_tensor(name); }
  Expected<std::vector<float>> read(const std::string& name, const std::vector<int64_t>& shape) {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) return Error{what + ": tensor '" + name + "' is missing"};
    used.insert(name);
    std::vector<int64_t> got;
    for (uint32_t i = t->n_dims; i-- > 0;) got.push_back(int64_t(t->ne[i]));
    // PyTorch keeps a 0-d or 1-d tensor as it is; GGUF has at least one dimension.
    if (got != shape) return Error{what + ": tensor '" + name + "' has shape " + shape_text(got) + ", the configuration needs " + shape_text(shape)};
    if (t->type != TensorType::F32 && t->type != TensorType::F16 && t->type != TensorType::BF16)
      return Error{what + ": tensor '" + name + "' has type " + std::string(ggml_type_name(uint32_t(t->type))) + " (f32, f16 or bf16 expected)"};
    std::vector<float> v(t->n_elements());
    dequantize_row(t->type, t->data, v.data(), v.size());
    for (float x : v)
      if (!std::isfinite(x)) return Error{what + ": tensor '" + name + "' holds NaN or infinite values"};
    return v;
  }
};

}  // namespace

Expected<SnacWeights> snac_weights_from_state_dict(const GgufFile& f, const std::string& what) {
  auto cfg_text = f.get_string("snac.config");
  if (!cfg_text) return cfg_text.error();
  if (!*cfg_text) return Error{what + ": no configuration (config.json)"};
  auto config = parse_snac_config_json(**cfg_text);
  if (!config) return Error{what + ": " + config.error().message};
  SnacWeights out;
  out.config = *config;
  Source src{f, what, {}};
  for (const SnacTensorSpec& s : snac_tensor_specs(*config)) {
    if (s.kind == Kind::Alpha || s.kind == Kind::Codebook) {
      const std::string name = snac_weight_name(s);
      auto v = src.read(name, s.shape);
      if (!v) return v.error();
      out.tensors.push_back({name, s.shape, std::move(*v)});
      continue;
    }
    // Weight norm, in either key style.
    std::string g_name = s.name + ".weight_g", v_name = s.name + ".weight_v";
    if (!src.find(v_name) && src.find(s.name + ".parametrizations.weight.original1")) {
      g_name = s.name + ".parametrizations.weight.original0";
      v_name = s.name + ".parametrizations.weight.original1";
    }
    if (!src.find(v_name)) return Error{what + ": tensor '" + v_name + "' is missing (every SNAC convolution is weight-normed)"};
    if (!src.find(g_name)) return Error{what + ": tensor '" + g_name + "' is missing (the weight norm's magnitude for '" + v_name + "')"};
    auto v = src.read(v_name, s.shape);
    if (!v) return v.error();
    auto g = src.read(g_name, {s.shape[0], 1, 1});
    if (!g) return g.error();
    const size_t rows = size_t(s.shape[0]), inner = v->size() / rows;
    std::vector<float> w(v->size());
    for (size_t r = 0; r < rows; ++r) {
      double norm = 0;
      for (size_t i = 0; i < inner; ++i) norm += double((*v)[r * inner + i]) * (*v)[r * inner + i];
      norm = std::sqrt(norm);
      if (!(norm > 0)) return Error{what + ": tensor '" + v_name + "' has an all-zero row " + std::to_string(r) + " (weight norm divides by it)"};
      const double scale = double((*g)[r]) / norm;
      for (size_t i = 0; i < inner; ++i) w[r * inner + i] = float((*v)[r * inner + i] * scale);
    }
    out.tensors.push_back({s.name + ".weight", s.shape, std::move(w)});
    if (s.bias) {
      const int64_t n_out = s.kind == Kind::ConvTranspose ? s.shape[1] : s.shape[0];
      auto b = src.read(s.name + ".bias", {n_out});
      if (!b) return b.error();
      out.tensors.push_back({s.name + ".bias", {n_out}, std::move(*b)});
    }
  }
  for (const GgufTensorInfo& t : f.tensors())
    if (!src.used.count(t.name))
      return Error{what + ": tensor '" + t.name + "' is not part of SNAC with this config.json (attention, or strides that do not match?)"};
  return out;
}

Expected<SnacWeights> import_snac_checkpoint(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) return Error{dir + ": not a directory (a SNAC checkpoint is config.json plus pytorch_model.bin)"};
  const std::string helper = tools_dir() + "/snac/checkpoint.py";
  if (!fs::exists(helper)) return Error{"the checkpoint reader " + helper + " is missing (set TUTTI_TOOLS_DIR)"};
  char tmpl[] = "/tmp/tutti-snac-XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) return Error{"cannot create a temporary file"};
  close(fd);
  const std::string tmp = tmpl, err = tmp + ".err";
  auto quote = [](const std::string& s) {
    std::string q = "'";
    for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    return q + "'";
  };
  const std::string cmd = "python3 " + quote(helper) + " convert " + quote(dir) + " " + quote(tmp) + " 2> " + quote(err);
  const int rc = std::system(cmd.c_str());
  std::string message;
  if (FILE* e = std::fopen(err.c_str(), "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof buf, e)) message = buf;  // the last line says why
    std::fclose(e);
  }
  std::remove(err.c_str());
  while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) message.pop_back();
  if (rc != 0 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
    std::remove(tmp.c_str());
    return Error{dir + ": " + (message.empty() ? "the checkpoint reader failed (is python3 installed?)" : message)};
  }
  auto file = GgufFile::open(tmp);
  std::remove(tmp.c_str());  // the mapping stays valid
  if (!file) return file.error();
  return snac_weights_from_state_dict(**file, dir);
}

SnacWeights random_snac_weights(const SnacConfig& config, uint64_t seed) {
  SnacWeights out;
  out.config = config;
  std::mt19937_64 rng(seed);
  for (const SnacTensorSpec& s : snac_tensor_specs(config)) {
    size_t n = 1;
    for (int64_t x : s.shape) n *= size_t(x);
    std::vector<float> v(n);
    if (s.kind == Kind::Alpha) {
      std::uniform_real_distribution<float> u(0.5f, 1.5f);
      for (float& x : v) x = u(rng);
      out.tensors.push_back({snac_weight_name(s), s.shape, std::move(v)});
      continue;
    }
    if (s.kind == Kind::Codebook) {
      std::normal_distribution<float> g(0.0f, 1.0f);
      for (float& x : v) x = g(rng);
      out.tensors.push_back({snac_weight_name(s), s.shape, std::move(v)});
      continue;
    }
    // Kaiming-uniform over the fan-in, as PyTorch initialises convolutions; halved so the
    // residual stacks stay bounded.
    const int64_t fan_in = s.shape[1] * s.shape[2];  // dim 1 x k for both conv layouts, as PyTorch computes it
    const float bound = 0.5f / std::sqrt(float(fan_in));
    std::uniform_real_distribution<float> u(-bound, bound);
    for (float& x : v) x = u(rng);
    out.tensors.push_back({s.name + ".weight", s.shape, std::move(v)});
    if (s.bias) {
      const int64_t n_out = s.kind == Kind::ConvTranspose ? s.shape[1] : s.shape[0];
      std::vector<float> b(static_cast<size_t>(n_out));
      for (float& x : b) x = u(rng);
      out.tensors.push_back({s.name + ".bias", {n_out}, std::move(b)});
    }
  }
  return out;
}

void add_snac_tensors(GgufWriter& w, const std::string& prefix, const std::string& config_prefix, const SnacWeights& s) {
  write_snac_config(w, config_prefix, s.config);
  for (const SnacWeights::Tensor& t : s.tensors) {
    std::vector<uint64_t> ne(t.shape.rbegin(), t.shape.rend());
    std::vector<uint8_t> bytes(t.values.size() * sizeof(float));
    std::memcpy(bytes.data(), t.values.data(), bytes.size());
    w.add_tensor(prefix + t.name, TensorType::F32, std::move(ne), std::move(bytes));
  }
}

Expected<std::shared_ptr<const SnacModel>> load_snac_weights(const SnacWeights& s) {
  GgufWriter w;
  add_snac_tensors(w, "codec.audio.", "tutti.audio.snac.", s);
  const std::vector<uint8_t> bytes = w.to_bytes();
  auto f = GgufFile::parse(bytes.data(), bytes.size(), "snac weights");
  if (!f) return f.error();
  auto cfg = read_snac_config(**f, "tutti.audio.snac.");
  if (!cfg) return cfg.error();
  return load_snac_model(**f, "codec.audio.", *cfg);
}

}  // namespace tutti::codecs
