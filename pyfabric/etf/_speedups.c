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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX: the slots of the value classes */
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ configuration */

/* Objects of the Python backend, handed over once by _accel.py through setup(). */
static PyObject *g_atom_type, *g_pid_type, *g_ref_type, *g_frozen_list, *g_frozen_dict;
static PyObject *g_erlang_map, *g_improper_list;
static PyObject *g_atoms, *g_pids;                  /* _decode._ATOMS, _decode._PIDS */
static PyObject *g_true, *g_false, *g_undefined;    /* Atom("true"), ... */
static PyObject *g_read_atom, *g_new_pid, *g_reference, *g_scalars;
static PyObject *g_finish_list, *g_finish_map;
static PyObject *g_py_decode_term, *g_py_decode_versioned, *g_inflate;
static PyObject *g_atom_ext, *g_bignum, *g_leaf_encoders;
static PyObject *g_str_hot, *g_str_limits, *g_str_max_bignum;
/* Slot offsets (member descriptors of the __slots__ classes). */
static Py_ssize_t off_atom_ext1, off_atom_ext2;
static Py_ssize_t off_pid_node, off_pid_id, off_pid_serial, off_pid_creation;
static Py_ssize_t off_ref_node, off_ref_creation, off_ref_ids;
static Py_ssize_t off_flist_items, off_fdict_map, off_emap_pairs, off_il_elements, off_il_tail;
static int g_ready = 0;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Bail out: the C code gives up on this input and the Python backend takes it. */
#define BAIL (-2)

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
    if (take(config, "Atom", &g_atom_type) || take(config, "Pid", &g_pid_type)
        || take(config, "Reference", &g_ref_type) || take(config, "FrozenList", &g_frozen_list)
        || take(config, "FrozenDict", &g_frozen_dict) || take(config, "ErlangMap", &g_erlang_map)
        || take(config, "ImproperList", &g_improper_list) || take(config, "atoms", &g_atoms)
        || take(config, "pids", &g_pids) || take(config, "true", &g_true) || take(config, "false", &g_false)
        || take(config, "undefined", &g_undefined) || take(config, "read_atom", &g_read_atom)
        || take(config, "new_pid", &g_new_pid) || take(config, "reference", &g_reference)
        || take(config, "scalars", &g_scalars) || take(config, "finish_list", &g_finish_list)
        || take(config, "finish_map", &g_finish_map) || take(config, "decode_term", &g_py_decode_term)
        || take(config, "decode_versioned", &g_py_decode_versioned) || take(config, "inflate", &g_inflate)
        || take(config, "atom_ext", &g_atom_ext)
        || take(config, "bignum", &g_bignum) || take(config, "leaf_encoders", &g_leaf_encoders))
        return NULL;
    PyObject *types[] = {g_atom_type, g_pid_type, g_ref_type, g_frozen_list, g_frozen_dict, g_erlang_map,
                         g_improper_list};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (!PyType_Check(types[i])) {
            PyErr_SetString(PyExc_TypeError, "_speedups.setup: expected a class");
            return NULL;
        }
    }
    if (!PyDict_CheckExact(g_atoms) || !PyDict_CheckExact(g_pids) || !PyDict_CheckExact(g_leaf_encoders)
        || !PyList_CheckExact(g_scalars) || PyList_GET_SIZE(g_scalars) != 256) {
        PyErr_SetString(PyExc_TypeError, "_speedups.setup: unexpected cache or table types");
        return NULL;
    }
    if (member_offset(g_atom_type, "_ext1", &off_atom_ext1) || member_offset(g_atom_type, "_ext2", &off_atom_ext2)
        || member_offset(g_pid_type, "node", &off_pid_node) || member_offset(g_pid_type, "id", &off_pid_id)
        || member_offset(g_pid_type, "serial", &off_pid_serial)
        || member_offset(g_pid_type, "creation", &off_pid_creation)
        || member_offset(g_ref_type, "node", &off_ref_node) || member_offset(g_ref_type, "creation", &off_ref_creation)
        || member_offset(g_ref_type, "ids", &off_ref_ids) || member_offset(g_frozen_list, "_items", &off_flist_items)
        || member_offset(g_frozen_dict, "_map", &off_fdict_map)
        || member_offset(g_erlang_map, "_pairs", &off_emap_pairs)
        || member_offset(g_improper_list, "elements", &off_il_elements)
        || member_offset(g_improper_list, "tail", &off_il_tail))
        return NULL;
    g_ready = 1;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ decoder */

enum { K_ROOT, K_TUPLE, K_LIST, K_MAP, K_TAIL };

typedef struct {
    PyObject *seq;     /* the tuple or list being filled (owned); NULL for K_ROOT */
    Py_ssize_t idx;    /* next slot of seq */
    Py_ssize_t size;   /* slots in seq */
    Py_ssize_t extra;  /* offset of the LIST_EXT/MAP_EXT header */
    int kind;
    int frozen;        /* as _decode.decode_term: 0, 1 (hashable), 2 (plain map) */
} Frame;

