"""The file-finding lookups, searched as Ansible searches them: ``first_found`` (the first file that exists, from a
list of names or ``{files, paths, skip}``) and ``fileglob`` (the files a glob matches). A relative name is looked
up in the task's role (``SUBDIR/`` then the role itself) and then the playbook's folder (``SUBDIR/``, itself);
SUBDIR is ``files`` (``vars`` for include_vars and ``templates`` for template tasks in a ``with_first_found``)."""
from __future__ import annotations

import glob
import os
from typing import Any, Iterable

from provision.templating.base import TemplateError


def search_dirs(role_dir: str | None, playbook_dir: str | None, subdir: str) -> list[str]:
    dirs = []
    for d in (role_dir, playbook_dir):
        if d:
            dirs += [os.path.join(d, subdir), d]
    return dirs


def _names(v: Any) -> list[str]:
    """files/paths given as a list or as one string split on , and ; (Ansible's first_found)."""
    if v is None:
        return []
    if isinstance(v, str):
        return [p.strip() for p in v.replace(";", ",").split(",") if p.strip()]
    return [str(x) for x in v]


def first_found(terms: Iterable, dirs: list[str], *, files=None, paths=None, skip: bool = False) -> list[str]:
    """[the first existing file] of ``terms`` (names, or mappings with files/paths/skip), or [] when ``skip``."""
    cands: list[tuple[str, list[str]]] = []
    for term in terms:
        if isinstance(term, dict):
            skip = bool(term.get("skip", skip))
            where = _names(term.get("paths")) or _names(paths)
            cands += [(f, where) for f in _names(term.get("files"))]
        elif isinstance(term, (list, tuple)):
            cands += [(str(f), _names(paths)) for f in term]
        else:
            cands.append((str(term), _names(paths)))
    cands += [(f, _names(paths)) for f in _names(files)]
    for name, where in cands:
        name = os.path.expanduser(name)
        if os.path.isabs(name):
            places = [name]
        elif where:
            places = [os.path.join(p if os.path.isabs(p) else os.path.join(d, p), name)
                      for p in where for d in ([""] if os.path.isabs(p) else dirs[1::2] or [""])]
        else:
            places = [os.path.join(d, name) for d in dirs]
        for p in places:
            if os.path.isfile(p):
                return [os.path.abspath(p)]
    if skip:
        return []
    raise TemplateError("first_found: none of "
                        + ", ".join(repr(n) for n, _ in cands) + f" found (looked in {', '.join(dirs) or '.'})")


def fileglob(terms: Iterable, dirs: list[str]) -> list[str]:
    """The files each glob matches; a relative glob's folder is the first of ``dirs`` that has it."""
    out: list[str] = []
    for term in terms:
        term = os.path.expanduser(str(term))
        if os.path.isabs(term):
            matches = glob.glob(term)
        else:
            folder, pattern = os.path.split(term)
            base = next((os.path.join(d, folder) for d in dirs if os.path.isdir(os.path.join(d, folder))), None)
            matches = glob.glob(os.path.join(base, pattern)) if base else []
        out += sorted(m for m in matches if os.path.isfile(m))
    return out


def file_lookup(name: str, terms: list, role_dir: str | None, playbook_dir: str | None, subdir: str = "files",
                **kw) -> list[str]:
    """``first_found`` or ``fileglob`` over ``terms`` for a task of a role (``role_dir``) in a playbook."""
    dirs = search_dirs(role_dir, playbook_dir, subdir)
    if name == "first_found":
        return first_found(terms, dirs, files=kw.get("files"), paths=kw.get("paths"), skip=bool(kw.get("skip")))
    return fileglob(terms, dirs)
