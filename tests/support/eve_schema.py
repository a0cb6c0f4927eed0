"""Suricata's EVE JSON Schema (tests/data/suricata/eve-schema.json, whose
README names its origin), for tests: ``check_eve(record)`` raises
jsonschema.ValidationError unless the record validates, as it is read back
from JSON (with format checks)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema

EVE_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "suricata" / "eve-schema.json"


@lru_cache(maxsize=None)
def eve_validator():
    schema = json.loads(EVE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check_eve(record: dict) -> None:
    eve_validator().validate(json.loads(json.dumps(record)))