typedef struct {
    const unsigned char *buf;
    Py_ssize_t n;
    PyObject *bufobj, *opts;
    Py_ssize_t max_depth, max_len, max_total, cleft, max_binary;
    int python_atoms, strings_as_list, atom_fast;
    Frame *frames;
    Py_ssize_t depth;   /* index of the current frame; 0 is the root */
    Py_ssize_t cap;
} Dec;

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int
read_hot(Dec *d, PyObject *opts, Py_ssize_t max_terms)
{
    PyObject *hot = PyObject_GetAttr(opts, g_str_hot);
    if (hot == NULL)
        return -1;
    if (!PyTuple_CheckExact(hot) || PyTuple_GET_SIZE(hot) != 8) {
        Py_DECREF(hot);
        return -1;
    }
    Py_ssize_t v[5];
    for (int i = 0; i < 5; i++) {
        v[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(hot, i));
        if (v[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(hot);
            return -1;
        }
    }
    d->max_depth = v[0];
    d->max_len = v[1];
    d->max_total = max_terms >= 0 ? max_terms : v[2];
    d->cleft = v[3];
    d->max_binary = v[4];
    d->python_atoms = PyObject_IsTrue(PyTuple_GET_ITEM(hot, 5));
    d->strings_as_list = PyObject_IsTrue(PyTuple_GET_ITEM(hot, 6));
    d->atom_fast = PyObject_IsTrue(PyTuple_GET_ITEM(hot, 7));
    Py_DECREF(hot);
    if (d->python_atoms < 0 || d->strings_as_list < 0 || d->atom_fast < 0)
        return -1;
    d->opts = opts;
    return 0;
}

/* Call a Python decoder helper f(buf, pos, opts) -> (value, end). */
static PyObject *
call_helper(Dec *d, PyObject *fn, Py_ssize_t pos, Py_ssize_t *end)
{
    PyObject *pos_obj = PyLong_FromSsize_t(pos);
    if (pos_obj == NULL)
        return NULL;
    PyObject *args[3] = {d->bufobj, pos_obj, d->opts};
    PyObject *res = PyObject_Vectorcall(fn, args, 3, NULL);
    Py_DECREF(pos_obj);
    if (res == NULL)
        return NULL;
    if (!PyTuple_CheckExact(res) || PyTuple_GET_SIZE(res) != 2) {
        Py_DECREF(res);
        return NULL;
    }
    Py_ssize_t e = PyLong_AsSsize_t(PyTuple_GET_ITEM(res, 1));
    if ((e == -1 && PyErr_Occurred()) || e <= pos || e > d->n) {
        Py_DECREF(res);
        return NULL;
    }
    *end = e;
    PyObject *value = PyTuple_GET_ITEM(res, 0);
    Py_INCREF(value);
    Py_DECREF(res);
    return value;
}

/* A small direct-mapped table in front of each shared cache dict (_ATOMS, _PIDS), keyed
 * by the same encoded bytes: a hit costs a hash of a few bytes and a memcmp instead of a
 * bytes object and a dict lookup. It only ever holds entries copied from the dict, which
 * holds only values that passed every check, so a hit returns what the dict would. */
#define FRONT_SIZE 1024

typedef struct {
    Py_hash_t hash;
    PyObject *key;   /* the encoding (bytes), owned */
    PyObject *value; /* owned */
} FrontEntry;

static FrontEntry g_front_atoms[FRONT_SIZE], g_front_pids[FRONT_SIZE];

static inline Py_hash_t
bytes_hash(const unsigned char *p, Py_ssize_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return (Py_hash_t)(h ^ (h >> 29));
}

/* Look the encoding buf[start:start+len] up: a new reference, or NULL (a miss; *failed
 * set if an error is pending). */
static PyObject *
cache_get(PyObject *cache, FrontEntry *front, const unsigned char *start, Py_ssize_t len, int *failed)
{
    Py_hash_t h = bytes_hash(start, len);
    FrontEntry *e = &front[(size_t)h & (FRONT_SIZE - 1)];
    if (e->key != NULL && e->hash == h && PyBytes_GET_SIZE(e->key) == len
        && memcmp(PyBytes_AS_STRING(e->key), start, (size_t)len) == 0)
        return Py_NewRef(e->value);
    PyObject *key = PyBytes_FromStringAndSize((const char *)start, len);
    if (key == NULL) {
        *failed = 1;
        return NULL;
    }
    PyObject *value = PyDict_GetItemWithError(cache, key);
    if (value == NULL) {
        Py_DECREF(key);
        if (PyErr_Occurred())
            *failed = 1;
        return NULL;
    }
    Py_INCREF(value);
    PyObject *old_key = e->key, *old_value = e->value;
    e->hash = h;
    e->key = key;
    e->value = Py_NewRef(value);
    Py_XDECREF(old_key);
    Py_XDECREF(old_value);
    return value;
}

static int
push_frame(Dec *d, int kind, PyObject *seq, Py_ssize_t size, Py_ssize_t extra)
{
    Frame *parent = &d->frames[d->depth];
    int frozen = parent->frozen;
    if (frozen == 2) /* a child of a plain map: its keys must be hashable */
        frozen = (parent->idx & 1) ? 0 : 1;
    if (kind == K_MAP)
        frozen = frozen ? 1 : 2;
    if (d->depth + 1 >= d->cap) {
        Py_ssize_t cap = d->cap * 2;
        Frame *frames = PyMem_Realloc(d->frames, (size_t)cap * sizeof(Frame));
        if (frames == NULL) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        d->frames = frames;
        d->cap = cap;
    }
    /* Untracked while partly filled (its empty slots are NULL): the collector, which may
     * run while a Python helper is called, and gc.get_objects() never see it. */
    PyObject_GC_UnTrack(seq);
    Frame *f = &d->frames[++d->depth];
    f->seq = seq;
    f->idx = 0;
    f->size = size;
    f->extra = extra;
    f->kind = kind;
    f->frozen = frozen;
    return 0;
}

#define WANT_FROZEN(f) ((f)->frozen == 1 || ((f)->frozen == 2 && !((f)->idx & 1)))

/* Wrap a finished list in a FrozenList (steals ``list``). */
static PyObject *
freeze_list(PyObject *list)
{
    PyObject *frozen = PyObject_CallOneArg(g_frozen_list, list);
    Py_DECREF(list);
    return frozen;
}

/* The value of a finished frame (steals its seq); NULL on error (then BAIL). */
static PyObject *
close_frame(Dec *d, Frame *f)
{
    PyObject *seq = f->seq;
    f->seq = NULL;
    PyObject_GC_Track(seq); /* complete now (see push_frame) */
    if (f->kind == K_TUPLE)
        return seq;
    if (f->kind == K_LIST)
        return f->frozen ? freeze_list(seq) : seq;
    PyObject *args[3];
    PyObject *frozen_obj = PyLong_FromLong(f->frozen);
    PyObject *extra_obj = PyLong_FromSsize_t(f->extra);
    PyObject *result = NULL;
    if (frozen_obj == NULL || extra_obj == NULL)
        goto done;
    args[0] = seq;
    args[1] = frozen_obj;
    args[2] = extra_obj;
    if (f->kind == K_TAIL) {
        result = PyObject_Vectorcall(g_finish_list, args, 3, NULL);
    }
    else { /* K_MAP: a dict unless its keys are Python-equal (then _finish_map decides) */
        Py_ssize_t pairs = f->size / 2;
#if PY_VERSION_HEX < 0x030D0000
        PyObject *dict = _PyDict_NewPresized(pairs);
#else
        PyObject *dict = PyDict_New();
#endif
        if (dict == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < f->size; i += 2) {
            if (PyDict_SetItem(dict, PyList_GET_ITEM(seq, i), PyList_GET_ITEM(seq, i + 1)) < 0) {
                Py_DECREF(dict);
                goto done;
            }
        }
        if (PyDict_GET_SIZE(dict) != pairs) {
            Py_DECREF(dict);
            result = PyObject_Vectorcall(g_finish_map, args, 3, NULL);
        }
        else if (f->frozen == 1) {
            result = PyObject_CallOneArg(g_frozen_dict, dict);
            Py_DECREF(dict);
        }
        else {
            result = dict;
        }
    }
done:
    Py_XDECREF(frozen_obj);
    Py_XDECREF(extra_obj);
    Py_DECREF(seq);
    return result;
}

static void
free_frames(Dec *d)
{
    for (Py_ssize_t i = 1; i <= d->depth; i++)
        Py_CLEAR(d->frames[i].seq);
    d->depth = 0;
}

/* Decode one term body at pos. Returns 0 and sets the result and end, or BAIL (any error:
 * the exception, if any, is cleared by the caller). */
static int
decode_body(Dec *d, Py_ssize_t pos, PyObject **result, Py_ssize_t *end_out)
{
    const unsigned char *buf = d->buf;
    const Py_ssize_t n = d->n;
    Py_ssize_t total = 0;
    PyObject *value;
    Py_ssize_t end;

    d->frames[0].seq = NULL;
    d->frames[0].idx = 0;
    d->frames[0].size = 1;
    d->frames[0].kind = K_ROOT;
    d->frames[0].frozen = 0;
    d->frames[0].extra = 0;
    d->depth = 0;

    for (;;) {
        if (pos >= n)
            goto bail;
        Frame *f = &d->frames[d->depth];
        unsigned char tag = buf[pos];
        switch (tag) {
        case 97: /* SMALL_INTEGER_EXT */
            if (pos + 2 > n)
                goto bail;
            value = PyLong_FromLong(buf[pos + 1]);
            pos += 2;
            break;
        case 98: /* INTEGER_EXT */
            if (pos + 5 > n)
                goto bail;
            value = PyLong_FromLong((long)(int32_t)be32(buf + pos + 1));
            pos += 5;
            break;
        case 70: { /* NEW_FLOAT_EXT */
            if (pos + 9 > n)
                goto bail;
            double x = PyFloat_Unpack8((const char *)buf + pos + 1, 0);
            if (x == -1.0 && PyErr_Occurred())
                goto bail;
            if (!isfinite(x))
                goto bail;
            value = PyFloat_FromDouble(x);
            pos += 9;
            break;
        }
        case 110: /* SMALL_BIG_EXT */
        case 111: { /* LARGE_BIG_EXT */
            Py_ssize_t size, start;
            unsigned sign;
            if (tag == 110) {
                if (pos + 3 > n)
                    goto bail;
                size = buf[pos + 1];
                sign = buf[pos + 2];
                start = pos + 3;
            }
            else {
                if (pos + 6 > n)
                    goto bail;
                size = be32(buf + pos + 1);
                sign = buf[pos + 5];
                start = pos + 6;
            }
            PyObject *limits = PyObject_GetAttr(d->opts, g_str_limits);
            if (limits == NULL)
                goto bail;
            PyObject *lim_obj = PyObject_GetAttr(limits, g_str_max_bignum);
            Py_DECREF(limits);
            if (lim_obj == NULL)
                goto bail;
            Py_ssize_t limit = PyLong_AsSsize_t(lim_obj);
            Py_DECREF(lim_obj);
            if (limit < 0 || size > limit || size > n - start || sign > 1)
                goto bail;
#if PY_VERSION_HEX >= 0x030D0000
            value = PyLong_FromUnsignedNativeBytes(buf + start, (size_t)size, 1 /* little endian */);
#else
            value = _PyLong_FromByteArray(buf + start, (size_t)size, 1, 0);
#endif
            if (value != NULL && sign) {
                PyObject *neg = PyNumber_Negative(value);
                Py_DECREF(value);
                value = neg;
            }
            pos = start + size;
            break;
        }
        case 119: /* SMALL_ATOM_UTF8_EXT */
        case 100: { /* ATOM_EXT */
            if (tag == 119) {
                if (pos + 2 > n)
                    goto bail;
                end = pos + 2 + buf[pos + 1];
            }
            else {
                if (pos + 3 > n)
                    goto bail;
                end = pos + 3 + (((Py_ssize_t)buf[pos + 1] << 8) | buf[pos + 2]);
            }
            if (end > n)
                goto bail;
            value = NULL;
            if (d->atom_fast) {
                int failed = 0;
                value = cache_get(g_atoms, g_front_atoms, buf + pos, end - pos, &failed);
                if (failed)
                    goto bail;
            }
            if (value == NULL) {
                value = call_helper(d, g_read_atom, pos, &end);
                if (value == NULL)
                    goto bail;
            }
            pos = end;
            if (d->python_atoms) {
                PyObject *mapped = NULL;
                if (value == g_true)
                    mapped = Py_True;
                else if (value == g_false)
                    mapped = Py_False;
                else if (value == g_undefined)
                    mapped = Py_None;
                if (mapped != NULL) {
                    Py_DECREF(value);
                    Py_INCREF(mapped);
                    value = mapped;
                }
            }
            break;
        }
        case 107: { /* STRING_EXT */
            if (pos + 3 > n)
                goto bail;
            Py_ssize_t len = ((Py_ssize_t)buf[pos + 1] << 8) | buf[pos + 2];
            end = pos + 3 + len;
            if (end > n)
                goto bail;
            if (d->strings_as_list) {
                total += len;
                if (total > d->max_total)
                    goto bail;
                value = PyList_New(len);
                if (value == NULL)
                    goto bail;
                for (Py_ssize_t i = 0; i < len; i++)
                    PyList_SET_ITEM(value, i, PyLong_FromLong(buf[pos + 3 + i])); /* cached small ints */
                if (WANT_FROZEN(f))
                    value = freeze_list(value);
            }
            else {
                value = PyUnicode_DecodeLatin1((const char *)buf + pos + 3, len, NULL);
            }
            pos = end;
            break;
        }
        case 109: { /* BINARY_EXT */
            if (pos + 5 > n)
                goto bail;
            Py_ssize_t size = be32(buf + pos + 1);
            if (size > n - pos - 5 || size > d->max_binary)
                goto bail;
            value = PyBytes_FromStringAndSize((const char *)buf + pos + 5, size);
            pos += 5 + size;
            break;
        }
        case 104: /* SMALL_TUPLE_EXT */
        case 105: /* LARGE_TUPLE_EXT */
        case 108: /* LIST_EXT */
        case 116: { /* MAP_EXT */
            Py_ssize_t count, head = tag == 104 ? 2 : 5;
            if (pos + head > n)
                goto bail;
            count = tag == 104 ? buf[pos + 1] : (Py_ssize_t)be32(buf + pos + 1);
            if (count == 0) {
                pos += head;
                if (tag == 108)
                    continue; /* an empty LIST_EXT is just its tail */
                if (--d->cleft < 0)
                    goto bail;
                if (tag == 116)
                    value = WANT_FROZEN(f) ? PyObject_CallNoArgs(g_frozen_dict) : PyDict_New();
                else
                    value = PyTuple_New(0);
                break;
            }
            /* Each element takes at least one byte (a list also has its tail). */
            Py_ssize_t need = tag == 108 ? count + 1 : (tag == 116 ? 2 * count : count);
            total += count;
            if (count > d->max_len || need > n - pos - head || total > d->max_total || d->depth >= d->max_depth
                || --d->cleft < 0)
                goto bail;
            int kind = tag == 108 ? K_LIST : (tag == 116 ? K_MAP : K_TUPLE);
            Py_ssize_t slots = tag == 116 ? 2 * count : count;
            PyObject *seq = kind == K_TUPLE ? PyTuple_New(slots) : PyList_New(slots);
            if (seq == NULL || push_frame(d, kind, seq, slots, pos) < 0)
                goto bail;
            pos += head;
            continue;
        }
        case 106: /* NIL_EXT */
            if (--d->cleft < 0)
                goto bail;
            value = WANT_FROZEN(f) ? PyObject_CallNoArgs(g_frozen_list) : PyList_New(0);
            pos += 1;
            break;
        case 88: { /* NEW_PID_EXT: cached by its encoding (without the tag) */
            if (pos + 2 > n)
                goto bail;
            unsigned char node_tag = buf[pos + 1];
            end = 0;
            if (node_tag == 119) {
                if (pos + 3 > n)
                    goto bail;
                end = pos + 15 + buf[pos + 2];
            }
            else if (node_tag == 100) {
                if (pos + 4 > n)
                    goto bail;
                end = pos + 16 + (((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3]);
            }
            value = NULL;
            if (d->atom_fast && end && end <= n) {
                int failed = 0;
                value = cache_get(g_pids, g_front_pids, buf + pos + 1, end - pos - 1, &failed);
                if (failed)
                    goto bail;
            }
            if (value == NULL) {
                value = call_helper(d, g_new_pid, pos, &end);
                if (value == NULL)
                    goto bail;
            }
            pos = end;
            break;
        }
        case 90: { /* NEWER_REFERENCE_EXT */
            if (pos + 4 > n)
                goto bail;
            Py_ssize_t count = ((Py_ssize_t)buf[pos + 1] << 8) | buf[pos + 2];
            Py_ssize_t node_end = 0;
            PyObject *node = NULL;
            if (d->atom_fast && count > 0 && count < 6) {
                unsigned char node_tag = buf[pos + 3];
                if (node_tag == 119 && pos + 5 <= n)
                    node_end = pos + 5 + buf[pos + 4];
                else if (node_tag == 100 && pos + 6 <= n)
                    node_end = pos + 6 + (((Py_ssize_t)buf[pos + 4] << 8) | buf[pos + 5]);
            }
            if (node_end && node_end <= n) {
                int failed = 0;
                node = cache_get(g_atoms, g_front_atoms, buf + pos + 3, node_end - pos - 3, &failed);
                if (failed)
                    goto bail;
            }
            if (node == NULL) {
                value = call_helper(d, g_reference, pos, &end);
                if (value == NULL)
                    goto bail;
                pos = end;
                break;
            }
            end = node_end + 4 + 4 * count;
            if (end > n) {
                Py_DECREF(node);
                goto bail;
            }
            PyObject *creation = PyLong_FromUnsignedLong(be32(buf + node_end));
            PyObject *ids = PyTuple_New(count);
            if (creation == NULL || ids == NULL) {
                Py_DECREF(node);
                Py_XDECREF(creation);
                Py_XDECREF(ids);
                goto bail;
            }
            for (Py_ssize_t i = 0; i < count; i++) {
                PyObject *word = PyLong_FromUnsignedLong(be32(buf + node_end + 4 + 4 * i));
                if (word == NULL) {
                    Py_DECREF(node);
                    Py_DECREF(creation);
                    Py_DECREF(ids);
                    goto bail;
                }
                PyTuple_SET_ITEM(ids, i, word);
            }
            PyTypeObject *rt = (PyTypeObject *)g_ref_type;
            value = rt->tp_alloc(rt, 0);
            if (value == NULL) {
                Py_DECREF(node);
                Py_DECREF(creation);
                Py_DECREF(ids);
                goto bail;
            }
            SLOT(value, off_ref_node) = node;
            SLOT(value, off_ref_creation) = creation;
            SLOT(value, off_ref_ids) = ids;
            pos = end;
            break;
        }
        case 112: /* NEW_FUN_EXT: the whole input goes to the Python decoder */
            goto bail;
        default: { /* the other tags: the Python decoder's function for the tag */
            PyObject *fn = Py_NewRef(PyList_GET_ITEM(g_scalars, tag));
            value = call_helper(d, fn, pos, &end);
            Py_DECREF(fn);
            if (value == NULL)
                goto bail;
            pos = end;
            break;
        }
        }
        if (value == NULL)
            goto bail;

        /* Deliver the value to the innermost open container, closing finished ones. */
        for (;;) {
            f = &d->frames[d->depth];
            if (f->kind == K_ROOT) {
                *result = value;
                *end_out = pos;
                return 0;
            }
            if (f->kind == K_TUPLE)
                PyTuple_SET_ITEM(f->seq, f->idx, value);
            else if (f->kind == K_TAIL) {
                if (PyList_Append(f->seq, value) < 0) {
                    Py_DECREF(value);
                    goto bail;
                }
                Py_DECREF(value);
            }
            else
                PyList_SET_ITEM(f->seq, f->idx, value);
            f->idx++;
            if (f->idx < f->size)
                break;
            if (f->kind == K_LIST) {
                if (pos >= n)
                    goto bail;
                if (buf[pos] != 106) { /* not NIL_EXT: an improper list, read its tail */
                    f->kind = K_TAIL;
                    f->size++;
                    break;
                }
                pos++;
            }
            value = close_frame(d, f);
            d->depth--;
            if (value == NULL)
                goto bail;
        }
    }
bail:
    free_frames(d);
    return BAIL;
}

static PyObject *
run_decoder(PyObject *bufobj, Py_ssize_t pos, PyObject *opts, Py_ssize_t max_terms)
{
    Dec d;
    d.buf = (const unsigned char *)PyBytes_AS_STRING(bufobj);
    d.n = PyBytes_GET_SIZE(bufobj);
    d.bufobj = bufobj;
    if (read_hot(&d, opts, max_terms) < 0)
        return NULL;
    d.frames = PyMem_Malloc(32 * sizeof(Frame));
    if (d.frames == NULL)
        return PyErr_NoMemory();
    d.cap = 32;
    int paused = 0;
    if (d.n - pos >= 256 * 1024 && PyGC_IsEnabled()) { /* as _decode._GC_PAUSE_BYTES */
        PyGC_Disable();
        paused = 1;
    }
    PyObject *value = NULL;
    Py_ssize_t end = 0;
    int rc = decode_body(&d, pos, &value, &end);
    if (paused)
        PyGC_Enable();
    PyMem_Free(d.frames);
    if (rc != 0)
        return NULL;
    PyObject *end_obj = PyLong_FromSsize_t(end);
    if (end_obj == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    PyObject *res = PyTuple_New(2);
    if (res == NULL) {
        Py_DECREF(value);
        Py_DECREF(end_obj);
        return NULL;
    }
    PyTuple_SET_ITEM(res, 0, value);
    PyTuple_SET_ITEM(res, 1, end_obj);
    return res;
}

static int
parse_decode_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *pos, Py_ssize_t *extra, Py_ssize_t dflt)
{
    if (!g_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.setup was not called");
        return -1;
    }
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "expected (buf, pos, opts[, extra])");
        return -1;
    }
    *extra = dflt;
    if (!PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]))
        return 1;
    *pos = PyLong_AsSsize_t(args[1]);
    if (*pos == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    if (*pos < 0 || *pos > PyBytes_GET_SIZE(args[0]))
        return 1;
    if (nargs == 4) {
        if (PyBool_Check(args[3]))
            *extra = args[3] == Py_True;
        else if (PyLong_CheckExact(args[3])) {
            *extra = PyLong_AsSsize_t(args[3]);
            if (*extra == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 1;
            }
        }
        else
            return 1;
    }
    return 0;
}

