"""A campaign: several materials run with one set of settings on FireWorks.

A campaign file (YAML) names the campaign, its materials, temperatures, labeller,
settings (a preset plus overrides per section) and the routing table::

    name: halides-2026
    materials: [CuI, structures/AgI.cif]     # built-in names or structure files
    temperatures: [300, 600]                 # optional: replaces loop.temperatures
    preset: quick                            # tiny | quick | paper
    labeller: {kind: chgnet}                 # optional: replaces the preset's labeller
    settings:                                # optional: fields to change per section
      loop: {max_iterations: 6}
      training: {n_sub: 3}
    routing: {labelling: cpu, training: gpu} # optional: job kind -> FireWorks category
    label_budget: 2000                       # optional: labels shared by all materials

``materials: screening-112`` stands for the whole built-in screening set; with
``settings: {screening: {enabled: true}}`` every material is screened first and only
flagged ones continue with active learning.

Structure and trajectory (``loop.trajectory``) paths are relative to the campaign file.
Every error names the line of the file it comes from (:func:`load_campaign`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from active_mlip.core.documents import Document
from active_mlip.workflows.materials import material_names
from active_mlip.workflows.routing import RoutingTable
from active_mlip.workflows.screening import builtin_campaigns
from active_mlip.workflows.settings import PRESETS, ActiveLearningSettings


class CampaignError(ValueError):
    """A campaign file is invalid; the message names the file and line of each problem."""


class MaterialEntry(Document):
    """One material: a built-in name, or a name and a structure file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name used in job names, the GUI and the status table.")
    structure: str | None = Field(None, description="Structure file; None = built-in `name`.")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, item: Any, info: ValidationInfo) -> Any:
        """A string is a built-in name or a structure path; paths are made absolute."""
        base = Path((info.context or {}).get("base_dir", "."))
        if isinstance(item, str):
            return _material_entry(item, base)
        if isinstance(item, dict) and item.get("structure"):
            path = Path(item["structure"])
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise ValueError(f"structure file {str(path)!r} does not exist")
            return {**item, "structure": str(path)}
        if isinstance(item, dict) and "name" in item:
            _material_entry(str(item["name"]), base)  # without a structure: must be built-in
        return item

    @property
    def source(self) -> str:
        return self.structure or self.name


