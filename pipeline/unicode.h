// Unicode helpers for the tokenizers: UTF-8 decoding that never fails (invalid bytes become
// U+FFFD, as the reference engine does), general categories from ICU, and the byte-level
// BPE pre-tokenizer splits (GPT-2, Llama 3, Qwen2), hand-written as in the reference engine so
// the lookahead `\s+(?!\S)` behaves exactly as the regular expressions specify.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tutti::unicode {

std::vector<uint32_t> decode_utf8(std::string_view text);
// Strict check: no stray or missing continuation bytes, overlong forms, surrogates or code
// points above U+10FFFF.
bool is_valid_utf8(std::string_view text);
void append_utf8(std::string& out, uint32_t cp);
// Length of the UTF-8 sequence that starts with this byte (1 for stray bytes).
size_t utf8_len(uint8_t first_byte);

bool is_letter(uint32_t cp);      // \p{L}
bool is_number(uint32_t cp);      // \p{N}
bool is_whitespace(uint32_t cp);  // \s (Unicode White_Space)
bool is_assigned(uint32_t cp);    // not Cn

// The byte-level BPE splits, as the reference engine's regular expressions define them:
//   Gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//           \s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2:  as Llama3 with \p{N} in place of \p{N}{1,3} (Qwen2, Qwen2.5 and Qwen3 vocabularies)
enum class PreTokenizer { Gpt2, Llama3, Qwen2 };
// Splits text into pre-tokens (each returned as its code points re-encoded in UTF-8).
std::vector<std::string> pre_tokenize(std::string_view text, PreTokenizer kind);

// GPT-2 byte-level mapping: every byte to a printable code point, and back.
const std::string& byte_to_unicode(uint8_t b);  // UTF-8 of the mapped code point
int unicode_to_byte(uint32_t cp);               // -1 if cp is not a mapped byte

}  // namespace tutti::unicode
