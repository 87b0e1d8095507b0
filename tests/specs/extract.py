"""Trims the providers' published OpenAPI documents to the operations videoq's mocks use.

This module owns the list of operations the mocks read (:data:`USED`) and the trimming: per
provider it writes ``tests/specs/<provider>.json`` with ``openapi``, ``info`` (title, version,
and ``x-videoq-source``: the original file's name and sha256), the used ``paths`` entries with
only the used methods (whole operation objects), and the transitive closure of the
``components`` entries they ``$ref`` — nothing else. Re-run it when a provider publishes a new
document::

    python -m tests.specs.extract /path/to/full/specs [--file elevenlabs=new-name.json]

The output is deterministic (sorted keys, indent 1), so a re-run shows as a reviewable diff.
The relaxations the validators need (``nullable``, Replicate's ``version``) are applied when
:mod:`tests.mocks.spec` loads a file, not here: the files keep the published text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Operation:
    """One operation the mocks read, and which parts of it they read."""

    path: str
    method: str
    #: The mock validates the ``application/json`` request body against the spec.
    request_body: bool = False
    #: Statuses whose ``application/json`` response schema the mock validates its answers with.
    responses: tuple[str, ...] = ()
    #: Parameters the mock reads by name (``tests.mocks.spec.parameter``).
    parameters: tuple[str, ...] = ()


#: Every operation tests/mocks read through tests.mocks.spec, per provider.
USED: dict[str, tuple[Operation, ...]] = {
    "anthropic": (Operation("/v1/messages", "post", request_body=True, responses=("200",)),),
    "elevenlabs": (
        Operation(
            "/v1/text-to-speech/{voice_id}/with-timestamps",
            "post",
            request_body=True,
            responses=("200",),
            parameters=("output_format",),
        ),
        Operation("/v1/history", "get", responses=("200",)),
        Operation("/v1/history/{history_item_id}/audio", "get"),
    ),
    "replicate": (
        Operation("/predictions", "post", request_body=True, parameters=("Prefer",)),
        Operation("/models/{model_owner}/{model_name}/predictions", "post", request_body=True),
        Operation("/predictions/{prediction_id}", "get", responses=("200",)),
        Operation("/predictions", "get", responses=("200",)),
        Operation("/predictions/{prediction_id}/cancel", "post"),
    ),
}

#: Operations the mocks read of documents written by hand rather than trimmed here: the
#: published form is not JSON (OpenAI's is YAML), so the excerpt is transcribed, and its
#: ``info.x-videoq-source`` names the repository, file and date it was taken from instead of a
#: digest.
EXCERPTS: dict[str, tuple[Operation, ...]] = {
    "openai": (Operation("/embeddings", "post", request_body=True, responses=("200",)),),
}


def operations(provider: str) -> tuple[Operation, ...]:
    """The operations the mocks read of ``provider``'s spec, trimmed or transcribed."""
    return USED[provider] if provider in USED else EXCERPTS[provider]


#: The published file each trimmed document comes from (a default; ``--file`` overrides it).
SOURCE_FILES: dict[str, str] = {
    "anthropic": "anthropic-openapi.json",
    "elevenlabs": "elevenlabs-openapi-2026-08.json",
    "replicate": "replicate-openapi.json",
}

#: Keys of a path item that apply to all its operations (kept beside the used methods).
PATH_ITEM_SHARED = ("parameters", "servers", "summary", "description")


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` string in ``node``, recursively."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def component_of(ref: str) -> tuple[str, str]:
    """The ``(kind, name)`` of the components entry a local ``$ref`` points into."""
    parts = ref.split("/")
    if len(parts) < 4 or parts[:2] != ["#", "components"]:
        raise ValueError(f"$ref {ref!r} does not point into #/components")
    return parts[2], parts[3].replace("~1", "/").replace("~0", "~")


def trim(document: dict[str, Any], operations: Sequence[Operation]) -> dict[str, Any]:
    """The used operations of ``document`` and the components they reach."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = document["paths"][op.path]
        kept = paths.setdefault(op.path, {k: item[k] for k in PATH_ITEM_SHARED if k in item})
        kept[op.method] = item[op.method]
    components: dict[str, dict[str, Any]] = {}
    pending = list(refs(paths))
    while pending:
        kind, name = component_of(pending.pop())
        if name in components.get(kind, {}):
            continue
        entry = document["components"][kind][name]
        components.setdefault(kind, {})[name] = entry
        pending.extend(refs(entry))
    info = {k: document["info"][k] for k in ("title", "version") if k in document["info"]}
    return {"openapi": document["openapi"], "info": info, "paths": paths, "components": components}


def extract(provider: str, source: Path, out_dir: Path = OUT_DIR) -> Path:
    """Write ``<out_dir>/<provider>.json`` trimmed from the published ``source``."""
    raw = source.read_bytes()
    trimmed = trim(json.loads(raw), USED[provider])
    trimmed["info"]["x-videoq-source"] = {
        "file": source.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
        # The date of the published document as it was taken (its file's), not of this run:
        # trimming the same document again writes the same file.
        "dated": datetime.fromtimestamp(source.stat().st_mtime, UTC).date().isoformat(),
        "trimmed-by": "python -m tests.specs.extract",
    }
    out = out_dir / f"{provider}.json"
    text = json.dumps(trimmed, indent=1, sort_keys=True, ensure_ascii=False)
    out.write_text(text + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.specs.extract",
        description="Trim the providers' published OpenAPI documents to what the mocks use.",
    )
    parser.add_argument("source_dir", type=Path, help="directory of the published documents")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PROVIDER=NAME",
        help=f"a provider's file name in source_dir (defaults: {SOURCE_FILES})",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    names = dict(SOURCE_FILES)
    for pair in args.file:
        provider, _, name = pair.partition("=")
        if provider not in USED or not name:
            parser.error(f"--file {pair!r}: expected one of {sorted(USED)}=NAME")
        names[provider] = name
    for provider in USED:
        source = args.source_dir / names[provider]
        out = extract(provider, source, args.out)
        print(f"{out}: {out.stat().st_size} bytes from {source} ({source.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
