#include "pipeline/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <queue>

namespace tutti {

namespace {

const std::string kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space

std::string escape_spaces(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) {
    if (c == ' ')
      out += kSpace;
    else
      out += c;
  }
  return out;
}

std::string unescape_spaces(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 3, kSpace) == 0) {
      out += ' ';
      i += 3;
    } else {
      out += s[i++];
    }
  }
  return out;
}

}  // namespace

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& f) {
  auto fail = [&](const std::string& what) { return Error{f.path() + ": tokenizer: " + what}; };
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model) return model.error();
  if (!*model) return fail("tokenizer.ggml.model is missing");
  if (**model == "llama") {
    t->kind_ = Kind::Spm;
  } else if (**model == "gpt2") {
    t->kind_ = Kind::Bpe;
  } else {
    return fail("model type '" + **model + "' is not supported (llama, gpt2)");
  }
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufValueType::ARRAY || tokens->element_type != GgufValueType::STRING || tokens->count == 0)
    return fail("tokenizer.ggml.tokens must be a non-empty array of strings");
  if (tokens->count > (1u << 24)) return fail("vocabulary of " + std::to_string(tokens->count) + " tokens is too large");
  t->tokens_ = tokens->strings;
  const size_t n = t->tokens_.size();
  t->scores_.assign(n, 0.f);
  t->types_.assign(n, TokenType::Normal);
  if (const GgufValue* s = f.find("tokenizer.ggml.scores")) {
    if (s->type != GgufValueType::ARRAY || s->element_type == GgufValueType::STRING || s->count != n)
      return fail("tokenizer.ggml.scores must be " + std::to_string(n) + " numbers");
    for (size_t i = 0; i < n; ++i) t->scores_[i] = float(s->array_f64(i));
  }
  if (const GgufValue* ty = f.find("tokenizer.ggml.token_type")) {
    if (ty->type != GgufValueType::ARRAY || ty->element_type == GgufValueType::STRING || ty->count != n)
      return fail("tokenizer.ggml.token_type must be " + std::to_string(n) + " integers");
    for (size_t i = 0; i < n; ++i) {
      const int64_t v = ty->array_i64(i);
      if (v < 0 || v > 6) return fail("token " + std::to_string(i) + " has unknown type " + std::to_string(v));
      t->types_[i] = TokenType(v);
    }
  }
  t->ids_.reserve(n);
  for (size_t i = 0; i < n; ++i) t->ids_.emplace(t->tokens_[i], int32_t(i));  // first wins on duplicates

  if (t->kind_ == Kind::Bpe) {
    const GgufValue* merges = f.find("tokenizer.ggml.merges");
    if (!merges || merges->type != GgufValueType::ARRAY || merges->element_type != GgufValueType::STRING)
      return fail("tokenizer.ggml.merges (array of strings) is required for gpt2 tokenizers");
    t->merge_rank_.reserve(merges->strings.size());
    for (size_t i = 0; i < merges->strings.size(); ++i) {
      const std::string& m = merges->strings[i];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) return fail("merge " + std::to_string(i) + " '" + m + "' has no separator");
      t->merge_rank_.emplace(m, int32_t(i));
    }
    auto pre = f.get_string("tokenizer.ggml.pre");
    if (!pre) return pre.error();
    t->pre_name_ = pre->value_or("default");
    if (t->pre_name_ == "llama-bpe" || t->pre_name_ == "llama3" || t->pre_name_ == "llama-v3") {
      t->pre_ = unicode::PreTokenizer::Llama3;
      t->ignore_merges_ = true;
      t->add_bos_ = true;
    } else if (t->pre_name_ == "qwen2") {
      t->pre_ = unicode::PreTokenizer::Qwen2;
      t->add_bos_ = false;
    } else if (t->pre_name_ == "default" || t->pre_name_ == "gpt-2" || t->pre_name_ == "gpt2") {
      t->pre_ = unicode::PreTokenizer::Gpt2;
      t->add_bos_ = false;
    } else {
      // Another engine's split would give other ids without any sign of it: refuse.
      return fail("pre-tokenizer '" + t->pre_name_ + "' is not implemented (tutti has default/gpt-2, llama-bpe, qwen2)");
    }
  } else {
    t->pre_name_ = "spm";
    t->add_bos_ = true;
    t->add_space_prefix_ = true;
  }

  auto id_key = [&](const std::string& key, int32_t& out) -> Status {
    auto v = f.get_uint(key);
    if (!v) return v.error();
    if (*v) {
      if (**v >= n) return fail(key + " " + std::to_string(**v) + " is outside the vocabulary");
      out = int32_t(**v);
    }
    return Status::Ok();
  };
  if (t->kind_ == Kind::Spm) {
    t->bos_ = t->find("<s>");
    t->eos_ = t->find("</s>");
    t->unk_ = t->find("<unk>");
  } else {
    t->bos_ = t->find("<|begin_of_text|>") >= 0 ? t->find("<|begin_of_text|>") : t->find("<|endoftext|>");
    t->eos_ = t->find("<|end_of_text|>") >= 0 ? t->find("<|end_of_text|>") : t->find("<|endoftext|>");
  }
  int32_t eot = -1;
  for (auto s : {id_key("tokenizer.ggml.bos_token_id", t->bos_), id_key("tokenizer.ggml.eos_token_id", t->eos_),
                 id_key("tokenizer.ggml.unknown_token_id", t->unk_), id_key("tokenizer.ggml.eot_token_id", eot)})
    if (!s) return s.error();
  for (auto [key, flag] : {std::pair{"tokenizer.ggml.add_bos_token", &t->add_bos_},
                           std::pair{"tokenizer.ggml.add_eos_token", &t->add_eos_},
                           std::pair{"tokenizer.ggml.add_space_prefix", &t->add_space_prefix_}}) {
    auto v = f.get_bool(key);
    if (!v) return v.error();
    if (*v) *flag = **v;
  }
  if (t->add_bos_ && t->bos_ < 0) return fail("the vocabulary asks for BOS but has no BOS token");

  for (int32_t id : {t->eos_, eot}) if (id >= 0) t->eog_.push_back(id);
  for (const char* name : {"<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<|end|>", "<end_of_turn>"})
    if (int32_t id = t->find(name); id >= 0 && t->types_[size_t(id)] == TokenType::Control) t->eog_.push_back(id);

  for (size_t i = 0; i < n; ++i)
    if ((t->types_[i] == TokenType::Control || t->types_[i] == TokenType::UserDefined) && !t->tokens_[i].empty())
      t->special_tokens_.push_back(int32_t(i));
  std::stable_sort(t->special_tokens_.begin(), t->special_tokens_.end(),
                   [&](int32_t a, int32_t b) { return t->tokens_[size_t(a)].size() > t->tokens_[size_t(b)].size(); });
  return t;
}

