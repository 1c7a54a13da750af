"""Where the conformance corpus lives, and its loaders (see ``conformance/README.md``).

The corpus is the in-repository directory ``conformance/``: the recorded frames of the
original implementation in ``conformance/legacy/`` and the extended-protocol cases in
``conformance/cases/*.cases``. Every test that needs a vector finds it through
:data:`LEGACY_DIR` (found from this file, so a fresh clone needs nothing outside the
repository). ``tests/conformance`` is on pytest's ``pythonpath`` (pyproject.toml), so any
test module can ``import conformance_corpus``.

Case file format: ``case NAME`` ... ``end`` blocks of ``key value`` lines; ``#`` starts a
comment line. A key may repeat; the order of lines is kept (steps are read in order).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field


def _find_root() -> pathlib.Path:
    for parent in pathlib.Path(__file__).resolve().parents:
        if (parent / "conformance" / "legacy" / "INDEX.md").is_file():
            return parent / "conformance"
    raise FileNotFoundError(
        f"no conformance/legacy/INDEX.md above {__file__}: run the tests from a checkout of the repository"
    )


CORPUS_DIR = _find_root()
LEGACY_DIR = CORPUS_DIR / "legacy"
CASES_DIR = CORPUS_DIR / "cases"


def legacy_paths() -> list[pathlib.Path]:
    """The recorded frames, ``NN_<dir>_<what>.bin``, in order."""
    return sorted(LEGACY_DIR.glob("[0-9][0-9]_*.bin"))


def legacy_vectors() -> dict[int, bytes]:
    """Vector number -> frame payload (without the 4-byte length)."""
    return {int(p.name[:2]): p.read_bytes() for p in legacy_paths()}


def legacy_vector(number: int) -> bytes:
    (path,) = LEGACY_DIR.glob(f"{number:02d}_*.bin")
    return path.read_bytes()


@dataclass
class Case:
    """One ``case NAME`` block: its lines as (key, value) pairs, in file order."""

    name: str
    file: str
    lines: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str:
        for k, v in self.lines:
            if k == key:
                return v
        if default is None:
            raise KeyError(f"case {self.name} ({self.file}) has no {key!r} line")
        return default

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.lines if k == key]

    def hex(self, key: str) -> bytes:
        return bytes.fromhex(self.get(key))

    def words(self, key: str) -> list[str]:
        return self.get(key, "").split()


def parse_cases(text: str, file: str = "<text>") -> list[Case]:
    """Parse the case format; raises ValueError naming the file and line of a mistake."""
    cases: list[Case] = []
    current: Case | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "case":
            if current is not None:
                raise ValueError(f"{file}:{number}: case {value} starts inside case {current.name}")
            current = Case(value, file)
        elif key == "end":
            if current is None:
                raise ValueError(f"{file}:{number}: end outside a case")
            cases.append(current)
            current = None
        elif current is None:
            raise ValueError(f"{file}:{number}: {key!r} outside a case")
        else:
            current.lines.append((key, value))
    if current is not None:
        raise ValueError(f"{file}: case {current.name} has no end")
    return cases


def load_cases(kind: str | None = None) -> list[Case]:
    """Every case of ``conformance/cases/*.cases`` (only those of ``kind`` if given)."""
    out: list[Case] = []
    for path in sorted(CASES_DIR.glob("*.cases")):
        out.extend(parse_cases(path.read_text(encoding="utf-8"), path.name))
    names = [c.name for c in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate case names {sorted(dupes)}")
    return [c for c in out if kind is None or c.get("kind") == kind]
