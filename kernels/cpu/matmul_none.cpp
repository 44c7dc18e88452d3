// Non-x86 builds: only the portable kernels exist.
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul_kernels.h"

namespace tutti::cpu {
const MatmulKernels* avx2_kernels() { return nullptr; }
const MatmulKernels* avx512_kernels() { return nullptr; }
bool attend_group_avx512(const KvLayerView&, const AttentionSeq&, int, int, int, int, float, const float*, float*, float*) {
  return false;
}
}  // namespace tutti::cpu
