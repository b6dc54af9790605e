/*
 * compat.h -- what every Python-facing C source of flashattn_c._C includes first: Python.h,
 * the NumPy C API under the extension's one unique symbol, and the shims for older Pythons.
 *
 * NumPy's C API is a table of function pointers, filled once by PyArray_ImportNumPyAPI in
 * module.c's module_exec. Every other source must see the same table: it names the same
 * PY_ARRAY_UNIQUE_SYMBOL and defines NO_IMPORT_ARRAY. module.c alone defines
 * FA_NUMPY_API_OWNER before including this header, so the table is defined there.
 */
#ifndef FA_COMPAT_H
#define FA_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL flashattn_c_ARRAY_API
#ifndef FA_NUMPY_API_OWNER
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stdint.h>

#if PY_VERSION_HEX < 0x030A0000
/* Python 3.9 lacks these 3.10 conveniences. */
static inline PyObject *Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
static inline int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* DLPack / CUDA-array-interface spellings of the two default streams. */
#define FA_STREAM_LEGACY ((uintptr_t)1)
#define FA_STREAM_PER_THREAD ((uintptr_t)2)

/* Handle 0 is the legacy default stream in this (non per-thread) build: compare as 1. */
static inline uintptr_t fa_canonical_stream(uintptr_t s) { return s == 0 ? FA_STREAM_LEGACY : s; }

#endif /* FA_COMPAT_H */
