"""research.yaml: the campaign's rules (metric, search space, limits, budgets, checkpoints), validated with pydantic.

```yaml
metric: {name: val_bpb, direction: minimize}
search_space:                      # typed trainer parameters the campaign explores
  matrix_lr: {type: float, min: 0.005, max: 0.1, log: true}
  depth: {type: int, min: 4, max: 12}
  window_pattern: {type: choice, values: [SSSL, SL, L]}
undeclared_params: allow           # refuse: a job may set only the keys declared in search_space
baseline: {seq_len: 2048, device_batch_size: 32}   # the trainer's values for keys a job leaves unset
constraints:                       # hard rules on a job's trainer config (see below)
  - {param: depth, max: 12}
  - {product: [device_batch_size, seq_len], max: 65536, name: tokens per device batch}
time_budget_s: 300                 # per-job training budget when a job gives none
hard_limit_s: 1200                 # the largest time_limit_s any job may ask
budgets: {gpu_hours: 16, money: 400, price_per_gpu_hour: {H100: 2.5, gpu7: 3.0}}   # keys: GPU class or host
checkpoint: {every_experiments: 20, every_hours: 4}    # pause for a person's `arc approve`
max_gpus: 4                        # GPUs the campaign may hold at once
max_attempts: 3                    # attempts per job when the infrastructure fails it (lost host, failed launch)
command_policy: {mode: trainer_only}   # or allowlist (with allow:) or any
noise: {seeds: 3, alpha: 0.05, runs_per_side: 2, throughput_share: 0.3}   # verdict and confound rules
hangs: {silent_after_s: 600, kill: false}
stagnation: {window: 15}
```

Constraint rules are deliberately small: a rule names one trainer key (`param: KEY`) or the product of several
(`product: [KEY, ...]`, e.g. tokens per device batch), and bounds it with `min` and/or `max` (inclusive). A key
the job leaves unset takes its `baseline` value; a `param` rule on a key with neither is not applied (the
trainer's default holds), and every factor of a `product` rule must have a baseline value so the rule always applies.

Command policy: `trainer_only` admits only trainer jobs (config overrides on a code snapshot, run as
`python -m trainer.train`); `allowlist` also admits command jobs whose argv matches an `allow` entry (a list is an
argv prefix, a string a regular expression that must match the whole command line as `shlex.join` writes it);
`any` admits every command.

A broken file is refused as a whole with one line per problem: `file:line: field 'x.y': what is wrong; fix: ...`.
No file at all means the defaults: val_bpb, lower is better, no search space, no budgets, no checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.user_pattern import UserPatternError, compile_user_pattern
from ..fleet.hosts_config import _did_you_mean, _dotted, _line_of, _value_at


Scalar = Union[bool, int, float, str]
PARAM_TYPES = ("float", "int", "choice")

# A line that would fix each field, for the messages.
FIXES: dict[str, str] = {
    "metric": "metric: {name: val_bpb, direction: minimize}",
    "name": "name: val_bpb", "direction": "direction: minimize (or maximize)",
    "search_space": "search_space: {matrix_lr: {type: float, min: 0.005, max: 0.1, log: true}}",
    "type": "type: float (or int, choice)", "min": "min: 0.001", "max": "max: 0.1", "log": "log: true",
    "values": "values: [SSSL, SL]", "param": "param: depth", "product": "product: [device_batch_size, seq_len]",
    "constraints": "constraints: [{param: depth, max: 12}]", "baseline": "baseline: {depth: 8}",
    "undeclared_params": "undeclared_params: allow (or refuse)",
    "time_budget_s": "time_budget_s: 300", "hard_limit_s": "hard_limit_s: 1200",
    "budgets": "budgets: {gpu_hours: 16}", "gpu_hours": "gpu_hours: 16", "money": "money: 400",
    "price_per_gpu_hour": "price_per_gpu_hour: {H100: 2.5}",
    "checkpoint": "checkpoint: {every_experiments: 20}", "every_experiments": "every_experiments: 20",
    "every_hours": "every_hours: 4", "max_gpus": "max_gpus: 4",
    "command_policy": "command_policy: {mode: trainer_only}", "mode": "mode: trainer_only (or allowlist, any)",
    "allow": "allow: [[python, run.py], 'python -m mypkg\\.train .*']",
    "noise": "noise: {seeds: 3, alpha: 0.05}", "seeds": "seeds: 3", "alpha": "alpha: 0.05",
    "runs_per_side": "runs_per_side: 2", "throughput_share": "throughput_share: 0.3",
    "hangs": "hangs: {silent_after_s: 600, kill: false}", "silent_after_s": "silent_after_s: 600",
    "kill": "kill: false", "stagnation": "stagnation: {window: 15}", "window": "window: 15",
}


class ResearchConfigError(ValueError):
    """research.yaml is refused; str() is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class Metric(_Strict):
    name: str = Field("val_bpb", min_length=1)
    direction: Literal["minimize", "maximize"] = "minimize"

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "minimize"


