"""Tag bytes of the Erlang External Term Format (erts "External Term Format" chapter).

This module owns the numeric constants only; nothing here encodes or decodes.
"""

VERSION = 131

COMPRESSED = 80  # 'P': Size:32, zlib stream of the term body
DIST_HEADER = 68  # 'D': distribution header, only inside the distribution protocol
DIST_FRAG_HEADER = 69  # 'E'
ATOM_CACHE_REF = 82  # 'R': index into the distribution atom cache
LOCAL_EXT = 121  # 'y': node-local encoding, only meaningful to the emitting node

NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
NEW_PID_EXT = 88
NEW_PORT_EXT = 89
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
REFERENCE_EXT = 101
PORT_EXT = 102
PID_EXT = 103
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
NEW_FUN_EXT = 112
EXPORT_EXT = 113
NEW_REFERENCE_EXT = 114
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119
V4_PORT_EXT = 120

TAG_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if isinstance(value, int) and name.isupper() and name != "VERSION"
}
