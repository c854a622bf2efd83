// The combining operators of the CUDA kernels' row and block reductions, shared by ops_cuda.cu
// and update_topk_cuda.cu so that both reduce the same way. Included by the CUDA sources only
// (nvcc): the CPU build never sees it.
#pragma once

namespace tdds {

struct Sum {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
// The lowest class or row id (int or int64_t).
struct Min {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return min(a, b);
  }
};

}  // namespace tdds
