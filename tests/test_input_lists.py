"""Curate's `.txt`/`.lst` input lists as editors write them: a UTF-8 BOM (Notepad, exporters) is
no part of the first entry."""
from __future__ import annotations

from pathlib import Path

import pytest

from portraitflow.operators.inputs import expand_inputs


@pytest.mark.parametrize("first", ["sub/b.mp4", "# my clips"])
def test_a_list_that_starts_with_a_bom_reads_its_first_line_as_written(tmp_path: Path, first: str) -> None:
    """The BOM stayed on line 1: `sub/b.mp4` failed `no such file`, and a first-line comment became an input."""
    (tmp_path / "sub").mkdir()
    for name in ("b.mp4", "clip with spaces.mp4"):
        (tmp_path / "sub" / name).write_bytes(b"")
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"\xef\xbb\xbf" + f"{first}\r\n\r\nsub/clip with spaces.mp4\r\n./sub/b.mp4\r\n".encode())
    assert expand_inputs([str(listed)]) == [str(tmp_path / "sub" / name) for name in ("b.mp4", "clip with spaces.mp4")]
