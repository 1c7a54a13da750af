/* pyfabric.etf._speedups, the decoder's term walk: one term body decoded with an explicit
 * stack of the containers being filled, the hot tags here and the others by the Python
 * decoder's helpers (see _speedups.c's header comment). Entry: pyf_run_decoder.
 */
#include "_speedups.h"

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
    PyObject *hot = PyObject_GetAttr(opts, pyf_str_hot);
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
    PyObject *frozen = PyObject_CallOneArg(pyf_frozen_list, list);
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
        result = PyObject_Vectorcall(pyf_finish_list, args, 3, NULL);
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
            result = PyObject_Vectorcall(pyf_finish_map, args, 3, NULL);
        }
        else if (f->frozen == 1) {
            result = PyObject_CallOneArg(pyf_frozen_dict, dict);
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
            PyObject *limits = PyObject_GetAttr(d->opts, pyf_str_limits);
            if (limits == NULL)
                goto bail;
            PyObject *lim_obj = PyObject_GetAttr(limits, pyf_str_max_bignum);
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
                value = cache_get(pyf_atoms, g_front_atoms, buf + pos, end - pos, &failed);
                if (failed)
                    goto bail;
            }
            if (value == NULL) {
                value = call_helper(d, pyf_read_atom, pos, &end);
                if (value == NULL)
                    goto bail;
            }
            pos = end;
            if (d->python_atoms) {
                PyObject *mapped = NULL;
                if (value == pyf_true)
                    mapped = Py_True;
                else if (value == pyf_false)
                    mapped = Py_False;
                else if (value == pyf_undefined)
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
                    value = WANT_FROZEN(f) ? PyObject_CallNoArgs(pyf_frozen_dict) : PyDict_New();
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
            value = WANT_FROZEN(f) ? PyObject_CallNoArgs(pyf_frozen_list) : PyList_New(0);
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
                value = cache_get(pyf_pids, g_front_pids, buf + pos + 1, end - pos - 1, &failed);
                if (failed)
                    goto bail;
            }
            if (value == NULL) {
                value = call_helper(d, pyf_new_pid, pos, &end);
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
                node = cache_get(pyf_atoms, g_front_atoms, buf + pos + 3, node_end - pos - 3, &failed);
                if (failed)
                    goto bail;
            }
            if (node == NULL) {
                value = call_helper(d, pyf_reference, pos, &end);
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
            PyTypeObject *rt = (PyTypeObject *)pyf_ref_type;
            value = rt->tp_alloc(rt, 0);
            if (value == NULL) {
                Py_DECREF(node);
                Py_DECREF(creation);
                Py_DECREF(ids);
                goto bail;
            }
            SLOT(value, pyf_off_ref_node) = node;
            SLOT(value, pyf_off_ref_creation) = creation;
            SLOT(value, pyf_off_ref_ids) = ids;
            pos = end;
            break;
        }
        case 112: /* NEW_FUN_EXT: the whole input goes to the Python decoder */
            goto bail;
        default: { /* the other tags: the Python decoder's function for the tag */
            PyObject *fn = Py_NewRef(PyList_GET_ITEM(pyf_scalars, tag));
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

PyObject *
pyf_run_decoder(PyObject *bufobj, Py_ssize_t pos, PyObject *opts, Py_ssize_t max_terms)
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
