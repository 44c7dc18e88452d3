// The modified discrete cosine transform of the audio tokenizers: frames of N new samples,
// each transformed over 2N samples (the previous frame's N and its own) under a sine window,
// N coefficients out. Scaled so the transform is orthogonal (time-domain aliasing cancels in
// the overlap-add), which makes the squared error of the coefficients equal to the squared
// error of the samples: quantizing for least error in one domain is least error in the other.
//
// Streaming in both directions: MdctAnalyzer::push takes N samples and gives that frame's
// coefficients; MdctSynthesizer::push takes coefficients and gives N samples, delayed by one
// frame (the overlap-add needs the next frame to finish a block).
#pragma once

#include <memory>
#include <span>
#include <vector>

namespace tutti::codecs {

// Shared per N: the window and the cosine table (N x 2N floats).
struct MdctTables;
std::shared_ptr<const MdctTables> mdct_tables(int n);

class MdctAnalyzer {
 public:
  explicit MdctAnalyzer(int n);
  int n() const { return n_; }
  // Exactly n() new samples; writes n() coefficients.
  void push(std::span<const float> samples, std::span<float> coefficients);

 private:
  int n_;
  std::shared_ptr<const MdctTables> t_;
  std::vector<float> block_;  // the last 2N samples
};

class MdctSynthesizer {
 public:
  explicit MdctSynthesizer(int n);
  int n() const { return n_; }
  // n() coefficients in; n() finished samples out (those of the previous frame's second half
  // plus this frame's first half).
  void push(std::span<const float> coefficients, std::span<float> samples);

 private:
  int n_;
  std::shared_ptr<const MdctTables> t_;
  std::vector<float> overlap_, block_;
};

}  // namespace tutti::codecs