class FloatParam(_Strict):
    type: Literal["float"]
    min: float
    max: float
    log: bool = False


class IntParam(_Strict):
    type: Literal["int"]
    min: int
    max: int
    log: bool = False


class ChoiceParam(_Strict):
    type: Literal["choice"]
    values: list[Scalar] = Field(min_length=1)


Param = Annotated[Union[FloatParam, IntParam, ChoiceParam], Field(discriminator="type")]


class Constraint(_Strict):
    param: str | None = Field(None, min_length=1)
    product: list[str] | None = None
    min: float | None = None
    max: float | None = None
    name: str | None = None      # how messages call a product, e.g. "tokens per device batch"

    @property
    def keys(self) -> list[str]:
        return [self.param] if self.param is not None else list(self.product or [])

    @property
    def label(self) -> str:
        return self.param or self.name or " * ".join(self.product or [])


class Budgets(_Strict):
    gpu_hours: float | None = Field(None, gt=0)
    money: float | None = Field(None, gt=0)
    price_per_gpu_hour: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)


class Checkpoint(_Strict):
    every_experiments: int | None = Field(None, ge=1)
    every_hours: float | None = Field(None, gt=0)


class CommandPolicy(_Strict):
    mode: Literal["trainer_only", "allowlist", "any"] = "any"
    allow: list[Union[list[str], str]] = Field(default_factory=list)


class Noise(_Strict):
    seeds: int = Field(3, ge=2, le=64)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    # A verdict (supported, refuted) and a keep need at least this many runs on each side of their comparison.
    runs_per_side: int = Field(2, ge=1, le=64)
    # A run whose throughput is off its class's median by more than this share is flagged as confounded.
    throughput_share: float = Field(0.3, gt=0, le=10)


class Hangs(_Strict):
    silent_after_s: float | None = Field(None, gt=0)
    kill: bool = False


class Stagnation(_Strict):
    window: int = Field(10, ge=2)


class ResearchConfig(_Strict):
    metric: Metric = Field(default_factory=Metric)
    search_space: dict[str, Param] = Field(default_factory=dict)
    undeclared_params: Literal["allow", "refuse"] = "allow"
    baseline: dict[str, Scalar] = Field(default_factory=dict)
    constraints: list[Constraint] = Field(default_factory=list)
    time_budget_s: float | None = Field(None, gt=0)
    hard_limit_s: float | None = Field(None, gt=0)
    budgets: Budgets = Field(default_factory=Budgets)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    max_gpus: int | None = Field(None, ge=1)
    # Attempts per job when the infrastructure fails it (a job's own `max_attempts` wins); research/config.py
    # cannot import core.models, so the bound is repeated there.
    max_attempts: int = Field(3, ge=1, le=20)
    command_policy: CommandPolicy = Field(default_factory=CommandPolicy)
    noise: Noise = Field(default_factory=Noise)
    hangs: Hangs = Field(default_factory=Hangs)
    stagnation: Stagnation = Field(default_factory=Stagnation)


