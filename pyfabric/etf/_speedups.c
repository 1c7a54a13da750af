/* pyfabric.etf._speedups: the C backend of the ETF codec (implementation == "c").
 *
 * It decodes and encodes the common terms itself and defers, deterministically, to the
 * pure-Python backend (pyfabric/etf/_decode.py, _encode.py) for everything else, so the
 * Python code stays the one reference of the format's semantics:
 *
 * Decoder: the hot tags (integers, NEW_FLOAT_EXT, small/large bigs, SMALL_ATOM_UTF8_EXT
 * and ATOM_EXT, STRING_EXT, BINARY_EXT, tuples, lists, maps, NIL_EXT, NEW_PID_EXT,
 * NEWER_REFERENCE_EXT) are decoded here; the other scalar tags are decoded by calling
 * the Python decoder's function for that tag (its _SCALARS table), and an atom or pid
 * missing from the shared caches by calling the Python helper that creates and caches
 * it. A compressed term is inflated by the Python decoder's _inflate, its body decoded
 * here. An input holding NEW_FUN_EXT is decoded by the Python decoder as a whole. Errors: the first time anything is wrong (malformed input, a limit, any
 * exception from a helper) this decoder stops, frees what it built and runs the Python
 * decoder on the same arguments, which raises the exact error (class, message, offset).
 * So a success here is always a success there, with an equal value and end offset.
 *
 * Encoder: the exact types int, float, str, bytes, tuple, list, dict, bool, None, Atom,
 * Pid, Reference, FrozenList, FrozenDict, ErlangMap and ImproperList are encoded here;
 * Port, BitString, ExportFun and Fun by the Python encoder's function for that type,
 * integers beyond 32 bits by its _bignum, an atom whose encoding is not cached yet by its
 * _atom_ext. Any other value (a subclass, bytearray, memoryview, an unencodable value),
 * minor_version 0, or any error makes encode() return None: the caller then runs the
 * Python encoder, which encodes the value or raises the exact EncodeError.
 *
 * Never recursive: both directions walk the term with an explicit, heap-allocated stack.
 * Every length read from the input is checked against the bytes that remain (and the
 * limits) before anything is allocated for it.
 *
 * Files: this one (the configuration and the module), _speedups_decode.c (the term walk),
 * _speedups_decode_entry.c (decode_term, decode_versioned), _speedups_encode.c (encode);
 * _speedups.h declares what they share.
 */
#include "_speedups.h"
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX: the slots of the value classes */

/* ------------------------------------------------------------------ configuration */

/* Objects of the Python backend, handed over once by _accel.py through setup(). */
PyObject *pyf_atom_type, *pyf_pid_type, *pyf_ref_type, *pyf_frozen_list, *pyf_frozen_dict;
PyObject *pyf_erlang_map, *pyf_improper_list;
PyObject *pyf_atoms, *pyf_pids;                          /* _decode._ATOMS, _decode._PIDS */
PyObject *pyf_true, *pyf_false, *pyf_undefined;          /* Atom("true"), ... */
PyObject *pyf_read_atom, *pyf_new_pid, *pyf_reference, *pyf_scalars;
PyObject *pyf_finish_list, *pyf_finish_map;
PyObject *pyf_py_decode_term, *pyf_py_decode_versioned, *pyf_inflate;
PyObject *pyf_atom_ext, *pyf_bignum, *pyf_leaf_encoders;
PyObject *pyf_str_hot, *pyf_str_limits, *pyf_str_max_bignum;
/* Slot offsets (member descriptors of the __slots__ classes). */
Py_ssize_t pyf_off_atom_ext1, pyf_off_atom_ext2;
Py_ssize_t pyf_off_pid_node, pyf_off_pid_id, pyf_off_pid_serial, pyf_off_pid_creation;
Py_ssize_t pyf_off_ref_node, pyf_off_ref_creation, pyf_off_ref_ids;
Py_ssize_t pyf_off_flist_items, pyf_off_fdict_map, pyf_off_emap_pairs, pyf_off_il_elements, pyf_off_il_tail;
int pyf_ready = 0;

static int
member_offset(PyObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *dict = ((PyTypeObject *)type)->tp_dict;
    PyObject *descr = dict ? PyDict_GetItemString(dict, name) : NULL;
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "_speedups: %s.%s is not a slot", ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "_speedups: %s.%s is not an object slot", ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    *out = member->offset;
    return 0;
}

static int
take(PyObject *config, const char *name, PyObject **slot)
{
    PyObject *value = PyDict_GetItemString(config, name);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "_speedups.setup: missing %s", name);
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
    return 0;
}

