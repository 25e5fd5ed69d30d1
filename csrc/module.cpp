// The Python module luser_fast._C. Importing it runs every op family's
// TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL registrations linked into the extension; it
// also exports, for luser_fast.constants:
//   constants()     {C++ name: value} of every entry of LF_CONSTANTS (common/constants.h),
//                   as the compiler evaluated them;
//   struct_sizes()  {type name: sizeof} of the structs whose layout Python relies on.
#include <Python.h>

#include "common/constants.h"
#include "radon/joseph.h"

namespace {

PyObject* to_python(int v) { return PyLong_FromLong(v); }
PyObject* to_python(double v) { return PyFloat_FromDouble(v); }

// Sets d[name] = value; false (with the Python error set) when that fails.
template <typename T>
bool set_item(PyObject* d, const char* name, T value) {
  PyObject* v = to_python(value);
  if (v == nullptr) return false;
  const int rc = PyDict_SetItemString(d, name, v);
  Py_DECREF(v);
  return rc == 0;
}

PyObject* constants(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  bool ok = true;
#define LF_EXPORT_CONSTANT(TYPE, NAME, VALUE) ok = ok && set_item<TYPE>(d, #NAME, luser_fast::NAME);
  LF_CONSTANTS(LF_EXPORT_CONSTANT)
#undef LF_EXPORT_CONSTANT
  if (!ok) {
    Py_DECREF(d);
    return nullptr;
  }
  return d;
}

PyObject* struct_sizes(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  if (!set_item<int>(d, "JosephRay", (int)sizeof(luser_fast::radon::JosephRay))) {
    Py_DECREF(d);
    return nullptr;
  }
  return d;
}

PyMethodDef methods[] = {
    {"constants", constants, METH_NOARGS,
     "{C++ name: value} of the constants shared with Python (csrc/common/constants.h)."},
    {"struct_sizes", struct_sizes, METH_NOARGS,
     "{struct name: sizeof} of the structs whose layout Python relies on."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
