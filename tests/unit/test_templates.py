"""Message templates: sandboxed, strict, with errors that name the field and line."""

from __future__ import annotations

import pytest

from pushtask.templates import (
    TemplateCompileError,
    TemplateRenderError,
    bind_run,
    build_context,
    compile_message,
    render,
)


def test_render_fields_with_attributes_and_reserved_names() -> None:
    compiled = compile_message(
        {
            "title": "Hello {{ name }}",
            "body": "Run {{ run }} of {{ task.name }} for {{ user }}",
            "link": "https://example.com/p?u={{ user | urlencode }}",
            "extra": {"subject": "{{ attrs['first-name'] }}"},
        }
    )
    ctx = build_context(
        "u 1", {"name": "Ann", "first-name": "A", "user": "shadowed"}, task={"name": "t"}, run=3
    )
    assert render(compiled, ctx) == {
        "title": "Hello Ann",
        "body": "Run 3 of t for u 1",
        "link": "https://example.com/p?u=u%201",
        "extra": {"subject": "A"},
    }
    assert {"name", "run", "task", "user", "attrs"} <= compiled.variables


def test_static_fields_and_none_are_kept_simple() -> None:
    compiled = compile_message({"title": "plain", "link": None})
    assert render(compiled, build_context("u")) == {"title": "plain"}


def test_syntax_error_names_field_and_line() -> None:
    with pytest.raises(TemplateCompileError) as info:
        compile_message({"title": "ok", "body": "line one\n{% if %}"})
    assert info.value.field == "body"
    assert info.value.line == 2
    assert "template field 'body', line 2" in str(info.value)


def test_non_string_field_is_a_compile_error() -> None:
    with pytest.raises(TemplateCompileError, match=r"extra\.n"):
        compile_message({"extra": {"n": 3}})


def test_missing_variable_is_a_render_error_not_empty_text() -> None:
    compiled = compile_message({"body": "first\nHi {{ name }}"})
    with pytest.raises(TemplateRenderError) as info:
        render(compiled, build_context("u1", {}))
    assert info.value.field == "body"
    assert info.value.line == 2
    assert "'name' is undefined" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "{{ user.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ attrs.__class__ }}",
    ],
)
def test_sandbox_blocks_python_internals(text: str) -> None:
    compiled = compile_message({"body": text})
    with pytest.raises(TemplateRenderError, match="body"):
        render(compiled, build_context("u1", {}))


def test_filter_error_is_a_render_error() -> None:
    compiled = compile_message({"body": "{{ n // 0 }}"})
    with pytest.raises(TemplateRenderError, match="ZeroDivisionError"):
        render(compiled, build_context("u1", {"n": 1}))


def test_accepts_a_pydantic_like_model() -> None:
    class Model:
        def model_dump(self, **_: object) -> dict[str, object]:
            return {"title": "{{ user }}", "body": None}

    assert render(compile_message(Model()), build_context("x")) == {"title": "x"}


# -- the fast paths: the same text as Jinja's own render, or Jinja's own error ------------

FAST_CASES = [
    {"title": "Hi {{ user }}", "body": "Run {{ run }}"},
    {"title": "{{ user }}{{ user }}!", "body": "{{ name }} / {{ n }} / {{ f }} / {{ b }}"},
    {"title": "{{ user }}\n", "body": "{{ task.name }} #{{ run }}\n\n"},
    {"title": "{{ missing_attr }}"},  # undefined: Jinja's error, not an empty string
    {"title": "{{ none_attr }}", "body": "{{ nested }}"},  # non-scalars: Jinja prints
    {"title": "{{ range }}"},  # a global, not in the context
    {"title": "{{ task.missing }}"},  # a per-run field that fails: fails per recipient
    {"title": "{{ [1, 2, 3] | random }} {{ run }}"},  # volatile: never folded
]


@pytest.mark.parametrize("template", FAST_CASES)
def test_fast_paths_render_what_jinja_renders(template: dict[str, str]) -> None:
    attrs = {"name": "Zoë", "n": 3, "f": 1.5, "b": True, "none_attr": None, "nested": {"a": 1}}
    task = {"namespace": "ns", "name": "promo", "uid": "u-1"}
    compiled = compile_message(template)
    bound = bind_run(compiled, task=task, run=7)
    for user in ("alice", "<b>bob</b>", "{{ user }}"):
        ctx = build_context(user, attrs, task=task, run=7)
        # Jinja's own render of each field is the reference: its text, or the first field
        # that fails (render stops there too).
        want: dict[str, object] = {}
        failing: str | None = None
        for path, tmpl in compiled.fields.items():
            try:
                want[path] = tmpl.render(ctx)
            except Exception:
                failing = failing or path
        for c in (compiled, bound):
            if failing is not None:
                with pytest.raises(TemplateRenderError) as raised:
                    render(c, ctx)
                assert raised.value.field == failing
            elif "random" in template["title"]:
                assert render(c, ctx)["title"] in {"1 7", "2 7", "3 7"}
                assert "title" not in bound.static  # never folded into one value per run
            else:
                assert render(c, ctx) == want


def test_per_run_fields_are_rendered_once() -> None:
    compiled = compile_message({"title": "Hi {{ user }}", "body": "{{ task.name }} run {{ run }}"})
    bound = bind_run(compiled, task={"namespace": "ns", "name": "promo"}, run=7)
    assert bound.static == {"body": "promo run 7"}
    assert "title" in bound.plain and "title" not in bound.static
