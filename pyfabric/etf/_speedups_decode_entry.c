/* pyfabric.etf._speedups, the decoder's entry points decode_term and decode_versioned:
 * their arguments, the version byte, compressed terms (inflated by the Python decoder's
 * _inflate), and the Python decoder for whatever the walk (_speedups_decode.c) gives up on.
 */
#include "_speedups.h"

static int
parse_decode_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *pos, Py_ssize_t *extra, Py_ssize_t dflt)
{
    if (!pyf_ready) {
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
    PyObject *inflated = PyObject_Vectorcall(pyf_inflate, args, 3, NULL);
    Py_DECREF(pos_obj);
    if (inflated == NULL)
        return NULL;
    PyObject *body = PyTuple_CheckExact(inflated) && PyTuple_GET_SIZE(inflated) == 2 ? PyTuple_GET_ITEM(inflated, 0) : NULL;
    PyObject *limits = PyObject_GetAttr(opts, pyf_str_limits);
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
    PyObject *res = pyf_run_decoder(body, 0, opts, budget < max_total ? budget : -1);
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

PyObject *
pyf_decode_term(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t pos, max_terms;
    int rc = parse_decode_args(args, nargs, &pos, &max_terms, -1);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        return python_decoder(pyf_py_decode_term, args, nargs);
    PyObject *res = pyf_run_decoder(args[0], pos, args[2], max_terms);
    return res != NULL ? res : retry_in_python(pyf_py_decode_term, args, nargs);
}

PyObject *
pyf_decode_versioned(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t pos, version;
    int rc = parse_decode_args(args, nargs, &pos, &version, 1);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        return python_decoder(pyf_py_decode_versioned, args, nargs);
    if (version) {
        const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
        /* A missing or wrong version byte: the Python decoder (it raises the error). */
        if (pos + 1 >= n || buf[pos] != 131)
            return python_decoder(pyf_py_decode_versioned, args, nargs);
        if (buf[pos + 1] == 80) {
            PyObject *res = decode_compressed(args[0], pos + 1, args[2]);
            return res != NULL ? res : retry_in_python(pyf_py_decode_versioned, args, nargs);
        }
        pos++;
    }
    PyObject *res = pyf_run_decoder(args[0], pos, args[2], -1);
    return res != NULL ? res : retry_in_python(pyf_py_decode_versioned, args, nargs);
}
