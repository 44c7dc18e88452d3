#include "codecs/snac.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "kernels/cpu/conv1d.h"
#include "kernels/tensor_type.h"

namespace tutti::codecs {

namespace conv = cpu::conv;

// ---------------------------------------------------------------- configuration

int SnacConfig::hop_length() const {
  int h = 1;
  for (int r : encoder_rates) h *= r;
  return h;
}
int SnacConfig::latent_dim() const { return encoder_dim << encoder_rates.size(); }
int SnacConfig::frame_latents() const { return vq_strides.empty() ? 1 : vq_strides[0]; }
int SnacConfig::codes_per_frame() const {
  int n = 0;
  for (int s : vq_strides) n += frame_latents() / s;
  return n;
}

std::vector<int> SnacConfig::frame_levels() const {
  std::vector<int> out;
  const int levels = int(vq_strides.size());
  auto visit = [&](auto&& self, int level) -> void {
    out.push_back(level);
    if (level + 1 < levels)
      for (int child = 0; child < vq_strides[level] / vq_strides[level + 1]; ++child) self(self, level + 1);
  };
  if (levels > 0) visit(visit, 0);
  return out;
}

Status SnacConfig::validate() const {
  auto positive = [](const std::vector<int>& v) { return !v.empty() && std::all_of(v.begin(), v.end(), [](int x) { return x > 0 && x <= 64; }); };
  if (sampling_rate <= 0) return Error{"sampling_rate must be positive"};
  if (encoder_dim <= 0 || encoder_dim > 4096) return Error{"encoder_dim must be in 1..4096"};
  if (decoder_dim <= 0 || decoder_dim > 8192) return Error{"decoder_dim must be in 1..8192"};
  if (!positive(encoder_rates) || encoder_rates.size() > 8) return Error{"encoder_rates must be 1..8 rates in 1..64"};
  if (!positive(decoder_rates) || decoder_rates.size() > 8) return Error{"decoder_rates must be 1..8 rates in 1..64"};
  if (decoder_dim % (1 << decoder_rates.size()) != 0) return Error{"decoder_dim must halve at every decoder rate"};
  int up = 1;
  for (int r : decoder_rates) up *= r;
  if (up != hop_length())
    return Error{"the decoder rates upsample by " + std::to_string(up) + " but the encoder rates hop by " + std::to_string(hop_length())};
  if (codebook_size <= 1 || codebook_size > 65536) return Error{"codebook_size must be in 2..65536"};
  if (codebook_dim <= 0 || codebook_dim > 1024) return Error{"codebook_dim must be in 1..1024"};
  if (!positive(vq_strides) || vq_strides.size() > 8) return Error{"vq_strides must be 1..8 strides"};
  for (size_t i = 0; i + 1 < vq_strides.size(); ++i)
    if (vq_strides[i] % vq_strides[i + 1] != 0) return Error{"each vq stride must be a multiple of the next"};
  if (frame_samples() > (1 << 20)) return Error{"a frame of more than 2^20 samples"};
  return {};
}

SnacConfig snac_24khz_config() { return SnacConfig{}; }

Expected<SnacConfig> parse_snac_config_json(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error{"config.json is not a JSON object"};
  SnacConfig c;
  auto get_int = [&](const char* key, int& out) -> Status {
    if (!j.contains(key)) return Error{std::string("config.json has no '") + key + "'"};
    if (!j[key].is_number_integer()) return Error{std::string("config.json '") + key + "' must be an integer"};
    out = j[key].get<int>();
    return {};
  };
  auto get_list = [&](const char* key, std::vector<int>& out) -> Status {
    if (!j.contains(key)) return Error{std::string("config.json has no '") + key + "'"};
    if (!j[key].is_array()) return Error{std::string("config.json '") + key + "' must be a list of integers"};
    out.clear();
    for (auto& v : j[key]) {
      if (!v.is_number_integer()) return Error{std::string("config.json '") + key + "' must be a list of integers"};
      out.push_back(v.get<int>());
    }
    return {};
  };
  for (auto [key, out] : {std::pair{"sampling_rate", &c.sampling_rate}, {"encoder_dim", &c.encoder_dim}, {"decoder_dim", &c.decoder_dim},
                          {"codebook_size", &c.codebook_size}, {"codebook_dim", &c.codebook_dim}})
    if (Status s = get_int(key, *out); !s) return s.error();
  for (auto [key, out] : {std::pair{"encoder_rates", &c.encoder_rates}, {"decoder_rates", &c.decoder_rates}, {"vq_strides", &c.vq_strides}})
    if (Status s = get_list(key, *out); !s) return s.error();
  for (auto [key, out] : {std::pair{"noise", &c.noise}, {"depthwise", &c.depthwise}}) {
    if (!j.contains(key)) continue;  // SNAC's defaults differ by model; the published ones set both
    if (!j[key].is_boolean()) return Error{std::string("config.json '") + key + "' must be true or false"};
    *out = j[key].get<bool>();
  }
  if (j.contains("attn_window_size") && !j["attn_window_size"].is_null())
    return Error{"config.json sets attn_window_size: SNAC's local attention (the 32 and 44 kHz music models) is not implemented"};
  if (Status s = c.validate(); !s) return Error{"config.json: " + s.message()};
  return c;
}

Expected<SnacConfig> read_snac_config(const GgufFile& f, const std::string& prefix) {
  SnacConfig c;
  auto get_int = [&](const std::string& key, int& out) -> Status {
    auto v = f.get_uint(prefix + key);
    if (!v) return v.error();
    if (!*v) return Error{f.path() + ": " + prefix + key + " is missing"};
    if (**v > (1u << 30)) return Error{f.path() + ": " + prefix + key + " is out of range"};
    out = int(**v);
    return {};
  };
  auto get_list = [&](const std::string& key, std::vector<int>& out) -> Status {
    const GgufValue* v = f.find(prefix + key);
    if (!v) return Error{f.path() + ": " + prefix + key + " is missing"};
    if (v->type != GgufValueType::ARRAY || v->count == 0 || v->count > 16 ||
        (v->element_type != GgufValueType::I32 && v->element_type != GgufValueType::U32))
      return Error{f.path() + ": " + prefix + key + " must be an array of 1..16 integers"};
    out.clear();
    for (uint64_t i = 0; i < v->count; ++i) {
      const int64_t x = v->array_i64(i);
      if (x < 0 || x > (1 << 20)) return Error{f.path() + ": " + prefix + key + " holds " + std::to_string(x)};
      out.push_back(int(x));
    }
    return {};
  };
  for (auto [key, out] : {std::pair{"sampling_rate", &c.sampling_rate}, {"encoder_dim", &c.encoder_dim}, {"decoder_dim", &c.decoder_dim},
                          {"codebook_size", &c.codebook_size}, {"codebook_dim", &c.codebook_dim}})
    if (Status s = get_int(key, *out); !s) return s.error();
  for (auto [key, out] : {std::pair{"encoder_rates", &c.encoder_rates}, {"decoder_rates", &c.decoder_rates}, {"vq_strides", &c.vq_strides}})
    if (Status s = get_list(key, *out); !s) return s.error();
  for (auto [key, out] : {std::pair{"noise", &c.noise}, {"depthwise", &c.depthwise}}) {
    auto v = f.get_bool(prefix + key);
    if (!v) return v.error();
    if (!*v) return Error{f.path() + ": " + prefix + key + " is missing"};
    *out = **v;
  }
  if (Status s = c.validate(); !s) return Error{f.path() + ": " + prefix + "*: " + s.message()};
  return c;
}

void write_snac_config(GgufWriter& w, const std::string& prefix, const SnacConfig& c) {
  w.set_u32(prefix + "sampling_rate", uint32_t(c.sampling_rate));
  w.set_u32(prefix + "encoder_dim", uint32_t(c.encoder_dim));
  w.set_u32(prefix + "decoder_dim", uint32_t(c.decoder_dim));
  w.set_u32(prefix + "codebook_size", uint32_t(c.codebook_size));
  w.set_u32(prefix + "codebook_dim", uint32_t(c.codebook_dim));
  w.set_i32_array(prefix + "encoder_rates", {c.encoder_rates.begin(), c.encoder_rates.end()});
  w.set_i32_array(prefix + "decoder_rates", {c.decoder_rates.begin(), c.decoder_rates.end()});
  w.set_i32_array(prefix + "vq_strides", {c.vq_strides.begin(), c.vq_strides.end()});
  w.set_bool(prefix + "noise", c.noise);
  w.set_bool(prefix + "depthwise", c.depthwise);
}

// ---------------------------------------------------------------- the network's tensors

namespace {

using Kind = SnacTensorSpec::Kind;

constexpr int kDilations[3] = {1, 3, 9};  // of each block's three residual units

std::string ru_name(const std::string& base, int unit) { return base + ".block." + std::to_string(unit); }

// The module paths of the network. The graph builders below and snac_tensor_specs both
// read them from here, so the names cannot drift apart.
struct Layout {
  const SnacConfig& c;
  int groups_of(int dim) const { return c.depthwise ? dim : 1; }
  std::string encoder_block(int i) const { return "encoder.block." + std::to_string(i); }
  int decoder_first_block() const { return c.depthwise ? 2 : 1; }
  std::string decoder_module(int i) const { return "decoder.model." + std::to_string(i); }
  // Index of the first residual unit inside a decoder block (after Snake, ConvT, [Noise]).
  int decoder_unit_base() const { return c.noise ? 3 : 2; }
  std::string quantizer(int level) const { return "quantizer.quantizers." + std::to_string(level); }
};

void add_residual_unit(std::vector<SnacTensorSpec>& out, const std::string& base, int dim, int groups, int dilation) {
  out.push_back({base + ".block.0", Kind::Alpha, {1, dim, 1}, false});
  out.push_back({base + ".block.1", Kind::Conv, {dim, dim / groups, 7}, true, 1, dilation, groups});
  out.push_back({base + ".block.2", Kind::Alpha, {1, dim, 1}, false});
  out.push_back({base + ".block.3", Kind::Conv, {dim, dim, 1}, true});
}

}  // namespace

std::vector<SnacTensorSpec> snac_tensor_specs(const SnacConfig& c) {
  const Layout l{c};
  std::vector<SnacTensorSpec> out;
  int d = c.encoder_dim;
  out.push_back({l.encoder_block(0), Kind::Conv, {d, 1, 7}, true});
  for (size_t i = 0; i < c.encoder_rates.size(); ++i) {
    const std::string b = l.encoder_block(int(i) + 1);
    for (int u = 0; u < 3; ++u) add_residual_unit(out, ru_name(b, u), d, l.groups_of(d), kDilations[u]);
    out.push_back({b + ".block.3", Kind::Alpha, {1, d, 1}, false});
    out.push_back({b + ".block.4", Kind::Conv, {2 * d, d, 2 * c.encoder_rates[i]}, true, c.encoder_rates[i]});
    d *= 2;
  }
  out.push_back({l.encoder_block(int(c.encoder_rates.size()) + 1), Kind::Conv, {d, d / l.groups_of(d), 7}, true, 1, 1, l.groups_of(d)});
  for (size_t q = 0; q < c.vq_strides.size(); ++q) {
    const std::string b = l.quantizer(int(q));
    out.push_back({b + ".in_proj", Kind::Conv, {c.codebook_dim, d, 1}, true});
    out.push_back({b + ".out_proj", Kind::Conv, {d, c.codebook_dim, 1}, true});
    out.push_back({b + ".codebook", Kind::Codebook, {c.codebook_size, c.codebook_dim}, false});
  }
  const int lat = d;
  if (c.depthwise) {
    out.push_back({l.decoder_module(0), Kind::Conv, {lat, 1, 7}, true, 1, 1, lat});
    out.push_back({l.decoder_module(1), Kind::Conv, {c.decoder_dim, lat, 1}, true});
  } else {
    out.push_back({l.decoder_module(0), Kind::Conv, {c.decoder_dim, lat, 7}, true});
  }
  int ch = c.decoder_dim;
  for (size_t i = 0; i < c.decoder_rates.size(); ++i) {
    const std::string b = l.decoder_module(l.decoder_first_block() + int(i));
    const int r = c.decoder_rates[i], o = ch / 2;
    out.push_back({b + ".block.0", Kind::Alpha, {1, ch, 1}, false});
    out.push_back({b + ".block.1", Kind::ConvTranspose, {ch, o, 2 * r}, true, r});
    if (c.noise) out.push_back({b + ".block.2.linear", Kind::Conv, {o, o, 1}, false});
    for (int u = 0; u < 3; ++u) add_residual_unit(out, ru_name(b, l.decoder_unit_base() + u), o, l.groups_of(o), kDilations[u]);
    ch = o;
  }
  const int tail = l.decoder_first_block() + int(c.decoder_rates.size());
  out.push_back({l.decoder_module(tail), Kind::Alpha, {1, ch, 1}, false});
  out.push_back({l.decoder_module(tail + 1), Kind::Conv, {1, ch, 7}, true});
  return out;
}

std::string snac_weight_name(const SnacTensorSpec& s) { return s.name + (s.kind == Kind::Alpha ? ".alpha" : ".weight"); }

uint64_t snac_parameter_count(const SnacConfig& c) {
  uint64_t n = 0;
  for (const SnacTensorSpec& s : snac_tensor_specs(c)) {
    uint64_t e = 1;
    for (int64_t x : s.shape) e *= uint64_t(x);
    n += e;
    if (s.bias) n += uint64_t(s.kind == Kind::ConvTranspose ? s.shape[1] : s.shape[0]);
    if (s.kind == Kind::Conv || s.kind == Kind::ConvTranspose) n += uint64_t(s.shape[0]);  // weight norm's g
  }
  return n;
}

// ---------------------------------------------------------------- weights

namespace {

// One convolution, in the layout its kernel reads.
struct ConvWeights {
  int cin = 0, cout = 0, k = 1, stride = 1, dilation = 1, pad = 0;
  bool depthwise = false, transposed = false;
  conv::PackedMatrix a;        // dense: [cout][k * cin] (tap-major); transposed: [stride * cout][2 * cin]
  std::vector<float> taps;     // depthwise: [cout][k]
  std::vector<float> bias;     // [cout]; transposed: repeated per phase, [stride * cout]
};

struct Quantizer {
  int stride = 1;
  std::vector<float> in_w, in_b;    // [cdim][latent], [cdim]
  std::vector<float> out_w, out_b;  // [latent][cdim], [latent]
  std::vector<float> codebook;      // [size][cdim]
  std::vector<float> normalized;    // rows L2-normalised (the encoder's lookup)
};

}  // namespace

struct SnacModel {
  SnacConfig config;
  std::map<std::string, ConvWeights> convs;
  std::map<std::string, std::vector<float>> alphas;
  std::vector<Quantizer> quantizers;
  int decoder_latency = 0, encoder_latency = 0;

