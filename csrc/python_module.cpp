// The Python extension module is an empty shell: importing it loads this shared library, whose
// static initializers register the ops with the dispatcher. Ops are reached via torch.ops.norm_ext.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