int32_t Tokenizer::find(std::string_view text) const {
  auto it = ids_.find(std::string(text));
  return it == ids_.end() ? -1 : it->second;
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::find(eog_.begin(), eog_.end(), id) != eog_.end();
}

int32_t Tokenizer::byte_token(uint8_t b) const {
  if (kind_ == Kind::Spm) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    const int32_t id = find(buf);
    return id >= 0 ? id : unk_;
  }
  return find(unicode::byte_to_unicode(b));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && add_bos_) out.push_back(bos_);
  // Partition the text into raw fragments and special tokens.
  bool prev_special = true;  // SPM: a leading space goes before text at the start or after a special token
  size_t raw_begin = 0;
  auto flush_raw = [&](size_t end) {
    if (end > raw_begin) {
      const std::string_view raw = text.substr(raw_begin, end - raw_begin);
      if (kind_ == Kind::Spm) {
        std::string s = add_space_prefix_ && prev_special ? " " : "";
        s += raw;
        encode_spm(escape_spaces(s), out);
      } else {
        encode_bpe(raw, out);
      }
      prev_special = false;
    }
  };
  for (size_t pos = 0; pos < text.size();) {
    int32_t match = -1;
    for (int32_t id : special_tokens_) {
      if (!parse_special && types_[size_t(id)] != TokenType::UserDefined) continue;
      const std::string& s = tokens_[size_t(id)];
      if (text.compare(pos, s.size(), s) == 0) {
        match = id;
        break;
      }
    }
    if (match < 0) {
      ++pos;
      continue;
    }
    flush_raw(pos);
    out.push_back(match);
    prev_special = true;
    pos += tokens_[size_t(match)].size();
    raw_begin = pos;
  }
  flush_raw(text.size());
  if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
  return out;
}

