#include "pipeline/model_config.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace tutti {

const char* token_layout_name(TokenLayout l) { return l == TokenLayout::Orpheus ? "orpheus" : "tutti"; }
std::optional<TokenLayout> parse_token_layout(const std::string& name) {
  if (name == "tutti") return TokenLayout::Tutti;
  if (name == "orpheus") return TokenLayout::Orpheus;
  return std::nullopt;
}

uint32_t ModalityInfo::token_end() const {
  if (slot_offsets.empty()) return token_offset + codebook_size * num_stages;
  uint32_t end = token_offset;
  for (uint32_t o : slot_offsets) end = std::max(end, o + codebook_size);
  return end;
}

double ModalityInfo::tokens_per_second() const {
  switch (modality) {
    case Modality::Audio:
    case Modality::Music:
      return frame_size ? double(sample_rate) / frame_size * num_stages : 0;
    case Modality::Video:
      return patch_size ? frame_rate * (double(width / patch_size) * (height / patch_size)) * num_stages : 0;
    default:
      return 0;
  }
}

const ModalityInfo* ModalityTable::find(Modality m) const {
  for (auto& e : entries)
    if (e.modality == m) return &e;
  return nullptr;
}

std::vector<TokenRange> ModalityTable::text_ranges(uint32_t n_vocab) const {
  // Mark the media ids, then emit the gaps between them.
  std::vector<TokenRange> media;
  for (const ModalityInfo& m : entries) {
    media.push_back({int32_t(m.token_offset), int32_t(m.token_end())});
    media.push_back({int32_t(m.begin_token), int32_t(m.begin_token) + 1});
    media.push_back({int32_t(m.end_token), int32_t(m.end_token) + 1});
  }
  std::sort(media.begin(), media.end(), [](const TokenRange& a, const TokenRange& b) { return a.begin < b.begin; });
  std::vector<TokenRange> text;
  int32_t next = 0;
  for (const TokenRange& r : media) {
    if (r.begin > next) text.push_back({next, r.begin});
    next = std::max(next, r.end);
  }
  if (next < int32_t(n_vocab)) text.push_back({next, int32_t(n_vocab)});
  return text;
}

std::vector<TokenRange> ModalityTable::ranges_for(Modality m) const {
  const ModalityInfo* mi = find(m);
  if (!mi) return {};
  return {{int32_t(mi->token_offset), int32_t(mi->token_end())}, {int32_t(mi->end_token), int32_t(mi->end_token) + 1}};
}

namespace {

// Pulls typed values out of the file, remembering the first error so the reading code can
// stay linear.
struct Reader {
  const GgufFile& f;
  std::optional<Error> err;

  uint64_t uint(const std::string& key, std::optional<uint64_t> fallback = std::nullopt) {
    if (err) return 0;
    auto v = f.get_uint(key);
    if (!v) { err = v.error(); return 0; }
    if (!*v) {
      if (fallback) return *fallback;
      err = Error{f.path() + ": required metadata '" + key + "' is missing"};
      return 0;
    }
    if (**v > UINT32_MAX) { err = Error{f.path() + ": metadata '" + key + "' is too large"}; return 0; }
    return **v;
  }
  double real(const std::string& key, double fallback) {
    if (err) return 0;
    auto v = f.get_float(key);
    if (!v) { err = v.error(); return 0; }
    return *v ? **v : fallback;
  }
  std::string str(const std::string& key, const std::string& fallback) {
    if (err) return {};
    auto v = f.get_string(key);
    if (!v) { err = v.error(); return {}; }
    return *v ? **v : fallback;
  }
};

Status check_tensor(const GgufFile& f, const std::string& name, std::vector<uint64_t> shape, bool required = true) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (!t) {
    if (!required) return Status::Ok();
    return Error{f.path() + ": required tensor '" + name + "' is missing"};
  }
  bool match = t->n_dims == shape.size();
  for (size_t d = 0; match && d < shape.size(); ++d) match = t->ne[d] == shape[d];
  if (!match) {
    std::string want = "[";
    for (size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
    return Error{f.path() + ": tensor '" + name + "' has shape " + t->shape_string() + ", expected " + want + "]"};
  }
  return Status::Ok();
}

}  // namespace

