"""What people look at after a sweep: ranked summary, metric plots, side-by-side videos, one HTML page.

The page is static: plots are PNG files and videos H.264 mp4 next to `index.html`, referenced by
relative paths, so it opens from the file system in any browser with no server.
"""
from __future__ import annotations

import html
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from portraitflow.operators import metrics
from portraitflow.operators.atomic import atomic_target, atomic_write
from portraitflow.operators.job_status import OK


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
    `detection_rate` column, configs that fall short of the best config's by more than
    COVERAGE_TOLERANCE rank after the others (`full_coverage` False), each group by `metric`
    with undefined values at its end. The best includes the `still` baseline: it keeps the face,
    and an animator has to beat it on the same frames, not on the easier ones it kept."""
    ascending = lower_is_better(metric)
    if metric not in summary.columns:
        raise ValueError(f"cannot rank by {metric!r}: the summary has {metric_columns(summary)}")
    ranked = summary.sort_values(metric, ascending=ascending, na_position="last", kind="stable")
    if "detection_rate" in ranked.columns and metric != "detection_rate":
        rates = ranked["detection_rate"].fillna(0.0)
        ranked = ranked.assign(full_coverage=rates >= rates.max() - COVERAGE_TOLERANCE)
        ranked = pd.concat([ranked[ranked["full_coverage"]], ranked[~ranked["full_coverage"]]])
    return ranked.reset_index(drop=True)


def failed_as_undetected(per_video: pd.DataFrame) -> pd.DataFrame:
    """`per_video` with detection_rate 0 for a failed video, as a config's
    `detection_rate` averages it and `rank` compares it: plotted over the scored videos alone, a
    config ranked last for the videos it failed would show full coverage."""
    if "detection_rate" not in per_video.columns:
        return per_video
    failed = per_video["status"] != OK if "status" in per_video.columns else per_video["detection_rate"].isna()
    return per_video.assign(detection_rate=per_video["detection_rate"].mask(failed, 0.0))


def _figure(count: int, cols: int = 3):
    """A matplotlib figure of `count` panels in rows of `cols` (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(cols, max(1, count))
    rows = max(1, int(np.ceil(count / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _save(fig, out_path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_target(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_path


def _title(metric: str) -> str:
    return f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)"


def _ranking(summary: pd.DataFrame, rank_by: str) -> str:
    """How the summary is ordered: the heading named a metric no config had over rows in run order."""
    return f"ranked by {_title(rank_by)}" if rank_by in summary.columns else f"in run order: no config has {rank_by}"


def metric_plots(per_video: pd.DataFrame, out_path: Path, order: Sequence[str]) -> Path:
    """One box plot per metric, configs on the x axis in `order`, in a single PNG."""
    names = [m for m in metric_columns(per_video) if per_video[m].notna().any()]
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names):
        data = [per_video.loc[per_video["config"] == c, name].dropna().to_numpy() for c in order]
        ax.boxplot(data, showmeans=True)
        for x, values in enumerate(data, start=1):  # every video as a dot: sweeps are often a few videos
            ax.scatter(x + np.linspace(-0.12, 0.12, len(values)), values, s=9, alpha=0.6, color="tab:blue", zorder=3)
        ax.set_xticks(range(1, len(order) + 1), [str(c) for c in order], rotation=20, ha="right", fontsize=8)
        ax.set_title(_title(name), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path)


def numeric_params(summary: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """The params in `params` whose values in `summary` are numbers (not flags) and take two or more values."""
    out = []
    for name in params:
        values = summary[name].dropna() if name in summary.columns else pd.Series(dtype=object)
        numbers = [v for v in values if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))]
        if numbers and len(numbers) == len(values) and len(set(numbers)) >= 2:
            out.append(name)
    return out


def _value_text(value) -> str:
    """A param value as a legend shows it: 25 rather than the 25.0 a column with gaps holds."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _interval(std: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Half-widths of 95% intervals of means over `count` videos (Student's t: a sweep scores a
    few videos, where 1.96 standard errors would be 6.5, 2.2 and 1.6 times too narrow at 2, 3 and
    4); NaN, no bar, for one."""
    from scipy.stats import t

    count = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count >= 2, t.ppf(0.975, np.maximum(count - 1, 1)) * std / np.sqrt(count), np.nan)


#: the values each metric (`metrics.METRICS`) can take: a 95% interval of a mean over a few videos
#: reaches far past them (SSIM above 1, a negative error), where no config's mean can be
RANGES: dict[str, tuple[float, float]] = {
    "psnr": (0.0, metrics.PSNR_CAP_DB), "ssim": (-1.0, 1.0), "l1": (0.0, 1.0), "lpips": (0.0, np.inf),
    "csim": (-1.0, 1.0), "akd": (0.0, np.inf), "apd": (0.0, 180.0), "aed": (0.0, np.inf),
    "jitter_error": (0.0, np.inf), "flicker_error": (0.0, 255.0), "detection_rate": (0.0, 1.0),
    "fid": (0.0, np.inf), "fvd": (0.0, np.inf),
}


def clipped_error(metric: str, mean: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Error bars (below, above) of intervals `mean` ± `half` cut to `metric`'s RANGES: the part
    outside holds no possible mean, and drawn it stretches the axis past what the metric can be."""
    low, high = RANGES[metrics.metric_kind(metric)]
    room = np.maximum([mean - low, high - mean], 0.0)  # a cosine of 1 + 2e-16 has none above, not less
    return np.minimum(half, room)


def parameter_plots(summary: pd.DataFrame, per_video: pd.DataFrame, params: Sequence[str],
                    out_path: Path) -> Path | None:
    """Each metric against each numeric param of the grid: a config's mean over its videos with a
    95% interval (`_interval`, cut to the metric's RANGES), one line per combination of the other
    params (the backend included), so a trend reads at a glance where the box plots only order
    configs; configs that set none of the swept params (the `still` baseline) are dashed levels.
    Each interval is of one config's mean alone, so it does not compare configs that share videos
    (`paired_plot` does). None when no numeric param takes two values among the scored configs: a
    refused value (a typo such as "1,5") scores nothing and does not hide the others' trend."""
    summary = summary[summary["config"].isin(per_video["config"])]
    swept = numeric_params(summary, params)
    names = [m for m in metric_columns(per_video) if per_video[m].notna().any()]
    if not swept or not names:
        return None
    stats = per_video.groupby("config")[names].agg(["mean", "std", "count"])
    unswept = list(summary.loc[summary[swept].isna().all(axis=1), "config"])
    fig, axes = _figure(len(names) * len(swept), cols=len(swept) if len(swept) > 1 else 3)
    panels = iter(axes)
    for name in names:
        for param in swept:
            ax = next(panels)
            others = [p for p in params if p != param and p in summary.columns]
            rows = summary[summary[param].notna() & summary["config"].isin(stats.index)]
            for key, group in rows.groupby([rows[p].map(_value_text) for p in others] if others else [0] * len(rows)):
                group = group.sort_values(param)
                unset = {p for p in others if group[p].isna().all()}  # not a param of this line's configs
                mean = stats.loc[group["config"], (name, "mean")].to_numpy()
                error = clipped_error(name, mean, _interval(stats.loc[group["config"], (name, "std")].to_numpy(),
                                                            stats.loc[group["config"], (name, "count")].to_numpy()))
                values = zip(others, key if isinstance(key, tuple) else (key,))
                label = ", ".join(f"{p}={v}" for p, v in values if p not in unset) or None  # none: no legend entry
                ax.errorbar(group[param].astype(float), mean, yerr=error, marker="o", capsize=3, label=label)
            for config in unswept:  # a baseline such as `still`: a level to compare the lines with
                if config in stats.index and not np.isnan(stats.loc[config, (name, "mean")]):
                    ax.axhline(stats.loc[config, (name, "mean")], color="grey", linestyle="--", linewidth=1, label=config)
            ax.set_xlabel(param, fontsize=8)
            ax.set_title(_title(name), fontsize=9)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=6)
    return _save(fig, out_path)


def paired_plot(per_video: pd.DataFrame, metric: str, order: Sequence[str], out_path: Path) -> Path | None:
    """`metric` of every video across the configs in `order`, one line per video (`job_id`), the
    config means in black: whether a better mean is better on every video or carried by a few.
    None with fewer than two configs or no video scored by two of them."""
    if metric not in per_video.columns or "job_id" not in per_video.columns:
        return None
    table = per_video.pivot_table(index="job_id", columns="config", values=metric, aggfunc="mean")
    columns = [c for c in order if c in table.columns]
    table = table[columns]
    if len(columns) < 2 or not (table.notna().sum(axis=1) >= 2).any():
        return None
    fig, (ax,) = _figure(1, cols=1)
    fig.set_size_inches(max(4.2, 0.9 * len(columns) + 2), 3.6)
    x = np.arange(len(columns))
    for _, values in table.iterrows():
        ax.plot(x, values.to_numpy(dtype=float), color="tab:blue", alpha=0.35, marker=".", linewidth=1)
    ax.plot(x, table.mean().to_numpy(dtype=float), color="black", marker="o", linewidth=2, label="mean")
    ax.set_xticks(x, [str(c) for c in columns], rotation=20, ha="right", fontsize=8)
    ax.set_title(f"{_title(metric)}, one line per video", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_path)


def _fit_height(frames: np.ndarray, height: int) -> np.ndarray:
    import cv2

    width = max(2, int(round(frames.shape[2] * height / frames.shape[1])) // 2 * 2)
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def side_by_side(ref: str, driving: str, output: str, out_path: Path, height: int = 256, frame_offset: int = 0) -> int:
    """reference | driver | output as one H.264 video with the driver's audio; returns frames. The
    frames are paired as evaluation paired them: `frame_offset` 1 (-1) leaves out the output's (the
    driver's) first frame, where one runs a frame ahead of the other."""
    from portraitflow.models.face.images import load_image
    from portraitflow.operators.decode import iter_frame_chunks, probe_video
    from portraitflow.operators.video_writer import write_h264

    reference = load_image(ref)
    if not reference.ok:
        raise ValueError(f"reference {ref}: {reference.reason}")
    still = _fit_height(reference.rgb[None], height)[0]
    fps = probe_video(driving).output_fps

    out_start, drv_start = max(frame_offset, 0) / fps, max(-frame_offset, 0) / fps

    def panels() -> Iterator[np.ndarray]:
        for drv, out in zip(iter_frame_chunks(driving, fps, start_s=drv_start, in_order=True),  # bounded memory
                            iter_frame_chunks(output, fps, start_s=out_start, in_order=True)):
            count = min(len(drv.frames), len(out.frames))
            yield np.concatenate([np.repeat(still[None], count, axis=0), _fit_height(drv.frames[:count], height),
                                  _fit_height(out.frames[:count], height)], axis=2)

    return write_h264(out_path, panels(), fps, audio_from=driving, audio_start_s=drv_start)


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


def write_html(out_dir: Path, title: str, summary: pd.DataFrame, rank_by: str, plots: Sequence[tuple[str, Path]],
               videos: Sequence[tuple[str, Path]], notes: Sequence[str], per_video: pd.DataFrame | None = None,
               captions: Mapping[str, str] | None = None) -> Path:
    """index.html in `out_dir`; `plots` (heading, PNG) and `videos` must lie inside `out_dir` (linked
    relatively); `captions` (by heading) say under a plot how to read it."""
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<h2>Summary, {html.escape(_ranking(summary, rank_by))}</h2>", _table_html(summary, rank_by)]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class=note>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for heading, plot in plots:
        parts.append(f"<h2>{html.escape(heading)}</h2><img src='{html.escape(plot.relative_to(out_dir).as_posix())}' "
                     f"alt='{html.escape(heading)}'>")
        if captions and heading in captions:
            parts.append(f"<p class=note>{html.escape(captions[heading])}</p>")
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
