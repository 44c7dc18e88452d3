// Tokenizers: every test vector in ../shared/vocab (SentencePiece and byte-level BPE), the
// built-in vocabulary, special tokens, and streaming detokenisation of split UTF-8.
#include <gtest/gtest.h>

#include "pipeline/tokenizer.h"
#include "test_support.h"

namespace tutti {
namespace {

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

// .inp: cases separated by "\n__ggml_vocab_test__\n"; .out: one line of ids per case.
std::vector<VocabCase> read_cases(const std::string& base) {
  const std::string inp = test::read_file(base + ".inp"), out = test::read_file(base + ".out");
  std::vector<std::string> texts;
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (size_t p = 0;;) {
    const size_t q = inp.find(sep, p);
    if (q == std::string::npos) break;
    texts.push_back(inp.substr(p, q - p));
    p = q + sep.size();
  }
  std::vector<VocabCase> cases;
  std::istringstream lines(out);
  std::string line;
  for (size_t i = 0; std::getline(lines, line) && i < texts.size(); ++i) {
    VocabCase c{texts[i], {}};
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) c.ids.push_back(id);
    cases.push_back(c);
  }
  return cases;
}

void check_vocab(const std::string& path) {
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f) << f.error().message;
  auto tok = Tokenizer::from_gguf(**f);
  ASSERT_TRUE(tok) << tok.error().message;
  const auto cases = read_cases(path);
  ASSERT_GE(cases.size(), 40u);
  int failures = 0;
  for (const VocabCase& c : cases) {
    const auto got = (*tok)->encode(c.text, false, false);
    if (got != c.ids) {
      ++failures;
      ADD_FAILURE() << "text [" << c.text << "]\n expected " << testing::PrintToString(c.ids) << "\n got      "
                    << testing::PrintToString(got);
    }
    // Decoding gives the text back (SPM drops only the leading space it added).
    EXPECT_EQ((*tok)->decode(got), c.text) << c.text;
  }
  EXPECT_EQ(failures, 0) << "of " << cases.size() << " cases";
}

TEST(Tokenizer, SentencePieceVectors) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-llama-spm.gguf", path);
  check_vocab(path);
}

TEST(Tokenizer, Gpt2BpeVectors) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-gpt-2.gguf", path);
  check_vocab(path);
}

TEST(Tokenizer, Llama3BpeVectors) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-llama-bpe.gguf", path);
  check_vocab(path);
}

TEST(Tokenizer, Qwen2BpeVectors) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-qwen2.gguf", path);
  check_vocab(path);
}

TEST(Tokenizer, SpmAddsBosAndParsesControlTokensOnlyWhenAsked) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-llama-spm.gguf", path);
  auto f = GgufFile::open(path);
  auto tok = std::move(Tokenizer::from_gguf(**f)).value();
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<int32_t>{1, 15043, 3186}));
  const auto plain = tok->encode("</s>", false, false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(tok->encode("</s>", false, true), (std::vector<int32_t>{2}));
  EXPECT_TRUE(tok->is_end_of_generation(2));
}

TEST(Tokenizer, BuiltinVocabularyRoundTrips) {
  RandomModelSpec s;
  s.dim = 32; s.layers = 1; s.heads = 2; s.kv_heads = 2; s.ffn = 32;
  auto f = GgufFile::open(test::random_model(s, "tok-builtin.gguf"));
  ASSERT_TRUE(f);
  auto tok = Tokenizer::from_gguf(**f);
  ASSERT_TRUE(tok) << tok.error().message;
  const std::string text = "Hello, world! tutti streams audio 🎵 and text: naïve café 1234567.";
  const auto ids = (*tok)->encode(text);
  EXPECT_EQ(ids.front(), (*tok)->bos());
  EXPECT_LT(ids.size(), text.size());  // merges learned from the built-in corpus compress it
  EXPECT_EQ((*tok)->decode(ids), text);
}

TEST(Tokenizer, StreamingDetokenizerHoldsBackSplitCharacters) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-gpt-2.gguf", path);
  auto f = GgufFile::open(path);
  auto tok = std::move(Tokenizer::from_gguf(**f)).value();
  // "🦙" is split over byte tokens by GPT-2; no delta may contain a partial character.
  const std::string text = "a 🦙 and 我想在 b";
  const auto ids = tok->encode(text, false);
  StreamingDetokenizer d(*tok);
  std::string joined;
  for (int32_t id : ids) {
    const std::string delta = d.push(id);
    EXPECT_EQ(unicode::decode_utf8(delta).size(), unicode::decode_utf8(delta).size());
    std::string reencoded;
    for (uint32_t cp : unicode::decode_utf8(delta)) unicode::append_utf8(reencoded, cp);
    EXPECT_EQ(reencoded, delta) << "delta is not whole UTF-8";
    for (uint32_t cp : unicode::decode_utf8(delta)) EXPECT_NE(cp, 0xfffdu);
    joined += delta;
  }
  joined += d.flush();
  EXPECT_EQ(joined, text);
}