namespace {

// The architectures tutti runs, and what their blocks add to the Llama block.
constexpr BlockDescription kArchitectures[] = {
    // Llama 1-3.x (and files converted to its layout: Mistral, TinyLlama, ...). Optional
    // q/k/v biases as llama.cpp reads them; Llama 3.1+ frequency factors.
    {"llama", RopeLayout::Normal, TensorUse::Optional, false, true, false},
    // Qwen2 / Qwen2.5: attention biases, rotary halves.
    {"qwen2", RopeLayout::Neox, TensorUse::Required, false, false, false},
    // Qwen3: per-head RMSNorm of q and k before the rotary embedding, head size from
    // key_length.
    {"qwen3", RopeLayout::Neox, TensorUse::Absent, true, false, true},
};

// Architectures that are known, and what they need that tutti does not have.
struct Unsupported {
  const char* architecture;
  const char* missing;
};
constexpr Unsupported kUnsupported[] = {
    {"gemma", "GELU feed-forward and scaled embeddings (gemma) are not implemented"},
    {"gemma2", "sliding-window attention (gemma2) is not implemented"},
    {"gemma3", "sliding-window attention (gemma3) is not implemented"},
    {"gemma3n", "sliding-window attention (gemma3n) is not implemented"},
    {"qwen2moe", "mixture-of-experts feed-forward (qwen2moe) is not implemented"},
    {"qwen3moe", "mixture-of-experts feed-forward (qwen3moe) is not implemented"},
    {"mixtral", "mixture-of-experts feed-forward (mixtral) is not implemented"},
    {"deepseek2", "multi-head latent attention and mixture-of-experts (deepseek2) are not implemented"},
    {"phi2", "parallel attention and feed-forward with LayerNorm (phi2) are not implemented"},
    {"phi3", "fused QKV and gate-up projections (phi3) are not implemented"},
    {"falcon", "parallel attention and feed-forward with LayerNorm (falcon) are not implemented"},
    {"gpt2", "learned positions and LayerNorm (gpt2) are not implemented"},
    {"starcoder2", "LayerNorm and a GELU feed-forward (starcoder2) are not implemented"},
    {"command-r", "parallel attention and feed-forward with LayerNorm (command-r) are not implemented"},
    {"olmo2", "post-norm blocks (olmo2) are not implemented"},
    {"bert", "encoder-only blocks (bert) are not implemented"},
};

// Norms, biases and frequency factors are applied element-wise in f32 arithmetic: they must be
// plain arrays.
Status check_plain(const GgufFile& f, const std::string& name) {
  const GgufTensorInfo* t = f.find_tensor(name);
  if (t && is_quantized(t->type))
    return Error{f.path() + ": tensor '" + name + "' is " + std::string(tensor_type_info(t->type).name) +
                 "; it must be f32, f16 or bf16"};
  return Status::Ok();
}

}  // namespace

const BlockDescription* find_block_description(const std::string& architecture) {
  for (const BlockDescription& b : kArchitectures)
    if (architecture == b.architecture) return &b;
  return nullptr;
}

