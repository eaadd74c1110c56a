"""What a folder the tool made holds: the files it wrote there, and nothing else.

A folder the tool makes and replaces as a whole (a thumbnails folder, the installed package)
holds a marker file. The marker lists every file the tool wrote into the folder (relative
path -> SHA-256, or "" where only the name is kept, as for thumbnails). The folder is the
tool's only down to those files: :func:`unknown_entry` finds anything else (a user's
``notes.txt``, an edited ``cli.py``), and the writers refuse to replace or remove such a
folder before computing, naming that file. Python's own ``__pycache__`` folders, made when
the console imports the installed package, are not the user's and are ignored.

Markers written by earlier versions hold plain text, no list: in a thumbnails folder every
file must then be named like a thumbnail (``000123.png``); other folders are checked no
further, as before.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Optional

from .io_utils import sha256_file

_THUMBNAIL_NAME = re.compile(r"^\d{6}\.png$")


def write_marker(folder: str, marker: str, about: str, digests: bool = True) -> None:
    """Write ``marker`` into ``folder`` listing every file now in it (relative paths, with
    their SHA-256 digests when ``digests``; names only otherwise).
    """
    files: Dict[str, str] = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel != marker:
                files[rel] = sha256_file(full) if digests else ""
    with open(os.path.join(folder, marker), "w", encoding="utf-8") as f:
        json.dump({"about": about.strip(), "files": dict(sorted(files.items()))}, f, indent=0)
        f.write("\n")


def _listing(folder: str, marker: str) -> Optional[Dict[str, str]]:
    """The marker's list of files; None for a marker without one (an earlier version's), {}
    for one that is damaged (then every file in the folder counts as unknown).
    """
    try:
        with open(os.path.join(folder, marker), encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError):
        return {}  # unreadable: nothing in the folder is known to be the tool's
    if not text.lstrip().startswith("{"):
        return None  # an earlier version's plain-text marker
    try:
        return {str(k): str(v) for k, v in json.loads(text)["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # a damaged list: nothing in the folder is known to be the tool's


def _python_cache(rel: str) -> bool:
    parts = rel.split("/")
    return "__pycache__" in parts[:-1] and parts[-1].endswith((".pyc", ".pyo"))


def unknown_entry(folder: str, marker: str, thumbnails: bool = False) -> Optional[str]:
    """The first entry of ``folder`` (a folder holding ``marker``) that the tool did not
    write, or wrote and somebody changed since: its path, or None if there is none.

    Args:
        folder: a folder the tool made.
        marker: the marker file in it.
        thumbnails: the folder is a thumbnails folder (decides the rule for old markers).

    """
    listing = _listing(folder, marker)
    if listing == {}:
        return os.path.join(folder, marker)  # damaged: the tool cannot tell what is its own
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel == marker or _python_cache(rel):
                continue
            if os.path.islink(full):
                return full
            if listing is None:
                if thumbnails and not _THUMBNAIL_NAME.match(rel):
                    return full
                continue
            if rel not in listing or (listing[rel] and sha256_file(full) != listing[rel]):
                return full
    return None
