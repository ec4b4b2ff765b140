"""Checks an emulator response against a sample from Microsoft's documentation.

Samples live in ``tests/data/microsoft_docs/<area>/<name>.json``, each a JSON object:

    {
      "source": {"repo": "microsoftgraph/microsoft-graph-docs-contrib",
                 "path": "api-reference/v1.0/api/user-list.md", "commit": "<sha or 'unknown'>"},
      "request": "GET /v1.0/users?$select=...",
      "note": "optional: where the docs disagree and which we followed",
      "optional": ["$.value[].signInActivity"],
      "response": { ...the documented JSON body, verbatim but for trimmed repetition... }
    }

`assert_conforms` checks that every field of the documented sample is present in the actual
response with the same JSON type (null matches anything, since the docs' nulls and ours
differ by data, not by shape), recursing into objects and into every item of arrays
against the sample's first item. Paths in ``optional`` may be absent.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "data" / "microsoft_docs"


def load_sample(area: str, name: str) -> dict[str, Any]:
    sample = json.loads((SAMPLES / area / f"{name}.json").read_text(encoding="utf-8"))
    assert {"source", "request", "response"} <= sample.keys(), f"{area}/{name}: malformed sample"
    assert sample["source"].get("repo") and sample["source"].get("path"), (
        f"{area}/{name}: no source"
    )
    return sample


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def conformance_problems(
    sample: Any, actual: Any, path: str = "$", optional: frozenset[str] = frozenset()
) -> list[str]:
    problems: list[str] = []
    if sample is None:
        return problems
    if _kind(sample) != _kind(actual) and actual is not None:
        return [f"{path}: documented as {_kind(sample)}, emulator gives {_kind(actual)}"]
    if isinstance(sample, dict) and isinstance(actual, dict):
        for key, value in sample.items():
            sub = f"{path}.{key}"
            if key not in actual:
                if sub not in optional:
                    problems.append(f"{sub}: documented, missing from the emulator's response")
                continue
            problems += conformance_problems(value, actual[key], sub, optional)
    elif isinstance(sample, list) and isinstance(actual, list) and sample:
        for item in actual:
            problems += conformance_problems(sample[0], item, f"{path}[]", optional)
    return problems


def assert_conforms(sample: dict[str, Any], actual: Any) -> None:
    problems = conformance_problems(
        sample["response"], actual, optional=frozenset(sample.get("optional", ()))
    )
    assert not problems, "\n".join(problems)