  const ConvWeights& conv(const std::string& name) const { return convs.at(name); }
  const std::vector<float>& alpha(const std::string& name) const { return alphas.at(name); }
};

const SnacConfig& snac_model_config(const SnacModel& m) { return m.config; }
int snac_decoder_latency_samples(const SnacModel& m) { return m.decoder_latency; }
int snac_encoder_latency_samples(const SnacModel& m) { return m.encoder_latency; }

namespace {

void l2_normalize(float* v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(v[i]) * v[i];
  const float inv = 1.0f / std::max(float(std::sqrt(s)), 1e-12f);
  for (int i = 0; i < n; ++i) v[i] *= inv;
}

// Dense weights [cout][cin][k] to the GEMM's [cout][k * cin] (tap-major).
conv::PackedMatrix pack_dense(const std::vector<float>& w, int cout, int cin, int k) {
  std::vector<float> a(size_t(cout) * k * cin);
  for (int o = 0; o < cout; ++o)
    for (int c = 0; c < cin; ++c)
      for (int j = 0; j < k; ++j) a[(size_t(o) * k + j) * cin + c] = w[(size_t(o) * cin + c) * k + j];
  return conv::pack_matrix(a.data(), cout, k * cin, k * cin);
}

// Transposed weights [cin][cout][2s] to [(phase m, out o)][(tap a, in c)]: output i*s + m
// takes tap m from input i and tap m + s from input i - 1.
conv::PackedMatrix pack_transposed(const std::vector<float>& w, int cin, int cout, int s) {
  std::vector<float> a(size_t(s) * cout * 2 * cin);
  for (int m = 0; m < s; ++m)
    for (int o = 0; o < cout; ++o)
      for (int t = 0; t < 2; ++t)
        for (int c = 0; c < cin; ++c) a[(size_t(m) * cout + o) * 2 * cin + size_t(t) * cin + c] = w[(size_t(c) * cout + o) * 2 * s + m + t * s];
  return conv::pack_matrix(a.data(), s * cout, 2 * cin, 2 * cin);
}

}  // namespace

// ---------------------------------------------------------------- streaming layers

namespace {

// Float storage that is not zeroed on allocation: every layer writes the columns it hands
// on, and what lies past them (row padding) is never read as a result.
struct FloatBuffer {
  std::unique_ptr<float[]> p;
  size_t n = 0;
  FloatBuffer() = default;
  explicit FloatBuffer(size_t count) : p(count ? new float[count] : nullptr), n(count) {}
  FloatBuffer(const FloatBuffer& o) : FloatBuffer(o.n) {
    if (n) std::memcpy(p.get(), o.p.get(), n * sizeof(float));
  }
  FloatBuffer(FloatBuffer&&) noexcept = default;
  FloatBuffer& operator=(FloatBuffer&&) noexcept = default;
  FloatBuffer& operator=(const FloatBuffer& o) { return *this = FloatBuffer(o); }
  float* data() { return p.get(); }
  const float* data() const { return p.get(); }
};

// [channels, cols] with rows ld floats apart (ld a multiple of the GEMM's tile width).
// Signal(c, n) holds unspecified values; Signal::zeros(c, n) holds zeros.
struct Signal {
  int channels = 0, cols = 0, ld = conv::kGemmColumns;
  FloatBuffer data;
  Signal() = default;
  Signal(int c, int n) : channels(c), cols(n), ld(conv::padded_columns(std::max(n, 1))), data(size_t(c) * ld) {}
  static Signal zeros(int c, int n) {
    Signal s(c, n);
    if (s.data.n) std::memset(s.data.data(), 0, s.data.n * sizeof(float));
    return s;
  }
  float* row(int c) { return data.data() + size_t(c) * ld; }
  const float* row(int c) const { return data.data() + size_t(c) * ld; }
};

// a's columns then b's (b may be empty; channels from whichever has them).
Signal concat(const Signal& a, const Signal& b, int zeros = 0) {
  const int ch = std::max(a.channels, b.channels);
  Signal out(ch, a.cols + b.cols + zeros);
  for (int c = 0; c < ch; ++c) {
    if (a.cols) std::memcpy(out.row(c), a.row(c), sizeof(float) * a.cols);
    if (b.cols) std::memcpy(out.row(c) + a.cols, b.row(c), sizeof(float) * b.cols);
    if (zeros) std::memset(out.row(c) + a.cols + b.cols, 0, sizeof(float) * zeros);
  }
  return out;
}

Signal slice(const Signal& s, int begin, int count) {
  Signal out(s.channels, count);
  for (int c = 0; c < s.channels && count > 0; ++c) std::memcpy(out.row(c), s.row(c) + begin, sizeof(float) * count);
  return out;
}

// A layer of the network over a stream: push() takes the next columns and returns the
// output columns whose context is now complete; finish() takes the last columns and returns
// everything left. lag(): output columns withheld (context not yet seen), and rate():
// output columns per input column, for the latency a chain adds up.
class Stage {
 public:
  virtual ~Stage() = default;
  virtual Signal push(Signal x) = 0;
  virtual Signal finish(Signal x) = 0;
  virtual double lag() const { return 0; }
  virtual double rate() const { return 1; }
};

class Chain : public Stage {
 public:
  void add(std::unique_ptr<Stage> s) { stages_.push_back(std::move(s)); }
  Signal push(Signal x) override {
    for (auto& s : stages_) x = s->push(std::move(x));
    return x;
  }
  Signal finish(Signal x) override {
    for (auto& s : stages_) x = s->finish(std::move(x));
    return x;
  }
  double lag() const override {
    double l = 0;
    for (auto& s : stages_) l = l * s->rate() + s->lag();
    return l;
  }
  double rate() const override {
    double r = 1;
    for (auto& s : stages_) r *= s->rate();
    return r;
  }

