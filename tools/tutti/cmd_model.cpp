// tutti model info | random | init
#include <cstdio>
#include <filesystem>
#include <map>

#include "codecs/model_canary.h"
#include "codecs/model_pack.h"
#include "pipeline/model_builder.h"
#include "pipeline/model_config.h"
#include "pipeline/quantize.h"
#include "pipeline/tokenizer.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

namespace {

int model_info(const std::vector<std::string>& argv) {
  Args args(argv, {}, {});
  if (!args.ok()) return fail(args.error());
  if (args.positional().size() != 1) return fail("usage: tutti model info FILE");
  auto file = GgufFile::open(args.positional()[0]);
  if (!file) return fail(file.error().message);
  const GgufFile& f = **file;
  auto cfg = read_model_config(f);
  if (!cfg) return fail(cfg.error().message);
  const LlamaHparams& h = cfg->hparams;
  std::printf("file:          %s (GGUF v%u, %zu bytes, %zu tensors, %zu metadata keys)\n", f.path().c_str(), f.version(),
              f.file_size(), f.tensors().size(), f.metadata().size());
  std::printf("architecture:  %s%s%s\n", h.architecture.c_str(), h.name.empty() ? "" : "  name: ", h.name.c_str());
  std::printf("vocabulary:    %u tokens\n", h.n_vocab);
  std::printf("dimensions:    embd %u, layers %u, ffn %u, heads %u, kv heads %u, head size %u\n", h.n_embd, h.n_layer,
              h.n_ff, h.n_head, h.n_head_kv, h.head_dim);
  std::printf("rope:          %u dims, base %g; rms eps %g; context %u; output %s\n", h.n_rot, double(h.rope_freq_base),
              double(h.rms_eps), h.n_ctx_train, h.tied_output ? "tied to token_embd" : "separate");
  std::string block = h.block.rope == RopeLayout::Neox ? "rotary halves (neox)" : "rotary pairs (normal)";
  if (h.qkv_bias) block += ", q/k/v biases";
  if (h.block.qk_norm) block += ", per-head q/k norms";
  if (h.rope_freqs) block += ", rope frequency factors";
  if (h.rope_freq_scale != 1.f) block += ", linear rope scaling x" + std::to_string(1 / h.rope_freq_scale);
  std::printf("block:         %s\n", block.c_str());
  uint64_t params = 0;
  std::map<std::string, std::pair<int, uint64_t>> by_type;
  for (auto& t : f.tensors()) {
    params += t.n_elements();
    auto& e = by_type[std::string(tensor_type_info(t.type).name)];
    e.first++;
    e.second += t.n_bytes;
  }
  std::printf("parameters:    %.2f M\n", double(params) / 1e6);
  for (auto& [name, e] : by_type) std::printf("  %-6s %4d tensors, %10.2f MiB\n", name.c_str(), e.first, double(e.second) / (1 << 20));
  if (auto tok = Tokenizer::from_gguf(f); tok)
    std::printf("tokenizer:     %s (%s), bos %d, eos %d, add_bos %s\n",
                (*tok)->kind() == Tokenizer::Kind::Spm ? "sentencepiece" : "byte-level bpe",
                (*tok)->pre_tokenizer_name().c_str(), (*tok)->bos(), (*tok)->eos(), (*tok)->add_bos() ? "yes" : "no");
  else
    std::printf("tokenizer:     unusable: %s\n", tok.error().message.c_str());
  if (cfg->modalities.empty()) {
    std::printf("modalities:    text only\n");
  } else {
    std::printf("modalities:    text +\n");
    for (const ModalityInfo& m : cfg->modalities.entries) {
      std::printf("  %-6s tokens [%u, %u) = %u %s x %u codes, begin %u, end %u, %s, %.1f tokens/s of media\n",
                  modality_name(m.modality), m.token_offset, m.token_end(), m.num_stages, m.slot_offsets.empty() ? "stages" : "slots per frame",
                  m.codebook_size, m.begin_token, m.end_token, m.transform.c_str(), m.tokens_per_second());
      if (m.transform == "snac") {
        auto c = codecs::read_snac_config(**file, "tutti." + std::string(modality_name(m.modality)) + ".snac.");
        if (!c) return fail(c.error().message);
        std::printf("         snac: %d Hz, %zu levels (strides", c->sampling_rate, c->vq_strides.size());
        for (int st : c->vq_strides) std::printf(" %d", st);
        std::printf("), frames of %d samples, %.1f M parameters, %s token layout\n", c->frame_samples(),
                    double(codecs::snac_parameter_count(*c)) / 1e6, token_layout_name(m.layout));
      }
    }
  }
  return 0;
}

// Appends <custom_token_0> .. <custom_token_{n-1}> (control tokens) to a vocabulary, as
// Orpheus-style speech models extend Llama 3's: a backbone of their shape for tests.
void add_custom_tokens(VocabularyMetadata& vocab, uint32_t n) {
  GgufWriter tmp;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;
  for (auto& [k, v] : vocab.entries) {
    if (k == "tokenizer.ggml.tokens") tokens = v.strings;
    if (k == "tokenizer.ggml.token_type")
      for (uint64_t i = 0; i < v.count; ++i) types.push_back(int32_t(v.array_i64(i)));
    if (k == "tokenizer.ggml.scores")
      for (uint64_t i = 0; i < v.count; ++i) scores.push_back(float(v.array_f64(i)));
  }
  types.resize(tokens.size(), 1);
  for (uint32_t i = 0; i < n; ++i) {
    tokens.push_back("<custom_token_" + std::to_string(i) + ">");
    types.push_back(3);
  }
  if (!scores.empty()) scores.resize(tokens.size(), -1e9f);
  tmp.set_string_array("tokenizer.ggml.tokens", tokens);
  tmp.set_i32_array("tokenizer.ggml.token_type", types);
  if (!scores.empty()) tmp.set_f32_array("tokenizer.ggml.scores", scores);
  for (const auto& [k, v] : tmp.entries())
    for (auto& [key, value] : vocab.entries)
      if (key == k) value = v;
  vocab.n_tokens = uint32_t(tokens.size());
}

int model_random(const std::vector<std::string>& argv) {
  Args args(argv, {"out", "vocab", "dim", "layers", "heads", "kv-heads", "ffn", "type", "seed", "context", "name", "arch", "head-dim", "custom-tokens"},
            {"unified", "tied"});
  if (!args.ok()) return fail(args.error());
  for (auto r : {"out", "vocab", "dim", "layers", "heads", "ffn", "type"})
    if (!args.require(r)) return fail(args.error());
  RandomModelSpec s;
  s.dim = uint32_t(args.get_int("dim", 0));
  s.layers = uint32_t(args.get_int("layers", 0));
  s.heads = uint32_t(args.get_int("heads", 0));
  s.kv_heads = uint32_t(args.get_int("kv-heads", s.heads));
  s.ffn = uint32_t(args.get_int("ffn", 0));
  s.seed = uint64_t(args.get_int("seed", 1));
  s.context = uint32_t(args.get_int("context", 4096));
  s.unified = args.has("unified");
  s.name = args.get("name", "tutti-random");
  s.architecture = args.get("arch", "llama");
  s.head_dim = uint32_t(args.get_int("head-dim", 0));
  s.tied = args.has("tied");
  if (!args.ok()) return fail(args.error());
  auto type = parse_tensor_type(args.get("type"));
  if (!type) {
    std::string names;
    for (const TensorTypeInfo& t : all_tensor_types()) names += std::string(names.empty() ? "" : ", ") + std::string(t.name);
    return fail("--type must be one of " + names);
  }
  s.type = *type;
  std::shared_ptr<const GgufFile> vocab_file;
  VocabularyMetadata vocab;
  if (args.get("vocab") == "builtin") {
    vocab = builtin_vocabulary();
  } else {
    auto vf = GgufFile::open(args.get("vocab"));
    if (!vf) return fail(vf.error().message);
    vocab_file = *vf;
    auto v = read_vocabulary(*vocab_file);
    if (!v) return fail(v.error().message);
    vocab = *v;
  }
  if (args.has("custom-tokens")) {
    const long long n = args.get_int("custom-tokens", 0);
    if (!args.ok() || n < 0 || n > 1000000) return fail("--custom-tokens must be a count up to 1000000");
    add_custom_tokens(vocab, uint32_t(n));
  }
  auto progress = [](const std::string& what, double f) { std::fprintf(stderr, "\r[%3.0f%%] %-24s", f * 100, what.c_str()); };
  if (Status st = write_random_model(s, vocab, args.get("out"), progress); !st) return fail(st.message());
  std::fprintf(stderr, "\nwrote %s\n", args.get("out").c_str());
  return 0;
}

void show_progress(const std::string& what, double f) { std::fprintf(stderr, "\r[%3.0f%%] %-32s", f * 100, what.c_str()); }

// tutti model pack --backbone TEXT.gguf --out UNIFIED.gguf [--audio F,..] [--image F,..]
//                  [--video F,..] [--music F,..] [--iterations N]
//                  [--snac DIR [--audio-layout tutti|orpheus]]
int model_pack(const std::vector<std::string>& argv) {
  Args args(argv, {"backbone", "out", "audio", "image", "video", "music", "iterations", "seed", "snac", "audio-layout"}, {});
  if (!args.ok()) return fail(args.error());
  for (auto r : {"backbone", "out"})
    if (!args.require(r)) return fail(args.error());
  std::map<Modality, codecs::PackMaterial> material;
  for (Modality m : kMediaModalities)
    if (args.has(modality_name(m))) material[m].files = split_list(args.get(modality_name(m)));
  codecs::PackOptions o;
  o.kmeans_iterations = int(args.get_int("iterations", 8));
  o.seed = uint64_t(args.get_int("seed", 1));
  o.progress = show_progress;
  if (!args.ok()) return fail(args.error());
  if (args.has("audio-layout") && !args.has("snac")) return fail("--audio-layout applies to a SNAC codec (--snac DIR)");
  if (args.has("snac")) {
    auto layout = parse_token_layout(args.get("audio-layout", "tutti"));
    if (!layout) return fail("--audio-layout must be tutti or orpheus");
    o.audio_layout = *layout;
    auto snac = codecs::import_snac_checkpoint(args.get("snac"));
    if (!snac) return fail(snac.error().message);
    o.snac = std::make_shared<const codecs::SnacWeights>(std::move(*snac));
  }
  if (Status s = codecs::pack_unified_model(args.get("backbone"), material, args.get("out"), o); !s) return fail(s.message());
  std::fprintf(stderr, "\nwrote %s\n", args.get("out").c_str());
  return 0;
}

// tutti model quantize IN.gguf OUT.gguf TYPE [--threads N]
int model_quantize(const std::vector<std::string>& argv) {
  Args args(argv, {"threads"}, {});
  if (!args.ok()) return fail(args.error());
  if (args.positional().size() != 3) return fail("usage: tutti model quantize IN.gguf OUT.gguf TYPE (" + quantize_mix_names() + ")");
  const std::string& in = args.positional()[0];
  const std::string& out = args.positional()[1];
  const auto mix = parse_quantize_mix(args.positional()[2]);
  if (!mix) return fail("unknown type '" + args.positional()[2] + "' (" + quantize_mix_names() + ")");
  if (std::filesystem::exists(out) && std::filesystem::equivalent(in, out)) return fail("OUT must differ from IN");
  QuantizeOptions o;
  o.threads = int(args.get_int("threads", 0));
  if (!args.ok()) return fail(args.error());
  o.progress = [](size_t i, size_t n, const TensorPlan& p) {
    std::fprintf(stderr, "[%4zu/%4zu] %-32s %-5s -> %-5s %s\n", i + 1, n, p.name.c_str(),
                 std::string(tensor_type_info(p.from).name).c_str(), std::string(tensor_type_info(p.to).name).c_str(),
                 p.from == p.to ? "" : p.reason.c_str());
  };
  auto summary = quantize_model(in, out, mix->mix, o);
  if (!summary) return fail(summary.error().message);
  std::fprintf(stderr, "wrote %s: %.1f MiB -> %.1f MiB, %.2f bits per weight over the quantized matrices%s\n", out.c_str(),
               double(summary->bytes_in) / (1 << 20), double(summary->bytes_out) / (1 << 20), summary->bits_per_weight,
               summary->requantized ? (" (" + std::to_string(summary->requantized) + " matrices were already quantized: requantizing loses precision)").c_str() : "");
  return 0;
}

// Runs every canary of the model at `path` (against the baselines it carries, recording the
// missing ones), prints them, and with `stamp_to` writes a copy carrying the baselines
// (tutti.canary.*), which later loads compare against. Returns whether all passed.
Expected<bool> check_canaries(const std::string& path, const std::string& stamp_to, int threads, bool quiet) {
  auto backend = make_cpu_backend({threads});
  auto model = Model::load(path, *backend);
  if (!model) return model.error();
  auto tok = Tokenizer::from_gguf((*model)->file());
  if (!tok) return tok.error();
  auto codecs_loaded = codecs::load_model_codecs((*model)->file());
  if (!codecs_loaded) return codecs_loaded.error();
  auto kv = codecs::make_canary_cache(**model);
  if (!kv) return kv.error();
  codecs::CanaryBaselines b = codecs::read_canary_baselines((*model)->file());
  bool all = true;
  for (Modality m : codecs::canary_modalities(**model)) {
    const codecs::CanaryResult r = codecs::run_canary(**model, **tok, *codecs_loaded, **kv, m, {}, b);
    all = all && r.passed;
    if (quiet && r.passed) continue;
    std::string measures;
    for (const auto& [k, v] : r.measures) measures += " " + k + "=" + std::to_string(v);
    std::printf("%-6s %-6s %7.1f ms %s%s\n", modality_name(m), r.passed ? "passed" : "FAILED", r.seconds * 1000, r.reason.c_str(), measures.c_str());
  }
  if (stamp_to.empty()) return all;
  if (!all) return Error{"not stamping " + stamp_to + ": a canary failed"};
  GgufWriter w;
  const GgufFile& f = (*model)->file();
  for (const auto& [k, v] : f.metadata())
    if (k.rfind("tutti.canary.", 0) != 0) w.set_value(k, v);
  codecs::write_canary_baselines(w, b);
  for (const GgufTensorInfo& t : f.tensors())
    w.add_tensor(t.name, t.type, std::vector<uint64_t>(t.ne, t.ne + t.n_dims), [&t](std::vector<uint8_t>& out) {
      out.assign(t.data, t.data + t.n_bytes);
      return Status::Ok();
    });
  if (Status s = w.write(stamp_to); !s) return s.error();
  return all;
}

// tutti model canary FILE [--stamp OUT] [--threads N]
int model_canary(const std::vector<std::string>& argv) {
  Args args(argv, {"stamp", "threads"}, {});
  if (!args.ok()) return fail(args.error());
  if (args.positional().size() != 1) return fail("usage: tutti model canary FILE [--stamp OUT] [--threads N]");
  const int threads = int(args.get_int("threads", 0));
  if (!args.ok()) return fail(args.error());
  auto ok = check_canaries(args.positional()[0], args.get("stamp", ""), threads, false);
  if (!ok) return fail(ok.error().message);
  if (args.has("stamp")) std::fprintf(stderr, "wrote %s with its canary baselines\n", args.get("stamp").c_str());
  return *ok ? 0 : 1;
}

// The embedded default model: a random-weight text backbone with the built-in vocabulary,
// packed with codebooks trained on media tutti generates itself. Small enough to create in
// seconds and to run anywhere.
int model_init(const std::vector<std::string>& argv) {
  Args args(argv, {"out", "codec"}, {"force"});
  if (!args.ok()) return fail(args.error());
  const std::string codec = args.get("codec", "mdct");
  if (codec != "mdct" && codec != "snac") return fail("--codec must be mdct (tutti's own, the default) or snac (the published 24 kHz configuration, random weights)");
  const std::string out = args.get("out", default_model_path());
  if (std::filesystem::exists(out) && !args.has("force")) {
    std::fprintf(stderr, "%s exists (use --force to recreate it)\n", out.c_str());
    return 0;
  }
  if (auto parent = std::filesystem::path(out).parent_path(); !parent.empty()) std::filesystem::create_directories(parent);
  RandomModelSpec s;
  s.dim = 512;
  s.layers = 8;
  s.heads = 8;
  s.kv_heads = 4;
  s.ffn = 1408;
  s.type = TensorType::Q8_0;
  s.seed = 20261126;
  s.name = "tutti-default";
  const std::string backbone = out + ".backbone.tmp";
  const VocabularyMetadata vocab = builtin_vocabulary();
  if (Status st = write_random_model(s, vocab, backbone, show_progress); !st) return fail(st.message());
  codecs::PackOptions o;
  o.progress = show_progress;
  o.seed = s.seed;
  auto material = codecs::generated_material(default_modalities(vocab.n_tokens), s.seed);
  if (codec == "snac") {
    o.snac = std::make_shared<const codecs::SnacWeights>(codecs::random_snac_weights(codecs::snac_24khz_config(), s.seed));
    material.erase(Modality::Audio);
  }
  const Status packed = codecs::pack_unified_model(backbone, material, out, o);
  std::filesystem::remove(backbone);
  if (!packed) return fail(packed.message());
  // The canaries' baselines go into the file as it is made (tutti.canary.*).
  if (auto stamped = check_canaries(out, out, 0, true); !stamped) return fail(stamped.error().message);
  std::fprintf(stderr, "\nwrote %s\n", out.c_str());
  return 0;
}

}  // namespace

int cmd_model(const std::vector<std::string>& argv) {
  if (argv.empty()) return fail("usage: tutti model info|random|init|pack|quantize|canary ...");
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "info") return model_info(rest);
  if (argv[0] == "random") return model_random(rest);
  if (argv[0] == "init") return model_init(rest);
  if (argv[0] == "pack") return model_pack(rest);
  if (argv[0] == "quantize") return model_quantize(rest);
  if (argv[0] == "canary") return model_canary(rest);
  return fail("unknown model command '" + argv[0] + "' (info, random, init, pack, quantize, canary)");
}

}  // namespace tutti::cli
