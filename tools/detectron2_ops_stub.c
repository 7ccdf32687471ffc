/*
 * Stand-in for detectron2's compiled operator module `detectron2._C`.
 *
 * The pb1-detectron2==0.6 sdist ships detectron2's Python sources without its C++/CUDA operators
 * (ROIAlign, deformable conv, NMS, ...). Semantic segmentation uses none of them, but
 * `import detectron2.layers` needs a `detectron2._C` module to exist, and
 * `detectron2.utils.collect_env` asks it for its compiler and CUDA versions. This module answers
 * those three questions and holds no operator. GPU users build upstream detectron2 instead.
 */
#include <Python.h>

static PyObject *compiler_version(PyObject *self, PyObject *args) {
    return PyUnicode_FromString("none (detectron2 operators not built; see ovss-d2 DEVELOPERS.md)");
}

static PyObject *cuda_version(PyObject *self, PyObject *args) {
    return PyUnicode_FromString("not available");
}

static PyObject *has_cuda(PyObject *self, PyObject *args) { Py_RETURN_FALSE; }

static PyMethodDef methods[] = {
    {"get_compiler_version", compiler_version, METH_NOARGS, "Compiler used to build the operators."},
    {"get_cuda_version", cuda_version, METH_NOARGS, "CUDA version the operators were built with."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether CUDA operators were built."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "detectron2 without operators", -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
