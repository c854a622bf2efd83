// The Python module tdds_kernels._C: importing it loads the shared library, whose static
// TORCH_LIBRARY initializers register the ops. Its only Python functions report which CPU
// kernel variant runs (they are not ops: no tensors, nothing to dispatch).
#include <Python.h>

#include "cpu/cpu_isa.h"

namespace {

PyObject* cpu_variant(PyObject*, PyObject*) {
  return PyUnicode_FromString(tdds::cpu::isa_name(tdds::cpu::selected_isa()));
}

PyObject* cpu_variant_supported(PyObject*, PyObject*) {
  return PyUnicode_FromString(tdds::cpu::isa_name(tdds::cpu::widest_supported_isa()));
}

PyMethodDef methods[] = {
    {"cpu_variant", cpu_variant, METH_NOARGS,
     "The CPU kernel variant in use: 'AVX512', 'AVX2' or 'DEFAULT' (the widest the CPU supports, "
     "narrowed by ATEN_CPU_CAPABILITY)."},
    {"cpu_variant_supported", cpu_variant_supported, METH_NOARGS,
     "The widest CPU kernel variant this CPU and OS can run, whatever ATEN_CPU_CAPABILITY says."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "tdds C++/CUDA ops (torch.ops.tdds.*_ext)", -1, methods};
  return PyModule_Create(&module_def);
}
