/* pyfabric.etf._speedups, the encoder: encode(term, minor_version), with an explicit stack
 * of the containers being written (see _speedups.c's header comment).
 */
#include "_speedups.h"

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
    PyObject *ext = SLOT(atom, minor == 2 ? pyf_off_atom_ext2 : pyf_off_atom_ext1);
    if (ext != NULL && PyBytes_CheckExact(ext))
        return put_bytes(o, PyBytes_AS_STRING(ext), PyBytes_GET_SIZE(ext));
    PyObject *minor_obj = PyLong_FromLong(minor);
    if (minor_obj == NULL)
        return -1;
    PyObject *args[2] = {atom, minor_obj};
    PyObject *data = PyObject_Vectorcall(pyf_atom_ext, args, 2, NULL);
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
    PyObject *node = SLOT(pid, pyf_off_pid_node);
    uint32_t id, serial, creation;
    if (node == NULL || !Py_IS_TYPE(node, (PyTypeObject *)pyf_atom_type) || slot_u32(SLOT(pid, pyf_off_pid_id), &id)
        || slot_u32(SLOT(pid, pyf_off_pid_serial), &serial) || slot_u32(SLOT(pid, pyf_off_pid_creation), &creation))
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
    PyObject *node = SLOT(ref, pyf_off_ref_node);
    PyObject *ids = SLOT(ref, pyf_off_ref_ids);
    uint32_t creation, word;
    if (node == NULL || !Py_IS_TYPE(node, (PyTypeObject *)pyf_atom_type) || ids == NULL || !PyTuple_CheckExact(ids)
        || PyTuple_GET_SIZE(ids) > 5 || slot_u32(SLOT(ref, pyf_off_ref_creation), &creation))
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
        PyObject *elements = SLOT(f->obj, pyf_off_il_elements);
        if (f->i < f->n)
            v = PyTuple_GET_ITEM(elements, f->i++);
        else if (f->i == f->n) {
            f->i++;
            v = SLOT(f->obj, pyf_off_il_tail);
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
    if (t == (PyTypeObject *)pyf_atom_type)
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
        return put_result(o, PyObject_CallOneArg(pyf_bignum, obj));
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
    if (t == &PyDict_Type || t == (PyTypeObject *)pyf_frozen_dict) {
        PyObject *dict = t == &PyDict_Type ? obj : SLOT(obj, pyf_off_fdict_map);
        if (dict == NULL || !PyDict_CheckExact(dict))
            return -1;
        Py_ssize_t count = PyDict_GET_SIZE(dict);
        if (put_map_header(o, count) < 0)
            return -1;
        return count ? epush(s, E_DICT, dict, count, 0, 1) : 0;
    }
    if (t == &PyBool_Type)
        return put_atom(o, obj == Py_True ? pyf_true : pyf_false, minor);
    if (obj == Py_None)
        return put_atom(o, pyf_undefined, minor);
    if (t == (PyTypeObject *)pyf_pid_type)
        return put_pid(o, obj, minor);
    if (t == (PyTypeObject *)pyf_ref_type)
        return put_reference(o, obj, minor);
    if (t == (PyTypeObject *)pyf_frozen_list) {
        PyObject *items = SLOT(obj, pyf_off_flist_items);
        if (items == NULL || !PyTuple_CheckExact(items))
            return -1;
        /* Python pushes the FrozenList, then encodes its tolist() (pushed in turn). */
        if (PY_DEPTH_FULL(s, 0))
            return -1;
        return put_list(o, s, items, 2);
    }
    if (t == (PyTypeObject *)pyf_erlang_map) {
        PyObject *pairs = SLOT(obj, pyf_off_emap_pairs);
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
    if (t == (PyTypeObject *)pyf_improper_list) {
        PyObject *elements = SLOT(obj, pyf_off_il_elements);
        if (elements == NULL || !PyTuple_CheckExact(elements) || SLOT(obj, pyf_off_il_tail) == NULL)
            return -1;
        Py_ssize_t count = PyTuple_GET_SIZE(elements);
        if (count > 0xFFFFFFFFLL || out_reserve(o, 5) < 0)
            return -1;
        put8(o, 108);
        put32(o, (uint32_t)count);
        return epush(s, E_IMPROPER, obj, count, 0, 1);
    }
    /* Port, BitString, ExportFun, Fun: the Python encoder's function for the type. */
    PyObject *leaf = PyDict_GetItemWithError(pyf_leaf_encoders, (PyObject *)t);
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

PyObject *
pyf_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!pyf_ready) {
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