/* The Python decoder on the same arguments: for whatever this one does not take. */
static PyObject *
python_decoder(PyObject *fn, PyObject *const *args, Py_ssize_t nargs)
{
    return PyObject_Vectorcall(fn, args, nargs, NULL);
}

static PyObject *
retry_in_python(PyObject *fn, PyObject *const *args, Py_ssize_t nargs)
{
    if (PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
            return NULL; /* not about the input: report it as is */
        PyErr_Clear();
    }
    return python_decoder(fn, args, nargs);
}

static int
limit_attr(PyObject *limits, const char *name, Py_ssize_t *out)
{
    PyObject *v = PyObject_GetAttrString(limits, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* A compressed term (tag 80 at ``pos``), as _decode.decode_versioned does it: inflated by
 * the Python decoder's _inflate (bounded by max_decompressed_size), then the body decoded
 * here with the term budget proportional to the compressed size. NULL: let the Python
 * decoder take the whole input (it raises the exact error). */
static PyObject *
decode_compressed(PyObject *bufobj, Py_ssize_t pos, PyObject *opts)
{
    Py_ssize_t end, allowance, per_byte, max_total, budget;
    PyObject *pos_obj = PyLong_FromSsize_t(pos);
    if (pos_obj == NULL)
        return NULL;
    PyObject *args[3] = {bufobj, pos_obj, opts};
    PyObject *inflated = PyObject_Vectorcall(g_inflate, args, 3, NULL);
    Py_DECREF(pos_obj);
    if (inflated == NULL)
        return NULL;
    PyObject *body = PyTuple_CheckExact(inflated) && PyTuple_GET_SIZE(inflated) == 2 ? PyTuple_GET_ITEM(inflated, 0) : NULL;
    PyObject *limits = PyObject_GetAttr(opts, g_str_limits);
    if (body == NULL || !PyBytes_CheckExact(body) || limits == NULL) {
        Py_XDECREF(limits);
        Py_DECREF(inflated);
        return NULL;
    }
    end = PyLong_AsSsize_t(PyTuple_GET_ITEM(inflated, 1));
    int bad = (end == -1 && PyErr_Occurred()) || limit_attr(limits, "compressed_terms_allowance", &allowance)
              || limit_attr(limits, "max_terms_per_compressed_byte", &per_byte)
              || limit_attr(limits, "max_total_terms", &max_total);
    Py_DECREF(limits);
    if (bad) {
        Py_DECREF(inflated);
        return NULL;
    }
    /* budget = allowance + per_byte * (end - pos); an overflow is beyond any max_total. */
    if (__builtin_mul_overflow(per_byte, end - pos, &budget) || __builtin_add_overflow(budget, allowance, &budget))
        budget = PY_SSIZE_T_MAX;
    PyObject *res = run_decoder(body, 0, opts, budget < max_total ? budget : -1);
    if (res == NULL) {
        Py_DECREF(inflated);
        return NULL;
    }
    Py_ssize_t used = PyLong_AsSsize_t(PyTuple_GET_ITEM(res, 1));
    if (used != PyBytes_GET_SIZE(body)) { /* bytes after the term inside the body */
        Py_DECREF(res);
        Py_DECREF(inflated);
        return NULL;
    }
    PyObject *end_obj = Py_NewRef(PyTuple_GET_ITEM(inflated, 1));
    Py_DECREF(inflated);
    PyObject *result = PyTuple_Pack(2, PyTuple_GET_ITEM(res, 0), end_obj);
    Py_DECREF(end_obj);
    Py_DECREF(res);
    return result;
}

static PyObject *
speedups_decode_term(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t pos, max_terms;
    int rc = parse_decode_args(args, nargs, &pos, &max_terms, -1);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        return python_decoder(g_py_decode_term, args, nargs);
    PyObject *res = run_decoder(args[0], pos, args[2], max_terms);
    return res != NULL ? res : retry_in_python(g_py_decode_term, args, nargs);
}

static PyObject *
speedups_decode_versioned(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t pos, version;
    int rc = parse_decode_args(args, nargs, &pos, &version, 1);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        return python_decoder(g_py_decode_versioned, args, nargs);
    if (version) {
        const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
        /* A missing or wrong version byte: the Python decoder (it raises the error). */
        if (pos + 1 >= n || buf[pos] != 131)
            return python_decoder(g_py_decode_versioned, args, nargs);
        if (buf[pos + 1] == 80) {
            PyObject *res = decode_compressed(args[0], pos + 1, args[2]);
            return res != NULL ? res : retry_in_python(g_py_decode_versioned, args, nargs);
        }
        pos++;
    }
    PyObject *res = run_decoder(args[0], pos, args[2], -1);
    return res != NULL ? res : retry_in_python(g_py_decode_versioned, args, nargs);
}

/* ------------------------------------------------------------------------ encoder */

#define MAX_ENCODE_DEPTH 100000 /* as _encode.MAX_ENCODE_DEPTH: only a guard against cycles */

/* The output is written straight into a bytes object, resized as it grows and cut to
 * its length at the end: a large binary is copied once, as the Python encoder does. */
typedef struct {
    PyObject *bytes; /* owned; NULL after a failed resize */
    char *data;      /* PyBytes_AS_STRING(bytes) */
    Py_ssize_t len, cap;
} Out;

static int
out_reserve(Out *o, Py_ssize_t more)
{
    if (o->len + more <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap;
    while (cap < o->len + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    if (_PyBytes_Resize(&o->bytes, cap) < 0) /* frees the object on failure */
        return -1;
    o->data = PyBytes_AS_STRING(o->bytes);
    o->cap = cap;
    return 0;
}

static inline void
put8(Out *o, unsigned v)
{
    o->data[o->len++] = (char)v;
}

static inline void
put16(Out *o, unsigned v)
{
    o->data[o->len++] = (char)(v >> 8);
    o->data[o->len++] = (char)v;
}

static inline void
put32(Out *o, uint32_t v)
{
    o->data[o->len++] = (char)(v >> 24);
    o->data[o->len++] = (char)(v >> 16);
    o->data[o->len++] = (char)(v >> 8);
    o->data[o->len++] = (char)v;
}

static int
put_bytes(Out *o, const char *p, Py_ssize_t len)
{
    if (out_reserve(o, len) < 0)
        return -1;
    memcpy(o->data + o->len, p, (size_t)len);
    o->len += len;
    return 0;
}

/* Append a bytes object returned by a Python helper (steals it). */
static int
put_result(Out *o, PyObject *data)
{
    if (data == NULL)
        return -1;
    int rc = PyBytes_CheckExact(data) ? put_bytes(o, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) : -1;
    Py_DECREF(data);
    return rc;
}

static int
put_atom(Out *o, PyObject *atom, int minor)
{
    PyObject *ext = SLOT(atom, minor == 2 ? off_atom_ext2 : off_atom_ext1);
    if (ext != NULL && PyBytes_CheckExact(ext))
        return put_bytes(o, PyBytes_AS_STRING(ext), PyBytes_GET_SIZE(ext));
    PyObject *minor_obj = PyLong_FromLong(minor);
    if (minor_obj == NULL)
        return -1;
    PyObject *args[2] = {atom, minor_obj};
    PyObject *data = PyObject_Vectorcall(g_atom_ext, args, 2, NULL);
    Py_DECREF(minor_obj);
    return put_result(o, data);
}

/* An exact int in 0..2**32-1 from a slot, or -1. */
static int
slot_u32(PyObject *v, uint32_t *out)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (x == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (x > 0xFFFFFFFFUL)
        return -1;
    *out = (uint32_t)x;
    return 0;
}

static int
put_pid(Out *o, PyObject *pid, int minor)
{
    PyObject *node = SLOT(pid, off_pid_node);
    uint32_t id, serial, creation;
    if (node == NULL || !Py_IS_TYPE(node, (PyTypeObject *)g_atom_type) || slot_u32(SLOT(pid, off_pid_id), &id)
        || slot_u32(SLOT(pid, off_pid_serial), &serial) || slot_u32(SLOT(pid, off_pid_creation), &creation))
        return -1;
    if (out_reserve(o, 1) < 0)
        return -1;
    put8(o, 88);
    if (put_atom(o, node, minor) < 0 || out_reserve(o, 12) < 0)
        return -1;
    put32(o, id);
    put32(o, serial);
    put32(o, creation);
    return 0;
}

static int
put_reference(Out *o, PyObject *ref, int minor)
{
    PyObject *node = SLOT(ref, off_ref_node);
    PyObject *ids = SLOT(ref, off_ref_ids);
    uint32_t creation, word;
    if (node == NULL || !Py_IS_TYPE(node, (PyTypeObject *)g_atom_type) || ids == NULL || !PyTuple_CheckExact(ids)
        || PyTuple_GET_SIZE(ids) > 5 || slot_u32(SLOT(ref, off_ref_creation), &creation))
        return -1;
    Py_ssize_t count = PyTuple_GET_SIZE(ids);
    if (out_reserve(o, 3) < 0)
        return -1;
    put8(o, 90);
    put16(o, (unsigned)count);
    if (put_atom(o, node, minor) < 0 || out_reserve(o, 4 + 4 * count) < 0)
        return -1;
    put32(o, creation);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (slot_u32(PyTuple_GET_ITEM(ids, i), &word))
            return -1;
        put32(o, word);
    }
    return 0;
}

/* A str: STRING_EXT if it is Latin-1 and at most 65535 characters, else a charlist. */
static int
put_str(Out *o, PyObject *s)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) /* a legacy string: its canonical (smallest) kind first */
        return -1;
#endif
    Py_ssize_t count = PyUnicode_GET_LENGTH(s);
    if (count == 0) {
        if (out_reserve(o, 1) < 0)
            return -1;
        put8(o, 106);
        return 0;
    }
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (count <= 0xFFFF && kind == PyUnicode_1BYTE_KIND) {
        if (out_reserve(o, 3 + count) < 0)
            return -1;
        put8(o, 107);
        put16(o, (unsigned)count);
        memcpy(o->data + o->len, data, (size_t)count);
        o->len += count;
        return 0;
    }
    if (count > 0xFFFFFFFFLL || out_reserve(o, 6 + 5 * count) < 0)
        return -1;
    put8(o, 108);
    put32(o, (uint32_t)count);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 256) {
            put8(o, 97);
            put8(o, c);
        }
        else {
            put8(o, 98);
            put32(o, (uint32_t)c);
        }
    }
    put8(o, 106);
    return 0;
}