def load_research(path: str | os.PathLike) -> ResearchConfig:
    """Read and validate research.yaml; a file that does not exist gives the defaults."""
    path = Path(path)
    label = str(path)
    if not path.exists():
        return ResearchConfig()
    try:
        text = path.read_text()
    except OSError as e:
        raise ResearchConfigError([f"{label}: cannot read the research file: {e.strerror or e}; "
                                   "fix: make it readable, or remove it to use the defaults"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        problem = getattr(e, "problem", None) or e
        raise ResearchConfigError([f"{where}: YAML syntax error: {problem}; fix: correct the YAML at that line "
                                   "(indentation, a missing ':' or an unclosed bracket)"]) from None
    return parse_research(data, label, node)


def parse_research(data: Any, label: str = "research.yaml", node: yaml.Node | None = None) -> ResearchConfig:
    """Validate research settings already parsed from YAML or JSON (`node` gives line numbers)."""
    problems = _Problems(label, node)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add((), "the file must be a mapping of settings", "start with 'metric: {name: val_bpb}'")
        raise ResearchConfigError(problems.lines)
    problems.duplicate_keys(node, ())
    try:
        cfg = ResearchConfig.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            problems.pydantic(err, data)
        raise ResearchConfigError(problems.lines) from None
    _check_meaning(cfg, problems)
    if problems.lines:
        raise ResearchConfigError(problems.lines)
    return cfg


def _check_meaning(cfg: ResearchConfig, problems: "_Problems") -> None:
    """What types alone cannot say: ranges that are empty, rules that cannot apply, settings that contradict."""
    for name, p in cfg.search_space.items():
        loc = ("search_space", name)
        if isinstance(p, (FloatParam, IntParam)):
            if not (math.isfinite(p.min) and math.isfinite(p.max)):
                problems.add(loc, "min and max must be finite numbers", f"{name}: {{type: {p.type}, min: 1, max: 10}}")
            elif p.min >= p.max:
                problems.add(loc + ("max",), f"max {p.max} is not above min {p.min}",
                             f"give a range with min < max, e.g. min: {p.min}, max: {p.min * 10 if p.min > 0 else 1}")
            elif p.log and p.min <= 0:
                problems.add(loc + ("min",), f"a log-scale range needs min > 0 (got {p.min})",
                             "set min above 0 (e.g. 0.0001), or log: false")
        elif len(set(map(repr, p.values))) != len(p.values):
            problems.add(loc + ("values",), f"values are not distinct: {p.values}", "list each value once")
    for i, c in enumerate(cfg.constraints):
        loc = ("constraints", i)
        if (c.param is None) == (c.product is None):
            problems.add(loc, "a rule names exactly one of param or product",
                         "{param: depth, max: 12} or {product: [device_batch_size, seq_len], max: 65536}")
            continue
        if c.min is None and c.max is None:
            problems.add(loc, "a rule needs min, max or both", f"{{param: {c.label}, max: 12}}")
        elif c.min is not None and c.max is not None and c.min > c.max:
            problems.add(loc + ("max",), f"max {c.max} is below min {c.min}", "make min <= max")
        if c.product is not None:
            if len(c.product) < 2:
                problems.add(loc + ("product",), "a product needs at least two keys",
                             "product: [device_batch_size, seq_len], or use param: for one key")
            for key in c.product:
                value = baseline_for(cfg).get(key)
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    problems.add(loc + ("product",), f"key {key!r} has no numeric baseline value, so the rule "
                                 "could not be applied to jobs that leave it unset",
                                 f"add it to baseline, e.g. baseline: {{{key}: <the workload's value>}}")
    if cfg.hard_limit_s is not None and cfg.time_budget_s is not None and cfg.hard_limit_s < cfg.time_budget_s:
        problems.add(("hard_limit_s",), f"hard_limit_s {cfg.hard_limit_s:g} is below time_budget_s "
                     f"{cfg.time_budget_s:g}: every default job would be refused",
                     f"hard_limit_s: {cfg.time_budget_s * 2:g} (room for start-up and evaluation)")
    policy = cfg.command_policy
    if policy.mode == "allowlist" and not policy.allow:
        problems.add(("command_policy", "allow"), "mode allowlist needs at least one allow entry", FIXES["allow"])
    if policy.mode != "allowlist" and policy.allow:
        problems.add(("command_policy", "allow"), f"allow entries only apply with mode: allowlist (mode is "
                     f"{policy.mode})", "set mode: allowlist, or remove allow")
    for i, entry in enumerate(policy.allow):
        if isinstance(entry, list) and not entry:
            problems.add(("command_policy", "allow", i), "an argv prefix must not be empty", "[python, run.py]")
        elif isinstance(entry, str):
            try:
                compile_user_pattern(entry, "the entry")
            except UserPatternError as e:
                problems.add(("command_policy", "allow", i), f"not a valid regular expression here ({e})",
                             "write it in RE2 syntax and escape special characters, e.g. 'python run\\.py .*'")


class _Problems:
    """Problems found so far, as `file:line: field 'x.y': what; fix: ...` lines in file order."""

    def __init__(self, label: str, node: yaml.Node | None):
        self.label, self.node = label, node
        self.found: dict[str, int] = {}

    @property
    def lines(self) -> list[str]:
        return sorted(self.found, key=self.found.__getitem__)

    def add(self, loc: tuple, what: str, fix: str, line: int | None = None) -> None:
        line = line or _line_of(self.node, loc)
        where = f"{self.label}:{line}" if line else self.label
        field = f" field {_dotted(loc)!r}:" if loc else ""
        self.found.setdefault(f"{where}:{field} {what}; fix: {fix}", line or 0)

    def pydantic(self, err: dict, data: dict) -> None:
        loc = tuple(err["loc"])
        if len(loc) >= 3 and loc[0] == "search_space" and loc[2] in PARAM_TYPES:
            loc = loc[:2] + loc[3:]   # drop the union tag pydantic inserts
        if len(loc) >= 3 and loc[0] == "command_policy" and loc[1] == "allow":
            loc = loc[:3]             # one entry is either an argv list or a regex string
        leaf = next((str(x) for x in reversed(loc) if isinstance(x, str)), "")
        kind = err["type"]
        if kind == "extra_forbidden":
            known = _fields_at(loc[:-1])
            hint = _did_you_mean(loc[-1], known)
            self.add(loc, "unknown field", f"remove it{hint}" if hint else f"remove it (fields: {', '.join(known)})")
        elif kind == "missing":
            self.add(loc, "missing (required)", FIXES.get(leaf, f"{leaf}: <value>"))
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            self.add(loc + ("type",), f"type must be one of {', '.join(PARAM_TYPES)} "
                     f"(got {_value_at(data, loc + ('type',))!r})", f"{loc[-1]}: {{type: float, min: 0.001, max: 0.1}}")
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            fix = f"a whole number, e.g. {leaf}: 4" if kind.startswith("int_") else \
                FIXES.get(leaf, FIXES.get(str(loc[0]), f"{leaf}: <value>"))
            self.add(loc, f"{msg} (got {_value_at(data, loc)!r})", fix)

    def duplicate_keys(self, node: yaml.Node | None, loc: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if k.value in seen:
                    self.add(loc + (k.value,), "given twice (YAML keeps only the last)",
                             f"keep one '{k.value}:'", line=k.start_mark.line + 1)
                seen.add(k.value)
                self.duplicate_keys(v, loc + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.duplicate_keys(item, loc + (i,))


def _fields_at(loc: tuple) -> list[str]:
    """The field names allowed at `loc`, for "did you mean" hints."""
    model: type[BaseModel] = ResearchConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if model is ResearchConfig and part == "search_space":
            return sorted({*FloatParam.model_fields, *ChoiceParam.model_fields})
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        model = next((a for a in (annotation, *getattr(annotation, "__args__", ()))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model else []



def baseline_for(cfg: ResearchConfig, preset: str | None = None) -> dict[str, Any]:
    """The values of keys a job leaves unset: research.yaml's `baseline` over the packaged trainer's settings for
    the job's preset (trainer/contract.py, torch-free), so the file need not repeat the trainer's defaults."""
    from trainer.contract import PRESETS, Config

    values = PRESETS.get(preset or "default")
    trainer = dataclasses.asdict(Config(**values)) if values is not None else {}
    return {**trainer, **cfg.baseline}
