// tutti: one binary, many subcommands.
#include <cstdio>
#include <string>
#include <vector>

#include "tools/tutti/commands.h"

namespace {
const char* kUsage = R"(usage: tutti <command> [options]

commands:
  tokenize --model FILE --text TEXT            print token ids (BOS as the vocabulary asks)
  generate --model FILE --prompt TEXT --max-tokens N
           [--temperature T --top-k K --top-p P --min-p P --repeat-penalty R --seed S]
           [--output text|ids] [--modality text|audio|image|video|music]
                                               generate (greedy when temperature is 0)
  model info FILE                              architecture, sizes, tensor types, modalities
  model random --out FILE --vocab VOCAB.gguf|builtin --dim D --layers L --heads H
           --kv-heads K --ffn F --type f32|f16|bf16|q8_0|q4_0 [--seed S] [--unified] [--custom-tokens N]
  model init [--out FILE] [--codec mdct|snac]  create the embedded default model (snac: a random-weight
                                               SNAC of the published 24 kHz configuration as its audio codec)
  bench --model FILE [--json]                  prefill, decode and memory bandwidth
  bench serve [--model FILE] [--streams N --rate R --text-rate R --seconds S]
                                               the server under mixed load, pacing on and off
  bench media [--model FILE] [--requests N]    tokenizer speeds, speech time to first audio byte
  bench voice [--model FILE] [--sessions 1,4,8 --seconds S --text-rate R]
                                               realtime voice sessions: speech->audio latency, underruns
  model pack --backbone TEXT.gguf --out FILE [--audio F,..] [--image F,..] [--video F,..] [--music F,..]
           [--snac DIR [--audio-layout tutti|orpheus]]
                                               a unified model: codebooks trained on the media, or a
                                               SNAC checkpoint (config.json + pytorch_model.bin) for audio
  codec decode --model F.gguf --codes CODES.txt --out OUT.f32 [--zero-noise] [--threads N]
  codec encode --model F.gguf --in IN.f32 --out CODES.txt
                                               the model's audio codec on files (one line of codes per level)
  serve [--model FILE] [--host H] [--port P]   OpenAI-compatible HTTP server (127.0.0.1:8080)
        [--max-batch N --step-budget N --max-tokens N --max-waiting N]
        [--api-key KEY] [--ledger FILE]        keys required (also [access] in the config); the usage ledger
  loadtest [SCENARIO.toml] [--target HOST:PORT] [--api-key KEY] [--out PREFIX] [--quiet]
                                               mixed load (voice, text, speech, images): JSON + HTML report
  loadtest compare A.json B.json               run B against run A, a ratio per metric
  usage [--ledger usage.db] [--period day|all] [--since S --until S] [--json]
                                               usage per key and period, from the ledger
  bench voice ... [--modes speaking,cache,off] compare prefill while speaking / prefix cache / neither

engine options (generate, tokenize, bench):
  --config FILE --threads N --kernels auto|avx512|avx2|scalar --kv-cache-mb N --kv-cache-type f16|f32
)";
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "tokenize") return tutti::cli::cmd_tokenize(args);
  if (command == "generate") return tutti::cli::cmd_generate(args);
  if (command == "model") return tutti::cli::cmd_model(args);
  if (command == "bench" && !args.empty() && args[0] == "voice")
    return tutti::cli::cmd_bench_voice(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench" && !args.empty() && args[0] == "media")
    return tutti::cli::cmd_bench_media(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench" && !args.empty() && args[0] == "serve")
    return tutti::cli::cmd_bench_serve(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench") return tutti::cli::cmd_bench(args);
  if (command == "serve") return tutti::cli::cmd_serve(args);
  if (command == "usage") return tutti::cli::cmd_usage(args);
  if (command == "loadtest") return tutti::cli::cmd_loadtest(args);
  if (command == "codec") return tutti::cli::cmd_codec(args);
  std::fprintf(stderr, "tutti: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
