#include "codecs/patch_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace tutti::codecs {

std::vector<float> frame_to_patches(const PatchGeometry& g, std::span<const uint8_t> rgb) {
  const int P = g.patch, per_row = g.width / P;
  std::vector<float> out(size_t(g.patches()) * size_t(g.dim()));
  for (int py = 0; py < g.height / P; ++py)
    for (int px = 0; px < per_row; ++px) {
      float* v = out.data() + size_t(py * per_row + px) * size_t(g.dim());
      for (int y = 0; y < P; ++y)
        for (int x = 0; x < P; ++x) {
          const uint8_t* p = rgb.data() + (size_t(py * P + y) * size_t(g.width) + size_t(px * P + x)) * 3;
          const float r = p[0] / 255.f, gg = p[1] / 255.f, b = p[2] / 255.f;
          const int i = y * P + x;
          v[i] = 0.299f * r + 0.587f * gg + 0.114f * b - 0.5f;
          v[P * P + i] = -0.168736f * r - 0.331264f * gg + 0.5f * b;
          v[2 * P * P + i] = 0.5f * r - 0.418688f * gg - 0.081312f * b;
        }
    }
  return out;
}

std::vector<uint8_t> patches_to_frame(const PatchGeometry& g, std::span<const float> patches) {
  const int P = g.patch, per_row = g.width / P;
  std::vector<uint8_t> rgb(size_t(g.width) * size_t(g.height) * 3);
  auto to8 = [](float f) { return uint8_t(std::clamp(std::lround(f * 255.f), 0l, 255l)); };
  for (int py = 0; py < g.height / P; ++py)
    for (int px = 0; px < per_row; ++px) {
      const float* v = patches.data() + size_t(py * per_row + px) * size_t(g.dim());
      for (int y = 0; y < P; ++y)
        for (int x = 0; x < P; ++x) {
          const int i = y * P + x;
          const float Y = v[i] + 0.5f, cb = v[P * P + i], cr = v[2 * P * P + i];
          uint8_t* p = rgb.data() + (size_t(py * P + y) * size_t(g.width) + size_t(px * P + x)) * 3;
          p[0] = to8(Y + 1.402f * cr);
          p[1] = to8(Y - 0.344136f * cb - 0.714136f * cr);
          p[2] = to8(Y + 1.772f * cb);
        }
    }
  return rgb;
}

std::vector<int32_t> encode_frame(const PatchGeometry& g, const Codebooks& cb, std::span<const uint8_t> rgb) {
  const std::vector<float> patches = frame_to_patches(g, rgb);
  std::vector<int32_t> codes(size_t(g.patches()) * size_t(cb.stages));
  for (int p = 0; p < g.patches(); ++p)
    rvq_encode(cb, std::span<const float>(patches.data() + size_t(p) * size_t(g.dim()), size_t(g.dim())),
               std::span<int32_t>(codes.data() + size_t(p) * size_t(cb.stages), size_t(cb.stages)));
  return codes;
}

Expected<std::vector<uint8_t>> decode_frame(const PatchGeometry& g, const Codebooks& cb, std::span<const int32_t> codes) {
  if (codes.size() != size_t(g.patches()) * size_t(cb.stages))
    return Error{"a frame of " + std::to_string(g.width) + "x" + std::to_string(g.height) + " needs " +
                 std::to_string(g.patches() * cb.stages) + " codes, got " + std::to_string(codes.size())};
  std::vector<float> patches(size_t(g.patches()) * size_t(g.dim()));
  for (int p = 0; p < g.patches(); ++p)
    rvq_decode(cb, std::span<const int32_t>(codes.data() + size_t(p) * size_t(cb.stages), size_t(cb.stages)),
               std::span<float>(patches.data() + size_t(p) * size_t(g.dim()), size_t(g.dim())));
  return patches_to_frame(g, patches);
}

double psnr_db(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  double mse = 0;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) mse += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  mse /= double(std::max<size_t>(n, 1));
  return mse <= 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse);
}

}  // namespace tutti::codecs
