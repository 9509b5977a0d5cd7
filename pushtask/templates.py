"""Message templates: Jinja2 in a sandbox with strict undefined variables.

The operator calls :func:`compile_message` before the first send, so a syntax error fails
the task with a message naming the field and line instead of failing every recipient.
The worker compiles once per run and calls :func:`render` per recipient; a missing
variable or an attempt to reach Python internals raises :class:`TemplateRenderError`,
which the worker counts as that recipient's failure (never a crash).

Context of a render: the recipient's row attributes at the top level (``{{ name }}``),
then the reserved names ``user`` (the user id), ``attrs`` (the same attributes as a dict,
for keys that are not identifiers), ``task`` ({namespace, name}) and ``run`` (int), which
win over attributes of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "CompiledMessage",
    "TemplateCompileError",
    "TemplateError",
    "TemplateRenderError",
    "bind_run",
    "build_context",
    "compile_message",
    "render",
]

# Reserved context names; attributes of the same name are shadowed by these.
RESERVED = ("user", "attrs", "task", "run")


class TemplateError(ValueError):
    """Base class; ``field`` is the template field (e.g. ``body``, ``extra.subject``)."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        self.field = field
        self.line = line
        self.reason = message
        where = f"template field {field!r}" + (f", line {line}" if line else "")
        super().__init__(f"{where}: {message}")


class TemplateCompileError(TemplateError):
    """The template text is not valid Jinja2 (raised by the operator before any send)."""


class TemplateRenderError(TemplateError):
    """Rendering for one recipient failed: a missing variable, a sandbox violation, ..."""


def _environment() -> SandboxedEnvironment:
    # autoescape off: messages are JSON/e-mail text, not HTML pages; the webhook body is
    # JSON-encoded by the channel. StrictUndefined: a missing attribute is an error, never
    # an empty string sent to a million users.
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


_ENV = _environment()
# The environment's globals (range, dict, namespace, ...), merged once: Template.render
# merges them into every render through a ChainMap, a large part of a worker's CPU.
_GLOBALS = dict(_ENV.globals)


# A field is a list of parts: literal text, or the name of a variable printed as is
# (`{{ user }}`). Fields of no other syntax are rendered by joining their parts, without
# Jinja's per-render context (most of a render's CPU, measured by bench/send_path.py).
Part = tuple[bool, str]  # (is a variable, text or name)


@dataclass(frozen=True)
class CompiledMessage:
    """Compiled templates by field path; ``variables`` are the names the text refers to."""

    fields: dict[str, jinja2.Template]
    variables: frozenset[str] = field(default_factory=frozenset)
    # Field paths whose text is known before any recipient: no Jinja syntax at all, or (once
    # bound to a run by `bind_run`) depending on nothing but the task and the run.
    static: dict[str, str] = field(default_factory=dict)
    # Field paths made only of text and `{{ name }}`, as their parts.
    plain: dict[str, tuple[Part, ...]] = field(default_factory=dict)
    # The variables of each field, and the fields that must be rendered per recipient
    # because their output may differ between renders of the same context (`random`).
    field_variables: dict[str, frozenset[str]] = field(default_factory=dict)
    volatile: frozenset[str] = field(default_factory=frozenset)


# Per-run names: what a field that uses only these renders is the same for every recipient.
RUN_NAMES = frozenset({"task", "run"})
VOLATILE_FILTERS = frozenset({"random", "shuffle"})


