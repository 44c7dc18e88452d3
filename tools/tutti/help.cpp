#include "tools/tutti/help.h"

#include <cstring>

namespace tutti::cli {

namespace {

struct CommandHelp {
  const char* words;    // "model random"
  const char* summary;  // one line for the overview
  const char* text;     // usage, options and defaults
};

#define ENGINE_OPTIONS                                                                                  \
  "engine options:\n"                                                                                   \
  "  --model FILE          the GGUF model (default models/default.gguf)\n"                              \
  "  --config FILE         a settings file (default: config/default.toml's values built in)\n"         \
  "  --threads N           compute threads (default 0: one per core)\n"                                 \
  "  --kernels K           auto|avx512|avx2|scalar (default auto)\n"                                    \
  "  --kv-cache-mb N       KV cache size in MiB (default from [kv_cache])\n"                            \
  "  --kv-cache-type T     f16|f32 (default f16)\n"                                                     \
  "  --device D            cpu|cuda (default cpu)\n"

constexpr CommandHelp kCommands[] = {
    {"serve", "the OpenAI-compatible HTTP and Realtime server",
     "usage: tutti serve [options]\n"
     "The OpenAI-compatible server (HTTP, server-sent events, the Realtime WebSocket) on the model.\n"
     "options:\n"
     "  --host H              listen address (default 127.0.0.1)\n"
     "  --port P              plain HTTP port (default 8080; 0: any free port)\n"
     "  --tls-cert F          PEM certificate chain: TLS (https, wss) on --tls-port as well\n"
     "  --tls-key F           its PEM private key\n"
     "  --tls-port P          TLS port (default 8443; 0: any free port)\n"
     "  --tls-self-signed     development only: make (or reuse) a local CA and a localhost certificate\n"
     "  --tls-dir DIR         where --tls-self-signed keeps them (default .tutti-tls)\n"
     "  --max-batch N         sequences per step (default 32)\n"
     "  --step-budget N       tokens per step (default 512)\n"
     "  --max-tokens N        upper bound and default of max_tokens (default 1024)\n"
     "  --max-waiting N       admission queue length (default 64)\n"
     "  --caf-threads N       actor worker threads (default 2)\n"
     "  --api-key KEY         require this key (also [access] in the settings)\n"
     "  --ledger FILE         the usage ledger (default usage.db; \"\" for none)\n"
     "cluster (docs/scaling.md; [cluster] in the settings):\n"
     "  --role R              ingress | executor (default: neither, all in one process)\n"
     "  --cluster-secret-file F  the shared cluster secret (required with --role)\n"
     "  --cluster-host H      the ingress's cluster address (default 127.0.0.1; 0.0.0.0: every interface)\n"
     "  --cluster-port P      the ingress's cluster port (default 7070)\n"
     "  --join HOST:PORT      an executor node's ingress\n"
     "  --name N              an executor node's name (default: hostname:port)\n" ENGINE_OPTIONS},
    {"generate", "generate from a prompt",
     "usage: tutti generate --prompt TEXT [options]\n"
     "options:\n"
     "  --prompt TEXT         the prompt (required)\n"
     "  --max-tokens N        tokens to generate (default 32)\n"
     "  --temperature T       0 is greedy (default 0)\n"
     "  --top-k K             (default 0: off)    --top-p P   (default 1)\n"
     "  --min-p P             (default 0)         --repeat-penalty R (default 1)\n"
     "  --seed S              (default 0)\n"
     "  --output text|ids     (default text)\n"
     "  --modality M          text|audio|image|video|music (default text)\n"
     "  --parse-special       read special tokens in the prompt\n"
     "  --no-stop             do not stop at end-of-generation tokens\n" ENGINE_OPTIONS},
    {"tokenize", "print a text's token ids",
     "usage: tutti tokenize --text TEXT [options]\n"
     "options:\n"
     "  --text TEXT           the text (required)\n"
     "  --no-special          no BOS even where the vocabulary asks for one\n"
     "  --parse-special       read special tokens in the text\n" ENGINE_OPTIONS},
    {"model", "model files: info, random, init, pack, quantize, canary",
     "usage: tutti model info FILE | random ... | init ... | pack ... | quantize ... | canary ...\n"
     "  tutti model info --help, tutti model random --help, ... for each\n"},
    {"model canary", "the per-modality canary checks, and their baselines stamped into a copy",
     "usage: tutti model canary FILE [--stamp OUT] [--threads N]\n"
     "  --stamp OUT           write FILE's copy carrying the baselines (tutti.canary.*) that loads compare against\n"
     "  --threads N           compute threads (default: one per core)\n"
     "  exits 1 when a canary fails\n"},
    {"model info", "architecture, sizes, tensor types, modalities",
     "usage: tutti model info FILE\n"},
    {"model quantize", "a model's weights in another tensor type",
     "usage: tutti model quantize IN.gguf OUT.gguf TYPE [--threads N]\n"
     "  TYPE                  a tensor type or mix (q8_0, q4_0, q4_k_m, ...)\n"
     "  --threads N           (default 0: one per core)\n"},
    {"model random", "a random-weight model (tests, benchmarks)",
     "usage: tutti model random --out FILE --vocab VOCAB.gguf|builtin --dim D --layers L --heads H --ffn F --type T [options]\n"
     "options:\n"
     "  --type T              f32|f16|bf16|q8_0|q4_0 (required)\n"
     "  --kv-heads K          (default: --heads)  --head-dim D (default dim/heads)\n"
     "  --context N           training context (default 4096)\n"
     "  --seed S              (default 1)         --name NAME (default tutti-random)\n"
     "  --arch A              llama|qwen2|qwen3 (default llama)\n"
     "  --unified             with media modalities (audio, image, video, music)\n"
     "  --tied                output weights tied to the embeddings\n"
     "  --custom-tokens N     N more special tokens\n"},
    {"model init", "the embedded default model",
     "usage: tutti model init [--out FILE] [--codec mdct|snac] [--force]\n"
     "  --out FILE            (default models/default.gguf)\n"
     "  --codec C             mdct, or snac: a random-weight SNAC of the 24 kHz configuration (default mdct)\n"
     "  --force               overwrite an existing file\n"},
    {"model pack", "a unified model from a text backbone and media",
     "usage: tutti model pack --backbone TEXT.gguf --out FILE [options]\n"
     "  --audio F,.. --image F,.. --video F,.. --music F,..   media to train each modality's codebooks on\n"
     "  --snac DIR            a SNAC checkpoint (config.json + pytorch_model.bin) as the audio codec\n"
     "  --audio-layout L      tutti|orpheus, with --snac (default tutti)\n"
     "  --iterations N        k-means iterations (default 8)   --seed S (default 1)\n"},
    {"bench", "prefill, decode and memory bandwidth",
     "usage: tutti bench [options]     (also: bench serve, bench media, bench voice, bench cluster)\n"
     "options:\n"
     "  --prompt-tokens N     prefill length (default 128)\n"
     "  --context N           tokens each decoding sequence holds (default 16)\n"
     "  --batches LIST        decode batch sizes (default 1,4,16,32)\n"
     "  --min-seconds S       per measurement (default 2)\n"
     "  --json                JSON output\n"
     "  --no-bandwidth        skip the memory-bandwidth measurement\n" ENGINE_OPTIONS},
    {"bench cluster", "an ingress's overheads against the node served directly",
     "usage: tutti bench cluster [options]\n"
     "Starts an ingress and executor nodes as child processes on loopback and measures added\n"
     "latency per request and per token, ingress CPU per 1,000 tokens, barge-in to cancel,\n"
     "bytes per stream node to ingress, routing decisions per second and recovery.\n"
     "  --model FILE          (default models/default.gguf)\n"
     "  --requests N          latency requests each way (default 30)\n"
     "  --streams N           concurrent streams for the CPU figure (default 4)\n"
     "  --seconds S           ... for this long (default 5)\n"
     "  --heartbeat S         [cluster] heartbeat (default 2)\n"
     "  --threads N           each node's compute threads (default 1)\n"
     "  --out DIR             logs (default a temporary folder)\n"
     "  --json                JSON output\n"},
    {"cluster status", "a cluster ingress's nodes: models, load, health",
     "usage: tutti cluster status [options]\n"
     "  --url URL             the ingress (default http://127.0.0.1:8080)\n"
     "  --api-key KEY         an admin key, where keys are configured\n"
     "  --json                the ingress's answer as it is\n"},
    {"bench serve", "the server under mixed load, pacing on and off",
     "usage: tutti bench serve [options]\n"
     "  --streams N (8)  --rate R tokens/s (25)  --stream-tokens N (1024)\n"
     "  --text-rate R requests/s (4)  --text-tokens N (16)  --text-prompt-words N (120)\n"
     "  --seconds S (6)  --step-budget N (128)  --max-batch N (32)  --overhead-tokens N (64)\n" ENGINE_OPTIONS},
    {"bench media", "tokenizer speeds, speech time to first audio byte",
     "usage: tutti bench media [--requests N (5)] [--snac-full on|off (on)]\n" ENGINE_OPTIONS},
    {"bench voice", "realtime voice sessions: latency and underruns",
     "usage: tutti bench voice [options]\n"
     "  --sessions LIST (1,4,8,16)  --seconds S (12)  --text-rate R (2)  --answer-seconds S (2)\n"
     "  --modes LIST          speaking,cache,off (default speaking,off)\n"
     "  --admission LIST      on,off (default on)\n"
     "  --compare-model FILE  the same run on a second model\n" ENGINE_OPTIONS},
    {"codec", "the model's audio codec on files",
     "usage: tutti codec decode --model F.gguf --codes CODES.txt --out OUT.f32 [--zero-noise] [--threads N (1)] [--seed S (0)]\n"
     "       tutti codec encode --model F.gguf --in IN.f32 --out CODES.txt\n"
     "  --modality M          (default audio)\n"},
    {"loadtest", "mixed load against a server: JSON and HTML report",
     "usage: tutti loadtest [SCENARIO.toml] [options]   |   tutti loadtest compare A.json B.json [--json OUT]\n"
     "  SCENARIO.toml         (default config/loadtest-default.toml)\n"
     "  --target HOST:PORT    the server (default: a loopback server on the model)\n"
     "  --api-key KEY         presented on every request\n"
     "  --out PREFIX          report files (default loadtest-NAME)\n"
     "  --quiet               no progress lines\n"},
    {"usage", "usage per key and period, from the ledger",
     "usage: tutti usage [options]\n"
     "  --ledger FILE         (default usage.db)\n"
     "  --period day|all      (default day)\n"
     "  --since S --until S   Unix seconds (default: all time)\n"
     "  --json                JSON output\n"},
};

}  // namespace

const char* command_help(const std::vector<std::string>& words) {
  // The longest known prefix of the words: "model random --help" is model random's.
  const CommandHelp* best = nullptr;
  size_t best_words = 0;
  for (const CommandHelp& c : kCommands) {
    std::string joined;
    size_t n = 0;
    for (const std::string& w : words) {
      if (w.rfind("-", 0) == 0) break;
      joined += (n ? " " : "") + w;
      ++n;
      if (joined == c.words && n > best_words) best = &c, best_words = n;
    }
  }
  return best ? best->text : nullptr;
}

std::string overview() {
  std::string out = "usage: tutti <command> [options]      tutti help <command>, or <command> --help, for its options\n\ncommands:\n";
  for (const CommandHelp& c : kCommands) {
    std::string line = "  " + std::string(c.words);
    line.resize(std::max<size_t>(line.size() + 1, 18), ' ');
    out += line + c.summary + "\n";
  }
  return out;
}

}  // namespace tutti::cli
