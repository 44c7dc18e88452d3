// The image and video tokenizer: a frame (RGB24, the modality's width x height) is cut into
// square patches (patch_size pixels), each patch converted to Y, Cb, Cr planes (BT.601, full
// range, centred on 0) and flattened to one vector of 3 * patch_size^2 values, which becomes
// one code per residual stage. Patches go in raster order, stage 0 first within a patch.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "codecs/rvq.h"

namespace tutti::codecs {

struct PatchGeometry {
  int width = 256, height = 256, patch = 8;
  int patches() const { return (width / patch) * (height / patch); }
  int dim() const { return 3 * patch * patch; }
};

// The patch vectors of one RGB24 frame (patches() x dim() floats).
std::vector<float> frame_to_patches(const PatchGeometry& g, std::span<const uint8_t> rgb);
// The RGB24 frame of patch vectors (clamped to 0..255).
std::vector<uint8_t> patches_to_frame(const PatchGeometry& g, std::span<const float> patches);

// Codes of a frame: patches() * stages codes.
std::vector<int32_t> encode_frame(const PatchGeometry& g, const Codebooks& cb, std::span<const uint8_t> rgb);
// The frame those codes describe; a code count other than patches() * stages is an Error.
Expected<std::vector<uint8_t>> decode_frame(const PatchGeometry& g, const Codebooks& cb, std::span<const int32_t> codes);

// Peak signal-to-noise ratio of two RGB24 frames, in dB.
double psnr_db(std::span<const uint8_t> a, std::span<const uint8_t> b);

}  // namespace tutti::codecs
