"""Versions of a job's video: version 1 is what the job first made; each per-scene re-render
(``POST /v1/jobs/{id}/scenes/{index}/rerender``) makes the next from the one before, buying
only what changed. Every version's outputs stay: its checkpoints are named for it
(:func:`checkpoint_name`), its paid calls too (:func:`purchase_name`), and its files are
under its own directory (:func:`videoq.types.version_dir`), its previews' images among them
(:func:`thumbnail_name`, :data:`POSTER`). The worker's pipeline and the API both read these
names: they live here, below both.

A job's ``versions`` list says what each re-render asked for: ``{"version", "scene",
"changed": [...], "prompt"?, "narration"?}``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from videoq.errors import PermanentError
from videoq.types import Script

#: Where a version's thumbnails and poster are, inside its directory.
THUMBNAILS = "thumbs"
POSTER = "poster.jpg"


def thumbnail_name(index: int) -> str:
    """A scene's thumbnail, relative to its version's directory."""
    return f"{THUMBNAILS}/scene_{index:02d}.jpg"


def scene_key(index: int) -> str:
    """The key under which version 1 buys scene ``index``'s clip (``video_gen:3``)."""
    return f"video_gen:{index}"


def checkpoint_name(stage: str, version: int) -> str:
    """The checkpoint of ``stage`` for ``version``: the stage's own name for version 1."""
    return stage if version <= 1 else f"{stage}@v{version}"


def purchase_name(key: str, version: int) -> str:
    """The key a paid call of ``version`` is reserved under (``video_gen:2@v3``): a re-render
    buys anew what version 1 bought under ``key``."""
    return key if version <= 1 else f"{key}@v{version}"


def edit_of(versions: list[dict[str, Any]], version: int) -> dict[str, Any] | None:
    """What the re-render that made ``version`` asked for (None for version 1)."""
    return next((v for v in versions if v.get("version") == version), None)


def made_in(versions: list[dict[str, Any]], index: int, version: int) -> int:
    """The version whose clip scene ``index`` shows in ``version``: the last re-render of
    that scene up to it, else 1."""
    return max(
        (
            int(v["version"])
            for v in versions
            if v.get("scene") == index and 1 < int(v.get("version", 0)) <= version
        ),
        default=1,
    )


def edited(script: Script, edit: dict[str, Any]) -> Script:
    """``script`` with the scene a re-render names given its new ``prompt`` and
    ``narration`` (those it sent)."""
    index = int(edit["scene"])
    scene = script.scenes[index]
    scene = replace(
        scene,
        visual_prompt=str(edit.get("prompt", scene.visual_prompt)),
        narration=str(edit.get("narration", scene.narration)),
    )
    scenes = [*script.scenes[:index], scene, *script.scenes[index + 1 :]]
    return replace(script, scenes=scenes, cost={})


def script_at(
    outputs: dict[str, dict[str, Any]], versions: list[dict[str, Any]], version: int
) -> Script | None:
    """The script of ``version``: its own checkpoint, else the latest earlier version's with
    the later re-renders applied (a re-render still queued); None before the script is
    written."""
    for at in range(version, 0, -1):
        saved = outputs.get(checkpoint_name("script_gen", at))
        if saved is None:
            continue
        script = Script.from_dict(saved)
        for later in range(at + 1, version + 1):
            edit = edit_of(versions, later)
            if edit is not None and 0 <= int(edit["scene"]) < len(script.scenes):
                script = edited(script, edit)
        return script
    return None


@dataclass(frozen=True)
class Rerender:
    """What a run of a job makes when it makes ``version`` > 1: scene ``scene`` with its new
    ``prompt`` and ``narration`` (the fields in ``changed``), from version ``version - 1``."""

    version: int
    scene: int
    changed: tuple[str, ...]
    prompt: str | None = None
    narration: str | None = None

    @classmethod
    def of(cls, versions: list[dict[str, Any]], version: int) -> Rerender | None:
        """The re-render that makes ``version`` (None for version 1).
        :class:`~videoq.errors.PermanentError` when the job's list does not say what it is."""
        if version <= 1:
            return None
        edit = edit_of(versions, version)
        if edit is None or not isinstance(edit.get("scene"), int):
            raise PermanentError(f"version {version} has no re-render on record")
        return cls(
            version=version,
            scene=int(edit["scene"]),
            changed=tuple(str(c) for c in edit.get("changed") or ()),
            prompt=edit.get("prompt"),
            narration=edit.get("narration"),
        )

    def edit(self) -> dict[str, Any]:
        """The edit :func:`edited` applies."""
        fields = {"prompt": self.prompt, "narration": self.narration}
        return {"scene": self.scene, **{k: v for k, v in fields.items() if v is not None}}
