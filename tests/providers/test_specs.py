"""The trimmed provider specs in ``tests/specs``: they hold every operation the mocks use, every
``$ref`` in them resolves inside the same file, and they hold nothing beyond what those reach
(so a future trim that drops, or a mock that starts reading, something fails here loudly)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.mocks import spec
from tests.mocks.anthropic import AnthropicMock
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.openai import OpenAIMock
from tests.mocks.replicate import ReplicateMock
from tests.specs import extract

PROVIDERS = sorted([*extract.USED, *extract.EXCERPTS])


def raw(provider: str) -> dict[str, Any]:
    """The trimmed file as committed (no relaxations)."""
    document: dict[str, Any] = json.loads(spec.spec_path(provider).read_text(encoding="utf-8"))
    return document


def resolve(document: Any, ref: str) -> Any:
    """The node a local ``$ref`` (a JSON pointer fragment) points to; KeyError when none."""
    assert ref.startswith("#/"), f"$ref {ref!r} is not local to the file"
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_every_provider_has_a_trimmed_spec() -> None:
    assert sorted(spec.SPEC_FILES) == PROVIDERS
    assert sorted(extract.SOURCE_FILES) == sorted(extract.USED)
    assert spec.SPECS_DIR == extract.OUT_DIR
    for provider in PROVIDERS:
        assert spec.spec_path(provider).name == f"{provider}.json"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_spec_records_its_source(provider: str) -> None:
    document = raw(provider)
    assert set(document) == {"openapi", "info", "paths", "components"}
    source = document["info"]["x-videoq-source"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", source["dated"])
    if provider in extract.EXCERPTS:  # transcribed by hand from the repository's document
        assert source["repository"] and source["file"] and source["transcribed"]
        return
    assert source["file"].endswith(".json")  # extract.SOURCE_FILES, unless --file named another
    assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_spec_has_every_used_operation(provider: str) -> None:
    for op in extract.operations(provider):
        assert op.method in raw(provider)["paths"].get(op.path, {}), (
            f"{provider} spec has no {op.method.upper()} {op.path}"
        )
        if op.request_body:
            spec.request_validator(provider, op.path, op.method)
        for status in op.responses:
            spec.response_validator(provider, op.path, op.method, status)
        for name in op.parameters:
            assert spec.parameter(provider, op.path, op.method, name)["schema"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_ref_resolves_inside_the_file(provider: str) -> None:
    document = raw(provider)
    unresolved = []
    for ref in sorted(set(extract.refs(document))):
        try:
            resolve(document, ref)
        except (KeyError, IndexError, ValueError):
            unresolved.append(ref)
    assert not unresolved, f"{provider} spec: $refs that do not resolve: {unresolved}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_spec_holds_only_what_the_used_operations_reach(provider: str) -> None:
    """Trimming the trimmed file again changes nothing: no other paths, methods, components."""
    document = raw(provider)
    again = extract.trim(document, extract.operations(provider))
    again["info"]["x-videoq-source"] = document["info"]["x-videoq-source"]
    assert again == document


def test_mocks_read_only_the_listed_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the mocks reads no operation (or part of one) missing from ``extract.USED``."""
    read: set[tuple[str, str, str, str]] = set()
    validator, parameter = spec.validator, spec.parameter

    def recording_validator(provider: str, *parts: str) -> Any:
        if parts[0] == "paths":
            path, method, where, *rest = parts[1:]
            detail = "request" if where == "requestBody" else rest[0]
            read.add((provider, path, method, detail))
        return validator(provider, *parts)

    def recording_parameter(provider: str, path: str, method: str, name: str) -> Any:
        read.add((provider, path, method, f"parameter {name}"))
        return parameter(provider, path, method, name)

    monkeypatch.setattr(spec, "validator", recording_validator)
    monkeypatch.setattr(spec, "parameter", recording_parameter)
    AnthropicMock()
    ElevenLabsMock()
    ReplicateMock()
    OpenAIMock()
    listed = {
        (provider, op.path, op.method, detail)
        for provider, ops in {**extract.USED, **extract.EXCERPTS}.items()
        for op in ops
        for detail in (
            *(["request"] if op.request_body else []),
            *op.responses,
            *(f"parameter {name}" for name in op.parameters),
        )
    }
    assert read, "the mocks no longer read the specs through tests.mocks.spec"
    assert read <= listed, f"read but not in extract.USED: {sorted(read - listed)}"
    assert listed <= read, f"in extract.USED but no mock reads it: {sorted(listed - read)}"


def test_relaxations_apply_to_the_trimmed_copy() -> None:
    replicate = spec.load("replicate")["components"]["schemas"]
    version = replicate["schemas_prediction_response"]["properties"]["version"]
    assert "anyOf" in version and "oneOf" not in version
    assert "nullable" not in json.dumps(spec.load("replicate"))