/* A list's elements that are all exact ints 0..255 (at most 65535): STRING_EXT, 1; else 0. */
static int
put_byte_list(Out *o, PyObject *const *items, Py_ssize_t count)
{
    if (count > 0xFFFF)
        return 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *x = items[i];
        if (!PyLong_CheckExact(x))
            return 0;
        long v = PyLong_AsLong(x);
        if (v < 0 || v > 255) {
            PyErr_Clear();
            return 0;
        }
    }
    if (out_reserve(o, 3 + count) < 0)
        return -1;
    put8(o, 107);
    put16(o, (unsigned)count);
    for (Py_ssize_t i = 0; i < count; i++)
        put8(o, (unsigned)PyLong_AsLong(items[i]));
    return 1;
}

enum { E_SEQ, E_DICT, E_PAIRS, E_IMPROPER };

typedef struct {
    PyObject *obj;      /* the container (owned): a list, tuple, dict, pairs tuple or ImproperList */
    Py_ssize_t i, n;    /* next item, items (E_SEQ of a list: re-read, see enext) */
    Py_ssize_t dpos;    /* E_DICT: PyDict_Next position */
    PyObject *pending;  /* E_DICT, E_PAIRS: the value after the key just given (owned) */
    int kind;
    int nil;            /* write NIL_EXT after the last item */
    int weight;         /* levels the Python encoder's stack has for this container */
} EFrame;

