// The CUDA backend's entry points, in plain C++ so that code built without CUDA can ask for
// it: a build without nvcc links kernels/cuda/cuda_unavailable.cpp instead, whose
// make_cuda_backend says so in its error.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace tutti {

struct CudaBackendOptions {
  int device = 0;                  // CUDA device ordinal
  bool f32_weights_to_bf16 = true; // F32 weights become BF16 on upload (half the bytes per
                                   // step); false keeps them F32 (exact comparisons)
};

// Throws std::runtime_error naming the reason (no CUDA in this build, no device, driver
// error). Weights uploaded through it stay resident in GPU memory until it is destroyed.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options = {});
// GPUs visible to this process (0 without a driver or without CUDA in this build).
int cuda_device_count();
bool cuda_backend_built();

}  // namespace tutti
