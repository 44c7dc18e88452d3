// tutti tokenize, tutti generate
#include <cstdio>
#include <iostream>

#include "pipeline/generate.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

int cmd_tokenize(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  opts.insert("text");
  Args args(argv, opts, {"no-special", "parse-special"});
  if (!args.ok()) return fail(args.error());
  if (!args.require("text")) return fail(args.error());
  // Tokenizing needs only the vocabulary, not the weights' shapes.
  auto file = GgufFile::open(args.get("model", default_model_path()));
  if (!file) return fail(file.error().message);
  auto tok = Tokenizer::from_gguf(**file);
  if (!tok) return fail(tok.error().message);
  const auto ids = (*tok)->encode(args.get("text"), !args.has("no-special"), args.has("parse-special"));
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::printf("%s\n", line.c_str());
  return 0;
}

int cmd_generate(const std::vector<std::string>& argv) {
  auto opts = engine_options();
  for (auto o : {"prompt", "max-tokens", "temperature", "top-k", "top-p", "min-p", "repeat-penalty", "seed", "output", "modality"})
    opts.insert(o);
  Args args(argv, opts, {"parse-special", "no-stop"});
  if (!args.ok()) return fail(args.error());
  if (!args.require("prompt")) return fail(args.error());
  SamplingParams sp;
  sp.temperature = float(args.get_double("temperature", 0.0));
  sp.top_k = int(args.get_int("top-k", 0));
  sp.top_p = float(args.get_double("top-p", 1.0));
  sp.min_p = float(args.get_double("min-p", 0.0));
  sp.repetition_penalty = float(args.get_double("repeat-penalty", 1.0));
  sp.seed = uint64_t(args.get_int("seed", 0));
  GenerateOptions go;
  go.max_tokens = int(args.get_int("max-tokens", 32));
  go.stop_at_eog = !args.has("no-stop");
  const std::string output = args.get("output", "text");
  if (!args.ok()) return fail(args.error());
  if (output != "text" && output != "ids") return fail("--output must be text or ids");
  if (go.max_tokens < 0) return fail("--max-tokens must be >= 0");

  auto engine = open_engine(args, true);
  if (!engine) return 1;
  go.prefill_chunk = engine->settings.prefill_chunk;
  auto prompt = engine->tokenizer->encode(args.get("prompt"), true, args.has("parse-special"));
  if (prompt.empty()) return fail("the prompt tokenizes to nothing");
  // A unified model's media codes are only for sequences generating that modality: text
  // generation is masked to the text ids; --modality M generates M's codes (after its
  // begin token) until its end token.
  const ModalityTable& modalities = engine->model->config().modalities;
  const std::string modality = args.get("modality", "text");
  if (modality == "text") {
    if (!modalities.empty()) sp.allowed = modalities.text_ranges(engine->model->hparams().n_vocab);
  } else {
    auto m = parse_modality(modality);
    const ModalityInfo* mi = m ? modalities.find(*m) : nullptr;
    if (!mi) return fail("this model has no '" + modality + "' modality (see tutti model info)");
    sp.allowed = modalities.ranges_for(*m);
    sp.stop_tokens.push_back(int32_t(mi->end_token));
    prompt.push_back(int32_t(mi->begin_token));
    if (output == "text") return fail("--modality " + modality + " needs --output ids");
  }
  Sampler sampler(sp);
  StreamingDetokenizer detok(*engine->tokenizer);
  if (output == "text") std::cout << args.get("prompt") << std::flush;
  auto result = generate(*engine->model, *engine->kv, engine->tokenizer.get(), prompt, sampler, go, [&](int32_t id) {
    if (output == "text") std::cout << detok.push(id) << std::flush;
    return true;
  });
  if (!result) return fail(result.error().message);
  if (output == "text") {
    std::cout << detok.flush() << "\n";
    const double tps = result->decode_seconds > 0 ? double(result->tokens.size()) / result->decode_seconds : 0;
    std::fprintf(stderr, "tutti: %zu prompt tokens in %.3f s, %zu tokens in %.3f s (%.1f tokens/s), %s\n", prompt.size(),
                 result->prefill_seconds, result->tokens.size(), result->decode_seconds, tps,
                 engine->backend->describe().c_str());
  } else {
    std::string line;
    for (size_t i = 0; i < result->tokens.size(); ++i) line += (i ? " " : "") + std::to_string(result->tokens[i]);
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

}  // namespace tutti::cli
