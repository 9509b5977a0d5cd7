"""Argo CD's health check of a PushTask, run as Argo CD runs it: the Lua script with the
object as the global `obj`, returning {status, message}.

Argo CD runs health scripts in gopher-lua, a Lua 5.1; `lupa.lua51` is the reference
Lua 5.1 interpreter, so a construct 5.1 lacks fails here as it would in Argo CD.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lupa.lua51 as lua

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATION = ROOT / "integrations" / "argocd" / "resource_customizations" / "pushtask.dev"
HEALTH_DIR = CUSTOMIZATION / "PushTask"
HEALTH_LUA = HEALTH_DIR / "health.lua"


def _to_lua(runtime: Any, value: Any) -> Any:
    """A Lua value as Argo CD builds it from the object's JSON (tables, 1-based lists)."""
    if isinstance(value, Mapping):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def argocd_health(obj: Mapping[str, Any], script: str | None = None) -> dict[str, str]:
    """What Argo CD shows for `obj`: {"status": ..., "message": ...}."""
    runtime = lua.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
    runtime.globals().obj = _to_lua(runtime, obj)
    source = script if script is not None else HEALTH_LUA.read_text()
    result = runtime.execute(source)
    return {"status": str(result["status"]), "message": str(result["message"] or "")}
