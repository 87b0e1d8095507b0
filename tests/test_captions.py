"""Captions: word timings (ElevenLabs' alignment, the offline voice's), cues that follow them,
WebVTT, the text burned into the frames at the right times and places, and the API's
``captions`` field, ``result.captions_url`` and ``GET /v1/jobs/{id}/captions``."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.conftest import LiveApi
from tests.mocks.elevenlabs import ElevenLabsMock
from videoq import captions
from videoq.captions import Cue, make_cues, split_lines, spread_words, to_vtt, words_from_alignment
from videoq.client import ApiError, Client
from videoq.ffmpeg import find_font
from videoq.pipeline import MemoryCheckpoints, compositing, run_pipeline, video_gen
from videoq.providers import offline_providers
from videoq.providers.offline import OfflineVoiceProvider
from videoq.settings import Settings
from videoq.types import Brief, Scene, Script, VoiceTrack, Word


def w(text: str, start: float, end: float) -> Word:
    return Word(text, start, end)


def test_alignment_of_the_mock_becomes_its_words() -> None:
    text = "Meet Nimbus.  Sound, anywhere!"
    alignment = ElevenLabsMock().answer(text)["alignment"]
    words = words_from_alignment(alignment)
    assert words is not None
    assert [word.text for word in words] == ["Meet", "Nimbus.", "Sound,", "anywhere!"]
    starts = alignment["character_start_times_seconds"]
    ends = alignment["character_end_times_seconds"]
    # Each word runs from its first character's start to its last character's end.
    assert (words[1].start_s, words[1].end_s) == (starts[5], ends[11])
    assert (words[-1].start_s, words[-1].end_s) == (starts[21], ends[-1])


@pytest.mark.parametrize(
    "alignment",
    [
        None,
        {},
        {"characters": ["a"], "character_start_times_seconds": [0.0]},
        {"characters": ["a", "b"], "character_start_times_seconds": [0, 1],
         "character_end_times_seconds": [1]},
        {"characters": ["a"], "character_start_times_seconds": ["x"],
         "character_end_times_seconds": [1]},
        {"characters": [], "character_start_times_seconds": [], "character_end_times_seconds": []},
        {"characters": ["a", " ", "b"], "character_start_times_seconds": [1, 1, 0],
         "character_end_times_seconds": [1, 1, 1]},
    ],
)  # fmt: skip
def test_unusable_alignment_gives_no_words(alignment: Any) -> None:
    assert words_from_alignment(alignment) is None


def test_cues_are_short_and_follow_sentences_pauses_and_scenes() -> None:
    text = "Meet Nimbus, the headphones that go everywhere with you. All day long. Buy"
    words = spread_words(text, 0.0, 6.0)
    cues = make_cues(words)
    for cue in cues:
        assert len(cue.text) <= captions.MAX_CHARS
        assert 1 <= len(cue.text.split()) <= captions.MAX_WORDS
    # A sentence ends a cue; the lone last word joins nothing across a sentence end.
    assert [c.text for c in cues] == [
        "Meet Nimbus,",
        "the headphones that go",
        "everywhere with you.",
        "All day long.",
        "Buy",
    ]
    # Cues follow the words: the first word's start to the last word's end.
    assert cues[1].start_s == words[2].start_s and cues[1].end_s == words[5].end_s

    # A pause ends a cue; a scene change always does.
    paused = [w("one", 0, 0.3), w("two", 0.3, 0.6), w("three", 1.5, 1.8), w("four", 1.8, 2.0)]
    assert [c.text for c in make_cues(paused)] == ["one two", "three four"]
    scenes = [w("a", 0, 0.2), w("b", 0.2, 0.4), w("c", 0.4, 0.6), w("d", 0.6, 0.8)]
    assert [c.text for c in make_cues(scenes, scene_bounds=[0.45])] == ["a b", "c d"]
    # A lone word at a cue's end joins the cue before when it fits.
    many = [w(t, i * 0.2, i * 0.2 + 0.15) for i, t in enumerate(["a", "b", "c", "d", "e", "f"])]
    # ... else it takes the last word of the cue before along, when that one has three or more.
    assert [c.text for c in make_cues(many)] == ["a b c d", "e f"]
    stuck = [w(t, i * 0.3, i * 0.3 + 0.2) for i, t in enumerate(["Big", "one,", "two"])]
    assert [c.text for c in make_cues(stuck)] == ["Big one,", "two"]
    long = [w(t, i * 0.3, i * 0.3 + 0.2) for i, t in enumerate(["alpha", "beta", "gamma", "delta"])]
    assert [c.text for c in make_cues(long)] == ["alpha beta gamma delta"]


def test_lines_are_balanced_and_fit() -> None:
    assert split_lines("short text", 20) == ["short text"]
    assert split_lines("Acme Boost makes every day", 20) == ["Acme Boost", "makes every day"]
    assert split_lines("a supercalifragilistic word", 8) == ["a", "supercalifragilistic", "word"]


def test_vtt_escapes_markup_and_writes_timestamps() -> None:
    vtt = to_vtt([Cue(0.0, 1.5, "Tom & Jerry <3"), Cue(61.25, 3723.0046, "later")])
    assert vtt == (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\nTom &amp; Jerry &lt;3\n\n"
        "2\n00:01:01.250 --> 01:02:03.005\nlater\n"
    )


@pytest.mark.parametrize("aspect", ["9:16", "16:9", "1:1"])
@pytest.mark.parametrize("style", ["minimal", "bold", "cinematic", "playful"])
def test_layout_stays_in_the_safe_area(style: str, aspect: str) -> None:
    brief = Brief("x", style=style, aspect_ratio=aspect)
    width, height = brief.resolution
    look = captions.layout(style, aspect, brief.resolution)
    two_lines_top = look.bottom_px - 2 * look.line_px
    assert 0.2 * height < two_lines_top < look.bottom_px <= 0.85 * height
    if aspect == "9:16":  # clear of the app's controls and description
        assert look.bottom_px <= 0.75 * height
    assert look.columns * look.fontsize * 0.6 <= 0.8 * width


def test_offline_voice_words_stay_inside_their_scenes() -> None:
    settings = Settings()
    script = Script(
        "t",
        [
            captions_scene("Meet Acme. It is fast.", 3.0),
            captions_scene("Quality you can see and feel, every single day of the year.", 2.0),
        ],
    )
    words = OfflineVoiceProvider(settings).words(script)
    assert [x.text for x in words][:2] == ["Meet", "Acme."]
    first, second = words[:5], words[5:]
    assert all(0 < x.start_s < x.end_s < 3.0 for x in first)
    assert all(3.0 < x.start_s < x.end_s < 5.0 for x in second)
    assert all(a.end_s <= b.start_s for a, b in pairwise(words))


def captions_scene(narration: str, duration: float) -> Scene:
    return Scene(narration=narration, visual_prompt="p", duration_s=duration)


def frames_at(path: Path, times: list[float]) -> list[np.ndarray]:
    """The luma plane of the frame shown at each of ``times``."""
    wanted = sorted(times)
    found: dict[float, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            assert frame.time is not None
            shown = frame.time
            for t in wanted:
                if t not in found and shown + 1 / 60 >= t:
                    found[t] = frame.to_ndarray(format="gray").astype(np.int16)
            if len(found) == len(wanted):
                break
    return [found[t] for t in times]


async def test_captions_are_burned_in_during_their_cues_only(
    settings: Settings, tmp_path: Path
) -> None:
    brief = Brief("Acme", style="bold", cta_text="Buy now", duration_s=6, aspect_ratio="1:1")
    checkpoints = MemoryCheckpoints()

    async def ignore(*_: Any, **__: Any) -> None:
        return None

    with_captions = await run_pipeline(
        brief, settings=settings, workdir=tmp_path / "on", checkpoints=checkpoints,
        report=ignore, providers=offline_providers(settings),
    )  # fmt: skip
    voice = VoiceTrack.from_dict(checkpoints.outputs["voice_gen"])
    script = Script.from_dict(checkpoints.outputs["script_gen"])
    clips = video_gen.from_output(checkpoints.outputs["video_gen"])
    assert voice.words and with_captions.captions_path is not None

    # The same composite with captions off: no WebVTT, no caption drawn in the graph.
    off_dir = tmp_path / "off"
    off_dir.mkdir()
    plain = Brief(**{**brief.__dict__, "captions": False})
    args = compositing.command(
        plain, script, voice, clips, settings=settings, workdir=off_dir,
        font=await find_font(settings), output=off_dir / "x.mp4",
    )  # fmt: skip
    assert "cue_" not in " ".join(args) and not (off_dir / "captions").exists()
    without = await compositing.run(
        plain, script, voice, clips, settings=settings, workdir=off_dir,
        font=await find_font(settings), on_progress=ignore,
    )  # fmt: skip
    assert without.captions_path is None and not (off_dir / compositing.CAPTIONS_NAME).exists()

    # The WebVTT cues are the voice's word timings (within 100 ms).
    vtt = with_captions.captions_path.read_text(encoding="utf-8")
    cues = compositing.cues_for(brief, script, voice)
    assert vtt == to_vtt(cues) and len(cues) >= 2
    for cue in cues:
        first = next(x for x in voice.words if abs(x.start_s - cue.start_s) <= 0.1)
        last = next(x for x in voice.words if abs(x.end_s - cue.end_s) <= 0.1)
        assert cue.text.startswith(first.text) and cue.text.endswith(last.text)

    # In the frames: during a cue the difference is in the caption band; outside cues (before
    # the first word, between scenes) there is none.
    look = captions.layout(brief.style, brief.aspect_ratio, brief.resolution)
    band_top = look.bottom_px - 3 * look.line_px
    band_bottom = look.bottom_px + look.fontsize // 2
    during = [(c.start_s + c.end_s) / 2 for c in cues]
    gaps = [0.05, *(a.end_s + 0.1 for a, b in pairwise(cues)
                    if b.start_s - a.end_s > 0.3)]  # fmt: skip
    on_frames = frames_at(with_captions.video_path, during + gaps)
    off_frames = frames_at(without.video_path, during + gaps)
    for i, t in enumerate(during):
        changed = np.abs(on_frames[i] - off_frames[i]) > 48
        rows = np.nonzero(changed.any(axis=1))[0]
        assert changed.sum() > 500, f"no caption at {t:.2f} s"
        assert band_top <= rows.min() and rows.max() <= band_bottom, f"caption misplaced at {t}"
    for i in range(len(during), len(during) + len(gaps)):
        assert (np.abs(on_frames[i] - off_frames[i]) > 48).sum() < 50, f"caption at {gaps}"


async def wait_done(client: Client, job_id: str) -> Any:
    for _ in range(600):
        job = await client.get(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("job did not finish")


async def test_api_serves_captions_and_turns_them_off(
    live_api: LiveApi, client: Client, api_key: str, worker: Any
) -> None:
    with pytest.raises(ApiError) as refused:
        await client.submit(product_name="Acme", captions="no")
    assert refused.value.status == 422 and "captions" in str(refused.value.details)

    on = await client.submit(product_name="Acme", duration_s=5, aspect_ratio="1:1")
    off = await client.submit(product_name="Acme", duration_s=5, aspect_ratio="1:1",
                              captions=False)  # fmt: skip
    done_on, done_off = await wait_done(client, on.id), await wait_done(client, off.id)
    assert done_on.status == done_off.status == "succeeded"
    assert done_on.result is not None and done_off.result is not None
    assert done_on.result.captions_url is not None
    assert done_on.result.captions_url.endswith(f"/v1/jobs/{on.id}/captions")
    assert done_off.result.captions_url is None

    vtt = await client.captions(on.id)
    assert vtt.startswith("WEBVTT\n") and "Meet Acme." in vtt
    with pytest.raises(ApiError) as missing:
        await client.captions(off.id)
    assert missing.value.status == 404

    # The key is checked like the video's (the tenant too: tests/security/test_tenancy.py).
    async with httpx.AsyncClient(base_url=live_api.url) as raw:
        anonymous = await raw.get(f"/v1/jobs/{on.id}/captions")
        assert anonymous.status_code == 401
        good = await raw.get(
            f"/v1/jobs/{on.id}/captions", headers={"Authorization": f"Bearer {api_key}"}
        )
        assert good.status_code == 200 and good.headers["content-type"].startswith("text/vtt")


async def test_offline_voice_sounds_while_its_words_are_said(
    settings: Settings, tmp_path: Path
) -> None:
    script = Script(
        "t", [captions_scene("Meet Acme today.", 2.0), captions_scene("Buy it now.", 2.0)]
    )
    track = await OfflineVoiceProvider(settings).speak(script, Brief("Acme"), tmp_path)
    assert track.words is not None and len(track.words) == 6
    with av.open(str(track.path)) as container:
        chunks = [(f.time, f.to_ndarray()) for f in container.decode(audio=0)]

    def loudness(start: float, end: float) -> float:
        samples = np.concatenate(
            [data[0] for at, data in chunks if at is not None and start <= at < end]
        )
        return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))

    first, last = track.words[0], track.words[2]
    assert loudness(first.start_s + 0.05, last.end_s - 0.1) > 0.05
    # Silent after each scene's last word, until the next scene's first.
    assert loudness(last.end_s + 0.15, 2.0) < 0.005
    assert loudness(track.words[-1].end_s + 0.15, 4.0) < 0.005
