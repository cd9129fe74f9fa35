"""The trust model, enforced (docs/security.md): nothing is ever unpickled, and names taken from
inputs cannot place a file outside the output folder."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from portraitflow.operators.inputs import input_key
from portraitflow.operators.paths import confined, hashed_name, safe_name, safe_stem

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["jobs", "pipelines", "operators", "models", "benchmarks"]
# Modules whose loading executes arbitrary code from the data.
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
# Calls that unpickle or construct arbitrary objects whatever their arguments.
FORBIDDEN_CALLS = {"read_pickle", "to_pickle", "unsafe_load", "full_load", "load_pickle"}
# WebDataset's decoders unpickle `.pyd`/`.pickle` members (and torch.load `.pth` ones).
WEBDATASET_PIPELINES = {"WebDataset", "WebLoader", "DataPipeline", "FluidWrapper"}


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, '' otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _builds_webdataset(node: ast.AST) -> bool:
    """Whether the expression calls a WebDataset pipeline constructor (`wds.WebDataset(urls)...`)."""
    return any(isinstance(n, ast.Call) and _dotted(n.func).rsplit(".", 1)[-1] in WEBDATASET_PIPELINES
               for n in ast.walk(node))


def unsafe_loading(source: str) -> list[str]:
    """Every way `source` could unpickle (or build arbitrary objects from) data, as `line: what`."""
    tree = ast.parse(source)
    torches = {"torch"} | {a.asname for n in ast.walk(tree) if isinstance(n, ast.Import)
                           for a in n.names if a.name == "torch" and a.asname}
    numpies = {"np", "numpy"} | {a.asname for n in ast.walk(tree) if isinstance(n, ast.Import)
                                 for a in n.names if a.name == "numpy" and a.asname}
    found = []
    for node in ast.walk(tree):
        where = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module.split(".")[0] in PICKLING_MODULES or names & PICKLING_MODULES:
                found.append(f"{where}: from {module} import {', '.join(sorted(names))}")
            if module in ("torch", "torch.serialization", "numpy") and "load" in names:
                found.append(f"{where}: from {module} import load (call it qualified, with its safe arguments)")
            if module.startswith("webdataset.autodecode") or (module == "webdataset" and "autodecode" in names):
                found.append(f"{where}: webdataset's autodecode (it unpickles)")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, last = name.rpartition(".")
            if (head in torches or head in {f"{t}.serialization" for t in torches}) and last == "load" \
                    and not _is_const(_keyword(node, "weights_only"), True):
                found.append(f"{where}: {name} without weights_only=True")
            if head in numpies and last == "load" and not _is_const(_keyword(node, "allow_pickle"), False):
                found.append(f"{where}: {name} without allow_pickle=False")
            if name in ("torch.hub.load", "torch.jit.load"):
                found.append(f"{where}: {name}")
            if last in FORBIDDEN_CALLS:
                found.append(f"{where}: {name}")
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_const(allow, False):
                found.append(f"{where}: {name} with allow_pickle not False")
            if isinstance(node.func, ast.Attribute) and node.func.attr == "decode" and (
                    _builds_webdataset(node.func.value) or head in ("wds", "webdataset")):
                found.append(f"{where}: a WebDataset decoder (it unpickles .pyd/.pickle members)")
            if last == "read_webdataset" and not _is_const(_keyword(node, "decoder"), None):
                found.append(f"{where}: read_webdataset without decoder=None (its default decoder unpickles)")
            if name == "yaml.load" and "Safe" not in ast.unparse(_keyword(node, "Loader") or ast.Constant(None)):
                found.append(f"{where}: yaml.load without a safe Loader")
            if name in ("eval", "exec"):
                found.append(f"{where}: {name}()")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import cloudpickle as cp",
    "from ray import cloudpickle",
    "from joblib import load",
    "import dill.settings",
    "pickle_free = 1\nimport _pickle",
    "torch.load(path)",
    "torch.load(path, weights_only=False)",
    "torch.load(path, weights_only=flag)",
    "from torch import load",
    "np.load(path, allow_pickle=True)",
    "numpy.load(io.BytesIO(b), allow_pickle=flag)",
    "pd.read_pickle(path)",
    "frame.to_pickle(path)",
    "torch.hub.load('repo', 'model')",
    "yaml.load(text, Loader=yaml.Loader)",
    "yaml.unsafe_load(text)",
    "eval(line)",
    "import torch as t\nt.load(path)",
    "torch.serialization.load(path)",
    "np.load(io.BytesIO(b))",
    "from numpy import load",
    "wds.WebDataset(urls).decode()",
    "wds.WebDataset(urls).shuffle(9).decode('rgb')",
    "wds.DataPipeline(wds.SimpleShardList(u), wds.decode())",
    "from webdataset.autodecode import unpickle_loads",
    "ray.data.read_webdataset(paths)",
])
def test_scanner_catches_unsafe_loading(snippet: str) -> None:
    assert unsafe_loading(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "torch.load(path, map_location='cpu', weights_only=True, mmap=True)",
    "np.load(path, allow_pickle=False)",
    "np.save(buffer, array, allow_pickle=False)",
    "yaml.safe_load(text)",
    "yaml.load(text, Loader=yaml.SafeLoader)",
    "module.eval()",
    '"""Never unpickle: pickle.load is forbidden."""',
    "# import pickle",
    "safetensors.torch.load_file(path)",
    "line.decode('utf-8')",
    "ray.data.read_webdataset(paths, decoder=None)",
    "import torch as t\nt.load(path, weights_only=True)",
])
def test_scanner_passes_safe_loading(snippet: str) -> None:
    assert unsafe_loading(snippet) == []


def test_project_code_never_unpickles() -> None:
    files = [p for top in SCANNED if (ROOT / top).is_dir() for p in sorted((ROOT / top).rglob("*.py"))]
    assert len(files) > 20, "the scan found too little code; did the layout change?"
    problems = [f"{p.relative_to(ROOT)}:{hit}" for p in files for hit in unsafe_loading(p.read_text())]
    assert problems == [], "pickle-free loading only (CONTRIBUTING.md):\n" + "\n".join(problems)


HOSTILE = [
    "../../etc/passwd", "/etc/passwd", "..", ".", "", "a/../../b", "..\\..\\win", "name with spaces.mp4",
    "ünïcødé 名前 🎥.mov", "x" * 5000, "nul\0byte", "-rf", ".hidden", "a\nb", "%2e%2e%2f",
    "bad\udcff-surrogate",  # an undecodable byte in a file name, as os.fsdecode returns it
]


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_names_cannot_escape(text: str, tmp_path: Path) -> None:
    for name in (safe_name(text), hashed_name(text, text), safe_stem(text), input_key(text)):
        assert name and len(name) <= 96
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        target = confined(tmp_path, f"{name}.npz")
        assert target.parent == tmp_path.resolve()


def test_hashed_names_keep_distinct_inputs_apart() -> None:
    variants = ["a b.mp4", "a?b.mp4", "a/b.mp4", "a..b.mp4", "a b .mp4"]
    assert len({safe_name(Path(v).stem) for v in variants[:2]}) == 1  # they sanitise alike...
    assert len({hashed_name(Path(v).stem, v) for v in variants}) == len(variants)  # ...and stay apart
    assert hashed_name("clip", "/data/a.mp4") == "clip-2157d46f3e"  # every run, every machine: names are keys


def test_safe_stem_keeps_ordinary_ids() -> None:
    assert safe_stem("job-0001_x") == "job-0001_x"
    assert safe_stem("../job") != safe_stem("job") and safe_stem("../job").startswith("job-")


@pytest.mark.parametrize("parts", [("..", "x"), ("/etc", "passwd"), ("a", "..", "..", "b"), ("..",)])
def test_confined_refuses_escapes(parts: tuple[str, ...], tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        confined(tmp_path / "out", *parts)


def test_confined_refuses_symlinks_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path, out / "link")
    with pytest.raises(ValueError):
        confined(out, "link", "x")
    assert confined(out, "shards", "000000.tar") == out.resolve() / "shards" / "000000.tar"
    assert confined(out) == out.resolve()


def test_inputs_sharing_a_key_each_keep_a_key_of_their_own(caplog) -> None:
    """Two inputs whose stems and 40-bit hashes matched (found in seconds on purpose) shared a key,
    and the second vanished from the manifest without a word."""
    from portraitflow.operators.inputs import LONG_KEY_DIGITS, distinct_keys

    rows = [{"uri": "/b/v.mp4", "input_key": "v-0123456789"}, {"uri": "/a/v.mp4", "input_key": "v-0123456789"},
            {"uri": "/c/w.mp4", "input_key": input_key("/c/w.mp4")}]
    fresh = {row["uri"]: row["input_key"] for row in distinct_keys(rows, {})}
    assert fresh["/a/v.mp4"] == "v-0123456789" and fresh["/c/w.mp4"] == input_key("/c/w.mp4")  # first by path
    assert fresh["/b/v.mp4"] == input_key("/b/v.mp4", LONG_KEY_DIGITS) and len(set(fresh.values())) == 3
    assert "share the input key v-0123456789" in caplog.text
    # the input already curated under the key keeps it, whichever sorts first
    resumed = {row["uri"]: row["input_key"] for row in distinct_keys(rows, {"v-0123456789": "/b/v.mp4"})}
    assert resumed["/b/v.mp4"] == "v-0123456789" and resumed["/a/v.mp4"] == input_key("/a/v.mp4", LONG_KEY_DIGITS)
    # a key an earlier run curated another input under stays that input's (it vanished, "changed since curated")
    later = distinct_keys([rows[0]], {"v-0123456789": "/a/v.mp4"})
    assert later[0]["input_key"] == input_key("/b/v.mp4", LONG_KEY_DIGITS)
    # once alone, an input curated under its long key keeps that
    alone = distinct_keys([rows[0]], {input_key("/b/v.mp4", LONG_KEY_DIGITS): "/b/v.mp4"})
    assert alone[0]["input_key"] == input_key("/b/v.mp4", LONG_KEY_DIGITS)


@pytest.mark.parametrize(("uri", "shown"), [
    ("http://alice:S3cret@host:5055/", "http://host:5055/"),
    ("https://token@host/mlflow", "https://host/mlflow"),
    ("http://alice:S3cret@host:notaport/", "http://host:notaport/"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("http://host:5055", "http://host:5055"),
    ("http://u:p@[::1]:5000/", "http://[::1]:5000/"),
])
def test_tracking_uris_are_printed_without_their_credentials(uri: str, shown: str) -> None:
    """`animate`, `config show`, `doctor` and the invalid-URI error printed the password."""
    from portraitflow.jobs.runtime import without_credentials

    assert without_credentials(uri) == shown


def test_an_input_names_nothing_only_when_expand_inputs_finds_nothing(tmp_path: Path) -> None:
    """A literal `v [1].mp4`, a `**` pattern and a `file://` URI were refused as naming nothing."""
    from portraitflow.operators.inputs import names_nothing

    (tmp_path / "v [1].mp4").write_bytes(b"")
    (tmp_path / "deep" / "a").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "w.mp4").write_bytes(b"")
    for named in (str(tmp_path / "v [1].mp4"), str(tmp_path / "deep" / "**" / "*.mp4"),
                  (tmp_path / "v [1].mp4").as_uri(), "s3://bucket/x.mp4"):
        assert not names_nothing(named), named
    for nothing in (str(tmp_path / "nope.mp4"), str(tmp_path / "*.mkv"), str(tmp_path / "deep" / "**" / "*.mkv")):
        assert names_nothing(nothing), nothing


def test_a_quoted_glob_takes_the_videos_of_the_folders_it_matches(tmp_path: Path, caplog) -> None:
    """`'in/peo*'` (quoted, as a corpus too large for the shell's argument list needs) matched the
    folder `in/people` and took none of its videos: a `failed` row, "matched no video files"."""
    from portraitflow.operators.inputs import expand_inputs

    (tmp_path / "people" / "a").mkdir(parents=True)
    (tmp_path / "people" / "a" / "x.mp4").write_bytes(b"")
    (tmp_path / "people" / "y.mov").write_bytes(b"")
    (tmp_path / "people" / "notes.txt").write_text("")
    (tmp_path / "peony.mp4").write_bytes(b"")
    found = expand_inputs([str(tmp_path / "peo*")])
    assert found == sorted(str(tmp_path / name) for name in ("people/a/x.mp4", "people/y.mov", "peony.mp4"))
    caplog.clear()  # a `**` pattern walks the tree itself: each folder once, its left-out files said once
    assert expand_inputs([str(tmp_path / "people" / "**")]) == [str(tmp_path / "people/a/x.mp4"),
                                                                 str(tmp_path / "people/y.mov")]
    assert [m for m in caplog.messages if "left out" in m] == [f"{tmp_path / 'people' / '**'}: left out 1 file(s) "
                                                              "not taken for videos (1 .txt)"]