def _plain_parts(ast: jinja2.nodes.Template) -> tuple[Part, ...] | None:
    parts: list[Part] = []
    for node in ast.body:
        if not isinstance(node, jinja2.nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                parts.append((False, child.data))
            elif isinstance(child, jinja2.nodes.Name) and child.ctx == "load":
                parts.append((True, child.name))
            else:
                return None
    return tuple(parts)


def _flatten(template: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """``{"title": .., "extra": {"a": ..}}`` → ``{"title": .., "extra.a": ..}``; None dropped."""
    if hasattr(template, "model_dump"):  # a pydantic model (pushtask.models)
        template = template.model_dump(by_alias=True, exclude_none=True)
    out: dict[str, str] = {}
    for key, value in dict(template).items():
        path = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{path}."))
        elif isinstance(value, str):
            out[path] = value
        else:
            raise TemplateCompileError(path, f"must be a string, got {type(value).__name__}")
    return out


def compile_message(template: Mapping[str, Any] | Any) -> CompiledMessage:
    """Compile every field of a message template; raise TemplateCompileError on the first bad one.

    ``template`` is the spec's ``message.template`` (a dict or the pydantic model): string
    fields such as title, body, link and a nested mapping of extra fields.
    """
    fields: dict[str, jinja2.Template] = {}
    static: dict[str, str] = {}
    plain: dict[str, tuple[Part, ...]] = {}
    field_variables: dict[str, frozenset[str]] = {}
    volatile: set[str] = set()
    for path, text in _flatten(template).items():
        try:
            ast = _ENV.parse(text)
            field_variables[path] = frozenset(meta.find_undeclared_variables(ast))
            fields[path] = _ENV.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateCompileError(path, exc.message or str(exc), exc.lineno) from None
        if "{" not in text:
            static[path] = text
        elif (parts := _plain_parts(ast)) is not None:
            plain[path] = parts
        if any(f.name in VOLATILE_FILTERS for f in ast.find_all(jinja2.nodes.Filter)):
            volatile.add(path)
    names = frozenset().union(*field_variables.values())
    return CompiledMessage(fields, names, static, plain, field_variables, frozenset(volatile))


def bind_run(compiled: CompiledMessage, *, task: Mapping[str, Any], run: int) -> CompiledMessage:
    """The message with every field that depends only on the task and the run rendered
    once, for all of the run's recipients. A field that fails to render stays per
    recipient, so each recipient still fails with that field's error (as without this)."""
    static = dict(compiled.static)
    scope = {**_GLOBALS, **build_context("", {}, task=task, run=run)}
    for path, tmpl in compiled.fields.items():
        names = compiled.field_variables.get(path)
        if path in static or names is None or path in compiled.volatile:
            continue
        if names <= RUN_NAMES:
            try:
                static[path] = _render_one(tmpl, scope)
            except Exception:
                continue
    return replace(compiled, static=static)


def build_context(
    user: str,
    attrs: Mapping[str, Any] | None = None,
    *,
    task: Mapping[str, Any] | None = None,
    run: int | None = None,
) -> dict[str, Any]:
    """The render context of one recipient (see the module docstring)."""
    attrs = dict(attrs or {})
    ctx: dict[str, Any] = {k: v for k, v in attrs.items() if isinstance(k, str)}
    ctx.update(user=user, attrs=attrs, task=dict(task or {}), run=run)
    return ctx


def _set_path(out: dict[str, Any], path: str, value: str) -> None:
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def _line_of(exc: BaseException) -> int | None:
    """Best-effort template line of a runtime error (Jinja keeps it in the traceback)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _join(parts: tuple[Part, ...], context: Mapping[str, Any]) -> str | None:
    """A plain field's text, as Jinja would print it; None when a name is not in the
    context (or is not a str or a number), for Jinja to render it (or to say why not)."""
    out = []
    for is_name, text in parts:
        if not is_name:
            out.append(text)
            continue
        value = context.get(text, _MISSING)
        if type(value) is str:
            out.append(value)
        elif type(value) in (int, float, bool):
            out.append(str(value))
        else:
            return None  # absent (a global, or undefined), None, a dict: Jinja's own way
    return "".join(out)


_MISSING = object()


def _render_one(tmpl: jinja2.Template, scope: dict[str, Any]) -> str:
    """Template.render without its per-call merge of the globals (`scope` holds them)."""
    try:
        ctx = tmpl.new_context(scope, shared=True)  # shared: `scope` as is, not copied
        return str(tmpl.environment.concat(tmpl.root_render_func(ctx)))
    except Exception:
        tmpl.environment.handle_exception()  # re-raises with the template's own frames
        raise


def render(compiled: CompiledMessage, context: Mapping[str, Any]) -> dict[str, Any]:
    """Render every field; nested field paths become nested dicts again."""
    out: dict[str, Any] = {}
    scope: dict[str, Any] | None = None  # one scope for every field of this recipient
    for path, tmpl in compiled.fields.items():
        if (text := compiled.static.get(path)) is not None:
            _set_path(out, path, text)
            continue
        if (parts := compiled.plain.get(path)) is not None and (
            value := _join(parts, context)
        ) is not None:
            _set_path(out, path, value)
            continue
        if scope is None:
            scope = {**_GLOBALS, **context}
        try:
            value = _render_one(tmpl, scope)
        except jinja2.UndefinedError as exc:
            raise TemplateRenderError(path, exc.message or str(exc), _line_of(exc)) from None
        except jinja2.sandbox.SecurityError as exc:
            raise TemplateRenderError(
                path, f"blocked by the sandbox: {exc}", _line_of(exc)
            ) from None
        except Exception as exc:  # a filter on a bad value, a division by zero, ...
            raise TemplateRenderError(path, f"{type(exc).__name__}: {exc}", _line_of(exc)) from None
        _set_path(out, path, value)
    return out
