"""Content-addressed binary artifacts: blobs in job stores, manifests on disk.

Model weights must never sit inline in a job document (MongoDB caps documents at
16 MB), so jobs route fields holding a :class:`Blob` to the ``data`` store. Every
blob carries the SHA-256 of its bytes and is verified whenever it is read back.

Files a run exports to its work directory are listed with their SHA-256 in a
``SHA256SUMS`` manifest (the format ``sha256sum -c SHA256SUMS`` checks); our readers
verify a file against the manifest in its directory or the one above before using it
(:func:`verify_listed`).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from active_mlip.core.documents import Document
from active_mlip.core.hashing import bytes_hash, file_hash

#: Name of the manifest a run's work directory holds.
MANIFEST = "SHA256SUMS"
_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class CorruptArtifactError(RuntimeError):
    """A stored artifact's bytes do not match the hash recorded when it was written."""


class Blob(Document):
    """Bytes of a file with their SHA-256, base64-encoded so any store can hold them."""

    name: str = Field(description="File name the bytes came from (for humans).")
    sha256: str = Field(description="SHA-256 hex digest of the raw bytes.")
    size: int = Field(description="Number of raw bytes.")
    data_b64: str = Field(repr=False, description="The bytes, base64-encoded.")

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> Blob:
        """Wrap raw bytes."""
        return cls(
            name=name,
            sha256=bytes_hash(data),
            size=len(data),
            data_b64=base64.b64encode(data).decode("ascii"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Blob:
        """Read a file into a blob."""
        path = Path(path)
        return cls.from_bytes(path.read_bytes(), path.name)

    def to_bytes(self) -> bytes:
        """Return the raw bytes after checking them against the recorded hash.

        Raises
        ------
        CorruptArtifactError
            If the bytes were altered after the blob was made.
        """
        data = base64.b64decode(self.data_b64.encode("ascii"))
        if len(data) != self.size or bytes_hash(data) != self.sha256:
            raise CorruptArtifactError(
                f"artifact {self.name!r} is corrupted: expected sha256 {self.sha256[:12]}… "
                f"({self.size} bytes), got {bytes_hash(data)[:12]}… ({len(data)} bytes); "
                "it will not be used. Re-run the job that produced it."
            )
        return data

    def write(self, path: str | Path) -> Path:
        """Write the verified bytes to ``path`` (a directory gets ``self.name``)."""
        path = Path(path)
        if path.is_dir():
            path = path / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path


# ---------------------------------------------------------------------------------------
# Manifests of exported files (SHA256SUMS)
# ---------------------------------------------------------------------------------------
def write_manifest(directory: str | Path, files: Iterable[str | Path]) -> Path:
    """Write ``directory/SHA256SUMS`` listing ``files`` (paths inside ``directory``).

    The file is replaced atomically, so a reader sees the old manifest or the new one.
    """
    directory = Path(directory)
    lines = []
    for f in sorted({Path(f).resolve() for f in files}):
        rel = f.relative_to(directory.resolve()).as_posix()
        lines.append(f"{file_hash(f)}  {rel}\n")
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text("".join(lines))
    os.replace(tmp, directory / MANIFEST)
    return directory / MANIFEST


def read_manifest(path: str | Path) -> dict[str, str]:
    """``relative path -> sha256`` of a manifest; lines of another form are skipped."""
    entries = {}
    for line in Path(path).read_text().splitlines():
        m = _MANIFEST_LINE.match(line)
        if m:
            entries[m.group(2)] = m.group(1).lower()
    return entries


def _check(path: Path, expected: str, manifest: Path) -> None:
    actual = file_hash(path)
    if actual != expected:
        raise CorruptArtifactError(
            f"{str(path)!r} is corrupted: {manifest} records sha256 {expected}, the file has "
            f"{actual}; it will not be used. Restore it, or run the command that exported it "
            "again (a finished run's export is rewritten from the job store)."
        )


def verify_listed(path: str | Path) -> bool:
    """Check ``path`` against a ``SHA256SUMS`` in its directory or the one above.

    Returns
    -------
    bool
        True when a manifest lists the file and its hash matches; False when no
        manifest lists it (nothing to check).

    Raises
    ------
    CorruptArtifactError
        If the file's SHA-256 differs from the one the manifest records.
    """
    path = Path(path).resolve()
    for directory in (path.parent, path.parent.parent):
        manifest = directory / MANIFEST
        if not manifest.is_file():
            continue
        expected = read_manifest(manifest).get(path.relative_to(directory).as_posix())
        if expected is not None:
            _check(path, expected, manifest)
            return True
    return False


def verify_manifest(directory: str | Path) -> list[Path]:
    """Check every file ``directory/SHA256SUMS`` lists; return their paths.

    Raises
    ------
    CorruptArtifactError
        For the first file that is missing or whose SHA-256 differs.
    ValueError
        If the directory holds no manifest.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{str(directory)!r} holds no {MANIFEST}; nothing to verify")
    paths = []
    for rel, expected in read_manifest(manifest).items():
        path = directory / rel
        if not path.is_file():
            raise CorruptArtifactError(
                f"{str(path)!r} is listed in {manifest} but missing; restore it, or run the "
                "command that exported it again"
            )
        _check(path, expected, manifest)
        paths.append(path)
    return paths