TEST(Tokenizer, FlushReplacesAnIncompleteTail) {
  TUTTI_REQUIRE_SHARED("vocab/ggml-vocab-gpt-2.gguf", path);
  auto f = GgufFile::open(path);
  auto tok = std::move(Tokenizer::from_gguf(**f)).value();
  const auto ids = tok->encode("🦙", false);
  ASSERT_GT(ids.size(), 1u);
  StreamingDetokenizer d(*tok);
  EXPECT_EQ(d.push(ids[0]), "");
  EXPECT_EQ(d.flush(), "\xef\xbf\xbd");  // U+FFFD, never invalid bytes
}

TEST(Tokenizer, RejectsBrokenTokenizerMetadata) {
  GgufWriter w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
  auto bytes = w.to_bytes();
  auto f = GgufFile::parse(bytes.data(), bytes.size(), "v.gguf");
  auto t = Tokenizer::from_gguf(**f);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("merges"), std::string::npos);
  w.set_string("tokenizer.ggml.model", "wordpiece");
  bytes = w.to_bytes();
  f = GgufFile::parse(bytes.data(), bytes.size(), "v.gguf");
  ASSERT_FALSE(Tokenizer::from_gguf(**f));
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_f32_array("tokenizer.ggml.scores", {0.f});
  bytes = w.to_bytes();
  f = GgufFile::parse(bytes.data(), bytes.size(), "v.gguf");
  auto t2 = Tokenizer::from_gguf(**f);
  ASSERT_FALSE(t2);
  EXPECT_NE(t2.error().message.find("scores"), std::string::npos);
}

}  // namespace
}  // namespace tutti

namespace tutti {
namespace {

std::vector<std::string> split(const std::string& text, unicode::PreTokenizer kind) { return unicode::pre_tokenize(text, kind); }
using Words = std::vector<std::string>;

// The Llama 3 split, case by case from its regular expression:
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
TEST(PreTokenizer, Llama3Split) {
  const auto L3 = unicode::PreTokenizer::Llama3;
  EXPECT_EQ(split("Hello world", L3), (Words{"Hello", " world"}));
  EXPECT_EQ(split("1234567", L3), (Words{"123", "456", "7"}));
  EXPECT_EQ(split("I'M here, you'RE", L3), (Words{"I", "'M", " here", ",", " you", "'RE"}));
  EXPECT_EQ(split("a  b", L3), (Words{"a", " ", " b"}));  // \s+(?!\S) leaves the last space to the word
  EXPECT_EQ(split("x\n\n  y", L3), (Words{"x", "\n\n", " ", " y"}));  // \s*[\r\n]+ stops at the last newline
  EXPECT_EQ(split("$100!!\n", L3), (Words{"$", "100", "!!\n"}));
  EXPECT_EQ(split("end  ", L3), (Words{"end", "  "}));
  EXPECT_EQ(split("naïve café", L3), (Words{"naïve", " café"}));
  EXPECT_EQ(split("(hi)", L3), (Words{"(hi", ")"}));  // one non-letter may lead a word
}

TEST(PreTokenizer, Gpt2Split) {
  const auto G2 = unicode::PreTokenizer::Gpt2;
  EXPECT_EQ(split("Hello world", G2), (Words{"Hello", " world"}));
  EXPECT_EQ(split("1234567", G2), (Words{"1234567"}));
  EXPECT_EQ(split("I'M here", G2), (Words{"I", "'", "M", " here"}));  // contractions are lowercase only
  EXPECT_EQ(split("it's", G2), (Words{"it", "'s"}));
  EXPECT_EQ(split("a  b", G2), (Words{"a", " ", " b"}));
  EXPECT_EQ(split("(hi)", G2), (Words{"(", "hi", ")"}));
  EXPECT_EQ(split("x\n\n  y", G2), (Words{"x", "\n\n ", " y"}));
}

TEST(PreTokenizer, InvalidUtf8BecomesReplacementCharacters) {
  const auto words = split(std::string("a\xff\xfe b"), unicode::PreTokenizer::Gpt2);
  std::string joined;
  for (auto& w : words) joined += w;
  EXPECT_EQ(joined, "a\xef\xbf\xbd\xef\xbf\xbd b");
}

}  // namespace
}  // namespace tutti