// SentencePiece-style: start from UTF-8 characters, repeatedly merge the adjacent pair whose
// concatenation is the highest-scoring vocabulary entry (leftmost on ties); symbols that are
// not vocabulary entries are split back along their merges, or fall back to byte tokens.
void Tokenizer::encode_spm(const std::string& text, std::vector<int32_t>& out) const {
  struct Symbol {
    int prev, next;
    const char* text;
    size_t n;
  };
  struct Bigram {
    int left, right;
    float score;
    size_t size;
  };
  auto cmp = [](const Bigram& l, const Bigram& r) { return l.score < r.score || (l.score == r.score && l.left > r.left); };
  std::vector<Symbol> symbols;
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(cmp)> queue(cmp);
  std::unordered_map<std::string, std::pair<int, int>> rev_merge;

  for (size_t offs = 0; offs < text.size();) {
    const size_t len = std::min(unicode::utf8_len(uint8_t(text[offs])), text.size() - offs);
    const int index = int(symbols.size());
    symbols.push_back({index - 1, offs + len == text.size() ? -1 : index + 1, text.data() + offs, len});
    offs += len;
  }
  auto try_add = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const std::string s(symbols[size_t(left)].text, symbols[size_t(left)].n + symbols[size_t(right)].n);
    const int32_t id = find(s);
    if (id < 0) return;
    queue.push({left, right, scores_[size_t(id)], s.size()});
    rev_merge[s] = {left, right};
  };
  for (int i = 1; i < int(symbols.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[size_t(b.left)];
    Symbol& r = symbols[size_t(b.right)];
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[size_t(r.next)].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  std::function<void(const Symbol&)> resegment = [&](const Symbol& s) {
    const std::string str(s.text, s.n);
    if (const int32_t id = find(str); id >= 0) {
      out.push_back(id);
      return;
    }
    auto it = rev_merge.find(str);
    if (it == rev_merge.end()) {
      for (size_t j = 0; j < s.n; ++j) out.push_back(byte_token(uint8_t(s.text[j])));
      return;
    }
    resegment(symbols[size_t(it->second.first)]);
    resegment(symbols[size_t(it->second.second)]);
  };
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[size_t(i)].next) resegment(symbols[size_t(i)]);
}

