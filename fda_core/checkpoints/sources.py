"""Where checkpoint files come from: a local path, file:// or a registered remote scheme.

fda_core knows only local files; remote schemes (s3://) are registered by the service layer,
so fda_core never imports a cloud SDK. A source is a folder (or one file) of named files
with ranged reads, so headers can be validated before anything large is downloaded.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from fda_core.errors import CheckpointError

MAX_FOLDER_FILES = 100_000  # a model folder lists its files once; a folder this large is not a model


class CheckpointSource(Protocol):
    uri: str
    single_file: bool  # the URI names one .safetensors file rather than a model folder

    def list_files(self) -> list[str]: ...

    def size(self, name: str) -> int: ...

    def read_range(self, name: str, start: int, length: int) -> bytes: ...

    def local_path(self, name: str) -> Path:
        """A local copy of the file, downloaded first if the source is remote."""
        ...

    def sha256(self, name: str, stop: threading.Event | None = None) -> str: ...


@dataclass(frozen=True)
class LocalAccess:
    """Which local files a merge may open. The CLI may open anything; the service seals each job to
    its tenant's folders: every path is resolved (symlinks followed) and checked against `roots`
    (None: anywhere) and `denied` (folders never readable, except the `excepted` ones inside them)."""

    enabled: bool = True
    roots: tuple[Path, ...] | None = None
    denied: tuple[Path, ...] = ()
    excepted: tuple[Path, ...] = ()

    def permits(self, real: Path) -> bool:
        if self.roots is not None and not any(_within(real, root) for root in self.roots):
            return False
        return not any(_within(real, d) for d in self.denied) or any(_within(real, e) for e in self.excepted)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


_access: contextvars.ContextVar[LocalAccess] = contextvars.ContextVar(
    "local_access",
    default=LocalAccess(),  # noqa: B039  (frozen)
)


@contextmanager
def local_access(access: LocalAccess) -> Iterator[None]:
    """Sources opened inside (in this thread) follow `access` for as long as they live."""
    token = _access.set(access)
    try:
        yield
    finally:
        _access.reset(token)


class LocalSource:
    """A model folder or a single file on the local filesystem: regular files only, each file
    checked against the LocalAccess in force when the source was opened, at every open."""

    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        self.access = _access.get()
        if not self.access.enabled:
            raise CheckpointError(f"{uri}: local paths are not accepted by this service; give an s3:// URI")
        real = Path(os.path.realpath(path))
        if not self.access.permits(real):
            raise CheckpointError(f"{uri}: outside the folders this merge may read")
        try:
            found = os.stat(real)
        except OSError:
            raise CheckpointError(
                f"{uri}: no such file or directory (models are never fetched from the Hugging Face Hub; "
                "give a local path, file:// or s3:// URI)"
            ) from None
        if not (stat.S_ISDIR(found.st_mode) or stat.S_ISREG(found.st_mode)):
            raise CheckpointError(f"{uri}: not a regular file or a folder")
        self.single_file = stat.S_ISREG(found.st_mode)
        self.root = real.parent if self.single_file else real
        self._names = [real.name] if self.single_file else _regular_files(uri, real)

    def list_files(self) -> list[str]:
        return list(self._names)

    def size(self, name: str) -> int:
        fd = self.open_file(name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read_range(self, name: str, start: int, length: int) -> bytes:
        fd = self.open_file(name)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def local_path(self, name: str) -> Path:
        os.close(self.open_file(name))  # checked now; callers open it again by path
        return self._path(name)

    def sha256(self, name: str, stop: threading.Event | None = None) -> str:
        fd = self.open_file(name)
        with open(fd, "rb") as handle:
            return sha256_stream(handle, stop=stop, label=str(self._path(name)))

    def open_file(self, name: str) -> int:
        """A read-only descriptor of a listed regular file, checked after opening: what was opened
        (through any symlink, swapped or not) must be a regular file the access permits."""
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO cannot block us
        except OSError as exc:
            raise CheckpointError(f"{self.uri}: cannot open {name!r} ({exc.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CheckpointError(f"{self.uri}: {name!r} is not a regular file")
            if not self.access.permits(_opened_path(fd, path)):
                raise CheckpointError(f"{self.uri}: {name!r} resolves outside the folders this merge may read")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _path(self, name: str) -> Path:
        if name not in self._names:  # only files listed in the folder: no ../ escapes
            raise CheckpointError(f"{self.uri}: no file named {name!r} in this checkpoint")
        return self.root / name


def _regular_files(uri: str, folder: Path) -> list[str]:
    names: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if len(names) >= MAX_FOLDER_FILES:
                raise CheckpointError(f"{uri}: more than {MAX_FOLDER_FILES} files; not a model folder")
            try:
                if entry.is_file():  # follows symlinks; what they lead to is checked at every open
                    names.append(entry.name)
            except OSError:
                continue
    return sorted(names)


def _opened_path(fd: int, fallback: Path) -> Path:
    """The real path of an open descriptor (Linux: /proc/self/fd), else the resolved path it was opened by."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return Path(os.path.realpath(fallback))


class HashingStopped(Exception):
    """Raised inside a hashing thread when the merge it serves has ended."""


def sha256_file(path: Path, chunk_bytes: int = 8 << 20, stop: threading.Event | None = None) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle, chunk_bytes, stop, str(path))


def sha256_stream(handle, chunk_bytes: int = 8 << 20, stop: threading.Event | None = None, label: str = "") -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(chunk_bytes):
        if stop is not None and stop.is_set():
            raise HashingStopped(label)
        digest.update(chunk)  # releases the GIL: hashing overlaps the merge
    return digest.hexdigest()


SourceFactory = Callable[[str], CheckpointSource]
_SCHEMES: dict[str, SourceFactory] = {}


def register_scheme(scheme: str, factory: SourceFactory) -> None:
    """Let `open_source` handle `scheme://` URIs (the service layer registers s3)."""
    _SCHEMES[scheme] = factory


def open_source(uri: str) -> CheckpointSource:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri).expanduser()
        return LocalSource(uri, path)
    factory = _SCHEMES.get(parsed.scheme)
    if factory is None:
        known = ", ".join(["local path", "file://"] + [f"{s}://" for s in sorted(_SCHEMES)])
        raise CheckpointError(f"{uri}: unsupported location scheme '{parsed.scheme}://'; use one of: {known}")
    return factory(uri)
