// Non-x86 builds: only the portable kernels exist.
#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {
const MatmulKernels* avx2_kernels() { return nullptr; }
const MatmulKernels* avx512_kernels() { return nullptr; }
}  // namespace tutti::cpu
