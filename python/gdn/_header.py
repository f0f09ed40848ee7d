"""Reads the version of gdn out of include/gdn.h.

Kept free of any other import of the package so that setup.py can load this file alone, before
the package (and the library it loads) can be imported.
"""
import re
from pathlib import Path

_VERSION_DEFINE = re.compile(r"^\s*#\s*define\s+GDN_VERSION_(MAJOR|MINOR|PATCH)\s+(\d+)\s*$", re.MULTILINE)


def header_version(header: Path) -> str:
    """The "MAJOR.MINOR.PATCH" that gdn.h defines; ValueError if one of the three is missing."""
    found = dict(_VERSION_DEFINE.findall(Path(header).read_text()))
    missing = [part for part in ("MAJOR", "MINOR", "PATCH") if part not in found]
    if missing:
        raise ValueError(f"{header}: no GDN_VERSION_{missing[0]} define")
    return f"{int(found['MAJOR'])}.{int(found['MINOR'])}.{int(found['PATCH'])}"
