// Text tokenizers read from GGUF metadata: SentencePiece-style (tokenizer.ggml.model =
// "llama": score-driven merges, byte fallback) and byte-level BPE ("gpt2": ranked merges
// after a GPT-2, Llama 3 or Qwen2 pre-tokenizer split). Behaviour follows the reference engine so
// the ids of downloaded models come out the same.
//
// A Tokenizer is immutable after creation and safe to use from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pipeline/expected.h"
#include "pipeline/gguf.h"
#include "pipeline/unicode.h"

namespace tutti {

enum class TokenType : int32_t { Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

class Tokenizer {
 public:
  enum class Kind { Spm, Bpe };

  static Expected<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& file);

  Kind kind() const { return kind_; }
  size_t vocab_size() const { return tokens_.size(); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  const std::string& pre_tokenizer_name() const { return pre_name_; }
  const std::string& token_text(int32_t id) const { return tokens_[size_t(id)]; }
  TokenType token_type(int32_t id) const { return types_[size_t(id)]; }
  // End-of-generation tokens: EOS, EOT and the like.
  bool is_end_of_generation(int32_t id) const;

  // add_special: BOS/EOS as the vocabulary asks. parse_special: control tokens written in
  // the text (e.g. "<s>") become their ids; user-defined tokens always do.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true, bool parse_special = false) const;

  // The id of the token whose text is exactly `text` (a chat template's <|im_start|>), if any.
  std::optional<int32_t> token_id(std::string_view text) const {
    const int32_t id = find(text);
    return id < 0 ? std::nullopt : std::optional<int32_t>(id);
  }

  // The bytes a token stands for (control tokens render as nothing unless `special`).
  std::string piece(int32_t id, bool special = false) const;
  // Whole-sequence detokenisation (drops the leading space that SPM adds).
  std::string decode(const std::vector<int32_t>& ids, bool special = false) const;

 private:
  Tokenizer() = default;
  void encode_spm(const std::string& text, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  int32_t find(std::string_view text) const;
  int32_t byte_token(uint8_t b) const;

  Kind kind_ = Kind::Spm;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<TokenType> types_;
  std::unordered_map<std::string, int32_t> ids_;
  std::unordered_map<std::string, int32_t> merge_rank_;  // "left right" -> rank
  std::vector<int32_t> special_tokens_;                   // longest first, for partitioning text
  std::vector<int32_t> eog_;
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false, ignore_merges_ = false;
  unicode::PreTokenizer pre_ = unicode::PreTokenizer::Gpt2;
  std::string pre_name_;
};

// Turns a stream of token ids into text deltas that never split a UTF-8 character: bytes of
// an incomplete character are held back until the token that completes them arrives.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool special = false)
      : tok_(tokenizer), special_(special) {}
  std::string push(int32_t id);  // the complete text this token adds (may be empty)
  std::string flush();           // U+FFFD for a held-back character that never completed

 private:
  const Tokenizer& tok_;
  bool special_;
  std::string pending_;
};

}  // namespace tutti