typedef struct {
    EFrame *frames;
    Py_ssize_t depth, cap;
    Py_ssize_t pydepth; /* the Python encoder's stack depth here (its MAX_ENCODE_DEPTH check) */
} EStack;

/* Python's check before a push: len(stack) >= MAX_ENCODE_DEPTH raises. */
#define PY_DEPTH_FULL(s, extra) ((s)->pydepth + (extra) >= MAX_ENCODE_DEPTH)

static int
epush(EStack *s, int kind, PyObject *obj, Py_ssize_t n, int nil, int weight)
{
    if (PY_DEPTH_FULL(s, weight - 1))
        return -1;
    if (s->depth >= s->cap) {
        Py_ssize_t cap = s->cap * 2;
        EFrame *frames = PyMem_Realloc(s->frames, (size_t)cap * sizeof(EFrame));
        if (frames == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->frames = frames;
        s->cap = cap;
    }
    EFrame *f = &s->frames[s->depth++];
    Py_INCREF(obj);
    f->obj = obj;
    f->i = 0;
    f->n = n;
    f->dpos = 0;
    f->pending = NULL;
    f->kind = kind;
    f->nil = nil;
    f->weight = weight;
    s->pydepth += weight;
    return 0;
}

static void
epop(EStack *s)
{
    EFrame *f = &s->frames[--s->depth];
    s->pydepth -= f->weight;
    Py_CLEAR(f->pending);
    Py_CLEAR(f->obj);
}

/* The next value (a new reference) of the innermost container, or NULL when it is
 * finished. A list is read as Python's list iterator reads it (its current size), so
 * that nothing here depends on it staying as it was when its header was written. */
static PyObject *
enext(EFrame *f)
{
    PyObject *v;
    if (f->pending != NULL) {
        v = f->pending;
        f->pending = NULL;
        return v;
    }
    switch (f->kind) {
    case E_DICT: {
        PyObject *key, *val;
        if (!PyDict_Next(f->obj, &f->dpos, &key, &val))
            return NULL;
        Py_INCREF(val);
        f->pending = val;
        v = key;
        break;
    }
    case E_PAIRS: { /* pairs checked to be 2-tuples when the frame was pushed */
        if (f->i >= f->n)
            return NULL;
        PyObject *pair = PyTuple_GET_ITEM(f->obj, f->i++);
        f->pending = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        v = PyTuple_GET_ITEM(pair, 0);
        break;
    }
    case E_IMPROPER: {
        PyObject *elements = SLOT(f->obj, off_il_elements);
        if (f->i < f->n)
            v = PyTuple_GET_ITEM(elements, f->i++);
        else if (f->i == f->n) {
            f->i++;
            v = SLOT(f->obj, off_il_tail);
        }
        else
            return NULL;
        break;
    }
    default:
        if (PyList_CheckExact(f->obj)) {
            if (f->i >= PyList_GET_SIZE(f->obj))
                return NULL;
            v = PyList_GET_ITEM(f->obj, f->i++);
        }
        else {
            if (f->i >= f->n)
                return NULL;
            v = PyTuple_GET_ITEM(f->obj, f->i++);
        }
    }
    Py_INCREF(v);
    return v;
}

/* Encode a list's items (a list, or a FrozenList's tuple): STRING_EXT when they are all
 * bytes, else LIST_EXT, then the items (pushed), then NIL_EXT. ``weight`` as epush. */
static int
put_list(Out *o, EStack *s, PyObject *seq, int weight)
{
    Py_ssize_t count = PyList_CheckExact(seq) ? PyList_GET_SIZE(seq) : PyTuple_GET_SIZE(seq);
    PyObject *const *items = PyList_CheckExact(seq) ? &PyList_GET_ITEM(seq, 0) : &PyTuple_GET_ITEM(seq, 0);
    if (count == 0) {
        if (out_reserve(o, 1) < 0)
            return -1;
        put8(o, 106);
        return 0;
    }
    if (PyLong_CheckExact(items[0])) {
        int rc = put_byte_list(o, items, count);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
    if (count > 0xFFFFFFFFLL || out_reserve(o, 5) < 0)
        return -1;
    put8(o, 108);
    put32(o, (uint32_t)count);
    return epush(s, E_SEQ, seq, count, 1, weight);
}

static int
put_map_header(Out *o, Py_ssize_t count)
{
    if (count > 0xFFFFFFFFLL || out_reserve(o, 5) < 0)
        return -1;
    put8(o, 116);
    put32(o, (uint32_t)count);
    return 0;
}

/* Encode one value; containers are pushed on the stack. -1: give up (BAIL). */
static int
encode_value(Out *o, EStack *s, PyObject *obj, int minor)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t == (PyTypeObject *)g_atom_type)
        return put_atom(o, obj, minor);
    if (t == &PyLong_Type) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(obj, &overflow);
        if (!overflow && v >= 0 && v < 256) {
            if (out_reserve(o, 2) < 0)
                return -1;
            put8(o, 97);
            put8(o, (unsigned)v);
            return 0;
        }
        if (!overflow && v >= -2147483648L && v <= 2147483647L) {
            if (out_reserve(o, 5) < 0)
                return -1;
            put8(o, 98);
            put32(o, (uint32_t)(int32_t)v);
            return 0;
        }
        if (v == -1 && PyErr_Occurred())
            return -1;
#if PY_VERSION_HEX < 0x030D0000
        { /* as _encode._bignum: sign byte, then the magnitude's bytes, little endian */
            int negative = _PyLong_Sign(obj) < 0;
            PyObject *magnitude = negative ? PyNumber_Negative(obj) : Py_NewRef(obj);
            if (magnitude == NULL)
                return -1;
            size_t bits = _PyLong_NumBits(magnitude);
            Py_ssize_t size = (Py_ssize_t)((bits + 7) >> 3);
            if ((bits == (size_t)-1 && PyErr_Occurred()) || size > 0xFFFFFFFFLL || out_reserve(o, 6 + size) < 0) {
                Py_DECREF(magnitude);
                return -1;
            }
            if (size < 256) {
                put8(o, 110);
                put8(o, (unsigned)size);
            }
            else {
                put8(o, 111);
                put32(o, (uint32_t)size);
            }
            put8(o, (unsigned)negative);
            int rc = _PyLong_AsByteArray((PyLongObject *)magnitude, (unsigned char *)o->data + o->len, (size_t)size, 1, 0);
            Py_DECREF(magnitude);
            if (rc < 0)
                return -1;
            o->len += size;
            return 0;
        }
#else
        return put_result(o, PyObject_CallOneArg(g_bignum, obj));
#endif
    }
    if (t == &PyTuple_Type) {
        Py_ssize_t count = PyTuple_GET_SIZE(obj);
        if (count > 0xFFFFFFFFLL || out_reserve(o, 5) < 0)
            return -1;
        if (count < 256) {
            put8(o, 104);
            put8(o, (unsigned)count);
        }
        else {
            put8(o, 105);
            put32(o, (uint32_t)count);
        }
        return count ? epush(s, E_SEQ, obj, count, 0, 1) : 0;
    }
    if (t == &PyUnicode_Type)
        return put_str(o, obj);
    if (t == &PyBytes_Type) {
        Py_ssize_t count = PyBytes_GET_SIZE(obj);
        if (count > 0xFFFFFFFFLL || out_reserve(o, 5 + count) < 0)
            return -1;
        put8(o, 109);
        put32(o, (uint32_t)count);
        memcpy(o->data + o->len, PyBytes_AS_STRING(obj), (size_t)count);
        o->len += count;
        return 0;
    }
    if (t == &PyList_Type)
        return put_list(o, s, obj, 1);
    if (t == &PyFloat_Type) {
        double x = PyFloat_AS_DOUBLE(obj);
        if (!isfinite(x) || minor == 0 || out_reserve(o, 9) < 0)
            return -1;
        put8(o, 70);
        if (PyFloat_Pack8(x, o->data + o->len, 0) < 0)
            return -1;
        o->len += 8;
        return 0;
    }
    if (t == &PyDict_Type || t == (PyTypeObject *)g_frozen_dict) {
        PyObject *dict = t == &PyDict_Type ? obj : SLOT(obj, off_fdict_map);
        if (dict == NULL || !PyDict_CheckExact(dict))
            return -1;
        Py_ssize_t count = PyDict_GET_SIZE(dict);
        if (put_map_header(o, count) < 0)
            return -1;
        return count ? epush(s, E_DICT, dict, count, 0, 1) : 0;
    }
    if (t == &PyBool_Type)
        return put_atom(o, obj == Py_True ? g_true : g_false, minor);
    if (obj == Py_None)
        return put_atom(o, g_undefined, minor);
    if (t == (PyTypeObject *)g_pid_type)
        return put_pid(o, obj, minor);
    if (t == (PyTypeObject *)g_ref_type)
        return put_reference(o, obj, minor);
    if (t == (PyTypeObject *)g_frozen_list) {
        PyObject *items = SLOT(obj, off_flist_items);
        if (items == NULL || !PyTuple_CheckExact(items))
            return -1;
        /* Python pushes the FrozenList, then encodes its tolist() (pushed in turn). */
        if (PY_DEPTH_FULL(s, 0))
            return -1;
        return put_list(o, s, items, 2);
    }
    if (t == (PyTypeObject *)g_erlang_map) {
        PyObject *pairs = SLOT(obj, off_emap_pairs);
        if (pairs == NULL || !PyTuple_CheckExact(pairs))
            return -1;
        Py_ssize_t count = PyTuple_GET_SIZE(pairs);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *pair = PyTuple_GET_ITEM(pairs, i);
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
                return -1;
        }
        if (put_map_header(o, count) < 0)
            return -1;
        return count ? epush(s, E_PAIRS, pairs, count, 0, 1) : 0;
    }
    if (t == (PyTypeObject *)g_improper_list) {
        PyObject *elements = SLOT(obj, off_il_elements);
        if (elements == NULL || !PyTuple_CheckExact(elements) || SLOT(obj, off_il_tail) == NULL)
            return -1;
        Py_ssize_t count = PyTuple_GET_SIZE(elements);
        if (count > 0xFFFFFFFFLL || out_reserve(o, 5) < 0)
            return -1;
        put8(o, 108);
        put32(o, (uint32_t)count);
        return epush(s, E_IMPROPER, obj, count, 0, 1);
    }
    /* Port, BitString, ExportFun, Fun: the Python encoder's function for the type. */
    PyObject *leaf = PyDict_GetItemWithError(g_leaf_encoders, (PyObject *)t);
    if (leaf == NULL)
        return -1; /* anything else: the Python encoder takes the whole value */
    PyObject *minor_obj = PyLong_FromLong(minor);
    if (minor_obj == NULL)
        return -1;
    PyObject *args[2] = {obj, minor_obj};
    PyObject *data = PyObject_Vectorcall(leaf, args, 2, NULL);
    Py_DECREF(minor_obj);
    return put_result(o, data);
}