Expected<ModalityTable> read_modality_table(const GgufFile& f, uint32_t n_vocab) {
  ModalityTable table;
  Reader r{f, {}};
  auto fail = [&](const std::string& what) { return Error{f.path() + ": " + what}; };
  const GgufValue* list = f.find("tutti.modalities");
  if (list) {
    if (list->type != GgufValueType::ARRAY || list->element_type != GgufValueType::STRING)
      return fail("tutti.modalities must be an array of strings");
    for (const std::string& name : list->strings) {
      auto m = parse_modality(name);
      if (!m || *m == Modality::Text) return fail("tutti.modalities names unknown modality '" + name + "'");
      if (table.find(*m)) return fail("tutti.modalities lists '" + name + "' twice");
      ModalityInfo mi;
      mi.modality = *m;
      const std::string p = "tutti." + name + ".";
      mi.token_offset = uint32_t(r.uint(p + "token_offset"));
      mi.codebook_size = uint32_t(r.uint(p + "codebook_size"));
      mi.num_stages = uint32_t(r.uint(p + "num_stages"));
      mi.begin_token = uint32_t(r.uint(p + "begin_token"));
      mi.end_token = uint32_t(r.uint(p + "end_token"));
      mi.codebook_dim = uint32_t(r.uint(p + "codebook_dim"));
      mi.transform = r.str(p + "transform", "");
      mi.sample_rate = uint32_t(r.uint(p + "sample_rate", 0));
      mi.frame_size = uint32_t(r.uint(p + "frame_size", 0));
      mi.patch_size = uint32_t(r.uint(p + "patch_size", 0));
      mi.width = uint32_t(r.uint(p + "width", 0));
      mi.height = uint32_t(r.uint(p + "height", 0));
      mi.frame_rate = float(r.real(p + "frame_rate", 0));
      if (r.err) return *r.err;
      if (mi.codebook_size == 0 || mi.num_stages == 0 || mi.num_stages > 64) return fail(p + "codebook_size/num_stages are invalid");
      if (const std::string layout = r.str(p + "layout", "tutti"); !r.err) {
        auto l = parse_token_layout(layout);
        if (!l) return fail(p + "layout '" + layout + "' is not tutti or orpheus");
        mi.layout = *l;
      }
      // Slots (SNAC): each slot's first id and level, contiguous over all slots.
      for (auto [key, out] : {std::pair{"slot_offsets", &mi.slot_offsets}, {"frame_levels", &mi.slot_levels}}) {
        const GgufValue* v = f.find(p + key);
        if (!v) continue;
        if (v->type != GgufValueType::ARRAY || v->count != mi.num_stages ||
            (v->element_type != GgufValueType::I32 && v->element_type != GgufValueType::U32))
          return fail(p + key + " must be an array of num_stages integers");
        for (uint64_t i = 0; i < v->count; ++i) {
          const int64_t x = v->array_i64(i);
          if (x < 0 || x >= int64_t(n_vocab)) return fail(p + key + " holds " + std::to_string(x));
          out->push_back(uint32_t(x));
        }
      }
      if (mi.transform == "snac" && (mi.slot_offsets.empty() || mi.slot_levels.empty()))
        return fail(p + "slot_offsets and frame_levels are required for a snac codec");
      if (!mi.slot_offsets.empty()) {
        const uint32_t lowest = *std::min_element(mi.slot_offsets.begin(), mi.slot_offsets.end());
        if (lowest != mi.token_offset) return fail(p + "token_offset must be the lowest slot offset");
        // Every id of the range belongs to some slot (no holes for text to fall into).
        std::vector<uint32_t> starts(mi.slot_offsets);
        std::sort(starts.begin(), starts.end());
        for (size_t i = 0; i + 1 < starts.size(); ++i)
          if (starts[i + 1] != starts[i] && starts[i + 1] != starts[i] + mi.codebook_size)
            return fail(p + "slot_offsets leave a gap or overlap part of a codebook");
      }
      const uint64_t end = mi.token_end();
      if (end > n_vocab) return fail(p + "token range [" + std::to_string(mi.token_offset) + ", " + std::to_string(end) + ") exceeds the vocabulary of " + std::to_string(n_vocab));
      for (uint32_t tok : {mi.begin_token, mi.end_token}) {
        if (tok >= n_vocab) return fail(p + "begin/end token " + std::to_string(tok) + " is outside the vocabulary");
        if (tok >= mi.token_offset && tok < end) return fail(p + "begin/end token lies inside the code range");
      }
      const bool audio_like = mi.modality == Modality::Audio || mi.modality == Modality::Music;
      if (audio_like && (mi.sample_rate == 0 || mi.frame_size == 0)) return fail(p + "sample_rate and frame_size are required for " + name);
      if (!audio_like && (mi.patch_size == 0 || mi.width == 0 || mi.height == 0)) return fail(p + "patch_size, width and height are required for " + name);
      if (mi.modality == Modality::Video && !(mi.frame_rate > 0)) return fail(p + "frame_rate is required for video");
      if (mi.codebook_dim == 0) return fail(p + "codebook_dim must be positive");
      if (mi.transform != "snac")  // SNAC's tensors are checked by its loader (codecs/snac.cpp)
        for (uint32_t s = 0; s < mi.num_stages; ++s)
          if (Status st = check_tensor(f, "codec." + name + ".codebook." + std::to_string(s), {mi.codebook_dim, mi.codebook_size}); !st)
            return st.error();
      table.entries.push_back(mi);
    }
    // Code ranges of different modalities must not overlap.
    for (size_t i = 0; i < table.entries.size(); ++i)
      for (size_t j = i + 1; j < table.entries.size(); ++j) {
        auto& x = table.entries[i];
        auto& y = table.entries[j];
        if (x.token_offset < y.token_end() && y.token_offset < x.token_end())
          return fail(std::string("token ranges of ") + modality_name(x.modality) + " and " + modality_name(y.modality) + " overlap");
      }
  }
  return table;
}

