"""Strict JSON for every file users read (metrics.json, config.json, trials.json, manifest.json, trial.json).

Why: Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which strict parsers (JavaScript's
``JSON.parse``, jq, Go, Java, Spark's ``from_json``) reject, so one non-finite metric made a whole
``metrics.json`` unreadable outside Python. Here a non-finite float is written as ``null``, meaning "no
finite value": not measured (e.g. a ratio over zero images) or not a number. Readers already treat a missing
or non-numeric value as "not recorded". Writing then fails loudly (``allow_nan=False``) if anything slips
through the mapping, instead of producing a file nobody else can parse.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth of dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN/Infinity: non-finite floats become null (see the module doc)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def loads_strict(text: str) -> Any:
    """Parse as a strict parser would: NaN, Infinity and -Infinity are errors (for tests and checks)."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)
