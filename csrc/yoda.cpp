// The compiled extension yoda_kernels._C. Importing it runs the static TORCH_LIBRARY_IMPL registrations of
// csrc/cpu/*.cpp (and csrc/cuda/*.cu when built WITH_CUDA). The op schemas are defined once, from Python,
// by yoda_kernels/ops.py before this module is imported, so no TORCH_LIBRARY block lives here.
//
// The module itself is plain CPython (no pybind11, as pytorch/extension-cpp does) and exposes four scalar
// test hooks on csrc/philox.h, so that tests can check the C++ noise stream bit for bit against
// yoda_kernels/philox.py (and Philox against Random123's known-answer vectors):
//     _C.philox4x32(c0, c1, c2, c3, k0, k1, rounds=10) -> (w0, w1, w2, w3)
//     _C.uniforms(w) -> (u1, t): the radius and angle uniforms of word w
//     _C.randn4(seed, step, counter) -> (n0, n1, n2, n3)
// and four on the block (SIMD) noise path of csrc/cpu/normals.h, the one masked_step uses:
//     _C.philox_block(seed, step, g0, n) -> bytes: uint32 words (4, n), word j of counter g0 + i at [j, i]
//     _C.randn4_block(seed, step, g0, n) -> bytes: float32 normals (4, n), lane l of counter g0 + i at [l, i]
//     _C.box_muller_block(a, b, path="block") -> (bytes, bytes): float32 (cos, sin) normals of the word pairs
//         (a[i], b[i]) (a, b: buffers of uint32, same length); path "block" runs the dispatched block path,
//         "baseline" its baseline-ISA build, "scalar" philox.h's normal_pair one pair at a time
//     _C.noise_isa() -> "x86-64-v4", "x86-64-v3" or "default": the build the block path runs on this CPU;
//         "default (built without dispatch)" where it has the baseline only (not x86-64 Linux, GCC < 9,
//         -DYODA_BASELINE_NOISE)
#define PY_SSIZE_T_CLEAN  // "y#" takes a Py_ssize_t length
#include <Python.h>

#include <cstring>
#include <string>
#include <initializer_list>
#include <vector>

#include "cpu/normals.h"
#include "philox.h"

namespace {

// Python ints -> uint32, refusing negatives and anything above 2**32 - 1 (PyArg_ParseTuple's "k" would mask
// them silently: 2**64 + 5 read as 5). On failure a ValueError "NAME: WHAT must be uint32" is set.
bool as_uint32s(std::initializer_list<PyObject*> objs, uint32_t* out, const char* name, const char* what) {
  size_t i = 0;
  for (PyObject* o : objs) {
    const unsigned long long v = PyLong_Check(o) ? PyLong_AsUnsignedLongLong(o) : ~0ull;
    if (PyErr_Occurred() || !PyLong_Check(o) || v > 0xFFFFFFFFull) {
      PyErr_Clear();
      PyErr_Format(PyExc_ValueError, "%s: %s must be uint32", name, what);
      return false;
    }
    out[i++] = static_cast<uint32_t>(v);
  }
  return true;
}

PyObject* py_philox4x32(PyObject*, PyObject* args) {
  PyObject *c0, *c1, *c2, *c3, *k0, *k1;
  int rounds = yoda::kPhiloxRounds;
  uint32_t w[6];
  if (!PyArg_ParseTuple(args, "OOOOOO|i", &c0, &c1, &c2, &c3, &k0, &k1, &rounds)) return nullptr;
  if (!as_uint32s({c0, c1, c2, c3, k0, k1}, w, "philox4x32", "counter and key words")) return nullptr;
  if (rounds < 0 || rounds > 64) {
    PyErr_SetString(PyExc_ValueError, "philox4x32: rounds must be in [0, 64]");
    return nullptr;
  }
  const yoda::Philox4 r = yoda::philox4x32(w[0], w[1], w[2], w[3], w[4], w[5], rounds);
  return Py_BuildValue("(kkkk)", (unsigned long)r.v[0], (unsigned long)r.v[1], (unsigned long)r.v[2],
                       (unsigned long)r.v[3]);
}

PyObject* py_uniforms(PyObject*, PyObject* args) {
  PyObject* o;
  uint32_t w;
  if (!PyArg_ParseTuple(args, "O", &o) || !as_uint32s({o}, &w, "uniforms", "w")) return nullptr;
  return Py_BuildValue("(dd)", static_cast<double>(yoda::radius_uniform(w)), static_cast<double>(yoda::angle_uniform(w)));
}

PyObject* py_randn4(PyObject*, PyObject* args) {
  PyObject *os, *ot, *oc;
  uint32_t v[3];
  if (!PyArg_ParseTuple(args, "OOO", &os, &ot, &oc)) return nullptr;
  if (!as_uint32s({os, ot, oc}, v, "randn4", "seed, step and counter")) return nullptr;
  const yoda::Normal4 n = yoda::randn4(v[0], v[1], v[2]);
  return Py_BuildValue("(dddd)", (double)n.v[0], (double)n.v[1], (double)n.v[2], (double)n.v[3]);
}

// seed, step, g0 (uint32) and n (>= 0, n + g0 may wrap like the counter does) of the block hooks.
bool parse_block_args(PyObject* args, const char* name, uint32_t& seed, uint32_t& step, uint32_t& g0,
                      Py_ssize_t& n) {
  PyObject *os, *ot, *og;
  uint32_t v[3];
  if (!PyArg_ParseTuple(args, "OOOn", &os, &ot, &og, &n)) return false;
  if (!as_uint32s({os, ot, og}, v, name, "seed, step and g0")) return false;
  if (n < 0 || n > (Py_ssize_t{1} << 28)) {
    PyErr_Format(PyExc_ValueError, "%s: n must be in [0, 2**28], got %zd", name, n);
    return false;
  }
  seed = v[0], step = v[1], g0 = v[2];
  return true;
}

PyObject* py_philox_block(PyObject*, PyObject* args) {
  uint32_t seed, step, g0;
  Py_ssize_t n;
  if (!parse_block_args(args, "philox_block", seed, step, g0, n)) return nullptr;
  std::vector<uint32_t> w(4 * static_cast<size_t>(n) + 1);
  yoda::philox_block(seed, step, g0, n, w.data(), w.data() + n, w.data() + 2 * n, w.data() + 3 * n);
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(w.data()), 16 * n);
}

