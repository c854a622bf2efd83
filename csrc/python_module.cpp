// The Python module tdds_kernels._C: importing it loads the shared library, whose static
// TORCH_LIBRARY initializers register the ops. It has no Python functions of its own.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "tdds C++/CUDA ops (torch.ops.tdds.*_ext)", -1, nullptr};
  return PyModule_Create(&module_def);
}