 private:
  std::vector<std::unique_ptr<Stage>> stages_;
};

// Stride-1 convolution, symmetric zero padding (k - 1) * dilation / 2: keeps the last
// (k - 1) * dilation input columns as history.
class ConvStage : public Stage {
 public:
  ConvStage(const ConvWeights& w, ThreadPool* pool) : w_(w), pool_(pool), span_((w.k - 1) * w.dilation) {
    hist_ = Signal::zeros(w.cin, w.pad);  // the left padding
  }
  Signal push(Signal x) override { return run(concat(hist_, x), false); }
  Signal finish(Signal x) override { return run(concat(hist_, x, w_.pad), true); }
  double lag() const override { return w_.pad; }

 private:
  Signal run(Signal buf, bool last) {
    const int n = std::max(0, buf.cols - span_);
    Signal y(w_.cout, n);
    if (n > 0) compute(buf, n, y);
    if (!last) hist_ = slice(buf, n, buf.cols - n);
    return y;
  }
  void compute(const Signal& buf, int n, Signal& y) const {
    if (w_.depthwise) {
      for (int c = 0; c < w_.cout; ++c) conv::depthwise_row(buf.row(c), n, w_.taps.data() + size_t(c) * w_.k, w_.k, w_.dilation, w_.bias[c], y.row(c));
      return;
    }
    if (w_.k == 1) {
      conv::gemm(w_.a, buf.data.data(), buf.ld, n, y.data.data(), y.ld, w_.bias.data(), pool_);
      return;
    }
    Signal cols(w_.k * w_.cin, n);  // im2col: row (tap j, channel c) = buf[c][t + j * dilation]
    for (int j = 0; j < w_.k; ++j)
      for (int c = 0; c < w_.cin; ++c) std::memcpy(cols.row(j * w_.cin + c), buf.row(c) + j * w_.dilation, sizeof(float) * n);
    conv::gemm(w_.a, cols.data.data(), cols.ld, n, y.data.data(), y.ld, w_.bias.data(), pool_);
  }