static PyObject *
speedups_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!g_ready) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.setup was not called");
        return NULL;
    }
    if (nargs != 2 || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "expected (term, minor_version)");
        return NULL;
    }
    long minor = PyLong_AsLong(args[1]);
    if (minor != 1 && minor != 2) {
        PyErr_Clear();
        Py_RETURN_NONE; /* minor_version 0 (FLOAT_EXT text), or invalid: the Python encoder */
    }
    Out o = {PyBytes_FromStringAndSize(NULL, 256), NULL, 0, 256};
    EStack s = {PyMem_Malloc(16 * sizeof(EFrame)), 0, 16, 0};
    PyObject *result = NULL;
    int failed = 0;
    if (o.bytes == NULL || s.frames == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        failed = 1;
        goto done;
    }
    o.data = PyBytes_AS_STRING(o.bytes);
    put8(&o, 131);
    if (encode_value(&o, &s, args[0], (int)minor) < 0)
        failed = 1;
    while (!failed && s.depth > 0) {
        EFrame *f = &s.frames[s.depth - 1];
        PyObject *item = enext(f);
        if (item == NULL) {
            if (f->nil) {
                if (out_reserve(&o, 1) < 0) {
                    failed = 1;
                    break;
                }
                put8(&o, 106);
            }
            epop(&s);
            continue;
        }
        if (encode_value(&o, &s, item, (int)minor) < 0)
            failed = 1;
        Py_DECREF(item);
    }
    if (!failed && _PyBytes_Resize(&o.bytes, o.len) == 0) {
        result = o.bytes;
        o.bytes = NULL;
    }
    else
        failed = 1;
