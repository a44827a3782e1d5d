"""File safety in one place: staged (atomic) writes, temporary paths, target checks, hashes.

The rules every writer of the project follows (``docs/predict.md`` states them for users):

* **Never the input.** An output that resolves to a file the run reads is refused, with or
  without ``--overwrite`` (:func:`check_target` with ``inputs=``).
* **Never partial.** Outputs are written to a hidden temporary file beside the target and
  renamed onto it only when complete (:class:`Staged`, :func:`atomic_write`); on any error the
  temporary file is removed and the target is left as it was.
* **Never silently replaced.** An existing target is refused unless the caller passes
  ``overwrite=True``; every target is checked before any work starts.
* **No litter.** Temporary names carry the writer's process id
  (``.NAME.<pid>-<tag><suffix>``); a later write to the same target removes temporaries whose
  process is gone (left behind by ``kill -9`` or a power cut).

This module has no heavy imports (no torch, no GDAL) so every layer can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from landslide_cli.errors import LandslideError

# mkstemp-style owner-only files are not what users expect of outputs: use the umask instead.
_UMASK = os.umask(0)
os.umask(_UMASK)

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})(?P<rest>.*)$")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none); for an
    ``OSError`` its plain reason (``Is a directory``), without errno and path. The most
    specific message of an exception chain wins (e.g. GDAL's own text under rasterio's)."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)[:limit]
    text = str(exc).strip().splitlines()
    return (text[0].strip() if text else type(exc).__name__)[:limit]


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- temporaries


def temp_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A hidden, unique temporary path beside ``target`` (same file system, so ``os.replace``
    is atomic), named with this process's id so stale ones can be recognised later."""
    target = Path(target)
    return target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # unknown: keep the file
    return True


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``target`` left by processes that no longer run; return them.

    Only files named by :func:`temp_path` for this very target are considered; temporaries of
    running processes (another ``landslide`` writing the same target) are left alone.
    """
    target = Path(target)
    folder = target.parent
    prefix = f".{target.name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        m = _TEMP_RE.match(entry.name)
        if m is None or m["name"] != target.name or pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


# ---------------------------------------------------------------------------- target checks


#: prefixes of inputs read from elsewhere (``http(s)://`` URLs, GDAL's network handlers)
REMOTE_PREFIXES = ("http://", "https://", "/vsicurl/", "/vsicurl?")


def is_url(path: object) -> bool:
    """Whether ``path`` names a remote input (a URL, or an object whose ``str()`` is one):
    it can never be an output of a run, and is compared as text."""
    return str(path).lower().startswith(REMOTE_PREFIXES)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (hard links and symlinks included); paths that do
    not exist yet are compared after resolving them; URLs are compared as text (and never
    equal a local file)."""
    if is_url(a) or is_url(b):
        return str(a) == str(b)
    pa, pb = Path(a), Path(b)
    try:
        return os.path.samefile(pa, pb)
    except OSError:
        return pa.resolve() == pb.resolve()


def check_target(path: str | os.PathLike[str], *, overwrite: bool, what: str = "output",
                 suffixes: tuple[str, ...] = (), inputs: Iterable[str | os.PathLike[str]] = (),
                 probe: bool = True) -> Path:
    """Check before any work that ``path`` can be written; raise a one-line error if not.

    Refuses: a wrong suffix, a missing or non-folder parent, a folder at ``path``, an
    existing file without ``overwrite``, any of ``inputs`` (always), an unwritable folder.
    """
    path = Path(path)
    for src in inputs if path.exists() else ():  # only an existing file can be an input
        if not is_url(src) and same_file(path, src):  # a URL is never written
            raise LandslideError(
                f"{what} {path} is an input of this run ({src}); it is never overwritten, "
                "choose another file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise LandslideError(f"{what} {path}: expected a {' or '.join(suffixes)} file name")
    parent = path.parent
    if not parent.exists():
        raise LandslideError(f"{what} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise LandslideError(f"{what} {path}: {parent} is not a folder")
    if path.is_dir():
        raise LandslideError(f"{what} {path} is a folder")
    if path.exists() and not overwrite:
        raise LandslideError(f"{what} {path} already exists (use --overwrite to replace it)")
    if probe:
        test = temp_path(path, ".probe")
        try:
            test.write_bytes(b"")
        except OSError as exc:
            raise LandslideError(
                f"{what} {path}: cannot write in {parent} ({exc.strerror or exc})") from None
        finally:
            with contextlib.suppress(OSError):
                test.unlink(missing_ok=True)
    return path


def check_distinct(targets: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """Refuse two outputs of one run that name the same file: ``[(what, path), ...]``."""
    seen: list[tuple[str, Path]] = []
    for what, p in targets:
        if p is None:
            continue
        for other_what, other in seen:
            if same_file(p, other):
                raise LandslideError(f"{what} {p} and {other_what} {other} are the same file")
        seen.append((what, Path(p)))


# ---------------------------------------------------------------------------- staged writes


class Staged:
    """One output written to a temporary file beside its target, published by :meth:`commit`.

    ``with Staged(target) as tmp: write(tmp)`` commits on success and removes the temporary
    on error. Used directly, :meth:`commit` and :meth:`cleanup` can be called when several
    outputs of one run should be published together, after all of them were written.
    """

    #: files a writer may create beside its temporary (SQLite journals, GDAL side cars)
    SIDE_SUFFIXES = ("-journal", "-wal", "-shm", ".ovr", ".aux.xml")

    def __init__(self, target: str | os.PathLike[str], suffix: str = ".tmp") -> None:
        self.target = Path(target)
        remove_stale_temps(self.target)
        self.tmp = temp_path(self.target, suffix)
        self.committed = False

    def commit(self) -> Path:
        if not self.tmp.exists():
            raise LandslideError(f"cannot write {self.target}: nothing was written")
        try:
            os.chmod(self.tmp, 0o666 & ~_UMASK)
            os.replace(self.tmp, self.target)
        except OSError as exc:
            self.cleanup()
            raise LandslideError(f"cannot write {self.target}: {first_line(exc)}") from None
        self.committed = True
        self._remove_sides()
        return self.target

    def cleanup(self) -> None:
        """Remove the temporary (and its side cars); the target is left untouched."""
        if not self.committed:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)
        self._remove_sides()

    def _remove_sides(self) -> None:
        for side in self.SIDE_SUFFIXES:
            with contextlib.suppress(OSError):
                Path(str(self.tmp) + side).unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.cleanup()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                 suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)``, then rename the temporary onto ``path`` (same folder).

    On any error the temporary is removed and ``path`` is untouched; an ``OSError`` becomes a
    one-line :class:`~landslide_cli.errors.LandslideError`.
    """
    staged = Staged(path, suffix or ".tmp")
    try:
        write(staged.tmp)
    except OSError as exc:
        staged.cleanup()
        raise LandslideError(f"cannot write {path}: {first_line(exc)}") from None
    except BaseException:
        staged.cleanup()
        raise
    return staged.commit()
