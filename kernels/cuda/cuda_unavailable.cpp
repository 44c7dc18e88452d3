// The CUDA entry points of a build made without nvcc (CMake option TUTTI_CUDA off): the
// CPU backend is the only one, and asking for CUDA is an error that says how to get it.
#include <stdexcept>

#include "kernels/cuda/cuda_backend.h"

namespace tutti {

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
  throw std::runtime_error("this build has no CUDA backend (configure with nvcc available and -DTUTTI_CUDA=ON)");
}
int cuda_device_count() { return 0; }
bool cuda_backend_built() { return false; }

}  // namespace tutti