done:
    if (s.frames != NULL) {
        while (s.depth > 0)
            epop(&s);
        PyMem_Free(s.frames);
    }
    Py_XDECREF(o.bytes);
    if (failed) {
        if (PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_MemoryError) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
                return NULL;
            PyErr_Clear();
        }
        Py_RETURN_NONE; /* the Python encoder encodes this value or raises its EncodeError */
    }
    return result;
}

/* ------------------------------------------------------------------------- module */

static PyMethodDef speedups_methods[] = {
    {"setup", speedups_setup, METH_O, "setup(config): the Python backend's objects, once."},
    {"decode_term", (PyCFunction)(void (*)(void))speedups_decode_term, METH_FASTCALL,
     "decode_term(buf, pos, opts, max_terms=-1) -> (term, end), as _decode.decode_term."},
    {"decode_versioned", (PyCFunction)(void (*)(void))speedups_decode_versioned, METH_FASTCALL,
     "decode_versioned(buf, pos, opts, version=True) -> (term, end), as _decode.decode_versioned."},
    {"encode", (PyCFunction)(void (*)(void))speedups_encode, METH_FASTCALL,
     "encode(term, minor_version) -> bytes (131 and the term), or None: the Python encoder must do it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "_speedups", "C backend of pyfabric.etf (see _accel.py).", -1, speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    g_str_hot = PyUnicode_InternFromString("hot");
    g_str_limits = PyUnicode_InternFromString("limits");
    g_str_max_bignum = PyUnicode_InternFromString("max_bignum_bytes");
    if (g_str_hot == NULL || g_str_limits == NULL || g_str_max_bignum == NULL)
        return NULL;
    return PyModule_Create(&speedups_module);
}
