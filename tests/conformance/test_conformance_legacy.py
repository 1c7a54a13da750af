"""conformance/legacy: the recorded frames and their index agree with each other.

Every ``.bin`` file has an entry in ``INDEX.md`` whose direction, length and hex are those
of the file, and the safe decoder accepts every frame except the raw-client garbage and
the fun payload (the Erlang runner checks the same split).
"""

from __future__ import annotations

import re

import pytest
from conformance_corpus import LEGACY_DIR, legacy_paths

from pyfabric import etf

ENTRY = re.compile(r"^## (\S+\.bin)\n(.*?)(?=^## |\Z)", re.S | re.M)
INDEX = {m.group(1): m.group(2) for m in ENTRY.finditer((LEGACY_DIR / "INDEX.md").read_text(encoding="utf-8"))}
REFUSED = {32: etf.UnsafeTermError, 42: etf.DecodeError, 45: etf.DecodeError}


def test_every_vector_is_indexed() -> None:
    assert sorted(INDEX) == [p.name for p in legacy_paths()]
    assert len(INDEX) == 53


@pytest.mark.parametrize("path", legacy_paths(), ids=lambda p: p.name)
def test_index_describes_the_file(path) -> None:
    entry = INDEX[path.name]
    data = path.read_bytes()
    direction = re.search(r"^- direction: \*\*(C->S|S->C)\*\*", entry, re.M).group(1)
    assert direction == {"c2s": "C->S", "s2c": "S->C"}[path.name.split("_")[1]]
    assert re.search(rf"^- length: {len(data)} bytes;", entry, re.M)
    full = re.search(r"^- hex: `([0-9a-f]+)`", entry, re.M)
    if full:
        assert bytes.fromhex(full.group(1)) == data
    else:
        prefix = re.search(r"^- hex \(first 64 bytes\): `([0-9a-f]+)\.\.\.`", entry, re.M).group(1)
        assert data.startswith(bytes.fromhex(prefix)) and len(prefix) == 128


@pytest.mark.parametrize("path", legacy_paths(), ids=lambda p: p.name)
def test_safe_decoding(path) -> None:
    number = int(path.name[:2])
    if number in REFUSED:
        with pytest.raises(REFUSED[number]):
            etf.decode(path.read_bytes())
    else:
        etf.decode(path.read_bytes())
