"""Every status patch the operator sends, checked against the status model.

The API server prunes status fields its schema does not declare, silently: a field the
operator writes under a name the model lacks would simply never show. The models are
tolerant on read (`extra="ignore"`), so the check here walks them with unknown fields
forbidden, at every level, and then validates the values' types.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from pushtask.models import PushTaskStatus


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, optional, or in a list), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def undeclared(value: Mapping[str, Any], model: type[BaseModel], path: str) -> list[str]:
    """Paths in `value` that `model` (and the models in its fields) does not declare."""
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    out: list[str] = []
    for key, item in value.items():
        where = f"{path}.{key}"
        info = fields.get(key)
        if info is None:
            out.append(where)
            continue
        nested = _model_in(info.annotation)
        if nested is None or item is None:
            continue
        if isinstance(item, Mapping):
            out += undeclared(item, nested, where)
        elif isinstance(item, list):
            for i, element in enumerate(item):
                if isinstance(element, Mapping):
                    out += undeclared(element, nested, f"{where}[{i}]")
    return out


def check_status_patch(patch: Mapping[str, Any]) -> None:
    """Fail on a field the schema lacks, or a value of the wrong type.

    A merge patch's None deletes the field: allowed for every declared field.
    """
    extra = undeclared(patch, PushTaskStatus, "status")
    assert not extra, f"undeclared status fields (the API server would prune them): {extra}"
    PushTaskStatus.model_validate({k: v for k, v in patch.items() if v is not None})


__all__ = ["check_status_patch", "undeclared"]
