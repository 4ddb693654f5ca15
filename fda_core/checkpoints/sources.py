"""Where checkpoint files come from: a local path, file:// or a registered remote scheme.

fda_core knows only local files; remote schemes (s3://) are registered by the service layer,
so fda_core never imports a cloud SDK. A source is a folder (or one file) of named files
with ranged reads, so headers can be validated before anything large is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from fda_core.errors import CheckpointError


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


class LocalSource:
    """A model folder or a single file on the local filesystem."""

    def __init__(self, uri: str, path: Path) -> None:
        if not path.exists():
            raise CheckpointError(
                f"{uri}: no such file or directory (models are never fetched from the Hugging Face Hub; "
                "give a local path, file:// or s3:// URI)"
            )
        self.uri = uri
        self.single_file = path.is_file()
        self.root = path.parent if self.single_file else path
        self._names = [path.name] if self.single_file else sorted(p.name for p in path.iterdir() if p.is_file())

    def list_files(self) -> list[str]:
        return list(self._names)

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def read_range(self, name: str, start: int, length: int) -> bytes:
        with open(self._path(name), "rb") as handle:
            return os.pread(handle.fileno(), length, start)

    def local_path(self, name: str) -> Path:
        return self._path(name)

    def sha256(self, name: str, stop: threading.Event | None = None) -> str:
        return sha256_file(self._path(name), stop=stop)

    def _path(self, name: str) -> Path:
        if name not in self._names:  # only files listed in the folder: no ../ escapes
            raise CheckpointError(f"{self.uri}: no file named {name!r} in this checkpoint")
        return self.root / name


class HashingStopped(Exception):
    """Raised inside a hashing thread when the merge it serves has ended."""


def sha256_file(path: Path, chunk_bytes: int = 8 << 20, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            if stop is not None and stop.is_set():
                raise HashingStopped(str(path))
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
