"""A frequency cap across campaigns: which earlier runs count, and over which window.

An exclusion `{kind: recentlySent, within, selector}` leaves out the users that runs of the
matching tasks (same namespace) sent anything to in the last `within`. The runs are found
in the store by the labels frozen into each run document (`task.labels`), so workers need
no Kubernetes API; the users come from those runs' chunks (ledger.sent_since).

The window starts `within` before this run was created (fixed by the run document, so
every worker and every reclaimer of the split reads from the same start) and is open at
the end: what a run still sending has recorded up to the read counts, and so does what it
is sending at that moment (started, no result yet). Sends recorded after the read do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pushtask.models import parse_duration


def window_start(run_doc: Mapping[str, Any], source: Mapping[str, Any]) -> datetime:
    """Sends at or after this count: `within` before the run being built was created."""
    within = source["within"]
    span = parse_duration(within) if isinstance(within, str) else within
    created: datetime = run_doc["created"]
    return created - span


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes label-selector semantics: every matchLabels pair and every expression
    must hold; an empty selector matches every task."""
    selector, labels = selector or {}, labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or ())
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True