  const ConvWeights& w_;
  ThreadPool* pool_;
  const int span_;
  Signal hist_;
};

// Strided convolution (kernel 2r, stride r, padding p each side): output t reads padded
// inputs [t * r, t * r + 2r).
class StridedConvStage : public Stage {
 public:
  StridedConvStage(const ConvWeights& w, ThreadPool* pool) : w_(w), pool_(pool) { hist_ = Signal::zeros(w.cin, w.pad); }
  Signal push(Signal x) override { return run(concat(hist_, x)); }
  Signal finish(Signal x) override { return run(concat(hist_, x, w_.pad)); }
  double lag() const override { return double(w_.k - w_.stride - w_.pad) / w_.stride; }
  double rate() const override { return 1.0 / w_.stride; }

 private:
  Signal run(Signal buf) {
    const int r = w_.stride;
    const int n = buf.cols >= w_.k ? (buf.cols - w_.k) / r + 1 : 0;
    Signal y(w_.cout, n);
    if (n > 0) {
      Signal cols(w_.k * w_.cin, n);
      for (int j = 0; j < w_.k; ++j)
        for (int c = 0; c < w_.cin; ++c) {
          const float* src = buf.row(c) + j;
          float* dst = cols.row(j * w_.cin + c);
          for (int t = 0; t < n; ++t) dst[t] = src[size_t(t) * r];
        }
      conv::gemm(w_.a, cols.data.data(), cols.ld, n, y.data.data(), y.ld, w_.bias.data(), pool_);
    }
    hist_ = slice(buf, n * r, buf.cols - n * r);
    return y;
  }
  const ConvWeights& w_;
  ThreadPool* pool_;
  Signal hist_;
};

// Transposed convolution (kernel 2s, stride s, padding p, output padding s % 2): input i
// completes outputs [i*s, i*s + s) before cropping; the first p are cropped, and the
// output ends at (T - 1) * s - 2p + 2s + s % 2.
class ConvTransposeStage : public Stage {
 public:
  ConvTransposeStage(const ConvWeights& w, ThreadPool* pool) : w_(w), pool_(pool), prev_(Signal::zeros(w.cin, 1)), drop_(w.pad) {}
  Signal push(Signal x) override { return run(x, false); }
  Signal finish(Signal x) override {
    Signal y = run(x, false);
    Signal tail = run(Signal::zeros(w_.cin, 1), true);  // the virtual zero input T
    Signal out = concat(y, tail);
    const int64_t length = (inputs_ - 1) * w_.stride - 2 * w_.pad + w_.k + w_.stride % 2;
    const int keep = int(std::max<int64_t>(0, length - (emitted_ - out.cols)));
    return inputs_ > 0 ? slice(out, 0, std::min(keep, out.cols)) : Signal(w_.cout, 0);
  }
  double lag() const override { return w_.pad; }
  double rate() const override { return w_.stride; }

