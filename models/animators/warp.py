"""`warp`: a classical landmark-driven animator, the CPU preview and evaluation baseline.

The driver's motion is split, frame by frame, into a rigid head motion and an expression:

- head: yaw and pitch come from the driver's head-pose change, refined on the landmarks that
  move with the head only; the reference's landmarks are lifted onto a generic head (an
  ellipsoid with a nose), rotated by that change and projected back.
  Roll, translation and scale come from a similarity fit of the driver's stable landmarks
  (contour ends, nose bridge, eye corners) against the rotated anchor.
- expression: what is left of the driver's landmarks once that rigid motion is removed, in units
  of the driver's face, mapped onto the reference's face size and orientation; only brows, eyes,
  mouth and the jaw's drop carry it (elsewhere the residual is the generic head's error).

Motion is relative to the driver's first frame of each shot (`relative`), or taken against the
reference itself (`absolute`: the driver's pose and expression replace the reference's). The
moved landmarks, forehead points that turn with the head, a head-outline ring that moves with
the face's edge and a fixed crop border drive a piecewise-affine warp of the reference crop,
rendered as one dense map and `cv2.remap`. A crop pasted back onto the portrait (`paste_back`) is
blended with the still photo along its edges (`feather`): a fixed frame inside that band keeps the
band as it was, so nothing shows twice along the seam, except where the face itself comes that
near. A mouth opened wider than the reference's is filled with a dark cavity. Head turns approach
+-25 degrees yaw and +-20 pitch smoothly, the head's shift 0.6 face half-widths and its scale change
1.3x, and the head is kept inside the crop, because a 2D warp folds beyond that.

No learned model: no hair, teeth or occlusion synthesis, and large head turns stretch the
background. It is a preview and a baseline, not a generator (docs/generation.md).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy.spatial import Delaunay

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.models.animators.base import Animator, DrivingWindow, ReferenceInput

#: landmarks that move with the head only: contour ends, nose bridge and tip, eye corners.
STABLE = np.array([0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 36, 39, 42, 45])
#: relief over the ellipsoid, in face half-widths: the nose, bridge to tip, then nostrils.
RELIEF = {27: 0.10, 28: 0.20, 29: 0.32, 30: 0.45, 31: 0.15, 32: 0.22, 33: 0.28, 34: 0.22, 35: 0.15}
INNER_MOUTH = np.arange(60, 68)
#: the sides of the jaw contour: partly the head's outline rather than fixed points on the face.
SILHOUETTE = np.r_[0:5, 12:17]
#: ellipsoid semi-axes of the generic head, in face half-widths (x, y, depth).
HEAD_AXES = (1.0, 1.6, 1.0)

#: a 2D warp of a frontal photo cannot show a head turned further than this (degrees): target
#: yaw and pitch approach these limits smoothly (tanh) instead of folding the face.
MAX_YAW, MAX_PITCH = 25.0, 20.0
#: likewise the head's placement: its shift approaches MAX_SHIFT of the reference's face
#: half-widths and its scale change a factor MAX_SCALE. A driver walking across a stage, or
#: towards the camera, moves its face far in its shot's fixed crop; followed one for one, the
#: reference's head was pushed into a corner and cut by the crop's edge (review s20). Measured on the
#: shared talking drivers (hallo_6.jpg as reference): the median frame's shift loses 0.05-2.4% of
#: itself, the 95th percentile's 0.4-3.2%, skyreels_driving_4's large head moves 32%; at 1.0 the
#: walking singer's hair was still cut by the crop's top edge.
MAX_SHIFT, MAX_SCALE = 0.6, 1.3

DEFAULT_PARAMS: dict[str, Any] = {"motion": "relative", "pose_multiplier": 1.0, "expression_multiplier": 1.0}
#: `animate.feather` where a job's params do not carry it: the width of the paste-back mask's soft
#: edge, a fraction of the crop side (operators/paste_back.py)
DEFAULT_FEATHER = float(AnimateConfig.model_fields["feather"].default)


@dataclass
class _Similarity:
    """x -> scale * R(angle) (x - centre) + centre + shift, a 2D similarity about a centre."""

    scale: float
    angle: float
    shift: np.ndarray
    centre: np.ndarray

    @classmethod
    def fit(cls, src: np.ndarray, dst: np.ndarray) -> "_Similarity":
        """Least-squares similarity taking src points onto dst points, about src's centroid."""
        centre = src.mean(axis=0)
        a, b = src - centre, dst - dst.mean(axis=0)
        za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
        ratio = np.vdot(za, zb) / max(float(np.vdot(za, za).real), 1e-9)
        return cls(float(abs(ratio)), float(np.angle(ratio)), dst.mean(axis=0) - centre, centre)

    def power(self, k: float) -> "_Similarity":
        """The motion scaled by k: angle and shift times k, scale to the power k."""
        return _Similarity(self.scale**k, self.angle * k, self.shift * k, self.centre)

    def linear(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.scale * np.array([[c, -s], [s, c]])

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return (points - self.centre) @ self.linear().T + self.centre + self.shift

    def inverse(self, points: np.ndarray) -> np.ndarray:
        return (points - self.centre - self.shift) @ np.linalg.inv(self.linear()).T + self.centre


def head_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (between the contour ends) and half-width of the face, the generic head's frame."""
    centre = (landmarks[0] + landmarks[16]) / 2.0
    return centre, max(float(np.linalg.norm(landmarks[16] - landmarks[0])) / 2.0, 1.0)


def lift(points: np.ndarray, centre: np.ndarray, half_width: float, relief: bool) -> np.ndarray:
    """(N, 3) points on the generic head: depth from the ellipsoid, plus the nose (68 landmarks)."""
    ax, ay, az = HEAD_AXES
    u = (points - centre) / half_width
    depth = az * np.sqrt(np.clip(1.0 - (u[:, 0] / ax) ** 2 - (u[:, 1] / ay) ** 2, 0.0, None))
    if relief:
        for index, extra in RELIEF.items():
            depth[index] += extra
    return np.column_stack([u, depth])


def rotate_project(head: np.ndarray, centre: np.ndarray, half_width: float, yaw: float, pitch: float) -> np.ndarray:
    """Rotate lifted points by a yaw and pitch change (degrees, pose.py's signs), project back.

    Depth points toward the camera, so a positive yaw moves the nose to larger x and a positive
    pitch (looking up) moves it to smaller y. For 68 landmarks, the sides of the jaw contour lie
    between points of the face and its outline: a turn moves them half as far sideways as points
    of the face, so the features slide across the turning head instead of folding over its edge.
    """
    y, p = np.radians(yaw), np.radians(pitch)
    u, v, z = head[:, 0], head[:, 1], head[:, 2]
    turned, z = u * np.cos(y) + z * np.sin(y), -u * np.sin(y) + z * np.cos(y)
    if len(head) == 68:
        turned[SILHOUETTE] = (u[SILHOUETTE] + turned[SILHOUETTE]) / 2
    v = v * np.cos(p) - z * np.sin(p)
    return np.column_stack([turned, v]) * half_width + centre


#: expression regions: brows, eyes, mouth; the lower jaw follows the mouth's opening vertically.
EXPRESSION_REGIONS = [np.arange(17, 22), np.arange(22, 27), np.arange(36, 42), np.arange(42, 48), np.arange(48, 68)]
LOWER_JAW = np.arange(5, 12)


def expression_part(residual: np.ndarray) -> np.ndarray:
    """The part of the non-rigid residual that is expression, not the generic head's error.

    Contour and nose are rigid: what is left there is model error. A sideways shift of a whole
    brow, eye or mouth reads as a head turn, which the rotation already carries, so each region
    keeps only its shape change and its vertical shift (brow raise, jaw drop).
    """
    expression = np.zeros_like(residual)
    for region in EXPRESSION_REGIONS:
        expression[region] = residual[region]
        expression[region, 0] -= residual[region, 0].mean()
    expression[LOWER_JAW, 1] = residual[LOWER_JAW, 1]
    return expression


def forehead_points(landmarks: np.ndarray) -> np.ndarray:
    """Points above the eyebrows; landmarks stop there, and the forehead must turn with the face."""
    _, half = head_frame(landmarks)
    up = landmarks[27] - landmarks[8]
    up = up / max(float(np.linalg.norm(up)), 1e-6)
    brows = landmarks[17:27]
    return np.concatenate([brows + up * 0.35 * half, brows[::3] + up * 0.75 * half])


#: head-outline ring: the jaw contour and the top forehead points, grown about their centre.
RING_SOURCES = np.concatenate([np.arange(0, 17), 68 + np.arange(10, 14)])
RING_GROWTH = 1.35


def ring_points(face: np.ndarray) -> np.ndarray:
    """The outline around `face` (landmarks then forehead points), where hair and neck begin."""
    sources = face[RING_SOURCES]
    centre = sources.mean(axis=0)
    return centre + (sources - centre) * RING_GROWTH


def border_points(size: int, per_side: int = 4) -> np.ndarray:
    """Fixed points along the crop's border, so the background outside the head stays put."""
    ticks = np.linspace(0, size - 1, per_side + 1)
    top = np.column_stack([ticks, np.zeros_like(ticks)])
    bottom = np.column_stack([ticks, np.full_like(ticks, size - 1)])
    left = np.column_stack([np.zeros_like(ticks[1:-1]), ticks[1:-1]])
    right = np.column_stack([np.full_like(ticks[1:-1], size - 1), ticks[1:-1]])
    return np.concatenate([top, bottom, left, right])


def still_band(size: int, feather: float, map_step: int) -> float:
    """How far in from the crop's edges (pixels) a pasted-back warp keeps the reference unmoved.

    Paste-back blends the crop with the still photo over `feather` of the side at each edge
    (operators/paste_back.py): whatever the warp moved there would show twice, the moved copy and
    the still one each half transparent (a second shoulder over the background). Beyond that, the
    coarse map's cells (`map_step`, one on each side of the line between moving and fixed
    triangles) and the resize onto the photo (a cubic kernel reads 2 crop pixels on) reach across."""
    return feather * size + 2 * map_step + 2


def frame_points(size: int, inset: float) -> np.ndarray:
    """A closed ring of points, in order, on the square `inset` px inside the crop's edges, at most
    inset / 2 apart: close enough that no triangle of the warp reaches across it from inside."""
    low, high = inset, size - 1 - inset
    if high - low < inset / 2:
        return np.zeros((0, 2))
    steps = int(np.ceil((high - low) / (inset / 2)))
    corners = np.array([[low, low], [high, low], [high, high], [low, high]])
    t = np.linspace(0.0, 1.0, steps + 1)[:-1, None]
    return np.concatenate([a + (b - a) * t for a, b in zip(corners, np.roll(corners, -1, axis=0))])


def signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T,) signed area of each triangle (vertex indices into `points`); the sign is its orientation."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def outside_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) distance of each point from a convex polygon (its vertices in order), 0 inside it."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    edge = b - a
    rel = points[:, None, :] - a[None]  # (N, E, 2)
    t = np.clip((rel * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-12), 0.0, 1.0)
    distance = np.linalg.norm(rel - t[..., None] * edge, axis=-1).min(axis=1)
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]
    inside = (cross >= 0).all(axis=1) | (cross <= 0).all(axis=1)
    return np.where(inside, 0.0, distance)


