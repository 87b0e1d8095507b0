"""The providers' OpenAPI specs as JSON Schema validators (jsonschema, draft 2020-12).

The specs are the repository's own trimmed copies in ``tests/specs`` (the operations the mocks
use and the components they reach, written by ``python -m tests.specs.extract`` from the
published documents, whose names and sha256 each file's ``info.x-videoq-source`` records;
OpenAI's, published as YAML, is an excerpt transcribed by hand, its source recorded the same
way). Two
relaxations make Replicate's 3.1 document valid JSON Schema: OpenAPI 3.0's ``nullable: true``
becomes ``type: [T, "null"]``, and the prediction's ``version`` (a string, or the string
``hidden``, so ``hidden`` matches both branches of its ``oneOf``) becomes an ``anyOf``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
SPEC_FILES = {
    "anthropic": "anthropic.json",
    "elevenlabs": "elevenlabs.json",
    "replicate": "replicate.json",
    "openai": "openai.json",
}


class SpecsMissing(RuntimeError):
    """A provider's trimmed spec is not in ``tests/specs``."""


def spec_path(provider: str, directory: Path = SPECS_DIR) -> Path:
    """The provider's spec file; :class:`SpecsMissing` (never a skip) when it is absent."""
    path = directory / SPEC_FILES[provider]
    if not path.is_file():
        raise SpecsMissing(
            f"provider spec {path} is missing: the mocks validate requests against the "
            "trimmed OpenAPI specs in tests/specs (regenerate them from the published "
            "documents with python -m tests.specs.extract /path/to/full/specs)"
        )
    return path


def _relax(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable`` → JSON Schema null type, recursively."""
    if isinstance(node, dict):
        out = {k: _relax(v) for k, v in node.items()}
        if out.pop("nullable", False) and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_relax(v) for v in node]
    return node


@functools.cache
def load(provider: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(spec_path(provider).read_text())
    spec = _relax(spec)
    if provider == "replicate":
        version = spec["components"]["schemas"]["schemas_prediction_response"]["properties"][
            "version"
        ]
        version["anyOf"] = version.pop("oneOf")
    return spec


@functools.cache
def _registry(provider: str) -> Registry:
    resource = Resource.from_contents(load(provider), default_specification=DRAFT202012)
    # ``with_resources``: ``with_resource`` (which only calls it) has no return annotation
    return Registry().with_resources([(f"urn:{provider}", resource)])


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@functools.cache
def validator(provider: str, *parts: str) -> Draft202012Validator:
    """A validator for the schema at JSON pointer ``parts`` of the provider's spec."""
    node: Any = load(provider)
    for part in parts:
        if part not in node:
            raise KeyError(f"{provider} spec has no {'/'.join(parts)}")
        node = node[part]
    ref = {"$ref": f"urn:{provider}#/{_pointer(*parts)}"}
    return Draft202012Validator(ref, registry=_registry(provider))


def request_validator(provider: str, path: str, method: str) -> Draft202012Validator:
    """The JSON request body schema of an operation."""
    return validator(
        provider, "paths", path, method, "requestBody", "content", "application/json", "schema"
    )


def response_validator(provider: str, path: str, method: str, status: str) -> Draft202012Validator:
    """The JSON response body schema of an operation for a status."""
    return validator(
        provider, "paths", path, method, "responses", status, "content", "application/json",
        "schema",
    )  # fmt: skip


def parameter(provider: str, path: str, method: str, name: str) -> dict[str, Any]:
    """An operation's parameter (``$ref``s to components resolved one level)."""
    spec = load(provider)
    for param in spec["paths"][path][method].get("parameters", []):
        if "$ref" in param:
            param = spec["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
        if param.get("name", "").lower() == name.lower():
            return dict(param)
    raise KeyError(f"{provider} {method.upper()} {path} has no parameter {name}")


def errors(checker: Draft202012Validator, instance: Any) -> str | None:
    """The most relevant validation error as text, or None when ``instance`` is valid."""
    error = best_match(checker.iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:300]}"
