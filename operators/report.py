"""What people look at after a sweep: ranked summary, metric plots, side-by-side videos, one HTML page.

The page is static: plots are PNG files and videos H.264 mp4 next to `index.html`, referenced by
relative paths, so it opens from the file system in any browser with no server.
"""
from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from portraitflow.operators import metrics
from portraitflow.operators.atomic import atomic_target, atomic_write


def lower_is_better(metric: str) -> bool:
    """Direction of `metric` as the evaluation defines it (`metrics.METRICS`); ValueError for a
    column that is no metric (a sweep param, a job count)."""
    return not metrics.higher_is_better(metric)


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The columns of `table` that are metrics (`metrics.METRICS`), in its order; whatever their
    type, other columns (numeric sweep params such as `pose_multiplier`, job counts) are not."""
    return [c for c in table.columns if metrics.metric_kind(str(c)) is not None]


#: a config whose `detection_rate` is lower than the best config's by more than this ranks after
#: the others: its face metrics skip the frames (and its failed videos) where it lost the face
COVERAGE_TOLERANCE = 0.02


def rank(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Configs best first on `metric` (direction from `metrics.METRICS`), undefined values last;
    ValueError when `metric` is no metric or not in the summary.

    Metrics are means over the frames where they are defined: a config that loses the face (or
    fails videos, which count as no face) is scored on fewer, easier frames. So with a
    `detection_rate` column, configs that fall short of the best animating one's by more than
    COVERAGE_TOLERANCE rank after the others (`full_coverage` False), each group by `metric`
    with undefined values at its end. The `still` baseline never moves the face, so it sets no
    bar (it keeps its place among configs that do not)."""
    ascending = lower_is_better(metric)
    if metric not in summary.columns:
        raise ValueError(f"cannot rank by {metric!r}: the summary has {metric_columns(summary)}")
    ranked = summary.sort_values(metric, ascending=ascending, na_position="last", kind="stable")
    if "detection_rate" in ranked.columns and metric != "detection_rate":
        rates = ranked["detection_rate"].fillna(0.0)
        animating = rates[ranked["backend"] != "still"] if "backend" in ranked.columns else rates
        best = animating.max() if len(animating) else rates.max()
        ranked = ranked.assign(full_coverage=rates >= best - COVERAGE_TOLERANCE)
        ranked = pd.concat([ranked[ranked["full_coverage"]], ranked[~ranked["full_coverage"]]])
    return ranked.reset_index(drop=True)


def metric_plots(per_video: pd.DataFrame, out_path: Path, order: Sequence[str]) -> Path:
    """One box plot per metric, configs on the x axis in `order`, in a single PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in metric_columns(per_video) if per_video[m].notna().any()]
    cols = min(3, max(1, len(names)))
    rows = max(1, int(np.ceil(len(names) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        data = [per_video.loc[per_video["config"] == c, name].dropna().to_numpy() for c in order]
        ax.boxplot(data, showmeans=True)
        for x, values in enumerate(data, start=1):  # every video as a dot: sweeps are often a few videos
            ax.scatter(x + np.linspace(-0.12, 0.12, len(values)), values, s=9, alpha=0.6, color="tab:blue", zorder=3)
        ax.set_xticks(range(1, len(order) + 1), [str(c) for c in order], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{name} ({'lower' if lower_is_better(name) else 'higher'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_target(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_path


def _fit_height(frames: np.ndarray, height: int) -> np.ndarray:
    import cv2

    width = max(2, int(round(frames.shape[2] * height / frames.shape[1])) // 2 * 2)
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def side_by_side(ref: str, driving: str, output: str, out_path: Path, height: int = 256) -> int:
    """reference | driver | output as one H.264 video with the driver's audio; returns frames."""
    from portraitflow.models.face.images import load_image
    from portraitflow.operators.decode import iter_frame_chunks, probe_video
    from portraitflow.operators.video_writer import write_h264

    reference = load_image(ref)
    if not reference.ok:
        raise ValueError(f"reference {ref}: {reference.reason}")
    still = _fit_height(reference.rgb[None], height)[0]
    fps = probe_video(driving).fps

    def panels() -> Iterator[np.ndarray]:
        for drv, out in zip(iter_frame_chunks(driving, fps), iter_frame_chunks(output, fps)):
            count = min(len(drv.frames), len(out.frames))
            yield np.concatenate([np.repeat(still[None], count, axis=0), _fit_height(drv.frames[:count], height),
                                  _fit_height(out.frames[:count], height)], axis=2)

    return write_h264(out_path, panels(), fps, audio_from=driving)


def _cell(value) -> str:
    """Numbers to 4 significant digits, undefined values as a dash, missing text as nothing."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _table_html(table: pd.DataFrame, highlight: str | None = None) -> str:
    head = "".join(f"<th{' class=key' if c == highlight else ''}>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for col, value in row.items():
            text = _cell(value)
            cells.append(f"<td{' class=key' if col == highlight else ''}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}.key{background:#fff4c2}
video{max-width:100%;margin:4px 0}figure{margin:1em 0}.note{color:#8a5a00}"""


def write_html(out_dir: Path, title: str, summary: pd.DataFrame, rank_by: str, plot: Path | None,
               videos: Sequence[tuple[str, Path]], notes: Sequence[str], per_video: pd.DataFrame | None = None) -> Path:
    """index.html in `out_dir`; `plot` and `videos` must lie inside `out_dir` (linked relatively)."""
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<h2>Summary, ranked by {html.escape(rank_by)} "
             f"({'lower' if lower_is_better(rank_by) else 'higher'} is better)</h2>", _table_html(summary, rank_by)]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class=note>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if plot is not None:
        parts.append(f"<h2>Metrics across configs</h2><img src='{html.escape(plot.relative_to(out_dir).as_posix())}' "
                     "alt='box plots of each metric per config'>")
    if videos:
        parts.append("<h2>Side by side: reference | driver | output</h2>")
        for caption, path in videos:
            parts.append(f"<figure><figcaption>{html.escape(caption)}</figcaption><video controls muted loop "
                         f"src='{html.escape(path.relative_to(out_dir).as_posix())}'></video></figure>")
    if per_video is not None and len(per_video):
        parts.append("<h2>Per video</h2>" + _table_html(per_video))
    parts.append("</body></html>")
    out = out_dir / "index.html"
    atomic_write(out, "\n".join(parts))
    return out
