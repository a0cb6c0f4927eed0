"""The JSON Schemas of the output records (sensor/records/schemas/*.json), for tests.

``check(record)`` validates one record against the schema named by its
``event_type`` (with format checks: ipv4/ipv6) and raises on any mismatch.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "sensor" / "records" / "schemas"


@lru_cache(maxsize=None)
def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
        resources.append((path.name, Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def record_types() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json") if p.stem != "common")


@lru_cache(maxsize=None)
def validator(event_type: str):
    schema = json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


def check(record: dict) -> None:
    """Raise jsonschema.ValidationError unless ``record`` matches its schema."""
    # the record as a consumer sees it: through JSON
    record = json.loads(json.dumps(record))
    validator(record["event_type"]).validate(record)
