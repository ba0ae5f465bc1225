"""One declaration per operation: the MCP tool, the daemon's RPC method, the `arc` subcommand and the next-step hint
all follow from it.

An operation is a `Service` method marked `@operation(...)`. Its signature is the typed input (pydantic builds the
input model from it, `Annotated[..., Field(...)]` bounds included), its return annotation the result model, its
docstring the help the agent and the person read. The decorator adds what a signature cannot say: the effect
(read / writes / destructive), the command words, whether the CLI may answer it from the history file when no
daemon runs, and how its result is shown (structured, fenced text, an image). `Cli(...)` inside a parameter's
`Annotated` says how that parameter reads on the command line where `--kebab-name` would not do.

So adding an operation touches its service method and this declaration on it; tools.py, daemon.py, cli.py and
cli/hints.py read the registry. Model of the idea: the MCP SDK's own signature-to-schema tools, one level up.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import ArcError


Effect = Literal["read", "writes", "destructive"]
# A parameter a door fills itself, never the caller: where a long operation's progress goes.
PROGRESS = "progress"


@dataclass(frozen=True)
class Cli:
    """How a parameter reads on the command line, where `--kebab-name` (a list: `--name A B`) would not do."""
    option: str | None = None      # e.g. "--hypothesis", "-n", "--set"
    positional: bool = False
    repeat: bool = False           # a list as one option per item: --status a --status b


@dataclass(frozen=True)
class Shown:
    """How a result reaches the agent when it is not plain structured content."""
    text: str | None = None        # this field goes back as fenced, untrusted text
    label: str = ""                # the fence's label, e.g. "JOB OUTPUT"
    what: str = ""                 # what the fenced text is, formatted with the call's arguments
    fence_empty: bool = False      # fence even no text (an empty log is an answer; an empty diff is none)
    image: str | None = None       # this field holds a PNG: the answer is the summary and the image
    keep: Literal["head", "tail"] = "tail"   # the end of the text an answer too long for the client keeps


@dataclass(frozen=True)
class Operation:
    name: str                      # the service method, the MCP tool and the RPC method
    method: Callable[..., BaseModel]
    params: type[BaseModel]        # the typed input, built from the method's signature
    result: type[BaseModel]
    effect: Effect
    cli: str                       # the command words after `arc`, e.g. "hypotheses add"
    help: str
    tool: bool = True              # False: a person's act (approve), on the CLI and the owner-only RPC only
    offline: bool = False          # `arc` may answer it from the history file when no daemon runs
    shown: Shown = field(default_factory=Shown)
    caller: str | None = None      # the parameter a door fills with who asked (the agent, or the person at `arc`)
    progress: bool = False         # the method takes `progress(done, total, message)`: long waits report it

    @property
    def summary(self) -> str:
        """The help's first sentence: the CLI's one-line description."""
        first = self.help.split("\n\n")[0].replace("\n", " ")
        return re.split(r"(?<=[.?!])\s+(?=[A-Z])", first)[0].rstrip(".")

    def cli_of(self, name: str) -> Cli:
        return next((m for m in self.params.model_fields[name].metadata if isinstance(m, Cli)), Cli())

    def call(self, service: Any, arguments: dict[str, Any], by: str | None = None,
             progress: Callable[[int, int, str], None] | None = None) -> BaseModel:
        """Validate `arguments` against the input model and run the operation: the RPC's and the CLI's way in."""
        try:
            checked = self.params.model_validate(arguments)
        except ValidationError as e:
            raise ArcError(f"invalid arguments for {self.name}: {explain(e)}") from None
        kwargs = {name: getattr(checked, name) for name in checked.model_fields_set}
        if self.caller and by is not None:
            kwargs[self.caller] = by
        if self.progress and progress is not None:
            kwargs[PROGRESS] = progress
        return self.method(service, **kwargs)

    def tool_parameters(self) -> list[inspect.Parameter]:
        """The method's parameters as the agent sees them: without `self` and what the door fills in."""
        hints = typing.get_type_hints(self.method, include_extras=True)
        return [p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
                for p in inspect.signature(self.method).parameters.values()
                if p.name not in ("self", self.caller, PROGRESS)]


_DECLARED: dict[str, Operation] = {}    # filled as core/service.py is imported: read it through registry()


def operation(*, cli: str, effect: Effect, tool: bool = True, offline: bool = False, shown: Shown = Shown(),
              caller: str | None = None) -> Callable[[Callable], Callable]:
    """Declare a Service method an operation (see the module docstring)."""
    def register(method: Callable) -> Callable:
        hints = typing.get_type_hints(method, include_extras=True)
        signature = inspect.signature(method)
        fields = {p.name: (hints[p.name], ... if p.default is inspect.Parameter.empty else p.default)
                  for p in signature.parameters.values() if p.name not in ("self", caller, PROGRESS)}
        # Built on first validation, not here: `arc` declares every operation to make its commands.
        config = ConfigDict(extra="forbid", defer_build=True)
        params = create_model(f"{_camel(method.__name__)}Input", __config__=config, **fields)
        _DECLARED[method.__name__] = Operation(
            name=method.__name__, method=method, params=params, result=hints["return"], effect=effect, cli=cli,
            help=inspect.cleandoc(method.__doc__ or ""), tool=tool, offline=offline, shown=shown,
            caller=caller, progress=PROGRESS in signature.parameters)

        @functools.wraps(method)
        def checked(self, *args: Any, **kwargs: Any) -> BaseModel:
            """A direct call (the demo, a test, another operation) meets the same input rules as the doors."""
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as e:
                raise ArcError(f"invalid arguments for {method.__name__}: {e}") from None
            given = {k: v for k, v in bound.arguments.items() if k not in ("self", caller, PROGRESS)}
            try:
                valid = params.model_validate(given)
            except ValidationError as e:
                raise ArcError(f"invalid arguments for {method.__name__}: {explain(e)}") from None
            extra = {k: v for k, v in bound.arguments.items() if k in (caller, PROGRESS)}
            return method(self, **{k: getattr(valid, k) for k in given}, **extra)

        return checked
    return register


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def explain(error: ValidationError) -> str:
    """A pydantic error as 'where: what' parts, without the library's URLs and input echoes."""
    parts = []
    for err in error.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def registry() -> dict[str, Operation]:
    """Every operation, in declaration order. The declarations are the Service's methods: importing it fills this."""
    importlib.import_module(".service", __package__)
    return _DECLARED


def tools() -> list[Operation]:
    """The operations the agent may call, in declaration order."""
    return [op for op in registry().values() if op.tool]
