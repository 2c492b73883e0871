"""`@tool`: turn a typed function into a `Tool` whose spec the planner and the policy can read."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.errors import PydanticUserError
from pydantic_core import PydanticSerializationError

from plangate.errors import OutputUnusable, ToolError, ToolLoadError, describe
from plangate.tools.context import ToolContext
from schemas.tool_spec import Effect, ToolSpec

P = ParamSpec("P")
R = TypeVar("R")
# A deadline past a day is no deadline (and `inf` overflowed the executor's clock).
MAX_TIMEOUT_SECONDS = 86_400

Preview = Callable[[Mapping[str, Any]], str]
"""Say in one sentence what a call with these (possibly unresolved) arguments would do."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Params:
    """How a validated args model maps back onto the function's parameters."""

    model: type[BaseModel]
    whole_model: str | None  # the parameter that receives the model itself, if any
    fields: dict[str, str]  # parameter name -> model field name
    context: str | None


class Tool(Generic[P, R]):
    """A function with its spec: still callable as before, invoked by the executor with checks."""

    timeout: float | None = None  # seconds per call; None: the executor's default deadline

    def __init__(
        self,
        func: Callable[P, R],
        *,
        effect: Effect,
        name: str | None = None,
        description: str | None = None,
        idempotent: bool = False,
        tags: Iterable[str] = (),
        preview: Preview | None = None,
        timeout: float | None = None,
        trusted: bool = False,
    ) -> None:
        functools.update_wrapper(self, func)
        self._func = func
        self._preview = preview
        self.timeout = _checked_timeout(timeout, name or func.__name__)
        self.module: str = func.__module__
        tool_name = name or func.__name__
        where = f"tool {tool_name!r} ({func.__module__}.{func.__qualname__})"
        if effect not in ("read", "write"):
            raise ToolLoadError(f"{where}: effect must be 'read' or 'write', not {effect!r}")
        if inspect.iscoroutinefunction(func):
            raise ToolLoadError(f"{where}: async functions are not supported; use a plain def")
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:
            raise ToolLoadError(
                f"{where}: cannot resolve its type annotations ({exc}); "
                "define the types it uses at module level"
            ) from exc
        self._params = _build_params(func, hints, tool_name, where)
        returns = hints.get("return", Any)
        doc = " ".join((inspect.getdoc(func) or "").split("\n\n", 1)[0].split())
        try:
            self._output: TypeAdapter[Any] = TypeAdapter(returns)
            self.spec = ToolSpec(
                name=tool_name,
                description=doc if description is None else description,
                args_schema=_args_schema(self._params.model),
                output_schema=None if returns is Any else self._output.json_schema(),
                effect=effect,
                idempotent=idempotent,
                tags=_checked_tags(tags, where),
                output_trust="trusted" if trusted else "untrusted",
            )
        except PydanticUserError as exc:
            raise ToolLoadError(f"{where}: a type has no JSON schema: {_no_schema(exc)}") from exc
        except ValidationError as exc:
            raise ToolLoadError(f"{where}: invalid spec: {_describe(exc)}") from exc

    @classmethod
    def from_model_callable(
        cls,
        call: Callable[[BaseModel], Any],
        *,
        args_model: type[BaseModel],
        name: str,
        description: str,
        effect: Effect,
        module: str,
        idempotent: bool = False,
        tags: Iterable[str] = (),
        preview: Preview | None = None,
        timeout: float | None = None,
        trusted: bool = False,
    ) -> Tool[..., Any]:
        """Wrap a foreign callable that takes its validated `args_model` whole (an adapter's)."""
        where = f"tool {name!r} ({module})"
        if effect not in ("read", "write"):
            raise ToolLoadError(f"{where}: effect must be 'read' or 'write', not {effect!r}")
        self: Tool[..., Any] = cls.__new__(cls)
        self._func = call
        self._preview = preview
        self.timeout = _checked_timeout(timeout, name)
        self.module = module
        args_model = _closed(args_model)
        self._params = _Params(model=args_model, whole_model="args", fields={}, context=None)
        self._output = TypeAdapter(Any)
        try:
            self.spec = ToolSpec(
                name=name,
                description=description,
                args_schema=_args_schema(args_model),
                effect=effect,
                idempotent=idempotent,
                tags=_checked_tags(tags, where),
                output_trust="trusted" if trusted else "untrusted",
            )
        except PydanticUserError as exc:
            said = _no_schema(exc)
            raise ToolLoadError(f"{where}: its arguments have no JSON schema: {said}") from exc
        except ValidationError as exc:
            raise ToolLoadError(f"{where}: invalid spec: {_describe(exc)}") from exc
        return self

    @property
    def name(self) -> str:
        """Return the tool's name, as plans refer to it."""
        return self.spec.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function itself, as if it were not a tool."""
        return self._func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.spec.name} ({self.spec.effect}) from {self.module}>"

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Any:
        """Validate `args`, call the function and return its output as JSON-able data."""
        try:
            validated = self._params.model.model_validate(dict(args))
        except ValidationError as exc:
            raise ToolError(f"tool {self.name}: bad arguments: {_describe(exc)}") from exc
        params = self._params
        if params.whole_model is not None:
            kwargs: dict[str, Any] = {params.whole_model: validated}
        else:
            kwargs = {p: getattr(validated, f) for p, f in params.fields.items()}
        if params.context is not None:
            kwargs[params.context] = context
        try:
            result = self._func(**kwargs)  # type: ignore[call-arg]
        except ToolError:
            raise
        except Exception as exc:
            # The step keeps the message alone (stored, audited, traced); the traceback is for
            # the tool's author, in this process's log only, redacted as every log line is.
            log.debug("tool %s raised", self.name, exc_info=True)
            raise ToolError(f"tool {self.name} failed: {_said(exc)}") from exc
        return self._to_json(result)

    def preview(self, args: Mapping[str, Any]) -> str | None:
        """Return what a call with `args` would do, for reviewers; None if the tool cannot say."""
        return None if self._preview is None else self._preview(args)

    def _to_json(self, result: Any) -> Any:
        if _non_finite(result):
            raise OutputUnusable(
                f"tool {self.name} returned NaN or an infinity, which JSON cannot hold (it "
                "would be kept as null): return null, a string or a bound instead"
            )
        try:
            # Checked against the declared type because plans reference outputs by that type.
            value = self._output.validate_python(result)
            return self._output.dump_python(value, mode="json")
        except ValidationError as exc:
            raise OutputUnusable(
                f"tool {self.name} returned a value that does not match its return type: "
                f"{describe(exc, what='the value')}"
            ) from exc
        except (PydanticSerializationError, ValueError) as exc:  # bytes not UTF-8, among others
            said = f"tool {self.name} returned a non-JSON value: {_said(exc)}"
            raise OutputUnusable(said) from exc


def tool(
    misused: object = None,
    /,
    *,
    effect: Effect | None = None,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    tags: Iterable[str] = (),
    preview: Preview | None = None,
    timeout: float | None = None,
    trusted: bool = False,
) -> Callable[[Callable[P, R]], Tool[P, R]]:
    """Declare a function as a tool; `effect` says whether it changes the world.

    `timeout` bounds each call in seconds (default: `PLANGATE_TOOL_TIMEOUT_SECONDS`): a read
    still running then fails its step; a write becomes `unknown`, for a person to settle.
    `trusted=True` vouches for the output (a count, an id the tool made): by default it may
    carry outside text, and a write it reaches is marked for the policy and the reviewer.
    """
    if misused is not None or effect is None:
        # `@tool` alone (as Celery's `@app.task` is written) said "tool() takes 0 positional
        # arguments but 1 was given".
        named = getattr(misused, "__name__", None)
        raise ToolLoadError(
            f"{'@tool on ' + named if named else '@tool'} needs its effect: write "
            '@tool(effect="read") for a tool that only reads, or @tool(effect="write")'
        )
    options: dict[str, Any] = {"name": name, "description": description, "tags": tags}
    return lambda func: Tool(
        func,
        effect=effect,
        idempotent=idempotent,
        preview=preview,
        timeout=timeout,
        trusted=trusted,
        **options,
    )


def _checked_timeout(timeout: float | None, name: str) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise ToolLoadError(
            f"tool {name!r}: timeout must be a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT_SECONDS} (a day), not {timeout!r}"
        )
    return timeout


def _checked_tags(tags: Iterable[str], where: str) -> tuple[str, ...]:
    if isinstance(tags, str):  # read letter by letter, `destructive` matched no policy rule
        raise ToolLoadError(
            f"{where}: tags must be a list of words (tags=[{tags!r}]), not one text"
        )
    return tuple(tags)


def _non_finite(result: Any) -> bool:
    """Say whether an answer holds NaN or an infinity, in plain data, models or dataclasses.

    Pydantic's JSON dump writes them as null: the step succeeded with other data than the tool
    returned. One dump at C speed finds them; other objects are not looked into.
    """
    try:
        json.dumps(result, allow_nan=False, default=_fields)
    except ValueError as exc:
        return "Out of range float values" in str(exc)
    except TypeError:  # keys JSON has no form for: pydantic says so next
        return False
    return False


def _fields(value: Any) -> Any:
    """Return a model's or a dataclass's fields as a dict (NaN kept), other objects as None."""
    try:
        if isinstance(value, BaseModel):
            return value.model_dump()
        if is_dataclass(value) and not isinstance(value, type):
            return asdict(value)
    except Exception:  # a model that cannot dump itself: pydantic says why next
        return None
    return None


def _no_schema(exc: PydanticUserError) -> str:
    """Say in one line which type pydantic has no schema for, and what a tool gives instead.

    Pydantic's own message runs to three paragraphs and advises `arbitrary_types_allowed`,
    which would let a tool take or answer what no plan can carry.
    """
    first = str(exc).split("\n", 1)[0].split(". Set `arbitrary_types_allowed", 1)[0].rstrip(".")
    return f"{first}; use JSON-shaped types (str, int, list, dict, a pydantic model, a dataclass)"


def _said(exc: BaseException) -> str:
    """Return an exception's type and message, as Python's traceback ends (`KeyError: 'A-9'`).

    The message alone was cryptic: a KeyError said only the key (`failed: 'A-9'`).
    """
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # a tool's own exception class whose __str__ fails
        return name
    return f"{name}: {message}" if message else name


def _build_params(
    func: Callable[..., Any], hints: dict[str, Any], name: str, where: str
) -> _Params:
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    context: str | None = None
    for param in inspect.signature(func).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise ToolLoadError(
                f"{where}: parameter {param.name!r} is {param.kind.description}; "
                "tools take named parameters only"
            )
        if param.name not in hints:
            raise ToolLoadError(
                f"{where}: parameter {param.name!r} needs a type, e.g. `{param.name}: str`"
            )
        hint = hints[param.name]
        if hint is ToolContext:
            context = param.name
            continue
        # A parameter named like a BaseModel attribute (`json`, `schema`) or private (`_x`)
        # cannot be a field; it keeps its name in the schema through an alias.
        field = param.name
        if hasattr(BaseModel, field) or field.startswith("_"):
            field = f"arg_{field.lstrip('_')}_"
        default = ... if param.default is param.empty else param.default
        fields[field] = (hint, Field(default, alias=param.name))
        names[param.name] = field
    if len(names) == 1:
        (only,) = names
        hint = hints[only]
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return _Params(model=_closed(hint), whole_model=only, fields={}, context=context)
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name)) + "Args"
    config = ConfigDict(extra="forbid", protected_namespaces=())
    try:
        model = create_model(title, __config__=config, **fields)
    except PydanticUserError as exc:
        said = _no_schema(exc)
        raise ToolLoadError(f"{where}: a parameter type has no JSON schema: {said}") from exc
    return _Params(model=model, whole_model=None, fields=names, context=context)


def _closed(model: type[BaseModel]) -> type[BaseModel]:
    """Return `model` refusing arguments it does not name, unless it says what to do with them.

    Pydantic ignores unknown keys by default: a plan's `limt: 1` passed validation, was shown
    to the reviewer, and the tool ran with its default `limit` (a LangChain tool's too).
    """
    if model.model_config.get("extra") not in (None, "ignore"):
        return model
    config = ConfigDict(**{**model.model_config, "extra": "forbid"})
    namespace = {"model_config": config, "__doc__": model.__doc__, "__module__": model.__module__}
    closed: type[BaseModel] = type(model.__name__, (model,), namespace)
    return closed


def _args_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Return a tool's argument schema: an object, closed where its model refuses other keys.

    (A model may write its own schema without saying so: LangChain's do.)
    """
    schema = {"type": "object", **model.model_json_schema()}
    if model.model_config.get("extra") == "forbid":
        schema.setdefault("additionalProperties", False)
        # Nested models ignore unknown keys by default too: `{"adress": {"strete": ...}}` passed
        # the plan's validation and ran with the field's default. Each stage validates plans
        # by this schema, so a nested object that does not say otherwise is closed here.
        for nested in (schema.get("$defs") or {}).values():
            if isinstance(nested, dict) and "properties" in nested:
                nested.setdefault("additionalProperties", False)
    return schema


def _describe(exc: ValidationError) -> str:
    return describe(exc, what="arguments")