Expected<ModelConfig> read_model_config(const GgufFile& f) {
  ModelConfig cfg;
  LlamaHparams& h = cfg.hparams;
  Reader r{f, {}};
  h.architecture = r.str("general.architecture", "");
  if (r.err) return *r.err;
  auto fail = [&](const std::string& what) { return Error{f.path() + ": " + what}; };
  if (h.architecture.empty()) return fail("general.architecture is missing");
  const BlockDescription* block = find_block_description(h.architecture);
  if (!block) {
    for (const Unsupported& u : kUnsupported)
      if (h.architecture == u.architecture) return fail(u.missing);
    std::string known;
    for (const BlockDescription& b : kArchitectures) known += std::string(known.empty() ? "" : ", ") + b.architecture;
    return fail("architecture '" + h.architecture + "' is not supported (tutti runs " + known + ")");
  }
  h.block = *block;
  h.name = r.str("general.name", "");
  const std::string a = h.architecture + ".";
  h.n_layer = uint32_t(r.uint(a + "block_count"));
  h.n_embd = uint32_t(r.uint(a + "embedding_length"));
  h.n_ff = uint32_t(r.uint(a + "feed_forward_length"));
  h.n_head = uint32_t(r.uint(a + "attention.head_count"));
  h.n_ctx_train = uint32_t(r.uint(a + "context_length", 4096));
  h.n_head_kv = uint32_t(r.uint(a + "attention.head_count_kv", h.n_head));
  h.rms_eps = float(r.real(a + "attention.layer_norm_rms_epsilon", 1e-5));
  h.rope_freq_base = float(r.real(a + "rope.freq_base", 10000.0));
  const std::string scaling = r.str(a + "rope.scaling.type", "none");
  const double scaling_factor = r.real(a + "rope.scaling.factor", 1.0);
  if (r.err) return *r.err;
  if (h.n_layer == 0 || h.n_layer > 1024) return fail("block_count " + std::to_string(h.n_layer) + " is out of range");
  if (h.n_head == 0 || h.n_head > 4096) return fail("head_count " + std::to_string(h.n_head) + " is out of range");
  if (h.n_head_kv == 0 || h.n_head % h.n_head_kv != 0)
    return fail("head_count " + std::to_string(h.n_head) + " is not a multiple of head_count_kv " + std::to_string(h.n_head_kv));
  if (h.n_ff == 0) return fail("feed_forward_length is zero");
  if (h.n_embd == 0) return fail("embedding_length is zero");
  if (const GgufValue* experts = f.find(a + "expert_count"); experts && experts->is_integer() && experts->u > 0)
    return fail("mixture-of-experts feed-forward (" + a + "expert_count " + std::to_string(experts->u) + ") is not implemented");
  // {arch}.attention.sliding_window is read by no block here: llama.cpp's llama, qwen2 and
  // qwen3 attend over the whole context whatever it says (Qwen2.5 files carry it unused).

  // Head size: embedding_length / head_count, or key_length where the block has it (Qwen3
  // heads are wider than the embedding split: 16 x 128 over 1024).
  const uint64_t key_length = r.uint(a + "attention.key_length", 0), value_length = r.uint(a + "attention.value_length", 0);
  if (r.err) return *r.err;
  if (key_length || value_length) {
    if (!h.block.head_dim_keys && key_length != h.n_embd / h.n_head)
      return fail(a + "attention.key_length " + std::to_string(key_length) + " differs from embedding_length / head_count");
    if (key_length != value_length)
      return fail("different key and value head sizes (" + std::to_string(key_length) + ", " + std::to_string(value_length) +
                  ") are not implemented");
    h.head_dim = uint32_t(key_length);
  } else {
    if (h.n_embd % h.n_head != 0)
      return fail("embedding_length " + std::to_string(h.n_embd) + " is not a multiple of head_count " + std::to_string(h.n_head));
    h.head_dim = h.n_embd / h.n_head;
  }
  if (h.head_dim == 0 || h.head_dim > 1024) return fail("head size " + std::to_string(h.head_dim) + " is out of range");
  h.n_rot = uint32_t(r.uint(a + "rope.dimension_count", h.head_dim));
  if (r.err) return *r.err;
  if (h.n_rot > h.head_dim || h.n_rot % 2 != 0 || h.n_rot == 0)
    return fail("rope.dimension_count " + std::to_string(h.n_rot) + " is invalid for head size " + std::to_string(h.head_dim));
  if (!(h.rms_eps > 0) || !(h.rope_freq_base > 0)) return fail("rms epsilon and rope base must be positive");
  if (scaling == "linear") {
    if (!(scaling_factor > 0)) return fail(a + "rope.scaling.factor must be positive");
    h.rope_freq_scale = float(1.0 / scaling_factor);
  } else if (scaling == "yarn") {
    return fail("YaRN rope scaling (" + a + "rope.scaling.type = yarn) is not implemented");
  } else if (scaling != "none") {
    return fail("rope scaling '" + scaling + "' (" + a + "rope.scaling.type) is not implemented");
  }

  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  if (!embd) return fail("required tensor 'token_embd.weight' is missing");
  if (embd->n_dims != 2 || embd->ne[0] != h.n_embd) return fail("tensor 'token_embd.weight' has shape " + embd->shape_string() + ", expected [" + std::to_string(h.n_embd) + ", n_vocab]");
  h.n_vocab = uint32_t(embd->ne[1]);
  if (const GgufValue* vs = f.find(a + "vocab_size"); vs && vs->is_integer() && vs->u != h.n_vocab)
    return fail("vocab_size " + std::to_string(vs->u) + " disagrees with token_embd.weight " + embd->shape_string());

  // Every tensor the block reads, with its shape; anything else in the file (but tutti's own
  // codec tensors) is a part of a model tutti would silently leave out, so it is refused.
  std::set<std::string> expected;
  const uint64_t q_dim = h.q_dim(), kv_dim = h.kv_dim();
  auto want = [&](const std::string& name, std::vector<uint64_t> shape, bool required) -> Status {
    expected.insert(name);
    const bool vector = shape.size() == 1;  // a norm, bias or frequency factors
    if (Status s = check_tensor(f, name, std::move(shape), required); !s) return s;
    return vector ? check_plain(f, name) : Status::Ok();
  };
  expected.insert("token_embd.weight");
  const GgufTensorInfo* first_bias = f.find_tensor("blk.0.attn_q.bias");
  h.qkv_bias = h.block.qkv_bias == TensorUse::Required || (h.block.qkv_bias == TensorUse::Optional && first_bias);
  for (uint32_t i = 0; i < h.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    for (auto s : {want(b + "attn_norm.weight", {h.n_embd}, true), want(b + "attn_q.weight", {h.n_embd, q_dim}, true),
                   want(b + "attn_k.weight", {h.n_embd, kv_dim}, true), want(b + "attn_v.weight", {h.n_embd, kv_dim}, true),
                   want(b + "attn_output.weight", {q_dim, h.n_embd}, true), want(b + "ffn_norm.weight", {h.n_embd}, true),
                   want(b + "ffn_gate.weight", {h.n_embd, h.n_ff}, true), want(b + "ffn_up.weight", {h.n_embd, h.n_ff}, true),
                   want(b + "ffn_down.weight", {h.n_ff, h.n_embd}, true)})
      if (!s) return s.error();
    if (h.qkv_bias)
      for (auto s : {want(b + "attn_q.bias", {q_dim}, true), want(b + "attn_k.bias", {kv_dim}, true),
                     want(b + "attn_v.bias", {kv_dim}, true)})
        if (!s) return s.error();
    if (h.block.qk_norm)
      for (auto s : {want(b + "attn_q_norm.weight", {h.head_dim}, true), want(b + "attn_k_norm.weight", {h.head_dim}, true)})
        if (!s) return s.error();
  }
  if (Status s = want("output_norm.weight", {h.n_embd}, true); !s) return s.error();
  if (Status s = want("output.weight", {h.n_embd, h.n_vocab}, false); !s) return s.error();
  h.tied_output = f.find_tensor("output.weight") == nullptr;
  if (h.block.rope_freqs) {
    if (Status s = want("rope_freqs.weight", {h.n_rot / 2}, false); !s) return s.error();
    h.rope_freqs = f.find_tensor("rope_freqs.weight") != nullptr;
  }
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.name.rfind("codec.", 0) == 0) continue;  // tutti's codebooks (docs/unified-gguf.md)
    if (!expected.count(t.name))
      return fail("tensor '" + t.name + "' is not part of the " + h.architecture + " block tutti implements" +
                  (t.name == "rope_freqs.weight" ? " (rope frequency factors)" : ""));
  }

  auto table = read_modality_table(f, h.n_vocab);
  if (!table) return table.error();
  cfg.modalities = std::move(table).value();
  return cfg;
}

