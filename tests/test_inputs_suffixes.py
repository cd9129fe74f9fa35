"""Which files folders and globs take as inputs: every video suffix FFmpeg reads, and what they
leave out is logged, so a camera's `.mts` or a broadcast `.mxf` never goes missing unseen."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest

from portraitflow.operators.decode import iter_frame_chunks, probe_video
from portraitflow.operators.inputs import CANNOT_LIST, _expand_uri, expand_inputs, local_copy, names_nothing
from portraitflow.operators.paths import VIDEO_SUFFIXES

#: suffix -> (PyAV muxer, codec, width, height, pixel format, muxer options) of a file of that kind
WRITERS = {
    ".mp4": ("mp4", "h264", 256, 192, "yuv420p", {}), ".m4v": ("ipod", "h264", 256, 192, "yuv420p", {}),
    ".mov": ("mov", "h264", 256, 192, "yuv420p", {}), ".qt": ("mov", "h264", 256, 192, "yuv420p", {}),
    ".3gp": ("3gp", "h263", 176, 144, "yuv420p", {}), ".3g2": ("3g2", "mpeg4", 256, 192, "yuv420p", {}),
    ".f4v": ("f4v", "h264", 256, 192, "yuv420p", {}), ".mkv": ("matroska", "h264", 256, 192, "yuv420p", {}),
    ".webm": ("webm", "libvpx", 256, 192, "yuv420p", {}), ".avi": ("avi", "mpeg4", 256, 192, "yuv420p", {}),
    ".divx": ("avi", "mpeg4", 256, 192, "yuv420p", {}), ".flv": ("flv", "flv", 256, 192, "yuv420p", {}),
    ".wmv": ("asf", "wmv2", 256, 192, "yuv420p", {}), ".asf": ("asf", "msmpeg4", 256, 192, "yuv420p", {}),
    ".rm": ("rm", "rv20", 256, 192, "yuv420p", {}), ".rmvb": ("rm", "rv20", 256, 192, "yuv420p", {}),
    ".dv": ("dv", "dvvideo", 720, 576, "yuv420p", {}), ".mxf": ("mxf", "mpeg2video", 720, 576, "yuv422p", {}),
    ".mpg": ("mpeg", "mpeg2video", 256, 192, "yuv420p", {}), ".mpeg": ("mpeg", "mpeg1video", 256, 192, "yuv420p", {}),
    ".vob": ("vob", "mpeg2video", 256, 192, "yuv420p", {}), ".ts": ("mpegts", "h264", 256, 192, "yuv420p", {}),
    ".mts": ("mpegts", "h264", 256, 192, "yuv420p", {}), ".m2t": ("mpegts", "mpeg2video", 256, 192, "yuv420p", {}),
    ".m2ts": ("mpegts", "h264", 256, 192, "yuv420p", {"mpegts_m2ts_mode": "1"}),
    ".gif": ("gif", "gif", 256, 192, "rgb8", {}),
}
#: listed suffixes PyAV cannot write a file of here (it has no Theora encoder)
UNWRITTEN = {".ogv"}
FRAMES = 20


def _write(path: Path, muxer: str, codec: str, width: int, height: int, pix_fmt: str, options: dict) -> None:
    """`FRAMES` frames at 25 fps that change from one to the next."""
    with av.open(str(path), "w", format=muxer, options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(FRAMES):
            image = np.full((height, width, 3), 40, np.uint8)
            image[:, : 8 * (i + 1)] = 200
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_every_video_suffix_is_a_container_ffmpeg_reads() -> None:
    assert WRITERS.keys() | UNWRITTEN == VIDEO_SUFFIXES


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_a_file_of_each_video_suffix_is_probed_and_decoded(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"clip{suffix}"
    _write(path, *WRITERS[suffix])
    info = probe_video(str(path))
    assert (info.num_frames, info.fps) == (FRAMES, 25.0)
    assert sum(len(chunk.frames) for chunk in iter_frame_chunks(str(path), 25.0, chunk_size=8)) == FRAMES


RAW = ["a.mp4", "b.MOV", "c.wmv", "d.3gp", "e.mts", "f.m2ts", "g.mxf", "h.ogv", "i.vob"]  # the review's dump


def _dump(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    (folder / "day2").mkdir(parents=True)
    for name in [*RAW, "notes.txt", "cover.jpg", "clip.r3d", "README", "day2/j.MTS", "day2/j.srt"]:
        (folder / name).write_bytes(b"x")
    return folder


def test_a_folder_takes_every_video_suffix_and_logs_what_it_leaves_out(tmp_path: Path, caplog) -> None:
    folder = _dump(tmp_path)
    with caplog.at_level(logging.WARNING):
        found = expand_inputs([str(folder)])
    assert found == sorted(str(folder.resolve() / name) for name in [*RAW, "day2/j.MTS"])
    assert f"{folder}: left out 5 file(s) not taken for videos (1 .jpg, 1 .r3d, 1 .srt, 1 .txt, 1 no suffix)" \
        in caplog.messages
    caplog.clear()
    assert _expand_uri(f"file://{folder}") == sorted(f"file://{folder}/{name}" for name in [*RAW, "day2/j.MTS"])
    assert any("left out 5 file(s)" in message for message in caplog.messages)  # a remote folder alike


def test_a_glob_keeps_every_file_it_matches_but_plain_non_videos(tmp_path: Path, caplog) -> None:
    """What the user's pattern names is an input, even under a suffix no list knows: it gets a
    row (failed at its probe if no decoder reads it), not silence."""
    folder = _dump(tmp_path)
    with caplog.at_level(logging.WARNING):
        found = expand_inputs([str(folder / "*")])
    # the folder it matches is taken as a folder, as the shell's expansion of the pattern gives it
    assert found == sorted(str(folder.resolve() / name) for name in [*RAW, "clip.r3d", "README", "day2/j.MTS"])
    assert caplog.messages == [f"{folder}/*: left out 2 file(s) not taken for videos (1 .jpg, 1 .txt)",
                               f"{folder}/day2: left out 1 file(s) not taken for videos (1 .srt)"]
    caplog.clear()
    assert expand_inputs([str(folder / "*.r3d")]) == [str(folder.resolve() / "clip.r3d")] and not caplog.messages
    assert expand_inputs([str(folder / "*.txt")]) == [str(folder / "*.txt")]  # kept: it fails, matched no video
    assert caplog.messages == [f"{folder}/*.txt: left out 1 file(s) not taken for videos (1 .txt)"]


def test_hidden_files_and_sidecars_are_left_out(tmp_path: Path, caplog) -> None:
    """A card or a Mac folder holds `.DS_Store`, `._clip.mp4` forks and `.xmp`/`.thm` sidecars: a
    glob took the sidecars as inputs and a folder the forks, each failed on every run."""
    for name in ("a.mp4", ".DS_Store", "._a.mp4", "a.xmp", "a.THM"):
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        assert expand_inputs([str(tmp_path / "*")]) == [str(tmp_path.resolve() / "a.mp4")]  # `*` skips hidden names
        assert expand_inputs([str(tmp_path)]) == [str(tmp_path.resolve() / "a.mp4")]
    assert caplog.messages == [f"{tmp_path}/*: left out 2 file(s) not taken for videos (1 .thm, 1 .xmp)",
                               f"{tmp_path}: left out 4 file(s) not taken for videos (1 .thm, 1 .xmp, 2 hidden)"]


def test_a_folder_that_cannot_be_listed_is_an_input_that_fails_with_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """`os.walk` passes over a folder it cannot list (no permission, a vanished mount) without a
    word: its videos vanished from the manifest, and the folder given by name read as one of no videos."""
    corpus = tmp_path / "corpus"
    locked, system = corpus / "locked", corpus / "lost+found"  # every ext4 mount's root has a lost+found
    for folder in (locked, system):
        folder.mkdir(parents=True)
    for video in (corpus / "a.mp4", locked / "b.mp4"):
        video.write_bytes(b"not read here")
    scandir, listdir = os.scandir, os.listdir

    def refused(real: Callable, path: str = ".") -> object:
        if Path(path) in (locked, system):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", partial(refused, scandir))
    monkeypatch.setattr(os, "listdir", partial(refused, listdir))
    taken = [str((corpus / "a.mp4").resolve()), str(locked)]
    with caplog.at_level(logging.WARNING):
        assert expand_inputs([str(corpus)]) == taken
    assert f"left out 1 hidden or system folder(s) that cannot be listed: {system}" in caplog.text
    assert expand_inputs([str(tmp_path / "*")]) == taken  # a pattern matching the folder walks it the same way
    for pattern in ("**", "**/*.mp4"):  # `glob` passes over what it cannot list, at any depth
        assert expand_inputs([str(corpus / pattern)]) == taken, pattern
    for pattern in ("*/*.mp4", "*/**"):  # a video of it could match
        assert expand_inputs([str(corpus / pattern)]) == [str(locked)] and not names_nothing(str(corpus / pattern))
    assert expand_inputs([str(corpus / "open*" / "*.mp4")]) == [str(corpus / "open*" / "*.mp4")]  # none could: fails as unmatched
    assert expand_inputs([str(locked)]) == [str(locked)]
    with pytest.raises(PermissionError, match=f"^{CANNOT_LIST}: Permission denied$"), local_copy(str(locked)):
        pass