 private:
  Signal run(const Signal& x, bool final_zero) {
    const int n = x.cols, s = w_.stride, cin = w_.cin, cout = w_.cout;
    if (n == 0) return Signal(cout, 0);
    Signal b(2 * cin, n);  // rows [0, cin): x[i]; rows [cin, 2cin): x[i - 1]
    for (int c = 0; c < cin; ++c) {
      std::memcpy(b.row(c), x.row(c), sizeof(float) * n);
      float* prev = b.row(cin + c);
      prev[0] = prev_.row(c)[0];
      if (n > 1) std::memcpy(prev + 1, x.row(c), sizeof(float) * (n - 1));
    }
    Signal phases(s * cout, n);
    conv::gemm(w_.a, b.data.data(), b.ld, n, phases.data.data(), phases.ld, w_.bias.data(), pool_);
    for (int c = 0; c < cin; ++c) prev_.row(c)[0] = x.row(c)[n - 1];
    if (!final_zero) inputs_ += n;
    // Interleave the phases, dropping what the padding crops at the start.
    const int total = n * s, skip = std::min(drop_, total);
    drop_ -= skip;
    Signal y(cout, total - skip);
    for (int o = 0; o < cout; ++o) {
      float* dst = y.row(o);
      for (int m = 0; m < s; ++m) {
        const float* src = phases.row(m * cout + o);
        for (int i = 0; i < n; ++i) {
          const int u = i * s + m - skip;
          if (u >= 0) dst[u] = src[i];
        }
      }
    }
    emitted_ += y.cols;
    return y;
  }
  const ConvWeights& w_;
  ThreadPool* pool_;
  Signal prev_;
  int drop_;
  int64_t inputs_ = 0, emitted_ = 0;
};

class SnakeStage : public Stage {
 public:
  explicit SnakeStage(const std::vector<float>& alpha) : alpha_(alpha) {}
  Signal push(Signal x) override {
    for (int c = 0; c < x.channels && x.cols; ++c) conv::snake_row(x.row(c), x.cols, alpha_[c]);
    return x;
  }
  Signal finish(Signal x) override { return push(std::move(x)); }

 private:
  const std::vector<float>& alpha_;
};

class TanhStage : public Stage {
 public:
  Signal push(Signal x) override {
    for (int c = 0; c < x.channels; ++c)
      for (int t = 0; t < x.cols; ++t) x.row(c)[t] = std::tanh(x.row(c)[t]);
    return x;
  }
  Signal finish(Signal x) override { return push(std::move(x)); }
};

// x + noise[t] * (W x)[t]: Gaussian noise per time step, shared by the channels.
class NoiseStage : public Stage {
 public:
  NoiseStage(const ConvWeights& w, const SnacDecodeOptions& o, uint64_t salt) : w_(w), pool_(o.pool), zero_(o.zero_noise), rng_(o.seed * 0x9E3779B97F4A7C15ull + salt) {}
  Signal push(Signal x) override {
    if (zero_ || x.cols == 0) return x;
    Signal h(w_.cout, x.cols);
    conv::gemm(w_.a, x.data.data(), x.ld, x.cols, h.data.data(), h.ld, nullptr, pool_);
    std::vector<float> g(static_cast<size_t>(x.cols));
    for (float& v : g) v = normal_(rng_);
    for (int c = 0; c < x.channels; ++c)
      for (int t = 0; t < x.cols; ++t) x.row(c)[t] += g[t] * h.row(c)[t];
    return x;
  }
  Signal finish(Signal x) override { return push(std::move(x)); }

 private:
  const ConvWeights& w_;
  ThreadPool* pool_;
  bool zero_;
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};
};

// x + f(x): f lags, so the skip input waits in a queue until f's output for it arrives.
class ResidualStage : public Stage {
 public:
  explicit ResidualStage(std::unique_ptr<Chain> f) : f_(std::move(f)) {}
  Signal push(Signal x) override {
    queue_ = concat(queue_, x);
    return add(f_->push(std::move(x)));
  }
  Signal finish(Signal x) override {
    queue_ = concat(queue_, x);
    return add(f_->finish(std::move(x)));
  }
  double lag() const override { return f_->lag(); }

