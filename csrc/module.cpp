// The Python module luser_fast._C: empty; importing it runs every op family's
// TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL registrations linked into the extension.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
