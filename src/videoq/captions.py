"""Captions, pure: the voice's word timings become short cues that follow the speech, written as
WebVTT and laid out (lines, size, colours, position) for burning in.

- :func:`words_from_alignment`: ElevenLabs' character alignment (``characters``,
  ``character_start_times_seconds``, ``character_end_times_seconds``) → words;
  :func:`spread_words`: a text spoken evenly over a span (the offline voice's timings).
- :func:`make_cues`: words → cues of at most :data:`MAX_CHARS` characters and
  :data:`MAX_WORDS` words, cut after a sentence, at a pause, and always at a scene boundary
  (a cue never shows words of two scenes), after a clause of two words or more; a lone last
  word joins the cue before when it fits, and else takes that cue's last word with it.
- :func:`to_vtt`: cues → a WebVTT file; :func:`layout`: how a brief's style draws them, inside
  the safe area of its aspect ratio.
"""

from __future__ import annotations

import bisect
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from videoq.types import Word

#: At most this many characters (spaces included) and words in one cue.
MAX_CHARS = 32
MAX_WORDS = 5
#: A silence at least this long between two words ends the cue.
PAUSE_S = 0.45
_SENTENCE_END = (".", "!", "?", "…", ":", ";")
#: A clause's end ends a cue of two words or more.
_CLAUSE_END = (",", "—", "–")


@dataclass(frozen=True)
class Cue:
    """One caption: its words' text, shown from the first word's start to the last's end."""

    start_s: float
    end_s: float
    text: str


def words_from_alignment(alignment: Any) -> tuple[Word, ...] | None:
    """The words of an ElevenLabs alignment (a run of non-space characters each, from its
    first character's start to its last's end); None if the alignment is unusable."""
    if not isinstance(alignment, dict):
        return None
    chars = alignment.get("characters")
    starts = alignment.get("character_start_times_seconds")
    ends = alignment.get("character_end_times_seconds")
    if not (isinstance(chars, list) and isinstance(starts, list) and isinstance(ends, list)):
        return None
    if not chars or not len(chars) == len(starts) == len(ends):
        return None
    words: list[Word] = []
    text, first, last = "", 0.0, 0.0
    try:
        for char, start, end in zip(chars, starts, ends, strict=True):
            if not isinstance(char, str):
                return None
            if char.isspace() or not char:
                if text:
                    words.append(Word(text, first, last))
                text = ""
                continue
            if not text:
                first = float(start)
            text += char
            last = max(first, float(end))
    except (TypeError, ValueError):
        return None
    if text:
        words.append(Word(text, first, last))
    if any(b.start_s < a.start_s for a, b in pairwise(words)):
        return None
    return tuple(words)


def spread_words(text: str, start_s: float, end_s: float) -> list[Word]:
    """``text``'s words said one after another from ``start_s`` to ``end_s``, each for a time
    in proportion to its length (plus one character's worth of gap after it)."""
    tokens = text.split()
    if not tokens or end_s <= start_s:
        return []
    weights = [len(token) + 1 for token in tokens]
    step = (end_s - start_s) / sum(weights)
    words, at = [], start_s
    for token, weight in zip(tokens, weights, strict=True):
        words.append(Word(token, round(at, 3), round(at + (weight - 1) * step, 3)))
        at += weight * step
    return words


