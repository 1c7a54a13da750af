/* What the files of pyfabric.etf._speedups share (the backend as a whole is described in
 * _speedups.c's header comment):
 *
 *   _speedups.c               the configuration (setup(), the globals below) and the module
 *   _speedups_decode.c        the decoder's term walk (pyf_run_decoder)
 *   _speedups_decode_entry.c  decode_term and decode_versioned: their arguments, compressed
 *                             terms, the retry in the Python decoder
 *   _speedups_encode.c        the encoder (encode)
 *
 * Everything else in them is static. The shared names start with pyf_, so that none of
 * them clashes with CPython's or another extension's.
 */
#ifndef PYFABRIC_ETF_SPEEDUPS_H
#define PYFABRIC_ETF_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Objects of the Python backend, handed over once by _accel.py through setup(). */
extern PyObject *pyf_atom_type, *pyf_pid_type, *pyf_ref_type, *pyf_frozen_list, *pyf_frozen_dict;
extern PyObject *pyf_erlang_map, *pyf_improper_list;
extern PyObject *pyf_atoms, *pyf_pids;                   /* _decode._ATOMS, _decode._PIDS */
extern PyObject *pyf_true, *pyf_false, *pyf_undefined;   /* Atom("true"), ... */
extern PyObject *pyf_read_atom, *pyf_new_pid, *pyf_reference, *pyf_scalars;
extern PyObject *pyf_finish_list, *pyf_finish_map;
extern PyObject *pyf_py_decode_term, *pyf_py_decode_versioned, *pyf_inflate;
extern PyObject *pyf_atom_ext, *pyf_bignum, *pyf_leaf_encoders;
extern PyObject *pyf_str_hot, *pyf_str_limits, *pyf_str_max_bignum;
/* Slot offsets (member descriptors of the __slots__ classes). */
extern Py_ssize_t pyf_off_atom_ext1, pyf_off_atom_ext2;
extern Py_ssize_t pyf_off_pid_node, pyf_off_pid_id, pyf_off_pid_serial, pyf_off_pid_creation;
extern Py_ssize_t pyf_off_ref_node, pyf_off_ref_creation, pyf_off_ref_ids;
extern Py_ssize_t pyf_off_flist_items, pyf_off_fdict_map, pyf_off_emap_pairs, pyf_off_il_elements, pyf_off_il_tail;
extern int pyf_ready;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Bail out: the C code gives up on this input and the Python backend takes it. */
#define BAIL (-2)

/* The decoder's walk over one term body at pos (the stack, the caches, every hot tag):
 * (term, end), or NULL (then the Python decoder takes the input). */
PyObject *pyf_run_decoder(PyObject *bufobj, Py_ssize_t pos, PyObject *opts, Py_ssize_t max_terms);

/* The module's functions (their docstrings are in _speedups.c's method table). */
PyObject *pyf_decode_term(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *pyf_decode_versioned(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *pyf_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif /* PYFABRIC_ETF_SPEEDUPS_H */