PyObject* py_randn4_block(PyObject*, PyObject* args) {
  uint32_t seed, step, g0;
  Py_ssize_t n;
  if (!parse_block_args(args, "randn4_block", seed, step, g0, n)) return nullptr;
  const size_t m = static_cast<size_t>(n);
  std::vector<uint32_t> w(4 * yoda::kNoiseSub);
  std::vector<float> zc(2 * m + 1), zs(2 * m + 1), out(4 * m + 1);
  yoda::randn4_block(seed, step, g0, n, 2, w.data(), zc.data(), zs.data());
  const float* lanes[4] = {zc.data(), zs.data(), zc.data() + m, zs.data() + m};  // normals.h's layout
  for (int l = 0; l < 4; ++l)
    for (size_t i = 0; i < m; ++i) out[l * m + i] = lanes[l][i];
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(out.data()), 16 * n);
}

PyObject* py_box_muller_block(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"a", "b", "path", nullptr};
  Py_buffer a, b;
  const char* path = "block";
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*|s", const_cast<char**>(kw), &a, &b, &path)) return nullptr;
  PyObject* result = nullptr;
  const std::string which(path);
  if (which != "block" && which != "baseline" && which != "scalar") {
    PyErr_Format(PyExc_ValueError, "box_muller_block: path must be 'block', 'baseline' or 'scalar', got '%s'", path);
  } else if (a.len != b.len || a.len % 4 != 0) {
    PyErr_Format(PyExc_ValueError, "box_muller_block: a and b must hold the same number of uint32 (got %zd and %zd bytes)",
                 a.len, b.len);
  } else {
    const Py_ssize_t m = a.len / 4;
    std::vector<uint32_t> wa(m + 1), wb(m + 1);  // aligned copies (the buffers may be any bytes-like object)
    std::memcpy(wa.data(), a.buf, a.len);
    std::memcpy(wb.data(), b.buf, b.len);
    std::vector<float> zc(m + 1), zs(m + 1);
    if (which == "scalar") {
      for (Py_ssize_t i = 0; i < m; ++i) yoda::normal_pair(wa[i], wb[i], zc[i], zs[i]);
    } else if (which == "baseline") {
      yoda::box_muller_block_baseline(wa.data(), wb.data(), m, zc.data(), zs.data());
    } else {
      yoda::box_muller_block(wa.data(), wb.data(), m, zc.data(), zs.data());
    }
    result = Py_BuildValue("(y#y#)", reinterpret_cast<const char*>(zc.data()), 4 * m,
                           reinterpret_cast<const char*>(zs.data()), 4 * m);
  }
  PyBuffer_Release(&a);
  PyBuffer_Release(&b);
  return result;
}

PyObject* py_noise_isa(PyObject*, PyObject*) { return PyUnicode_FromString(yoda::normals_isa()); }

PyMethodDef kMethods[] = {
    {"philox4x32", py_philox4x32, METH_VARARGS, "Philox 4x32-R words of counter (c0..c3), key (k0, k1)."},
    {"uniforms", py_uniforms, METH_VARARGS, "The radius and angle uniforms (u1, t) of a uint32 word."},
    {"randn4", py_randn4, METH_VARARGS, "The four normals (lanes 0..3) of the Philox call (seed, step, counter)."},
    {"philox_block", py_philox_block, METH_VARARGS, "Block Philox words (4, n) of counters g0 .. g0 + n - 1."},
    {"randn4_block", py_randn4_block, METH_VARARGS, "Block (SIMD) normals (4, n) of counters g0 .. g0 + n - 1."},
    {"box_muller_block", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_box_muller_block)),
     METH_VARARGS | METH_KEYWORDS, "Box-Muller of uint32 word pairs: path block, baseline or scalar."},
    {"noise_isa", py_noise_isa, METH_NOARGS, "The instruction set the block noise path runs with."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
// The fingerprint of the sources this build compiled (setup.py: yoda_kernels/_source_hash.py), kept in the
// binary as a string that yoda_kernels.ops reads from the file before importing it, and as _C.source_hash.
#ifndef YODA_SOURCE_HASH
#define YODA_SOURCE_HASH 0x0000000000000000ULL
#endif
#define YODA_STR2(x) #x
#define YODA_STR(x) YODA_STR2(x)
__attribute__((used)) const char yoda_source_hash_tag[] = "yoda-source-hash:" YODA_STR(YODA_SOURCE_HASH);

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",                                                                                // m_name
      "yoda fused kernels: registers CPU (and CUDA) implementations of torch.ops.yoda.*",  // m_doc
      -1,                                                                                  // m_size
      kMethods,                                                                            // m_methods
  };
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr &&
      PyModule_AddStringConstant(m, "source_hash", yoda_source_hash_tag + sizeof("yoda-source-hash:") - 1) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}
