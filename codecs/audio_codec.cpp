#include "codecs/audio_codec.h"

#include "codecs/mdct.h"

#include <algorithm>
#include <set>

#include "codecs/audio_tokenizer.h"
#include "codecs/model_codecs.h"
#include "codecs/rvq.h"
#include "codecs/snac.h"

namespace tutti::codecs {

int AudioCodec::levels() const {
  const auto l = frame_levels();
  return l.empty() ? 0 : *std::max_element(l.begin(), l.end()) + 1;
}

std::vector<int32_t> AudioCodec::encode(std::span<const float> samples, ThreadPool* pool) const {
  auto e = encoder(pool);
  std::vector<int32_t> out;
  const size_t piece = size_t(sample_rate());  // a second at a time, as decode
  for (size_t at = 0; at < samples.size(); at += piece) {
    const auto c = e->push(samples.subspan(at, std::min(piece, samples.size() - at)));
    out.insert(out.end(), c.begin(), c.end());
  }
  const auto tail = e->finish();
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

Expected<std::vector<float>> AudioCodec::decode(std::span<const int32_t> codes, const AudioDecodeOptions& options) const {
  // Pieces of about a second keep each layer's buffers in cache; streaming makes the result
  // independent of the piece size.
  const size_t piece = size_t(codes_per_frame()) * size_t(std::max(1, sample_rate() / frame_samples()));
  auto d = decoder(options);
  std::vector<float> out;
  for (size_t at = 0; at < codes.size(); at += piece) {
    auto y = d->push(codes.subspan(at, std::min(piece, codes.size() - at)));
    if (!y) return y.error();
    out.insert(out.end(), y->begin(), y->end());
  }
  const auto tail = d->finish();
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

namespace {

// ---- MDCT frames + residual VQ (audio_tokenizer.*)
class MdctCodec final : public AudioCodec {
 public:
  MdctCodec(const ModalityInfo& m, std::shared_ptr<const Codebooks> books)
      : m_(m), books_(std::move(books)), tables_(mdct_tables(int(m.frame_size))) {}
  const char* kind() const override { return "mdct"; }
  int sample_rate() const override { return int(m_.sample_rate); }
  int frame_samples() const override { return int(m_.frame_size); }
  int codes_per_frame() const override { return int(m_.num_stages); }
  std::vector<int> frame_levels() const override {
    std::vector<int> l(m_.num_stages);
    for (size_t i = 0; i < l.size(); ++i) l[i] = int(i);
    return l;
  }
  // The overlap-add holds one frame back; the analysis delays by one frame.
  int decoder_latency_samples() const override { return int(m_.frame_size); }
  int encoder_latency_samples() const override { return int(m_.frame_size); }
  std::unique_ptr<AudioCodeEncoder> encoder(ThreadPool*) const override {
    struct E final : AudioCodeEncoder {
      AudioEncoder e;
      E(int n, std::shared_ptr<const Codebooks> b) : e(n, std::move(b)) {}
      std::vector<int32_t> push(std::span<const float> s) override { return e.push(s); }
      std::vector<int32_t> finish() override { return e.finish(); }
    };
    return std::make_unique<E>(int(m_.frame_size), books_);
  }
  std::unique_ptr<AudioCodeDecoder> decoder(const AudioDecodeOptions&) const override {
    struct D final : AudioCodeDecoder {
      AudioDecoder d;
      int size;
      D(int n, std::shared_ptr<const Codebooks> b, int s) : d(n, std::move(b)), size(s) {}
      Expected<std::vector<float>> push(std::span<const int32_t> codes) override {
        for (int32_t c : codes)
          if (c < 0 || c >= size) return Error{"code " + std::to_string(c) + " is outside the codebook"};
        return d.push(codes);
      }
      std::vector<float> finish() override { return d.finish(); }
    };
    return std::make_unique<D>(int(m_.frame_size), books_, int(m_.codebook_size));
  }
  const Codebooks* codebooks() const override { return books_.get(); }

 private:
  ModalityInfo m_;
  std::shared_ptr<const Codebooks> books_;
  // The transform's tables live as long as the codec: every stream's encoder and decoder
  // shares them, instead of the first of each burst building them again (N x 2N cosines:
  // 29 MiB and ~0.1 s for music's 1920-sample frames).
  std::shared_ptr<const MdctTables> tables_;
};

Expected<std::shared_ptr<const AudioCodec>> make_mdct(const GgufFile& f, const ModalityInfo& m) {
  auto books = load_codebooks(f, m);
  if (!books) return books.error();
  return std::shared_ptr<const AudioCodec>(std::make_shared<MdctCodec>(m, std::make_shared<const Codebooks>(std::move(*books))));
}

// ---- SNAC (snac.*)
class SnacCodec final : public AudioCodec {
 public:
  explicit SnacCodec(std::shared_ptr<const SnacModel> model) : model_(std::move(model)), c_(snac_model_config(*model_)) {}
  const char* kind() const override { return "snac"; }
  int sample_rate() const override { return c_.sampling_rate; }
  int frame_samples() const override { return c_.frame_samples(); }
  int codes_per_frame() const override { return c_.codes_per_frame(); }
  std::vector<int> frame_levels() const override { return c_.frame_levels(); }
  int decoder_latency_samples() const override { return snac_decoder_latency_samples(*model_); }
  int encoder_latency_samples() const override { return snac_encoder_latency_samples(*model_); }
  std::unique_ptr<AudioCodeEncoder> encoder(ThreadPool* pool) const override {
    struct E final : AudioCodeEncoder {
      SnacEncoder e;
      E(std::shared_ptr<const SnacModel> m, ThreadPool* p) : e(std::move(m), p) {}
      std::vector<int32_t> push(std::span<const float> s) override { return e.push(s); }
      std::vector<int32_t> finish() override { return e.finish(); }
    };
    return std::make_unique<E>(model_, pool);
  }
  std::unique_ptr<AudioCodeDecoder> decoder(const AudioDecodeOptions& o) const override {
    struct D final : AudioCodeDecoder {
      SnacDecoder d;
      D(std::shared_ptr<const SnacModel> m, SnacDecodeOptions so) : d(std::move(m), so) {}
      Expected<std::vector<float>> push(std::span<const int32_t> codes) override { return d.push(codes); }
      std::vector<float> finish() override { return d.finish(); }
    };
    SnacDecodeOptions so;
    so.zero_noise = o.zero_noise;
    so.seed = o.seed;
    so.pool = o.pool;
    return std::make_unique<D>(model_, so);
  }

 private:
  std::shared_ptr<const SnacModel> model_;
  SnacConfig c_;
};

Expected<std::shared_ptr<const AudioCodec>> make_snac(const GgufFile& f, const ModalityInfo& m) {
  const std::string name = modality_name(m.modality);
  auto config = read_snac_config(f, "tutti." + name + ".snac.");
  if (!config) return config.error();
  const std::string p = f.path() + ": tutti." + name + ".";
  if (int(m.sample_rate) != config->sampling_rate) return Error{p + "sample_rate differs from the SNAC configuration's"};
  if (int(m.frame_size) != config->frame_samples()) return Error{p + "frame_size must be " + std::to_string(config->frame_samples()) + " for this SNAC"};
  if (int(m.num_stages) != config->codes_per_frame()) return Error{p + "num_stages must be " + std::to_string(config->codes_per_frame()) + " (codes per frame)"};
  if (int(m.codebook_size) != config->codebook_size) return Error{p + "codebook_size differs from the SNAC configuration's"};
  const std::vector<int> levels = config->frame_levels();
  if (m.slot_levels != std::vector<uint32_t>(levels.begin(), levels.end()))
    return Error{p + "frame_levels do not match the SNAC configuration's"};
  auto model = load_snac_model(f, "codec." + name + ".", *config);
  if (!model) return model.error();
  return make_snac_codec(std::move(*model));
}

struct CodecEntry {
  const char* kind;
  Expected<std::shared_ptr<const AudioCodec>> (*make)(const GgufFile&, const ModalityInfo&);
};
constexpr CodecEntry kAudioCodecs[] = {{"mdct", make_mdct}, {"snac", make_snac}};

}  // namespace

Expected<std::shared_ptr<const AudioCodec>> make_audio_codec(const GgufFile& f, const ModalityInfo& m) {
  for (const CodecEntry& e : kAudioCodecs)
    if (m.transform == e.kind) return e.make(f, m);
  return Error{f.path() + ": tutti." + std::string(modality_name(m.modality)) + ".transform '" + m.transform + "' is not an audio codec tutti has"};
}

std::shared_ptr<const AudioCodec> make_snac_codec(std::shared_ptr<const SnacModel> model) {
  return std::make_shared<SnacCodec>(std::move(model));
}

std::vector<std::string> audio_codec_kinds() {
  std::vector<std::string> out;
  for (const CodecEntry& e : kAudioCodecs) out.push_back(e.kind);
  return out;
}

}  // namespace tutti::codecs
