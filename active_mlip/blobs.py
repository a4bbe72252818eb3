"""Content-addressed binary artifacts (model files) that travel through job stores.

Model weights must never sit inline in a job document (MongoDB caps documents at
16 MB), so jobs route fields holding a :class:`Blob` to the ``data`` store. Every
blob carries the SHA-256 of its bytes and is verified whenever it is read back.
"""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import Field

from active_mlip.documents import Document
from active_mlip.hashing import bytes_hash


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
