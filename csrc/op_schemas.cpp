// Schemas of the extension ops (siblings of the reference ops, same schema text) and their
// Meta kernels. The CPU and CUDA kernels are registered from cpu/ and cuda/.
#include <torch/library.h>

#include "op_contract.h"

namespace tdds {
namespace {
// Both ops only mutate their (x!) arguments in place, so shape propagation (Meta/fake tensors,
// torch.compile, opcheck) has nothing to do. Registered here so that loading the library alone
// (Python `import tdds_kernels._C` or a C++ trainer linking it) is complete.
void update_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&) {}
void update_topk_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const OptTensor&, const OptTensor&) {}
void fold_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {}
void epoch_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double) {}
}  // namespace
}  // namespace tdds

// FRAGMENT: tdds_kernels/ops/schema.py defines the other tdds ops from Python.
TORCH_LIBRARY_FRAGMENT(tdds, m) {
  m.def("update_ext" TDDS_UPDATE_SCHEMA);
  m.def("update_topk_ext" TDDS_UPDATE_TOPK_SCHEMA);
  m.def("epoch_step_ext" TDDS_EPOCH_STEP_SCHEMA);
  m.def("fold_baselines_ext" TDDS_FOLD_SCHEMA);
}

TORCH_LIBRARY_IMPL(tdds, Meta, m) {
  m.impl("update_ext", &tdds::update_meta);
  m.impl("update_topk_ext", &tdds::update_topk_meta);
  m.impl("epoch_step_ext", &tdds::epoch_step_meta);
  m.impl("fold_baselines_ext", &tdds::fold_meta);
}
