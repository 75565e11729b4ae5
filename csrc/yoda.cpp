// The compiled extension yoda_kernels._C. Importing it runs the static TORCH_LIBRARY_IMPL registrations of
// csrc/cpu/*.cpp (and csrc/cuda/*.cu when built WITH_CUDA). The op schemas are defined once, from Python,
// by yoda_kernels/ops.py before this module is imported (STYLE.md §4), so no TORCH_LIBRARY block lives here.
//
// The module itself is plain CPython (no pybind11, as pytorch/extension-cpp does) and exposes three scalar
// test hooks on csrc/philox.h, so that tests can check the C++ noise stream word for word (Random123
// known-answer vectors, bit-exact uniforms against yoda_kernels/philox.py):
//     _C.philox4x32(c0, c1, c2, c3, k0, k1, rounds=10) -> (w0, w1, w2, w3)
//     _C.uint_to_uniform(u) -> float
//     _C.randn4(seed, step, counter) -> (n0, n1, n2, n3)
#include <Python.h>

#include <initializer_list>

#include "philox.h"

namespace {

PyObject* py_philox4x32(PyObject*, PyObject* args) {
  unsigned long c0, c1, c2, c3, k0, k1;
  int rounds = yoda::kPhiloxRounds;
  if (!PyArg_ParseTuple(args, "kkkkkk|i", &c0, &c1, &c2, &c3, &k0, &k1, &rounds)) return nullptr;
  for (unsigned long v : {c0, c1, c2, c3, k0, k1}) {
    if (v > 0xFFFFFFFFul) {
      PyErr_SetString(PyExc_ValueError, "philox4x32: counter and key words must be uint32");
      return nullptr;
    }
  }
  if (rounds < 0) {
    PyErr_SetString(PyExc_ValueError, "philox4x32: rounds must be >= 0");
    return nullptr;
  }
  const yoda::Philox4 r = yoda::philox4x32(static_cast<uint32_t>(c0), static_cast<uint32_t>(c1),
                                           static_cast<uint32_t>(c2), static_cast<uint32_t>(c3),
                                           static_cast<uint32_t>(k0), static_cast<uint32_t>(k1), rounds);
  return Py_BuildValue("(kkkk)", (unsigned long)r.v[0], (unsigned long)r.v[1], (unsigned long)r.v[2],
                       (unsigned long)r.v[3]);
}

PyObject* py_uint_to_uniform(PyObject*, PyObject* args) {
  unsigned long u;
  if (!PyArg_ParseTuple(args, "k", &u)) return nullptr;
  if (u > 0xFFFFFFFFul) {
    PyErr_SetString(PyExc_ValueError, "uint_to_uniform: u must be uint32");
    return nullptr;
  }
  return PyFloat_FromDouble(static_cast<double>(yoda::uint_to_uniform(static_cast<uint32_t>(u))));
}

PyObject* py_randn4(PyObject*, PyObject* args) {
  unsigned long seed, step, counter;
  if (!PyArg_ParseTuple(args, "kkk", &seed, &step, &counter)) return nullptr;
  if (seed > 0xFFFFFFFFul || step > 0xFFFFFFFFul || counter > 0xFFFFFFFFul) {
    PyErr_SetString(PyExc_ValueError, "randn4: seed, step and counter must be uint32");
    return nullptr;
  }
  const yoda::Normal4 n =
      yoda::randn4(static_cast<uint32_t>(seed), static_cast<uint32_t>(step), static_cast<uint32_t>(counter));
  return Py_BuildValue("(dddd)", (double)n.v[0], (double)n.v[1], (double)n.v[2], (double)n.v[3]);
}

PyMethodDef kMethods[] = {
    {"philox4x32", py_philox4x32, METH_VARARGS, "Philox 4x32-R words of counter (c0..c3), key (k0, k1)."},
    {"uint_to_uniform", py_uint_to_uniform, METH_VARARGS, "Triton's uint32 -> float32 uniform in [0, 1)."},
    {"randn4", py_randn4, METH_VARARGS, "The four normals of tl.randn4x((step << 32) | seed, counter)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",                                                                                // m_name
      "yoda fused kernels: registers CPU (and CUDA) implementations of torch.ops.yoda.*",  // m_doc
      -1,                                                                                  // m_size
      kMethods,                                                                            // m_methods
  };
  return PyModule_Create(&module_def);
}
}
