"""The genotype: a searched architecture as validated, versioned JSON data. It is never eval'd or pickled.

A genotype fixes the backbone (an EDSR-style residual CNN: width, blocks, stages), the task tail, the
attention kind, the insertion positions (after residual block i, 0-based) and, for each position and each of
its reference layers, how many keys a query uses.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from .registry import ATTENTION_KINDS, TASK_NAMES, TASKS, get_kind

GENOTYPE_VERSION = 1
# Far above any published restoration CNN (EDSR: 256 channels, 32 blocks; RCAN: 200 blocks), low enough that a
# typo cannot ask for terabytes or an hour of cost counting.
UPPER_BOUNDS = {"channels": 1024, "blocks": 512, "stages": 512, "max_keys": 64, "nonlocal_grid": 256}
NONLOCAL_GRID = 16  # by default a non-local block pools its keys to at most 16 x 16 (search_space/attention.py)


def stage_of_block(block: int, blocks: int, stages: int) -> int:
    """The stage (0-based) that residual block `block` belongs to."""
    return block // (blocks // stages)


def refs_at_position(position: int, blocks: int, stages: int) -> int:
    """Reference layers of a module after block `position`: the head plus every earlier stage's output."""
    return 1 + stage_of_block(position, blocks, stages)


@dataclass(frozen=True)
class Genotype:
    task: str
    scale: int
    in_channels: int
    channels: int
    blocks: int
    stages: int
    attention: str = "none"
    max_keys: int = 9
    adaptive: bool = False
    positions: tuple[int, ...] = ()
    keys: tuple[tuple[int, ...], ...] = ()  # per position, per reference layer (an adaptive kind's caps)
    # Adaptive kinds: the mean keys a query keeps, per position and reference layer, measured on validation images
    # (informational: the expected MACs; every budget check counts the caps in `keys`). Empty: not measured.
    expected_keys: tuple[tuple[float, ...], ...] = ()
    res_scale: float = 1.0
    nonlocal_grid: int = NONLOCAL_GRID  # a non-local block's keys are pooled to at most this many per side
    version: int = GENOTYPE_VERSION

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "positions", tuple(_as_int(p) for p in self.positions))
        except (TypeError, ValueError):
            raise ValueError(f"positions must be a list of block indices, got {self.positions!r}") from None
        try:
            object.__setattr__(self, "keys", tuple(tuple(_as_int(k) for k in ks) for ks in self.keys))
        except (TypeError, ValueError):
            raise ValueError(f"keys must be a list of key-count lists, one per position, got {self.keys!r}") from None
        try:
            object.__setattr__(self, "expected_keys", tuple(tuple(_as_float(k) for k in ks) for ks in self.expected_keys))
        except (TypeError, ValueError):
            raise ValueError(f"expected_keys must be a list of lists of numbers, one per position, "
                             f"got {self.expected_keys!r}") from None
        validate_genotype(self)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["positions"] = list(self.positions)
        data["keys"] = [list(k) for k in self.keys]
        data["expected_keys"] = [list(k) for k in self.expected_keys]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "Genotype":
        """This genotype with `changes`, validated like any other."""
        return Genotype.from_dict({**self.to_dict(), **changes})

    def bare(self) -> "Genotype":
        """The same backbone and attention kind with no module inserted."""
        return self.replace(positions=[], keys=[], expected_keys=[])

    @property
    def uses_keys(self) -> bool:
        """Whether the attention kind takes key counts (ACLA and CLA)."""
        return get_kind(self.attention).uses_keys

    @classmethod
    def from_dict(cls, data: object) -> "Genotype":
        if not isinstance(data, dict):
            raise ValueError("genotype JSON must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"genotype has unknown field(s) {', '.join(unknown)}; expected only {', '.join(sorted(known))}")
        required = {"version", "task", "scale", "in_channels", "channels", "blocks", "stages"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"genotype is missing field(s) {', '.join(missing)}")
        if data.get("version") != GENOTYPE_VERSION:
            raise ValueError(f"genotype version {data.get('version')!r} is not supported; expected {GENOTYPE_VERSION}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"genotype is not valid JSON: {err}") from None
        except RecursionError:
            raise ValueError("genotype JSON is nested too deeply; expected one flat object") from None
        return cls.from_dict(data)


def _as_int(value: object) -> int:
    if not _is_int(value):
        raise TypeError(value)
    return int(value)


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(value)
    return float(value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_genotype(g: Genotype) -> None:
    """Raise ValueError naming the first field that is wrong and what it should be."""
    _check(g.version == GENOTYPE_VERSION, f"genotype version {g.version!r} is not supported; expected {GENOTYPE_VERSION}")
    _check(g.task in TASK_NAMES, f"unknown task {g.task!r}; expected one of {', '.join(TASK_NAMES)}")
    task = TASKS[g.task]
    if task.upscales:
        scales = task.option.values
        _check(_is_int(g.scale) and g.scale in scales, f"scale {g.scale!r} is not supported for {g.task}; expected one of {', '.join(map(str, scales))}")
    else:
        _check(_is_int(g.scale) and g.scale == 1, f"scale must be 1 for task {g.task}, got {g.scale!r}")
    for name in ("in_channels", "channels", "blocks", "stages", "max_keys", "nonlocal_grid"):
        value, highest = getattr(g, name), UPPER_BOUNDS.get(name)
        _check(_is_int(value) and 1 <= value <= (highest or value),
               f"genotype field {name} must be an integer from 1 to {highest or 'any'}, got {value!r}")
    _check(g.in_channels in (1, 3), f"in_channels must be 1 or 3, got {g.in_channels}")
    _check(g.blocks % g.stages == 0, f"blocks ({g.blocks}) must be a multiple of stages ({g.stages})")
    _check(g.attention in ATTENTION_KINDS, f"unknown attention {g.attention!r}; expected one of {', '.join(ATTENTION_KINDS)}")
    _check(isinstance(g.adaptive, bool), f"adaptive must be true or false, got {g.adaptive!r}")
    kind = get_kind(g.attention)
    adaptive_kinds = [name for name in ATTENTION_KINDS if get_kind(name).adaptive]
    _check(not g.adaptive or kind.adaptive, f"adaptive keys exist only for attention {', '.join(map(repr, adaptive_kinds))}")
    _check(g.adaptive or not kind.adaptive,
           f"attention {g.attention!r} has adaptive keys (\"adaptive\": true); for a fixed key count without gates use 'cla'")
    _check(isinstance(g.res_scale, (int, float)) and math.isfinite(g.res_scale) and g.res_scale > 0,
           f"res_scale must be a positive number, got {g.res_scale!r}")
    positions = g.positions
    _check(list(positions) == sorted(set(positions)), f"positions must be strictly increasing, got {list(positions)}")
    for p in positions:
        _check(0 <= p < g.blocks, f"position {p} is out of range; expected 0..{g.blocks - 1} (after residual block i)")
    _check(kind.inserts or not positions, f"attention {g.attention!r} takes no positions")
    if g.uses_keys:
        _check(len(g.keys) == len(positions), f"keys must hold one entry per position ({len(positions)}), got {len(g.keys)}")
        for p, ks in zip(positions, g.keys):
            refs = refs_at_position(p, g.blocks, g.stages)
            _check(len(ks) == refs, f"position {p} has {refs} reference layers, but keys gives {len(ks)} counts")
            for k in ks:
                _check(1 <= k <= g.max_keys, f"key count {k} at position {p} is out of range; expected 1..{g.max_keys}")
            if not kind.adaptive:
                _check(all(k == g.max_keys for k in ks),
                       f"{g.attention} uses all {g.max_keys} keys; got {list(ks)} at position {p}")
    else:
        _check(not g.keys, f"attention {g.attention!r} takes no key counts")
    if g.expected_keys:
        _check(kind.adaptive, f"expected_keys exist only for adaptive attention, not {g.attention!r}")
        _check(len(g.expected_keys) == len(positions),
               f"expected_keys must hold one entry per position ({len(positions)}), got {len(g.expected_keys)}")
        for p, caps, means in zip(positions, g.keys, g.expected_keys):
            _check(len(means) == len(caps), f"position {p}: expected_keys gives {len(means)} counts for {len(caps)} layers")
            for cap, mean in zip(caps, means):
                _check(0 <= mean <= cap, f"expected key count {mean} at position {p} is out of range; expected 0..{cap}")
