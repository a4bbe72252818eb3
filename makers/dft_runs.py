"""One checked DFT single point: atomate2's static Maker, run so that a failure is a record.

atomate2's static jobs raise when their code fails (custodian gives up after its
corrections, the output is missing) and accept an unconverged SCF when no custodian
handler looked at it (``run_cp2k_kwargs={"handlers": []}``, a ``direct`` run): CP2K
prints "SCF run NOT converged" and finishes, and atomate2's task document says
``successful``. A raised job leaves nothing for the gather but ``None``, and the reason
only in a log. :func:`dft_single_point` runs the same Maker's job body in its own job
directory and returns a :class:`SinglePointResult` that is either the numbers or the
reason, with custodian's corrections, so every failed single point is recorded with
why, and an unconverged SCF is never a label.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jobflow import Maker, Response, job
from monty.io import zopen
from monty.json import jsanitize
from monty.os.path import zpath
from pydantic import Field

from active_mlip.core.documents import Document
from active_mlip.makers.dft_environment import DFTSetupError


class SinglePointResult(Document):
    """What one DFT single point gave: its numbers, or why there are none.

    Units are the code's task document's (see
    :func:`~active_mlip.makers.labelling.normalise_dft_output`).
    """

    code: str
    energy: float | None = None
    forces: list[list[float]] | None = None
    stress: list[list[float]] | list[float] | None = None
    dir_name: str | None = None
    scf_converged: bool | None = Field(
        None, description="From the code's output file; None where it cannot be read."
    )
    reason: str | None = Field(None, description="Why there is no usable result; None if ok.")
    corrections: list[str] = Field(
        default_factory=list, description="custodian's corrections: 'Handler: error'."
    )
    task_document: dict[str, Any] | None = Field(
        None, description="atomate2's task document (stored in the data store)."
    )


#: CP2K's verdict on each SCF loop of a run (the last one is the label's).
_CP2K_SCF = re.compile(r"SCF run (NOT )?converged")


def scf_converged(code: str, directory: Path) -> bool | None:
    """Whether the last SCF of the run in ``directory`` converged (None: cannot tell).

    CP2K: the last "SCF run converged" / "SCF run NOT converged" line of ``cp2k.out``
    (custodian's UnconvergedScfErrorHandler reads the same). VASP:
    ``Vasprun.converged_electronic``. FHI-aims stops on an unconverged SCF itself.
    """
    try:
        if code == "cp2k":
            with zopen(zpath(str(directory / "cp2k.out")), "rt") as f:
                verdicts = _CP2K_SCF.findall(f.read())
            return None if not verdicts else verdicts[-1] == ""
        if code == "vasp":
            from pymatgen.io.vasp import Vasprun

            run = Vasprun(zpath(str(directory / "vasprun.xml")), parse_dos=False)
            return bool(run.converged_electronic)
    except (OSError, ValueError):
        return None
    return None


def custodian_corrections(directory: Path) -> list[str]:
    """custodian's corrections in ``directory`` as ``"Handler: error"`` (empty if none)."""
    try:
        with zopen(zpath(str(directory / "custodian.json")), "rt") as f:
            runs = json.load(f)
    except (OSError, ValueError):
        return []
    out = []
    for run in runs if isinstance(runs, list) else []:
        for c in run.get("corrections") or []:
            handler = (c.get("handler") or {}).get("@class", "?")
            out += [f"{handler}: {e}" for e in c.get("errors") or []]
    return out


#: Each code's main output and the line it prints when it ends normally.
_END_MARKS = {"cp2k": ("cp2k.out", "PROGRAM ENDED"), "vasp": ("OUTCAR", "General timing")}


def run_evidence(code: str, directory: Path) -> list[str]:
    """What the files say about a run that raised: an output cut short, stderr's end.

    A crashed code often makes a parser (custodian's, pymatgen's) raise something
    uninformative (an ``IndexError`` on a truncated output); these lines say why.
    """
    out: list[str] = []
    name, mark = _END_MARKS.get(code, ("", ""))
    if name:
        try:
            with zopen(zpath(str(directory / name)), "rt") as f:
                text = f.read()
            if mark not in text:
                out.append(f"{name} ends before {mark!r}: the code stopped early")
        except OSError:
            out.append(f"no {name}")
    try:
        with zopen(zpath(str(directory / "std_err.txt")), "rt") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        if lines:
            out.append(f"stderr: {lines[-1][:200]}")
    except OSError:
        pass
    return out


def _reason(exc: BaseException, corrections: list[str], evidence: list[str]) -> str:
    reason = f"{type(exc).__name__}: {exc}".strip()
    if evidence:
        reason += f" ({'; '.join(evidence)})"
    if corrections:
        reason += f" (custodian corrections: {'; '.join(corrections)})"
    return reason


@job(data=["task_document"])
def dft_single_point(maker: Maker, structure: Any, code: str) -> SinglePointResult:
    """Run atomate2 static ``maker`` on ``structure`` here; never raise for a failed run.

    Parameters
    ----------
    maker
        An atomate2 ``StaticMaker`` (CP2K, VASP or FHI-aims), e.g.
        :meth:`~active_mlip.makers.labelling.Atomate2Labeller.static_maker`.
    structure
        The pymatgen ``Structure``.
    code
        ``"cp2k"``, ``"vasp"`` or ``"aims"``: which output file holds the SCF verdict.

    Returns
    -------
    SinglePointResult
        The task document's energy, forces and stress, or ``reason`` set: the code or
        custodian raised (e.g. custodian's "Max errors per job reached" after its SCF
        corrections), the run did not complete, the SCF did not converge, or the task
        document holds no energy or forces.

    Raises
    ------
    DFTSetupError
        When the worker has no executable for the code (a machine's fault, not the
        frame's: the job fails and can be rerun where the code is).
    """
    here = Path.cwd()
    try:
        # The Maker's own job body (input set, custodian run, task document) in this job.
        response = type(maker).make.original(maker, structure)
    except DFTSetupError:
        raise  # the worker lacks the code: every frame would fail there, so fail the job
    except Exception as exc:  # a failed run is a record, not a failed job
        corrections = custodian_corrections(here)
        reason = _reason(exc, corrections, run_evidence(code, here))
        return SinglePointResult(
            code=code, dir_name=str(here), reason=reason, corrections=corrections
        )
    try:
        return _checked(response, code, here)
    except Exception as exc:  # an unreadable task document is a record too
        return SinglePointResult(code=code, dir_name=str(here), reason=_reason(exc, [], []))


def _checked(response: Any, code: str, here: Path) -> SinglePointResult:
    """The numbers of atomate2's task document, or the reason they are no label."""
    doc = response.output if isinstance(response, Response) else response
    output = doc.output
    result = SinglePointResult(
        code=code,
        energy=output.energy,
        forces=output.forces,
        stress=getattr(output, "stress", None),
        dir_name=str(here),
        scf_converged=scf_converged(code, here),
        corrections=custodian_corrections(here),
        task_document=jsanitize(doc.model_dump(), strict=True, enum_values=True),
    )
    state = str(getattr(doc.state, "value", doc.state))
    if state != "successful":
        result.reason = f"{code} run did not complete (task document state {state!r})"
    elif result.scf_converged is False:
        result.reason = f"{code} SCF not converged (see {here})"
    elif output.energy is None or not output.forces:
        result.reason = f"{code} task document holds no energy or forces (see {here})"
    return result