void write_modality_metadata(GgufWriter& w, const ModalityInfo& m) {
  const std::string p = std::string("tutti.") + modality_name(m.modality) + ".";
  w.set_u32(p + "token_offset", m.token_offset);
  w.set_u32(p + "codebook_size", m.codebook_size);
  w.set_u32(p + "num_stages", m.num_stages);
  w.set_u32(p + "begin_token", m.begin_token);
  w.set_u32(p + "end_token", m.end_token);
  w.set_u32(p + "codebook_dim", m.codebook_dim);
  w.set_string(p + "transform", m.transform);
  if (m.sample_rate) w.set_u32(p + "sample_rate", m.sample_rate);
  if (m.frame_size) w.set_u32(p + "frame_size", m.frame_size);
  if (m.patch_size) w.set_u32(p + "patch_size", m.patch_size);
  if (m.width) w.set_u32(p + "width", m.width);
  if (m.height) w.set_u32(p + "height", m.height);
  if (m.frame_rate > 0) w.set_f32(p + "frame_rate", m.frame_rate);
  if (!m.slot_offsets.empty()) {
    w.set_string(p + "layout", token_layout_name(m.layout));
    w.set_i32_array(p + "slot_offsets", {m.slot_offsets.begin(), m.slot_offsets.end()});
    w.set_i32_array(p + "frame_levels", {m.slot_levels.begin(), m.slot_levels.end()});
  }
}

void write_modality_list(GgufWriter& w, const ModalityTable& table) {
  std::vector<std::string> names;
  for (auto& e : table.entries) {
    names.push_back(modality_name(e.modality));
    write_modality_metadata(w, e);
  }
  w.set_u32("tutti.version", 1);
  w.set_string_array("tutti.modalities", names);
}

}  // namespace tutti