 private:
  Signal add(Signal y) {
    const int n = std::min(y.cols, queue_.cols);
    for (int c = 0; c < y.channels; ++c)
      for (int t = 0; t < n; ++t) y.row(c)[t] += queue_.row(c)[t];
    queue_ = slice(queue_, n, queue_.cols - n);
    return y;
  }
  std::unique_ptr<Chain> f_;
  Signal queue_;
};

std::unique_ptr<Stage> conv_stage(const SnacModel& m, const std::string& name, ThreadPool* pool) {
  const ConvWeights& w = m.conv(name);
  if (w.transposed) return std::make_unique<ConvTransposeStage>(w, pool);
  if (w.stride > 1) return std::make_unique<StridedConvStage>(w, pool);
  return std::make_unique<ConvStage>(w, pool);
}

std::unique_ptr<Stage> residual_unit(const SnacModel& m, const std::string& base, ThreadPool* pool) {
  auto f = std::make_unique<Chain>();
  f->add(std::make_unique<SnakeStage>(m.alpha(base + ".block.0")));
  f->add(conv_stage(m, base + ".block.1", pool));
  f->add(std::make_unique<SnakeStage>(m.alpha(base + ".block.2")));
  f->add(conv_stage(m, base + ".block.3", pool));
  return std::make_unique<ResidualStage>(std::move(f));
}

std::unique_ptr<Chain> build_decoder(const SnacModel& m, const SnacDecodeOptions& o) {
  const SnacConfig& c = m.config;
  const Layout l{c};
  auto g = std::make_unique<Chain>();
  g->add(conv_stage(m, l.decoder_module(0), o.pool));
  if (c.depthwise) g->add(conv_stage(m, l.decoder_module(1), o.pool));
  for (size_t i = 0; i < c.decoder_rates.size(); ++i) {
    const std::string b = l.decoder_module(l.decoder_first_block() + int(i));
    g->add(std::make_unique<SnakeStage>(m.alpha(b + ".block.0")));
    g->add(conv_stage(m, b + ".block.1", o.pool));
    if (c.noise) g->add(std::make_unique<NoiseStage>(m.conv(b + ".block.2.linear"), o, i));
    for (int u = 0; u < 3; ++u) g->add(residual_unit(m, ru_name(b, l.decoder_unit_base() + u), o.pool));
  }
  const int tail = l.decoder_first_block() + int(c.decoder_rates.size());
  g->add(std::make_unique<SnakeStage>(m.alpha(l.decoder_module(tail))));
  g->add(conv_stage(m, l.decoder_module(tail + 1), o.pool));
  g->add(std::make_unique<TanhStage>());
  return g;
}

std::unique_ptr<Chain> build_encoder(const SnacModel& m, ThreadPool* pool) {
  const SnacConfig& c = m.config;
  const Layout l{c};
  auto g = std::make_unique<Chain>();
  g->add(conv_stage(m, l.encoder_block(0), pool));
  for (size_t i = 0; i < c.encoder_rates.size(); ++i) {
    const std::string b = l.encoder_block(int(i) + 1);
    for (int u = 0; u < 3; ++u) g->add(residual_unit(m, ru_name(b, u), pool));
    g->add(std::make_unique<SnakeStage>(m.alpha(b + ".block.3")));
    g->add(conv_stage(m, b + ".block.4", pool));
  }
  g->add(conv_stage(m, l.encoder_block(int(c.encoder_rates.size()) + 1), pool));
  return g;
}

}  // namespace

// ---------------------------------------------------------------- decoder

struct SnacDecoder::Graph {
  std::unique_ptr<Chain> chain;
  std::vector<int> frame_levels;
};

SnacDecoder::SnacDecoder(std::shared_ptr<const SnacModel> model, SnacDecodeOptions options) : model_(std::move(model)) {
  graph_ = std::make_unique<Graph>();
  graph_->chain = build_decoder(*model_, options);
  graph_->frame_levels = model_->config.frame_levels();
}
SnacDecoder::~SnacDecoder() = default;

Expected<std::vector<float>> SnacDecoder::push(std::span<const int32_t> codes) {
  const SnacConfig& c = model_->config;
  const int per_frame = c.codes_per_frame(), F = c.frame_latents(), lat = c.latent_dim(), cdim = c.codebook_dim;
  for (int32_t code : codes)
    if (code < 0 || code >= c.codebook_size) return Error{"SNAC code " + std::to_string(code) + " is outside 0.." + std::to_string(c.codebook_size - 1)};
  pending_.insert(pending_.end(), codes.begin(), codes.end());
  const int frames = int(pending_.size()) / per_frame;
  if (frames == 0) return std::vector<float>{};
  // Codes to the latent: each level's codebook row through its out_proj, repeated over the
  // latent steps the code covers, summed over the levels.
  Signal z = Signal::zeros(lat, frames * F);
  std::vector<int> seen(c.vq_strides.size());
  for (int f = 0; f < frames; ++f) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int slot = 0; slot < per_frame; ++slot) {
      const int level = graph_->frame_levels[size_t(slot)];
      const Quantizer& q = model_->quantizers[size_t(level)];
      const int code = pending_[size_t(f) * per_frame + slot];
      const float* e = q.codebook.data() + size_t(code) * cdim;
      const int t0 = f * F + seen[size_t(level)]++ * q.stride;
      for (int o = 0; o < lat; ++o) {
        float v = q.out_b[size_t(o)];
        const float* w = q.out_w.data() + size_t(o) * cdim;
        for (int d = 0; d < cdim; ++d) v += w[d] * e[d];
        float* row = z.row(o) + t0;
        for (int t = 0; t < q.stride; ++t) row[t] += v;
      }
    }
  }
  pending_.erase(pending_.begin(), pending_.begin() + ptrdiff_t(frames) * per_frame);
  Signal y = graph_->chain->push(std::move(z));
  return std::vector<float>(y.row(0), y.row(0) + y.cols);
}