def make_cues(words: Sequence[Word], scene_bounds: Sequence[float] = ()) -> list[Cue]:
    """Cues that follow ``words``; ``scene_bounds`` are the times where scenes change (a word
    belongs to the scene its middle falls in, and no cue holds words of two scenes)."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    scene_of = [bisect.bisect_right(scene_bounds, (w.start_s + w.end_s) / 2) for w in words]
    for i, word in enumerate(words):
        if current:
            joined = len(" ".join(w.text for w in current)) + 1 + len(word.text)
            if (
                scene_of[i] != scene_of[i - 1]
                or current[-1].text.endswith(_SENTENCE_END)
                or (len(current) >= 2 and current[-1].text.endswith(_CLAUSE_END))
                or word.start_s - current[-1].end_s >= PAUSE_S
                or joined > MAX_CHARS
                or len(current) >= MAX_WORDS
            ):
                groups.append(current)
                current = []
        current.append(word)
    if current:
        groups.append(current)
    merged: list[list[Word]] = []
    for group in groups:
        previous = merged[-1] if merged else None
        if (
            previous is None
            or len(group) != 1
            or previous[-1].text.endswith(_SENTENCE_END + _CLAUSE_END)
            or not _same_scene(previous[-1], group[0], scene_bounds)
        ):
            merged.append(group)
        elif (
            len(previous) < MAX_WORDS
            and len(" ".join(w.text for w in [*previous, *group])) <= MAX_CHARS
        ):
            previous.extend(group)
        elif len(previous) >= 3:  # too full to take it: it takes a word of the cue before
            merged.append([previous.pop(), *group])
        else:
            merged.append(group)
    return [
        Cue(group[0].start_s, max(group[-1].end_s, group[0].start_s + 0.04),
            " ".join(w.text for w in group))
        for group in merged
    ]  # fmt: skip


def _same_scene(a: Word, b: Word, bounds: Sequence[float]) -> bool:
    middle = bisect.bisect_right
    return middle(bounds, (a.start_s + a.end_s) / 2) == middle(bounds, (b.start_s + b.end_s) / 2)


def split_lines(text: str, columns: int) -> list[str]:
    """``text`` on one line if it fits ``columns``, else on two lines of about equal length
    (more only when a word is longer than a line)."""
    if len(text) <= columns:
        return [text]
    tokens = text.split()
    best: list[str] | None = None
    for cut in range(1, len(tokens)):
        lines = [" ".join(tokens[:cut]), " ".join(tokens[cut:])]
        if max(map(len, lines)) <= columns and (
            best is None or max(map(len, lines)) < max(map(len, best))
        ):
            best = lines
    return best or textwrap.wrap(text, columns, break_long_words=False)


def _timestamp(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def to_vtt(cues: Sequence[Cue]) -> str:
    """A WebVTT file of ``cues`` (text escaped: ``&``, ``<`` and ``>`` are markup there)."""
    blocks = ["WEBVTT"]
    for i, cue in enumerate(cues, 1):
        text = cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{i}\n{_timestamp(cue.start_s)} --> {_timestamp(cue.end_s)}\n{text}")
    return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Layout:
    """How captions are drawn: sizes in pixels, colours as FFmpeg writes them, and where the
    bottom of the caption block (descenders and box included) sits: ``bottom_px`` from the
    top."""

    fontsize: int
    fontcolor: str
    border_px: int
    bordercolor: str
    boxcolor: str | None
    box_px: int
    columns: int
    line_px: int
    bottom_px: int
    #: Seconds each cue fades in (0: it appears at once).
    fade_s: float


#: Per style: font size as a fraction of the frame's shorter side, text colour, outline, box.
STYLES: dict[str, dict[str, Any]] = {
    "minimal": {"size": 1 / 17, "color": "white", "border": 0.05, "box": None, "fade": 0.0},
    "bold": {"size": 1 / 13, "color": "0xffd60a", "border": 0.09, "box": None, "fade": 0.0},
    "cinematic": {"size": 1 / 16, "color": "0xf5f0e6", "border": 0.0, "box": "black@0.45",
                  "fade": 0.15},
    "playful": {"size": 1 / 14, "color": "0x1d1d1d", "border": 0.0, "box": "white@0.92",
                "fade": 0.08},
}  # fmt: skip
#: Where the bottom of the captions sits, as a fraction of the height: above the app's own
#: controls and description on 9:16 (the bottom ~25 % of a Reels/TikTok/Shorts frame), in
#: the lower third on 16:9 and 1:1, clear of the player's bar.
SAFE_BOTTOM: dict[str, float] = {"9:16": 0.70, "16:9": 0.85, "1:1": 0.80}
#: The width captions may use: 9:16 leaves the right-hand buttons clear.
SAFE_WIDTH: dict[str, float] = {"9:16": 0.78, "16:9": 0.70, "1:1": 0.80}


def layout(style: str, aspect_ratio: str, resolution: tuple[int, int]) -> Layout:
    """The captions' look for a brief's ``style`` (unknown styles: ``minimal``), placed inside
    the safe area of ``aspect_ratio`` at ``resolution``."""
    width, height = resolution
    spec = STYLES.get(style, STYLES["minimal"])
    fontsize = max(12, round(min(width, height) * spec["size"]))
    usable = width * SAFE_WIDTH.get(aspect_ratio, 0.8)
    return Layout(
        fontsize=fontsize,
        fontcolor=spec["color"],
        border_px=round(fontsize * spec["border"]),
        bordercolor="black@0.85",
        boxcolor=spec["box"],
        box_px=fontsize // 4 if spec["box"] else 0,
        # ~0.6 em per glyph of a bold sans.
        columns=max(8, int(usable / (fontsize * 0.6))),
        line_px=round(fontsize * 1.3) + (fontsize // 2 if spec["box"] else 0),
        bottom_px=round(height * SAFE_BOTTOM.get(aspect_ratio, 0.8)),
        fade_s=spec["fade"],
    )
