"""Validators for OpenAI's published response schemas.

The spec lives in ../shared/openai/openapi.yaml relative to the repo root
(CI puts shared/ beside the clone); tests that need it skip with a clear
message when it is absent.  The document is OpenAPI 3.1 (JSON Schema 2020-12)
but a few schemas still use 3.0's `nullable: true`; that keyword is folded
into the type here so a null the spec allows validates.
"""
import copy
import os

import pytest

from conftest import ROOT

SPEC = os.path.normpath(os.path.join(ROOT, "..", "shared", "openai", "openapi.yaml"))

_cache = {}


def _fold_nullable(node):
    if isinstance(node, dict):
        out = {k: _fold_nullable(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True:
            if "type" in out and isinstance(out["type"], str):
                out["type"] = [out["type"], "null"]
            elif "$ref" in out or "anyOf" in out or "oneOf" in out or "allOf" in out:
                out = {"anyOf": [out, {"type": "null"}]}
            if "enum" in out and None not in out["enum"]:
                out["enum"] = list(out["enum"]) + [None]
        return out
    if isinstance(node, list):
        return [_fold_nullable(v) for v in node]
    return node


def _load():
    if "doc" in _cache:
        return _cache["doc"]
    if not os.path.exists(SPEC):
        pytest.skip("OpenAI spec not found at %s: put shared/openai/openapi.yaml beside the clone "
                    "to run the schema checks" % SPEC)
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("jsonschema")
    with open(SPEC) as f:
        doc = yaml.safe_load(f)
    _cache["doc"] = _fold_nullable(doc)
    return _cache["doc"]


def validator(name, patch=None):
    """A jsonschema validator for components/schemas/<name>; patch(schema)
    may adjust a copy first (used only where noted in the tests)."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = _load()
    key = (name, patch)
    if key in _cache:
        return _cache[key]
    schema = copy.deepcopy(doc["components"]["schemas"][name])
    if patch:
        schema = patch(schema)
    root = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openapi", root)

    def fix_refs(node):
        if isinstance(node, dict):
            return {k: ("urn:openapi" + v if k == "$ref" and isinstance(v, str) and v.startswith("#/")
                        else fix_refs(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix_refs(v) for v in node]
        return node

    schema = fix_refs(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    v = jsonschema.Draft202012Validator(schema, registry=registry)
    _cache[key] = v
    return v


def check(name, obj, patch=None):
    v = validator(name, patch)
    errors = sorted(v.iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "%s does not validate: %s\n%r" % (
        name, "; ".join("%s at %s" % (e.message, list(e.path)) for e in errors[:5]), obj)


def completion_chunk_patch(schema):
    """OpenAI's streamed completions send finish_reason null until the last
    chunk (the real API does; the spec shares the non-streamed shape, whose
    enum has no null), so a streamed chunk may carry null there."""
    item = schema["properties"]["choices"]["items"]
    fr = item["properties"]["finish_reason"]
    fr["type"] = ["string", "null"]
    fr["enum"] = list(fr["enum"]) + [None]
    return schema
