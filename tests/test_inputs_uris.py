"""Input paths as users write them: `file://` URIs from other tools, list lines that look like comments."""
from __future__ import annotations

from pathlib import Path

import pytest

from portraitflow.operators.inputs import expand_inputs
from portraitflow.operators.paths import escape_undecodable


def test_a_file_uri_is_percent_decoded_and_a_listed_name_read_as_comment_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`Path.as_uri()` writes `with%20space.mp4`: it was looked up as written, `no such file`. A
    list line `#take 2.mp4` is a comment, yet a file of that name sat beside the list, unsaid."""
    odd = [tmp_path / "with space.mp4", tmp_path / "100%.mp4", tmp_path / b"caf\xe9.mp4".decode("utf-8", "surrogateescape")]
    for path in odd:
        path.write_bytes(b"x")
    assert expand_inputs([path.as_uri() for path in odd]) == sorted(escape_undecodable(str(p)) for p in odd)
    assert expand_inputs(["file://localhost" + str(odd[0])]) == [str(odd[0])]
    (tmp_path / "#take 2.mp4").write_bytes(b"x")
    banner = "# " + "=" * 300  # longer than a file name may be: still a comment, not an error
    (tmp_path / "list.txt").write_text(f"# a comment\n#take 2.mp4\nwith space.mp4\n{banner}\n")
    with caplog.at_level("WARNING"):
        assert expand_inputs([str(tmp_path / "list.txt")]) == [str(odd[0])]
    assert "line 2: '#take 2.mp4' is read as a comment, yet names a file; write ./#take 2.mp4" in caplog.text
    assert "line 1" not in caplog.text