class Campaign(Document):
    """What a campaign file holds (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="Campaign name.")
    materials: list[MaterialEntry] = Field(min_length=1)
    temperatures: list[float] | None = Field(None, description="Replaces loop.temperatures.")
    preset: str = Field("quick", description="Settings preset: " + ", ".join(PRESETS))
    labeller: dict[str, Any] | None = Field(None, description="Replaces the preset's labeller.")
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Fields to change per settings section."
    )
    routing: RoutingTable = Field(default_factory=RoutingTable)
    label_budget: int | None = Field(
        None, ge=1, description="Reference labels shared by all materials of the campaign."
    )

    @field_validator("materials", mode="before")
    @classmethod
    def _material_set(cls, v: Any) -> Any:
        """A built-in campaign name stands for its whole material set."""
        if isinstance(v, str):
            sets = builtin_campaigns()
            if v not in sets:
                raise ValueError(
                    f"{v!r} is not a material set ({', '.join(sets)}); list materials instead"
                )
            return list(sets[v])
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of {', '.join(PRESETS)}")
        return v

    @field_validator("materials")
    @classmethod
    def _unique(cls, v: list[MaterialEntry]) -> list[MaterialEntry]:
        names = [e.name for e in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"materials named more than once: {', '.join(dupes)}")
        return v

    @field_validator("settings")
    @classmethod
    def _known_sections(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        sections = set(ActiveLearningSettings.model_fields) - {"preset", "routing", "labeller"}
        for key in v:
            if key not in sections:
                close = difflib.get_close_matches(key, sorted(sections), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"unknown settings section {key!r}{hint} "
                    f"Sections: {', '.join(sorted(sections))}"
                    " (labeller, routing and temperatures are top-level keys)"
                )
        return v

    @field_validator("settings")
    @classmethod
    def _trajectory_path(
        cls, v: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        """Like structure paths, ``loop.trajectory`` is relative to the campaign file."""
        trajectory = v.get("loop", {}).get("trajectory")
        if isinstance(trajectory, str) and not Path(trajectory).expanduser().is_absolute():
            base = Path((info.context or {}).get("base_dir", "."))
            v["loop"]["trajectory"] = str(base / trajectory)
        return v

    def build_settings(
        self,
        preset: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        label_budget: int | None = None,
    ) -> ActiveLearningSettings:
        """The run settings every material of the campaign uses: the one merge.

        Every entry point (``active-mlip run --campaign``, ``active-mlip submit``) builds
        settings here. Precedence, lowest to highest:

        1. the preset: ``preset`` (the command line's ``--preset``) if given, else the
           file's ``preset:``;
        2. the campaign default: screening on (a campaign screens its materials and
           sends the flagged ones on to active learning);
        3. the file's ``settings:`` sections;
        4. the file's top-level keys ``temperatures``, ``labeller``, ``routing``,
           ``label_budget``;
        5. the command line: ``overrides`` (per section, e.g. ``--temperatures``,
           ``--seed``) and ``label_budget``.
        """
        sections: dict[str, Any] = {"screening": {"enabled": True}}
        for key, values in self.settings.items():
            sections[key] = {**sections.get(key, {}), **values}
        loop = sections.setdefault("loop", {})
        if self.temperatures is not None:
            loop["temperatures"] = list(self.temperatures)
        if self.labeller is not None:
            sections["labeller"] = self.labeller
        sections["routing"] = self.routing.model_dump()
        budget = label_budget if label_budget is not None else self.label_budget
        if budget is not None:
            loop["shared_budget"] = {"name": self.name, "total": int(budget)}
        for key, values in (overrides or {}).items():
            sections[key] = {**sections.get(key, {}), **values}
        return ActiveLearningSettings.from_preset(preset or self.preset, **sections)


def _material_entry(text: str, base: Path) -> dict[str, str]:
    if text in material_names():
        return {"name": text}
    path = Path(text)
    path = path if path.is_absolute() else base / path
    if path.is_file():
        return {"name": path.stem, "structure": str(path)}
    if Path(text).suffix or "/" in text:
        raise ValueError(f"structure file {str(path)!r} does not exist")
    lowered = [n for n in material_names() if n.lower() == text.lower()]
    close = lowered or difflib.get_close_matches(text, material_names(), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown material {text!r}{hint} Built-in: {', '.join(material_names())}; "
        "or give a CIF/POSCAR/extxyz path (relative to the campaign file)."
    )


# ---------------------------------------------------------------------------------------
# Reading a file, with line numbers in every error
# ---------------------------------------------------------------------------------------
def load_campaign(path: str | Path) -> tuple[Campaign, ActiveLearningSettings]:
    """Read and validate a campaign file; return the campaign and its run settings.

    Raises
    ------
    CampaignError
        For unreadable YAML, unknown keys or materials, bad values; each problem is
        reported as ``file:line: location: message``.
    """
    # ruamel.yaml loads only when a campaign file is read
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"campaign file {str(path)!r} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError(
            f"campaign file {str(path)!r} cannot be read as text ({exc}); give a YAML file"
        ) from exc
    try:
        root = YAML(typ="rt").load(text)
    except YAMLError as exc:
        # ruamel names the text it parsed "<unicode string>": name the file instead
        where = str(exc).replace('"<unicode string>"', f'"{path}"')
        raise CampaignError(f"{path}: not valid YAML: {where}") from exc
    if not isinstance(root, dict):
        raise CampaignError(f"{path}:1: a campaign file is a mapping (name:, materials:, ...)")
    data = _plain(root)
    try:
        campaign = Campaign.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise CampaignError(_located(exc, root, path, prefix=())) from exc
    try:
        settings = campaign.build_settings()
    except ValidationError as exc:
        raise CampaignError(_located(exc, root, path, prefix=None)) from exc
    except ValueError as exc:
        raise CampaignError(f"{path}:{_line(root, ('settings',))}: settings: {exc}") from exc
    return campaign, settings


def _plain(node: Any) -> Any:
    """ruamel's commented containers as plain dicts/lists (pydantic wants plain types)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _line(root: Any, loc: tuple) -> int:
    """1-based line of the deepest node of ``loc`` present in the YAML tree.

    Path elements the file does not have (pydantic adds union tags and model names)
    are skipped, so the line is that of the closest enclosing key.
    """
    node, line = root, 1
    for key in loc:
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and key in node:
            if lc is not None:
                line = lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            if lc is not None:
                line = lc.item(key)[0] + 1
            node = node[key]
    return line


def _located(exc: ValidationError, root: Any, path: Path, prefix: tuple | None) -> str:
    lines = [f"invalid campaign file {path}:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        if prefix is None:  # errors of ActiveLearningSettings: map to where the file set them
            loc = _settings_loc(loc, root)
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "value_error":  # our validators' own words, without pydantic's label
            msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
            parent = _model_for(loc[:-1])
            if parent is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
                msg += f" (did you mean {close[0]!r}?)" if close else ""
                msg += f"; allowed: {', '.join(parent.model_fields)}"
        lines.append(f"  {path}:{_line(root, loc)}: {where}: {msg}")
    return "\n".join(lines)


def _settings_loc(loc: tuple, root: Any) -> tuple:
    """Where in the campaign file a field of ActiveLearningSettings was set."""
    if not loc:
        return ("settings",)
    head, rest = loc[0], loc[1:]
    if head == "labeller":
        return ("labeller", *rest)
    if head == "routing":
        return ("routing", *rest)
    if head == "loop" and rest and rest[0] == "temperatures" and "temperatures" in root:
        return ("temperatures", *rest[1:])
    return ("settings", head, *rest)


def _model_for(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model at ``loc`` of a campaign file (for 'did you mean' hints)."""
    if not loc:
        return Campaign
    if loc[0] == "materials":
        return MaterialEntry
    if loc[0] == "routing" and len(loc) == 1:
        return RoutingTable
    if loc[0] == "settings" and len(loc) == 2:
        field = ActiveLearningSettings.model_fields.get(str(loc[1]))
        ann = getattr(field, "annotation", None)
        return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return None
