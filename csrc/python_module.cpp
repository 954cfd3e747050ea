// The Python extension module: importing it loads this shared library, whose static initializers
// register the ops with the dispatcher (ops are reached via torch.ops.norm_ext). Its one function is
// a non-op helper: which instruction set the CPU kernels run with.
#include <Python.h>

#include "cpu/isa.h"

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(norm_ext::cpu::isa_name(norm_ext::cpu::detect_isa()));
}

PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set of the CPU kernels: 'avx512', 'avx2' or 'default'."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, module_methods};
  return PyModule_Create(&module_def);
}