static PyObject *
speedups_setup(PyObject *module, PyObject *config)
{
    if (!PyDict_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "_speedups.setup expects a dict");
        return NULL;
    }
    if (take(config, "Atom", &pyf_atom_type) || take(config, "Pid", &pyf_pid_type)
        || take(config, "Reference", &pyf_ref_type) || take(config, "FrozenList", &pyf_frozen_list)
        || take(config, "FrozenDict", &pyf_frozen_dict) || take(config, "ErlangMap", &pyf_erlang_map)
        || take(config, "ImproperList", &pyf_improper_list) || take(config, "atoms", &pyf_atoms)
        || take(config, "pids", &pyf_pids) || take(config, "true", &pyf_true) || take(config, "false", &pyf_false)
        || take(config, "undefined", &pyf_undefined) || take(config, "read_atom", &pyf_read_atom)
        || take(config, "new_pid", &pyf_new_pid) || take(config, "reference", &pyf_reference)
        || take(config, "scalars", &pyf_scalars) || take(config, "finish_list", &pyf_finish_list)
        || take(config, "finish_map", &pyf_finish_map) || take(config, "decode_term", &pyf_py_decode_term)
        || take(config, "decode_versioned", &pyf_py_decode_versioned) || take(config, "inflate", &pyf_inflate)
        || take(config, "atom_ext", &pyf_atom_ext)
        || take(config, "bignum", &pyf_bignum) || take(config, "leaf_encoders", &pyf_leaf_encoders))
        return NULL;
    PyObject *types[] = {pyf_atom_type, pyf_pid_type, pyf_ref_type, pyf_frozen_list, pyf_frozen_dict, pyf_erlang_map,
                         pyf_improper_list};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (!PyType_Check(types[i])) {
            PyErr_SetString(PyExc_TypeError, "_speedups.setup: expected a class");
            return NULL;
        }
    }
    if (!PyDict_CheckExact(pyf_atoms) || !PyDict_CheckExact(pyf_pids) || !PyDict_CheckExact(pyf_leaf_encoders)
        || !PyList_CheckExact(pyf_scalars) || PyList_GET_SIZE(pyf_scalars) != 256) {
        PyErr_SetString(PyExc_TypeError, "_speedups.setup: unexpected cache or table types");
        return NULL;
    }
    if (member_offset(pyf_atom_type, "_ext1", &pyf_off_atom_ext1)
        || member_offset(pyf_atom_type, "_ext2", &pyf_off_atom_ext2)
        || member_offset(pyf_pid_type, "node", &pyf_off_pid_node) || member_offset(pyf_pid_type, "id", &pyf_off_pid_id)
        || member_offset(pyf_pid_type, "serial", &pyf_off_pid_serial)
        || member_offset(pyf_pid_type, "creation", &pyf_off_pid_creation)
        || member_offset(pyf_ref_type, "node", &pyf_off_ref_node)
        || member_offset(pyf_ref_type, "creation", &pyf_off_ref_creation)
        || member_offset(pyf_ref_type, "ids", &pyf_off_ref_ids)
        || member_offset(pyf_frozen_list, "_items", &pyf_off_flist_items)
        || member_offset(pyf_frozen_dict, "_map", &pyf_off_fdict_map)
        || member_offset(pyf_erlang_map, "_pairs", &pyf_off_emap_pairs)
        || member_offset(pyf_improper_list, "elements", &pyf_off_il_elements)
        || member_offset(pyf_improper_list, "tail", &pyf_off_il_tail))
        return NULL;
    pyf_ready = 1;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------- module */

static PyMethodDef speedups_methods[] = {
    {"setup", speedups_setup, METH_O, "setup(config): the Python backend's objects, once."},
    {"decode_term", (PyCFunction)(void (*)(void))pyf_decode_term, METH_FASTCALL,
     "decode_term(buf, pos, opts, max_terms=-1) -> (term, end), as _decode.decode_term."},
    {"decode_versioned", (PyCFunction)(void (*)(void))pyf_decode_versioned, METH_FASTCALL,
     "decode_versioned(buf, pos, opts, version=True) -> (term, end), as _decode.decode_versioned."},
    {"encode", (PyCFunction)(void (*)(void))pyf_encode, METH_FASTCALL,
     "encode(term, minor_version) -> bytes (131 and the term), or None: the Python encoder must do it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "_speedups", "C backend of pyfabric.etf (see _accel.py).", -1, speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    pyf_str_hot = PyUnicode_InternFromString("hot");
    pyf_str_limits = PyUnicode_InternFromString("limits");
    pyf_str_max_bignum = PyUnicode_InternFromString("max_bignum_bytes");
    if (pyf_str_hot == NULL || pyf_str_limits == NULL || pyf_str_max_bignum == NULL)
        return NULL;
    return PyModule_Create(&speedups_module);
}