std::vector<float> SnacDecoder::finish() {
  pending_.clear();
  Signal y = graph_->chain->finish(Signal(model_->config.latent_dim(), 0));
  return std::vector<float>(y.row(0), y.row(0) + y.cols);
}

// ---------------------------------------------------------------- encoder

struct SnacEncoder::Graph {
  std::unique_ptr<Chain> chain;
  std::vector<int> frame_levels;
  Signal latents;  // columns not yet a whole frame
};

SnacEncoder::SnacEncoder(std::shared_ptr<const SnacModel> model, ThreadPool* pool) : model_(std::move(model)) {
  graph_ = std::make_unique<Graph>();
  graph_->chain = build_encoder(*model_, pool);
  graph_->frame_levels = model_->config.frame_levels();
  graph_->latents = Signal(model_->config.latent_dim(), 0);
}
SnacEncoder::~SnacEncoder() = default;

namespace {
// The residual VQ over whole frames of latent columns: codes in frame order.
std::vector<int32_t> quantize_frames(const SnacModel& m, const std::vector<int>& frame_levels, Signal& latents) {
  const SnacConfig& c = m.config;
  const int F = c.frame_latents(), lat = c.latent_dim(), cdim = c.codebook_dim, frames = latents.cols / F;
  std::vector<int32_t> out;
  std::vector<std::vector<int32_t>> level_codes(c.vq_strides.size());
  std::vector<float> residual(size_t(lat) * F), pooled(static_cast<size_t>(lat)), ze(static_cast<size_t>(cdim));
  for (int f = 0; f < frames; ++f) {
    for (int o = 0; o < lat; ++o)
      for (int t = 0; t < F; ++t) residual[size_t(o) * F + t] = latents.row(o)[f * F + t];
    for (auto& v : level_codes) v.clear();
    for (size_t l = 0; l < m.quantizers.size(); ++l) {
      const Quantizer& qz = m.quantizers[l];
      for (int j = 0; j < F / qz.stride; ++j) {
        for (int o = 0; o < lat; ++o) {  // average pool over the code's steps
          float s = 0;
          for (int t = 0; t < qz.stride; ++t) s += residual[size_t(o) * F + j * qz.stride + t];
          pooled[size_t(o)] = s / float(qz.stride);
        }
        for (int d = 0; d < cdim; ++d) {
          float v = qz.in_b[size_t(d)];
          const float* w = qz.in_w.data() + size_t(d) * lat;
          for (int o = 0; o < lat; ++o) v += w[o] * pooled[size_t(o)];
          ze[size_t(d)] = v;
        }
        l2_normalize(ze.data(), cdim);
        int best = 0;
        float best_dot = -INFINITY;
        for (int k = 0; k < c.codebook_size; ++k) {
          const float* row = qz.normalized.data() + size_t(k) * cdim;
          float dot = 0;
          for (int d = 0; d < cdim; ++d) dot += ze[size_t(d)] * row[d];
          if (dot > best_dot) best_dot = dot, best = k;
        }
        level_codes[l].push_back(best);
        const float* e = qz.codebook.data() + size_t(best) * cdim;
        for (int o = 0; o < lat; ++o) {
          float v = qz.out_b[size_t(o)];
          const float* w = qz.out_w.data() + size_t(o) * cdim;
          for (int d = 0; d < cdim; ++d) v += w[d] * e[d];
          for (int t = 0; t < qz.stride; ++t) residual[size_t(o) * F + j * qz.stride + t] -= v;
        }
      }
    }
    std::vector<size_t> next(level_codes.size());
    for (int level : frame_levels) out.push_back(level_codes[size_t(level)][next[size_t(level)]++]);
  }
  latents = slice(latents, frames * F, latents.cols - frames * F);
  return out;
}
}  // namespace

std::vector<int32_t> SnacEncoder::push(std::span<const float> samples) {
  if (samples.empty()) return {};
  Signal x(1, int(samples.size()));
  std::memcpy(x.row(0), samples.data(), sizeof(float) * samples.size());
  samples_ += int64_t(samples.size());
  graph_->latents = concat(graph_->latents, graph_->chain->push(std::move(x)));
  return quantize_frames(*model_, graph_->frame_levels, graph_->latents);
}

std::vector<int32_t> SnacEncoder::finish() {
  const int64_t frame = model_->config.frame_samples();
  const int64_t pad = samples_ == 0 ? 0 : (frame - samples_ % frame) % frame;
  Signal x = Signal::zeros(1, int(pad));  // zeros to a whole frame
  graph_->latents = concat(graph_->latents, graph_->chain->finish(std::move(x)));
  return quantize_frames(*model_, graph_->frame_levels, graph_->latents);
}

// ---------------------------------------------------------------- levels <-> frames

Expected<std::vector<int32_t>> snac_levels_to_frames(const SnacConfig& c, const std::vector<std::vector<int32_t>>& levels) {
  if (levels.size() != c.vq_strides.size())
    return Error{"expected " + std::to_string(c.vq_strides.size()) + " levels of codes, got " + std::to_string(levels.size())};
  const size_t frames = levels.empty() ? 0 : levels[0].size() / size_t(c.frame_latents() / c.vq_strides[0]);
  for (size_t l = 0; l < levels.size(); ++l) {
    if (levels[l].size() != frames * size_t(c.frame_latents() / c.vq_strides[l]))
      return Error{"level " + std::to_string(l) + " has " + std::to_string(levels[l].size()) + " codes; " + std::to_string(frames) +
                   " frames need " + std::to_string(frames * size_t(c.frame_latents() / c.vq_strides[l]))};
    for (int32_t v : levels[l])
      if (v < 0 || v >= c.codebook_size) return Error{"code " + std::to_string(v) + " is outside 0.." + std::to_string(c.codebook_size - 1)};
  }
  std::vector<int32_t> out;
  std::vector<size_t> next(levels.size());
  const std::vector<int> order = c.frame_levels();
  for (size_t f = 0; f < frames; ++f)
    for (int l : order) out.push_back(levels[size_t(l)][next[size_t(l)]++]);
  return out;
}

