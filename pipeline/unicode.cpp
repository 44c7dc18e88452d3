#include "pipeline/unicode.h"

#include <unicode/uchar.h>

#include <array>
#include <unordered_map>

namespace tutti::unicode {

size_t utf8_len(uint8_t b) {
  if (b < 0x80) return 1;
  if ((b & 0xe0) == 0xc0) return 2;
  if ((b & 0xf0) == 0xe0) return 3;
  if ((b & 0xf8) == 0xf0) return 4;
  return 1;
}

std::vector<uint32_t> decode_utf8(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b = uint8_t(s[i]);
    const size_t n = utf8_len(b);
    uint32_t cp = 0xfffd;
    bool ok = n == 1 ? b < 0x80 : i + n <= s.size();
    if (ok && n > 1) {
      cp = b & (0xff >> (n + 1));
      for (size_t k = 1; k < n && ok; ++k) {
        const uint8_t c = uint8_t(s[i + k]);
        ok = (c & 0xc0) == 0x80;
        cp = cp << 6 | (c & 0x3f);
      }
    } else if (ok) {
      cp = b;
    }
    if (ok) {
      out.push_back(cp);
      i += n;
    } else {
      out.push_back(0xfffd);
      i += 1;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const uint8_t b = uint8_t(s[i]);
    size_t n;
    uint32_t cp, min;
    if (b < 0x80) { ++i; continue; }
    if ((b & 0xe0) == 0xc0) { n = 2; cp = b & 0x1f; min = 0x80; }
    else if ((b & 0xf0) == 0xe0) { n = 3; cp = b & 0x0f; min = 0x800; }
    else if ((b & 0xf8) == 0xf0) { n = 4; cp = b & 0x07; min = 0x10000; }
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const uint8_t c = uint8_t(s[i + k]);
      if ((c & 0xc0) != 0x80) return false;
      cp = cp << 6 | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | cp >> 6);
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | cp >> 18);
    out += char(0x80 | (cp >> 12 & 0x3f));
    out += char(0x80 | (cp >> 6 & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

bool is_letter(uint32_t cp) {
  switch (u_charType(UChar32(cp))) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER: case U_OTHER_LETTER: return true;
    default: return false;
  }
}

bool is_number(uint32_t cp) {
  switch (u_charType(UChar32(cp))) {
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER: return true;
    default: return false;
  }
}

bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
         cp == 0x3000;
}

bool is_assigned(uint32_t cp) { return u_charType(UChar32(cp)) != U_UNASSIGNED; }

namespace {

constexpr uint32_t kOutOfRange = 0xffffffff;

struct Flags {
  bool letter = false, number = false, space = false, defined = false;
};

class Splitter {
 public:
  explicit Splitter(const std::vector<uint32_t>& cps) : c_(cps) {}
  uint32_t at(size_t p) const { return p < c_.size() ? c_[p] : kOutOfRange; }
  Flags flags(size_t p) const {
    Flags f;
    if (p >= c_.size()) return f;
    const uint32_t cp = c_[p];
    f.letter = is_letter(cp);
    f.number = is_number(cp);
    f.space = is_whitespace(cp);
    f.defined = f.letter || f.number || f.space || is_assigned(cp);
    return f;
  }
  const std::vector<uint32_t>& c_;
};

inline uint32_t lower_ascii(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// Returns the lengths (in code points) of the pre-tokens.
std::vector<size_t> split_gpt2(const std::vector<uint32_t>& cps) {
  Splitter s(cps);
  std::vector<size_t> out;
  const size_t n = cps.size();
  size_t pos = 0;
  while (pos < n) {
    const size_t start = pos;
    auto emit = [&] { out.push_back(pos - start); };
    const uint32_t cpt = s.at(pos);
    const Flags f = s.flags(pos);
    // 's|'t|'re|'ve|'m|'ll|'d
    if (cpt == '\'' && pos + 1 < n) {
      const uint32_t c1 = s.at(pos + 1);
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') { pos += 2; emit(); continue; }
      if (pos + 2 < n) {
        const uint32_t c2 = s.at(pos + 2);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) { pos += 3; emit(); continue; }
      }
    }
    const Flags f2 = cpt == ' ' ? s.flags(pos + 1) : f;
    //  ?\p{L}+
    if (f2.letter) {
      pos += cpt == ' ';
      while (s.flags(pos).letter) ++pos;
      emit();
      continue;
    }
    //  ?\p{N}+
    if (f2.number) {
      pos += cpt == ' ';
      while (s.flags(pos).number) ++pos;
      emit();
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+
    if (!(f2.space || f2.letter || f2.number) && f2.defined) {
      pos += cpt == ' ';
      for (Flags g = s.flags(pos); !(g.space || g.letter || g.number) && g.defined; g = s.flags(pos)) ++pos;
      emit();
      continue;
    }
    size_t ws = 0;
    while (s.flags(pos + ws).space) ++ws;
    // \s+(?!\S)
    if (ws > 1 && s.at(pos + ws) != kOutOfRange) { pos += ws - 1; emit(); continue; }
    // \s+
    if (ws > 0) { pos += ws; emit(); continue; }
    ++pos;  // no match: the character on its own
    emit();
  }
  return out;
}

// The Llama 3 split; Qwen2's differs only in taking digits one at a time (\p{N} instead of
// \p{N}{1,3}), so max_digits is 3 or 1.
std::vector<size_t> split_llama3(const std::vector<uint32_t>& cps, size_t max_digits) {
  Splitter s(cps);
  std::vector<size_t> out;
  const size_t n = cps.size();
  size_t pos = 0;
  while (pos < n) {
    const size_t start = pos;
    auto emit = [&] { out.push_back(pos - start); };
    const uint32_t cpt = s.at(pos);
    const Flags f = s.flags(pos);
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (cpt == '\'' && pos + 1 < n) {
      const uint32_t c1 = lower_ascii(s.at(pos + 1));
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') { pos += 2; emit(); continue; }
      if (pos + 2 < n) {
        const uint32_t c2 = lower_ascii(s.at(pos + 2));
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) { pos += 3; emit(); continue; }
      }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!(cpt == '\r' || cpt == '\n' || f.number)) {
      if (f.letter || s.flags(pos + 1).letter) {
        ++pos;
        while (s.flags(pos).letter) ++pos;
        emit();
        continue;
      }
    }
    // \p{N}{1,3} (Llama 3) or \p{N} (Qwen2)
    if (f.number) {
      while (s.flags(pos).number && pos - start < max_digits) ++pos;
      emit();
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    const Flags f2 = cpt == ' ' ? s.flags(pos + 1) : f;
    if (!(f2.space || f2.letter || f2.number) && f2.defined) {
      pos += cpt == ' ';
      for (Flags g = s.flags(pos); !(g.space || g.letter || g.number) && g.defined; g = s.flags(pos)) ++pos;
      while (s.at(pos) == '\r' || s.at(pos) == '\n') ++pos;
      emit();
      continue;
    }
    size_t ws = 0, last_rn_end = 0;
    while (s.flags(pos + ws).space) {
      const uint32_t c = s.at(pos + ws);
      if (c == '\r' || c == '\n') last_rn_end = pos + ws + 1;
      ++ws;
    }
    // \s*[\r\n]+
    if (last_rn_end > 0) { pos = last_rn_end; emit(); continue; }
    // \s+(?!\S)
    if (ws > 1 && s.at(pos + ws) != kOutOfRange) { pos += ws - 1; emit(); continue; }
    // \s+
    if (ws > 0) { pos += ws; emit(); continue; }
    ++pos;
    emit();
  }
  return out;
}

struct ByteMap {
  std::array<std::string, 256> to_unicode;
  std::unordered_map<uint32_t, int> to_byte;
  ByteMap() {
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(next++);
      append_utf8(to_unicode[size_t(b)], cp);
      to_byte[cp] = b;
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

std::vector<std::string> pre_tokenize(std::string_view text, PreTokenizer kind) {
  const std::vector<uint32_t> cps = decode_utf8(text);
  std::vector<size_t> lens;
  switch (kind) {
    case PreTokenizer::Gpt2: lens = split_gpt2(cps); break;
    case PreTokenizer::Llama3: lens = split_llama3(cps, 3); break;
    case PreTokenizer::Qwen2: lens = split_llama3(cps, 1); break;
  }
  std::vector<std::string> words;
  words.reserve(lens.size());
  size_t p = 0;
  for (size_t len : lens) {
    std::string w;
    for (size_t i = p; i < p + len; ++i) append_utf8(w, cps[i]);
    words.push_back(std::move(w));
    p += len;
  }
  return words;
}

const std::string& byte_to_unicode(uint8_t b) { return byte_map().to_unicode[b]; }

int unicode_to_byte(uint32_t cp) {
  auto it = byte_map().to_byte.find(cp);
  return it == byte_map().to_byte.end() ? -1 : it->second;
}

}  // namespace tutti::unicode
