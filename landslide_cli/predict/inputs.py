"""Scene inputs at regional scale: globs, lists of paths or URLs, STAC ItemCollections.

:func:`expand_inputs` turns the scene arguments of ``landslide predict`` into one scene per
entry, in a stable order:

* a **glob** (``'scenes/*.tif'``, ``'tiles/**/*.tif'``; quoted, so the shell leaves it to us)
  expands to the matching files, sorted; a glob that matches nothing is an error;
* ``@FILE`` (or ``--scene-list FILE``): one path or URL per line; blank lines and ``#``
  comments are skipped; relative paths are relative to the list file's folder;
* a **STAC ItemCollection** (a ``.json``/``.geojson`` whose ``type`` is
  ``FeatureCollection``): each feature is one scene. Each Item is written as its own JSON
  file (asset ``href``\\ s made absolute) into ``item_dir`` and handed to
  :mod:`~landslide_cli.predict.remote` like any single STAC Item;
* anything else (a path, a URL, a single STAC Item) passes through unchanged.

Duplicates are left for ``plan_predict`` to refuse (a scene given twice would count every
polygon twice).
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.safety import atomic_write, first_line, is_url

#: characters that make an argument a glob pattern
GLOB_CHARS = re.compile(r"[*?\[]")
#: the largest ItemCollection document read
MAX_COLLECTION_BYTES = 256 * 1024 * 1024
STAC_SUFFIXES = (".json", ".geojson")


def expand_inputs(args: Iterable[str | os.PathLike[str]], *,
                  scene_list: str | os.PathLike[str] | None = None,
                  item_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The scenes named by ``args`` (and the list file ``scene_list``), one per entry, as
    strings (paths or URLs); see the module docstring."""
    given = [str(a) for a in args]
    if scene_list is not None:
        given.append(f"@{scene_list}")
    out: list[str] = []
    items: Path | None = Path(item_dir) if item_dir is not None else None
    for arg in given:
        for entry in _expand_one(arg):
            if _is_item_collection(entry):
                if items is None:
                    items = _session_item_dir()
                out.extend(split_item_collection(entry, items))
            else:
                out.append(entry)
    if not out:
        raise LandslideError("no scene given")
    return out


def _expand_one(arg: str) -> list[str]:
    if arg.startswith("@"):
        return read_scene_list(arg[1:])
    if not is_url(arg) and GLOB_CHARS.search(arg) and not Path(arg).exists():
        matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            raise DataError(f"{arg}: no file matches this pattern")
        return files
    return [arg]


def read_scene_list(path: str | os.PathLike[str]) -> list[str]:
    """The entries of a scene list file (one path or URL per line, ``#`` comments); relative
    paths are taken relative to the list's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"scene list not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read scene list {p}: {first_line(exc)}") from None
    out: list[str] = []
    for line in text.splitlines():
        entry = line.strip()
        if entry.startswith("#"):
            continue
        entry = entry.split(" #", 1)[0].strip()  # a comment after the entry
        if not entry:
            continue
        if not is_url(entry) and not Path(entry).is_absolute():
            entry = str(p.parent / entry)
        out.extend(_expand_one(entry))
    if not out:
        raise DataError(f"scene list {p}: no scene in it")
    return out


def _is_item_collection(entry: str) -> bool:
    """A local JSON file whose ``type`` is ``FeatureCollection`` (read only its start)."""
    if is_url(entry) or not entry.lower().endswith(STAC_SUFFIXES):
        return False
    p = Path(entry)
    if not p.is_file():
        return False
    try:
        with p.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r'"type"\s*:\s*"FeatureCollection"', head) is not None or (
        '"features"' in head and '"Feature"' not in head.split('"features"', 1)[0])


def split_item_collection(location: str | os.PathLike[str],
                          item_dir: str | os.PathLike[str]) -> list[str]:
    """Write each Item of the ItemCollection at ``location`` into ``item_dir`` (hrefs made
    absolute) and return the Items' files, in the collection's order."""
    p = Path(location)
    try:
        if p.stat().st_size > MAX_COLLECTION_BYTES:
            raise DataError(f"{p}: larger than {MAX_COLLECTION_BYTES >> 20} MiB")
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read STAC ItemCollection {p}: {first_line(exc)}") from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise DataError(f"{p}: not a STAC ItemCollection (no features list)")
    if not features:
        raise DataError(f"STAC ItemCollection {p}: no items in it")
    folder = Path(item_dir)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    seen: set[str] = set()
    for k, item in enumerate(features):
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise DataError(f"STAC ItemCollection {p}: feature {k} is not a STAC Item")
        item_id = str(item.get("id") or f"item{k}")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id) or f"item{k}"
        if name in seen:
            raise DataError(f"STAC ItemCollection {p}: item id {item_id!r} appears twice")
        seen.add(name)
        absolute = _absolute_hrefs(item, p)
        target = folder / f"{name}.json"
        text = json.dumps(absolute, indent=1)
        atomic_write(target, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"),
                     suffix=".json")
        out.append(str(target))
    return out


def _absolute_hrefs(item: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of ``item`` whose asset hrefs do not depend on where the Item file lies."""
    copy = json.loads(json.dumps(item))
    for asset in (copy.get("assets") or {}).values():
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or is_url(href) or urllib.parse.urlsplit(href).scheme:
            continue
        path = Path(urllib.parse.unquote(href))
        if not path.is_absolute():
            asset["href"] = str((base.parent / path).resolve())
    return copy


_SESSION_DIRS: list[Path] = []


def _session_item_dir() -> Path:
    """A temporary folder for split Items, removed when the process ends."""
    folder = Path(tempfile.mkdtemp(prefix="landslide-items-"))
    _SESSION_DIRS.append(folder)
    return folder


@atexit.register
def _remove_session_dirs() -> None:  # pragma: no cover - at interpreter exit
    for folder in _SESSION_DIRS:
        shutil.rmtree(folder, ignore_errors=True)