// Byte-level BPE: split into pre-tokens, map bytes to printable code points, then merge the
// lowest-ranked adjacent pair until no ranked pair is left.
void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  struct Symbol {
    int prev, next;
    const char* text;
    size_t n;
  };
  struct Bigram {
    int left, right;
    int32_t rank;
    std::string text;
  };
  auto cmp = [](const Bigram& l, const Bigram& r) { return l.rank > r.rank || (l.rank == r.rank && l.left > r.left); };
  for (const std::string& raw_word : unicode::pre_tokenize(text, pre_)) {
    std::string word;
    for (char c : raw_word) word += unicode::byte_to_unicode(uint8_t(c));
    if (ignore_merges_) {
      if (const int32_t id = find(word); id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    std::vector<Symbol> symbols;
    for (size_t offs = 0; offs < word.size();) {
      const size_t len = std::min(unicode::utf8_len(uint8_t(word[offs])), word.size() - offs);
      const int index = int(symbols.size());
      symbols.push_back({index - 1, offs + len == word.size() ? -1 : index + 1, word.data() + offs, len});
      offs += len;
    }
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(cmp)> queue(cmp);
    auto try_add = [&](int left, int right) {
      if (left == -1 || right == -1) return;
      std::string key(symbols[size_t(left)].text, symbols[size_t(left)].n);
      const size_t left_n = key.size();
      key += ' ';
      key.append(symbols[size_t(right)].text, symbols[size_t(right)].n);
      auto it = merge_rank_.find(key);
      if (it == merge_rank_.end()) return;
      key.erase(left_n, 1);
      queue.push({left, right, it->second, std::move(key)});
    };
    for (int i = 1; i < int(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      Bigram b = queue.top();
      queue.pop();
      Symbol& l = symbols[size_t(b.left)];
      Symbol& r = symbols[size_t(b.right)];
      if (l.n == 0 || r.n == 0) continue;
      if (std::string(l.text, l.n) + std::string(r.text, r.n) != b.text) continue;  // outdated
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) symbols[size_t(r.next)].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    for (const Symbol& s : symbols) {
      if (s.n == 0) continue;
      const std::string str(s.text, s.n);
      if (const int32_t id = find(str); id >= 0) {
        out.push_back(id);
      } else {
        for (char c : str)
          if (const int32_t bid = find(std::string(1, c)); bid >= 0) out.push_back(bid);
      }
    }
  }
}

std::string Tokenizer::piece(int32_t id, bool special) const {
  if (id < 0 || size_t(id) >= tokens_.size()) return {};
  const std::string& text = tokens_[size_t(id)];
  switch (types_[size_t(id)]) {
    case TokenType::Control:
      return special ? text : std::string();
    case TokenType::Unknown:
      return "\xe2\x96\x85";  // U+2585, as the reference engine renders <unk>
    case TokenType::UserDefined:
      return text;
    case TokenType::Byte:
      if (kind_ == Kind::Spm && text.size() == 6 && text.compare(0, 3, "<0x") == 0)
        return std::string(1, char(std::stoi(text.substr(3, 2), nullptr, 16)));
      break;
    default:
      break;
  }
  if (kind_ == Kind::Spm) return unescape_spaces(text);
  std::string out;
  for (uint32_t cp : unicode::decode_utf8(text)) {
    const int b = unicode::unicode_to_byte(cp);
    if (b >= 0)
      out += char(b);
    else
      unicode::append_utf8(out, cp);
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
  std::string out;
  bool first_text = true;
  for (int32_t id : ids) {
    std::string p = piece(id, special);
    if (first_text && !p.empty()) {
      if (kind_ == Kind::Spm && add_space_prefix_ && p[0] == ' ') p.erase(0, 1);
      first_text = false;
    }
    out += p;
  }
  return out;
}

std::string StreamingDetokenizer::push(int32_t id) {
  pending_ += tok_.piece(id, special_);
  // Emit everything up to the last character boundary; hold back an incomplete tail.
  size_t cut = pending_.size();
  for (size_t back = 1; back <= std::min<size_t>(3, pending_.size()); ++back) {
    const uint8_t b = uint8_t(pending_[pending_.size() - back]);
    if ((b & 0xc0) == 0x80) continue;  // continuation byte: keep looking for the lead
    if (b >= 0xc0 && unicode::utf8_len(b) > back) cut = pending_.size() - back;
    break;
  }
  std::string ready = pending_.substr(0, cut);
  pending_.erase(0, cut);
  std::string out;
  for (uint32_t cp : unicode::decode_utf8(ready)) unicode::append_utf8(out, cp);
  return out;
}

std::string StreamingDetokenizer::flush() {
  // push() leaves at most the start of one character here: it can no longer be completed.
  std::string out = pending_.empty() ? "" : "\xef\xbf\xbd";
  pending_.clear();
  return out;
}

}  // namespace tutti
