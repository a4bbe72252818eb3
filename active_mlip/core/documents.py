"""The base of every pydantic model the project passes between jobs.

jobflow serialises a Maker's fields and a job's arguments with monty. monty turns a
pydantic model into a dict only in strict mode; FireWorks' firetask serialisation is
not strict and would store the model's repr string instead. Giving models MSON's
``as_dict``/``from_dict`` makes them round-trip everywhere: run_locally, FireWorks
specs and the job store.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel


def _plain(value: Any) -> Any:
    """Fallback for values pydantic cannot dump (numpy arrays in free-form dicts)."""
    # only for the rare value pydantic cannot dump: the documents' base stays light
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    from monty.json import jsanitize

    return jsanitize(value, strict=True)


def without_mson_keys(d: Any) -> Any:
    """``d`` without monty's ``@module``/``@class``/``@version`` keys.

    Anything but a dict (a model handed over as itself, ``None``) comes back unchanged:
    runners pass a model either way (FireWorks as its MSON dict).
    """
    if not isinstance(d, dict):
        return d
    return {k: v for k, v in d.items() if not k.startswith("@")}


M = TypeVar("M", bound=BaseModel)


def as_model(obj: Any, cls: type[M]) -> M:
    """``obj`` as a ``cls``: runners (FireWorks) may hand a model over as its MSON dict.

    Raises
    ------
    TypeError
        For anything that is neither a ``cls`` nor a dict.
    """
    if isinstance(obj, cls):
        return obj
    if isinstance(obj, dict):
        return cls.model_validate(without_mson_keys(obj))
    raise TypeError(f"expected {cls.__name__}, got {type(obj).__name__}")


class Document(BaseModel):
    """A pydantic model that is also MSONable."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``@module``/``@class`` so MontyDecoder rebuilds the model."""
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            **self.model_dump(mode="json", fallback=_plain),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Rebuild from :meth:`as_dict` output (``@`` keys are ignored)."""
        return cls.model_validate(without_mson_keys(d))