std::vector<std::vector<int32_t>> snac_frames_to_levels(const SnacConfig& c, std::span<const int32_t> frames) {
  std::vector<std::vector<int32_t>> out(c.vq_strides.size());
  const std::vector<int> order = c.frame_levels();
  const size_t whole = frames.size() / order.size() * order.size();
  for (size_t i = 0; i < whole; ++i) out[size_t(order[i % order.size()])].push_back(frames[i]);
  return out;
}

// ---------------------------------------------------------------- loading

Expected<std::shared_ptr<const SnacModel>> load_snac_model(const GgufFile& f, const std::string& prefix, const SnacConfig& config) {
  if (Status s = config.validate(); !s) return Error{f.path() + ": " + s.message()};
  auto model = std::make_shared<SnacModel>();
  model->config = config;
  std::map<std::string, bool> expected;  // tensor name -> seen
  auto fail = [&](const std::string& m) { return Error{f.path() + ": " + m}; };
  // Reads one tensor as floats, checking its PyTorch-order shape and that it is finite.
  auto read = [&](const std::string& name, const std::vector<int64_t>& shape, std::vector<float>& out) -> Status {
    expected[prefix + name] = true;
    const GgufTensorInfo* t = f.find_tensor(prefix + name);
    if (!t) return fail("SNAC tensor '" + prefix + name + "' is missing");
    if (t->type != TensorType::F32 && t->type != TensorType::F16 && t->type != TensorType::BF16)
      return fail("SNAC tensor '" + prefix + name + "' must be f32, f16 or bf16, not " + std::string(ggml_type_name(uint32_t(t->type))));
    bool ok = t->n_dims == shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = t->ne[shape.size() - 1 - i] == uint64_t(shape[i]);
    if (!ok) {
      std::string want;
      for (size_t i = shape.size(); i-- > 0;) want += (want.empty() ? "" : ", ") + std::to_string(shape[i]);
      return fail("SNAC tensor '" + prefix + name + "' has shape " + t->shape_string() + ", the configuration needs [" + want + "]");
    }
    out.resize(t->n_elements());
    dequantize_row(t->type, t->data, out.data(), out.size());
    for (float v : out)
      if (!std::isfinite(v)) return fail("SNAC tensor '" + prefix + name + "' holds a non-finite value");
    return {};
  };
  const int lat = config.latent_dim();
  for (const SnacTensorSpec& s : snac_tensor_specs(config)) {
    if (s.kind == Kind::Alpha) {
      std::vector<float> a;
      if (Status st = read(snac_weight_name(s), s.shape, a); !st) return st.error();
      model->alphas[s.name] = std::move(a);
      continue;
    }
    if (s.kind == Kind::Codebook || s.name.rfind("quantizer.", 0) == 0) continue;  // with its quantizer below
    ConvWeights w;
    std::vector<float> raw, bias;
    if (Status st = read(snac_weight_name(s), s.shape, raw); !st) return st.error();
    w.transposed = s.kind == Kind::ConvTranspose;
    w.cin = int(w.transposed ? s.shape[0] : s.shape[1]);
    w.cout = int(w.transposed ? s.shape[1] : s.shape[0]);
    w.k = int(s.shape[2]);
    w.stride = s.stride;
    w.dilation = s.dilation;
    w.pad = w.stride == 1 ? (w.k - 1) * w.dilation / 2 : (w.stride + 1) / 2;
    if (s.bias) {
      if (Status st = read(s.name + ".bias", {w.cout}, bias); !st) return st.error();
    } else {
      bias.assign(size_t(w.cout), 0.0f);
    }
    if (w.transposed) {
      w.a = pack_transposed(raw, w.cin, w.cout, w.stride);
      for (int m = 0; m < w.stride; ++m) w.bias.insert(w.bias.end(), bias.begin(), bias.end());
    } else if (s.groups > 1) {
      w.depthwise = true;  // groups = channels: one filter per channel
      w.cin = w.cout;
      w.taps = std::move(raw);
      w.bias = std::move(bias);
    } else {
      w.a = pack_dense(raw, w.cout, w.cin, w.k);
      w.bias = std::move(bias);
    }
    model->convs[s.name] = std::move(w);
  }
  for (size_t l = 0; l < config.vq_strides.size(); ++l) {
    const std::string b = Layout{config}.quantizer(int(l));
    Quantizer qz;
    qz.stride = config.vq_strides[l];
    if (Status st = read(b + ".in_proj.weight", {config.codebook_dim, lat, 1}, qz.in_w); !st) return st.error();
    if (Status st = read(b + ".in_proj.bias", {config.codebook_dim}, qz.in_b); !st) return st.error();
    if (Status st = read(b + ".out_proj.weight", {lat, config.codebook_dim, 1}, qz.out_w); !st) return st.error();
    if (Status st = read(b + ".out_proj.bias", {lat}, qz.out_b); !st) return st.error();
    if (Status st = read(b + ".codebook.weight", {config.codebook_size, config.codebook_dim}, qz.codebook); !st) return st.error();
    qz.normalized = qz.codebook;
    for (int k = 0; k < config.codebook_size; ++k) l2_normalize(qz.normalized.data() + size_t(k) * config.codebook_dim, config.codebook_dim);
    model->quantizers.push_back(std::move(qz));
  }
  for (const GgufTensorInfo& t : f.tensors())
    if (t.name.rfind(prefix, 0) == 0 && !expected.count(t.name))
      return fail("tensor '" + t.name + "' is not part of the SNAC configuration in the file");
  // Latencies from the layers' own accounts.
  SnacDecodeOptions o;
  o.zero_noise = true;
  model->decoder_latency = int(std::ceil(build_decoder(*model, o)->lag()));
  model->encoder_latency = int(std::ceil(build_encoder(*model, nullptr)->lag() * config.hop_length()));
  return std::shared_ptr<const SnacModel>(std::move(model));
}

}  // namespace tutti::codecs