def face_hull(face: np.ndarray) -> np.ndarray:
    """The convex hull of the face's points (landmarks and forehead), vertices in order."""
    return cv2.convexHull(face.astype(np.float32))[:, 0].astype(np.float64)


#: Points held still (the frame, the ring near the band) give way to the face, moving as they
#: would without the frame, from the first ratio of each pair on, fully at the second:
#: - the face's distance to the point over its distance at rest, coming nearer (what lies between
#:   is squeezed, and folds) or going further (it is stretched: a tight crop whose chin nearly
#:   touches the band stretches the neck as the head rises rather than show a second shoulder,
#:   until the chin has risen several times that gap and a few pixels would smear over many);
#: - the area of a triangle with a held point over its area at rest (a squeeze or a shear that
#:   folds it, which distances alone can miss).
HOLD_NEARER, YIELD_NEARER = 2 / 3, 1 / 3
HOLD_FURTHER, YIELD_FURTHER = 5.0, 10.0
HOLD_SHRINK, YIELD_SHRINK = 0.5, 0.2


def giving_way(ratio: np.ndarray, hold: float, full: float) -> np.ndarray:
    """0 up to the ratio `hold`, rising smoothly (on a log scale) to 1 at `full`, which may lie
    either side of it: smooth in the points' positions, so nothing jumps from frame to frame."""
    ramp = np.clip(np.log(np.maximum(ratio, 1e-9) / hold) / np.log(full / hold), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def distance_giving_way(rest: np.ndarray, now: np.ndarray) -> np.ndarray:
    """How far points held still give way, from the face's distance to them at rest and now;
    always fully for a point on the reference face."""
    ratio = now / np.maximum(rest, 1e-9)
    way = np.maximum(giving_way(ratio, HOLD_NEARER, YIELD_NEARER), giving_way(ratio, HOLD_FURTHER, YIELD_FURTHER))
    return np.where(rest > 0.5, way, 1.0)


class PiecewiseAffineRenderer:
    """Warps one source image by moving its control points; the triangulation is fixed per source.

    The backward map (output pixel -> source pixel) is affine inside each triangle, so it is
    evaluated on a grid `map_step` times coarser and upsampled linearly, then `cv2.remap` samples
    the source once.
    """

    def __init__(self, image: np.ndarray, points: np.ndarray, map_step: int = 4) -> None:
        self.image = image
        self.size = image.shape[:2]
        self.points = points.astype(np.float64)
        self.triangles = Delaunay(self.points, qhull_options="QJ").simplices
        self.map_step = map_step
        height, width = self.size
        self.grid_shape = (height // map_step + 1, width // map_step + 1)
        gy, gx = np.mgrid[0 : self.grid_shape[0], 0 : self.grid_shape[1]].astype(np.float32)
        self.grid = np.stack([gx * map_step, gy * map_step, np.ones_like(gx)], axis=-1)
        # where each output pixel falls on the coarse grid (node k sits on pixel k * map_step)
        py, px = np.mgrid[0:height, 0:width].astype(np.float32)
        self.upsample = (px / map_step, py / map_step)

    def backward_map(self, moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution (map_x, map_y) for `cv2.remap`, control points at `moved`."""
        dst = moved[self.triangles]  # (n, 3, 2) output triangles
        src = self.points[self.triangles]
        dst_h = np.concatenate([dst, np.ones(dst.shape[:2] + (1,))], axis=2)  # (n, 3, 3)
        area = np.abs(np.linalg.det(dst_h))
        dst_h[area < 1e-6] = np.eye(3)  # collapsed triangles: never drawn, keep solve defined
        affine = np.linalg.solve(dst_h, src).astype(np.float32)  # (n, 3, 2): [x y 1] @ A -> src
        index = np.zeros(self.grid_shape, dtype=np.int32)
        scaled = np.round(dst / self.map_step * 16).astype(np.int32)  # 4 fractional bits
        for i in np.argsort(area):  # large triangles first, small folded ones drawn on top
            if area[i] >= 1e-6:
                cv2.fillConvexPoly(index, scaled[i], int(i), lineType=cv2.LINE_8, shift=4)
        coarse = np.einsum("hwk,hwkc->hwc", self.grid, affine[index])
        full = cv2.remap(coarse, *self.upsample, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(full[..., 0]), np.ascontiguousarray(full[..., 1])

    def render(self, moved: np.ndarray) -> np.ndarray:
        map_x, map_y = self.backward_map(moved)
        return cv2.remap(self.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def paint_mouth_cavity(frame: np.ndarray, inner_lips: np.ndarray, opening: float, colour: np.ndarray) -> None:
    """Darken the inner-lip polygon in place, as much as the mouth opened beyond the reference."""
    if opening <= 0:
        return
    x1, y1 = np.floor(inner_lips.min(axis=0)).astype(int) - 3
    x2, y2 = np.ceil(inner_lips.max(axis=0)).astype(int) + 4
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, frame.shape[1]), min(y2, frame.shape[0])
    if x2 <= x1 or y2 <= y1:
        return
    mask = np.zeros((y2 - y1, x2 - x1), np.float32)
    cv2.fillPoly(mask, [np.round((inner_lips - [x1, y1]) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    mask = cv2.GaussianBlur(mask, (5, 5), 1.2) * min(opening, 1.0)
    patch = frame[y1:y2, x1:x2].astype(np.float32)
    frame[y1:y2, x1:x2] = np.round(patch + (colour - patch) * mask[..., None]).astype(np.uint8)


class WarpAnimator(Animator):
    """Landmark-driven piecewise-affine animator (module docstring). Holds no model."""

    name = "warp"
    params = tuple(DEFAULT_PARAMS)
    #: 1: a pasted-back crop stays still where paste-back blends it with the photo (`still_band`),
    #: and a head outline reaching past the crop no longer drags its edge with a still driver
    output_version = 2

    def __init__(self, map_step: int = 4) -> None:
        self.map_step = map_step

    def animate(
        self, reference: ReferenceInput, windows: Iterator[DrivingWindow], params: dict[str, Any]
    ) -> Iterator[np.ndarray]:
        options = {**DEFAULT_PARAMS, **params}
        if options["motion"] not in ("relative", "absolute"):
            raise ValueError(f"motion must be relative or absolute, got {options['motion']!r}")
        band = 0.0
        if options.get("paste_back"):  # `paste_back` and `feather` are settings of every backend
            band = still_band(reference.crop.shape[0], float(options.get("feather", DEFAULT_FEATHER)), self.map_step)
        motion = _MotionTransfer(reference, options["motion"], float(options["pose_multiplier"]),
                                 float(options["expression_multiplier"]), band)
        renderer = PiecewiseAffineRenderer(reference.crop, motion.source_points, self.map_step)
        for window in windows:
            shots = window.meta.get("shot", np.zeros(len(window.landmarks), dtype=np.int64))
            out = np.empty((len(window.landmarks),) + reference.crop.shape, dtype=np.uint8)
            for t in range(len(window.landmarks)):
                moved, points = motion.step(window.landmarks[t].astype(np.float64), window.pose[t].astype(np.float64), int(shots[t]))
                out[t] = renderer.render(points)
                paint_mouth_cavity(out[t], moved[INNER_MOUTH], motion.mouth_opening(moved), motion.cavity_colour)
            yield out


class _MotionTransfer:
    """Per-frame target landmarks of the reference, given the driver's landmarks and pose."""

    def __init__(self, reference: ReferenceInput, motion: str, pose_gain: float, expression_gain: float,
                 still_band: float = 0.0) -> None:
        self.ref = reference.landmarks.astype(np.float64)
        self.ref_pose = reference.pose.astype(np.float64)
        self.absolute = motion == "absolute"
        self.pose_gain = pose_gain
        self.expression_gain = expression_gain
        self.ref_centre, self.ref_half = head_frame(self.ref)
        self.ref_head = lift(self.ref, self.ref_centre, self.ref_half, relief=True)
        self.ref_forehead = forehead_points(self.ref)
        self.ref_forehead_head = lift(self.ref_forehead, self.ref_centre, self.ref_half, relief=False)
        self.ref_face = np.concatenate([self.ref, self.ref_forehead])
        size = reference.crop.shape[0]
        self.limits = (1.0, size - 2.0)
        # inside the crop, where its moves are clipped: a point beyond the edge would be pulled in
        # even by a still driver, dragging the crop's edge with it
        self.ref_ring = np.clip(ring_points(self.ref_face), *self.limits)
        self.border = self.border_unframed = border_points(size)
        margin = 0.03 * size  # the head may move up to here, or as far out as it already reaches
        self.room = (np.minimum(self.ref_face.min(axis=0), margin), np.maximum(self.ref_face.max(axis=0), size - 1 - margin))
        # the ring moves as the face point it grew from (so the band between them never folds),
        # less near the crop's edge (so the band between it and the fixed border never folds)
        clearance = np.minimum(self.ref_ring, size - 1 - self.ref_ring).min(axis=1)
        self.ring_gain = np.clip(clearance / (0.15 * size), 0.0, 1.0)[:, None]
        self.still_band = still_band
        self.ring_kept = np.ones(len(self.ref_ring), dtype=bool)  # the ring's points that are control points
        self.frame = np.zeros((0, 2))
        if still_band > 0:
            self._hold_still_band(size, clearance)
        self.source_points = np.concatenate([self.ref_face, self.ref_ring[self.ring_kept], self.border, self.frame])
        self.ref_mouth_area = polygon_area(self.ref[INNER_MOUTH])
        self.cavity_colour = self._lip_colour(reference.crop) * 0.25
        self.shot: int | None = None

    def _hold_still_band(self, size: int, clearance: np.ndarray) -> None:
        """Pasted back: a fixed frame `still_band` px inside the crop's edges, so that the warp
        leaves the band outside it as it was; the ring's motion ends at the frame rather than at
        the edge, and its points in the band or near the frame are left to the frame. Where the
        face comes so near, or goes so far, that holding them would fold or smear what lies between,
        frame and ring give way (`HOLD_NEARER`...) and move as they would without the frame: the
        face keeps its motion, and only there does the band move."""
        band = self.still_band
        frame = frame_points(size, band)  # none where the band leaves no room inside it
        spacing = float(np.linalg.norm(frame[1] - frame[0])) if len(frame) else band
        # the border as dense as the frame: the band between them is a strip of small triangles,
        # which a frame point giving way squeezes without folding
        self.border = border_points(size, max(4, int(np.ceil((size - 1) / spacing))))
        self.ring_kept = clearance > band + spacing / 2
        self.still_ring_gain = np.clip((clearance - band) / (0.15 * size), 0.0, 1.0)[self.ring_kept, None]
        if not len(frame):
            return
        ref_hull = face_hull(self.ref_face)
        self.ring_rest = outside_distance(self.ref_ring[self.ring_kept], ref_hull)
        others = np.concatenate([self.ref_face, self.ref_ring[self.ring_kept], self.border])
        kept = np.linalg.norm(frame[:, None] - others[None], axis=-1).min(axis=1) > 2.0
        self.frame = frame[kept]
        # each frame point's share of the frame, the segments to its neighbours: the face must
        # not cross them while it holds still
        t = np.linspace(0.0, 1.0, 5)[None, :, None]
        cells = np.concatenate([frame[:, None] + (np.roll(frame, 1, axis=0) - frame)[:, None] * t,
                                frame[:, None] + (np.roll(frame, -1, axis=0) - frame)[:, None] * t], axis=1)
        self.frame_cells = cells[kept]
        self.frame_rest = self._cell_distance(ref_hull)
        # how far apart along the closed frame each two of its points are, in pixels
        order = np.nonzero(kept)[0]
        steps = np.abs(order[:, None] - order[None, :])
        self.frame_apart = np.minimum(steps, len(frame) - steps) * spacing
        self.frame_spacing = spacing
        # where each frame point lies in the warp without the frame: its triangle of face, ring and
        # border and its barycentric weights there, to move it as that warp would
        mesh = Delaunay(np.concatenate([self.ref_face, self.ref_ring, self.border_unframed]), qhull_options="QJ")
        simplex = mesh.find_simplex(self.frame)
        transform = mesh.transform[simplex]
        weights = np.einsum("fij,fj->fi", transform[:, :2], self.frame - transform[:, 2])
        self.frame_triangles = mesh.simplices[simplex]
        self.frame_barycentric = np.column_stack([weights, 1.0 - weights.sum(axis=1)])
        # the triangles of the warp with a held point, and their areas at rest (slivers left out)
        points = np.concatenate([others, self.frame])
        held = np.zeros(len(points), dtype=bool)
        held[len(self.ref_face) : len(self.ref_face) + self.ring_kept.sum()] = True
        held[len(others) :] = True
        triangles = Delaunay(points, qhull_options="QJ").simplices
        triangles = triangles[held[triangles].any(axis=1)]
        rest = signed_areas(points, triangles)
        self.watched, self.watched_rest = triangles[np.abs(rest) > 1.0], rest[np.abs(rest) > 1.0]

    def _cell_distance(self, hull: np.ndarray) -> np.ndarray:
        """(F,) distance of each frame point's share of the frame from the face's hull."""
        return outside_distance(self.frame_cells.reshape(-1, 2), hull).reshape(len(self.frame_cells), -1).min(axis=1)

    def _held(self, face: np.ndarray, moving_ring: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ring's control points and the frame, pasted back: held still in and near the band,
        and moving as without the frame (`moving_ring`, `unframed`) as far as they give way."""
        still_ring = np.clip(self.ref_ring[self.ring_kept] + shift[self.ring_kept] * self.still_ring_gain, *self.limits)
        if not len(self.frame):  # a band too wide to hold: the ring's motion ends at it all the same
            return still_ring, self.frame
        free_ring = moving_ring[self.ring_kept]
        moved = np.concatenate([face - self.ref_face, moving_ring - self.ref_ring, np.zeros_like(self.border_unframed)])
        unframed = np.einsum("fk,fkc->fc", self.frame_barycentric, moved[self.frame_triangles])
        rings = slice(len(face), len(face) + len(still_ring))
        frames = slice(len(face) + len(still_ring) + len(self.border), None)
        give = np.zeros(len(face) + len(still_ring) + len(self.border) + len(self.frame))
        hull = face_hull(face)
        give[rings] = distance_giving_way(self.ring_rest, outside_distance(still_ring, hull))
        give[frames] = distance_giving_way(self.frame_rest, self._cell_distance(hull))
        for _ in range(8):  # what gives way moves, and may squeeze what held next to it
            before = give.copy()
            ring = still_ring + (free_ring - still_ring) * give[rings, None]
            frame = self.frame + unframed * give[frames, None]
            points = np.concatenate([face, ring, self.border, frame])
            area = signed_areas(points, self.watched) / self.watched_rest
            np.maximum.at(give, self.watched, giving_way(area, HOLD_SHRINK, YIELD_SHRINK)[:, None])
            # along the frame, a point gives way as far as its neighbours less 1 / their shift per
            # pixel between them: a sharp step from moving to still would shear the band
            reach = np.maximum(give[frames] * np.linalg.norm(unframed, axis=1), self.frame_spacing)
            taper = np.clip(1.0 - self.frame_apart / reach[None, :], 0.0, 1.0)
            give[frames] = (give[frames][None, :] * taper).max(axis=1)
            if np.abs(give - before).max() < 1e-3:
                break
        ring = still_ring + (free_ring - still_ring) * give[rings, None]
        return ring, self.frame + unframed * give[frames, None]

    def _lip_colour(self, crop: np.ndarray) -> np.ndarray:
        lips = np.round(self.ref[48:60]).astype(np.int32)
        mask = np.zeros(crop.shape[:2], np.uint8)
        cv2.fillPoly(mask, [lips], 1)
        return np.asarray(cv2.mean(crop, mask=mask)[:3], dtype=np.float64) if mask.any() else np.array([90.0, 40, 40])

    def _anchor(self, landmarks: np.ndarray, pose: np.ndarray) -> None:
        """Start of a shot: fix the driver's anchor and its mapping onto the reference."""
        self.to_ref = _Similarity.fit(landmarks[STABLE], self.ref[STABLE])
        if self.absolute:  # the reference, seen in the driver's frame, is the anchor
            self.anchor, self.anchor_pose = self.to_ref.inverse(self.ref), self.ref_pose
        else:
            self.anchor, self.anchor_pose = landmarks, pose
        self.anchor_centre, self.anchor_half = head_frame(self.anchor)
        self.anchor_head = lift(self.anchor, self.anchor_centre, self.anchor_half, relief=True)

    def step(self, landmarks: np.ndarray, pose: np.ndarray, shot: int) -> tuple[np.ndarray, np.ndarray]:
        """The reference's landmarks moved as the driver moved from its anchor to this frame, and
        the control points of the warp (face, outline ring, border, frame) in `source_points` order."""
        pose = np.nan_to_num(pose)  # a missing pose only costs the rotation fit its first guess
        if shot != self.shot:
            self.shot = shot
            self._anchor(landmarks, pose)
        yaw, pitch = self._fit_rotation(landmarks, pose[:2] - self.anchor_pose[:2])
        rigid = rotate_project(self.anchor_head, self.anchor_centre, self.anchor_half, yaw, pitch)
        head = _Similarity.fit(rigid[STABLE], landmarks[STABLE])
        expression = expression_part(head.inverse(landmarks) - rigid)  # anchor's frame, driver's face units
        expression_on_ref = expression @ self.to_ref.linear().T * self.expression_gain
        ref_yaw = self._limited(self.ref_pose[0], yaw * self.pose_gain, MAX_YAW)
        ref_pitch = self._limited(self.ref_pose[1], pitch * self.pose_gain, MAX_PITCH)
        ref_rigid = rotate_project(self.ref_head, self.ref_centre, self.ref_half, ref_yaw, ref_pitch)
        on_ref = _Similarity(head.scale, head.angle, self.to_ref.linear() @ head.shift, self.to_ref(head.centre))
        placement = self._bounded(on_ref.power(self.pose_gain))
        forehead = placement(rotate_project(self.ref_forehead_head, self.ref_centre, self.ref_half, ref_yaw, ref_pitch))
        face = np.clip(self._inside(np.concatenate([placement(ref_rigid + expression_on_ref), forehead])), *self.limits)
        shift = (face - self.ref_face)[RING_SOURCES]
        ring = np.clip(self.ref_ring + shift * self.ring_gain, *self.limits)
        frame = self.frame
        if self.still_band > 0:
            ring, frame = self._held(face, ring, shift)
        return face[:68], np.concatenate([face, ring, self.border, frame])

    def _rigid_error(self, landmarks: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """Residual of the stable landmarks after turning the anchor by `angles` and placing it."""
        rigid = rotate_project(self.anchor_head, self.anchor_centre, self.anchor_half, *angles)[STABLE]
        return (_Similarity.fit(rigid, landmarks[STABLE])(rigid) - landmarks[STABLE]).ravel()

    def _fit_rotation(self, landmarks: np.ndarray, guess: np.ndarray, steps: int = 4) -> np.ndarray:
        """Yaw and pitch change, from the head-pose change refined (Gauss-Newton) on the stable
        landmarks. The pose fit also uses the chin and mouth corners, so an opening mouth reads
        as a nod or a turn; eye corners, nose and the jaw's upper ends do not move with it."""
        angles = np.asarray(guess, np.float64).copy()
        for _ in range(steps):
            error = self._rigid_error(landmarks, angles)
            jacobian = np.stack([(self._rigid_error(landmarks, angles + d) - error) / 0.5
                                 for d in (np.array([0.5, 0.0]), np.array([0.0, 0.5]))], axis=1)
            update = np.linalg.lstsq(jacobian, -error, rcond=None)[0]
            angles = angles + np.clip(update, -10.0, 10.0)
            if np.abs(update).max() < 0.05:
                break
        return angles

    def _inside(self, face: np.ndarray) -> np.ndarray:
        """Shift the moved face back inside the crop, rather than squash it against the edge."""
        low, high = self.room
        shift = np.maximum(low - face.min(axis=0), 0.0) - np.maximum(face.max(axis=0) - high, 0.0)
        return face + shift

    def _bounded(self, placement: _Similarity) -> _Similarity:
        """The placement with its shift and scale change approaching MAX_SHIFT and MAX_SCALE softly
        (tanh), as `_limited` bounds yaw and pitch: a talking head's few percent pass nearly as
        they are (a shift of a tenth of a half-width loses 0.9% of it)."""
        log_limit = np.log(MAX_SCALE)
        scale = float(np.exp(log_limit * np.tanh(np.log(placement.scale) / log_limit)))
        limit, length = MAX_SHIFT * self.ref_half, float(np.linalg.norm(placement.shift))
        shift = placement.shift * (limit * np.tanh(length / limit) / length) if length > 0 else placement.shift
        return _Similarity(scale, placement.angle, shift, placement.centre)

    @staticmethod
    def _limited(start: float, change: float, limit: float) -> float:
        """The change of an angle from `start`, the resulting angle kept softly within +-limit."""
        return limit * float(np.tanh((start + change) / limit) - np.tanh(start / limit))

    def mouth_opening(self, moved: np.ndarray) -> float:
        """How much wider the mouth is than the reference's, as a 0..1 cavity strength."""
        extra = polygon_area(moved[INNER_MOUTH]) - self.ref_mouth_area
        return float(np.clip(extra / (0.02 * self.ref_half**2), 0.0, 1.0))
