"""Metrics that need network weights which cannot ship: LPIPS, FID and FVD from local ONNX files.

The user exports the networks once (e.g. LPIPS-AlexNet, Inception-v3 pool3, I3D) to ONNX and
points the evaluate config at them; inference runs in onnxruntime, the Fréchet distance in
torchmetrics. Without a file the metric is skipped and `skip_notes` says what to provide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from portraitflow.jobs.config.evaluate import EvaluateConfig

#: metric name -> (config field, what the ONNX file must be)
LEARNED_METRICS = {
    "lpips": ("lpips_onnx", "an LPIPS network taking two (N,3,H,W) float images in [-1,1] and returning "
              "(N,...) distances"),
    "fid": ("fid_onnx", "an image feature network (e.g. Inception-v3 pool3) taking (N,3,H,W) float in [0,1] "
            "and returning (N,D)"),
    "fvd": ("fvd_onnx", "a video feature network (e.g. I3D) taking (N,3,T,H,W) float in [0,1] and returning (N,D)"),
}


def skip_notes(cfg: EvaluateConfig) -> dict[str, str]:
    """For each learned metric that cannot run, one sentence naming the file to provide."""
    notes = {}
    for name, (field, what) in LEARNED_METRICS.items():
        path = getattr(cfg, field)
        if not path:
            notes[name] = f"{name} skipped: no weights given; set evaluate.{field}=PATH to {what}"
        elif not Path(path).expanduser().is_file():
            notes[name] = f"{name} skipped: evaluate.{field}={path} does not exist; it must be {what}"
    return notes


class OnnxNetwork:
    """An ONNX network in onnxruntime (CPU), its float inputs resized to the fixed input shape."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(Path(path).expanduser()), providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()

    def _fit(self, array: np.ndarray, spec) -> np.ndarray:
        """Resize the trailing spatial dims to the model's declared size when it is fixed."""
        import torch
        import torch.nn.functional as F

        want = [d if isinstance(d, int) else None for d in spec.shape[2:]]
        have = list(array.shape[2:])
        if all(w is None or w == h for w, h in zip(want, have)):
            return np.ascontiguousarray(array, np.float32)
        size = [w or h for w, h in zip(want, have)]
        mode = "bilinear" if len(size) == 2 else "trilinear"
        return F.interpolate(torch.from_numpy(np.ascontiguousarray(array, np.float32)), size=size, mode=mode,
                             align_corners=False).numpy()

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = {spec.name: self._fit(a, spec) for spec, a in zip(self.inputs, arrays)}
        return np.asarray(self.session.run(None, feeds)[0], np.float64)


def _chw(frames: np.ndarray) -> np.ndarray:
    return frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def lpips(network: OnnxNetwork, pred: np.ndarray, target: np.ndarray, batch: int = 8) -> np.ndarray:
    """LPIPS per frame (0 for identical frames) from frames (T, H, W, 3) uint8."""
    out = []
    for i in range(0, len(pred), batch):
        distances = network(_chw(pred[i:i + batch]) * 2 - 1, _chw(target[i:i + batch]) * 2 - 1)
        out.append(distances.reshape(len(distances), -1).mean(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def image_features(network: OnnxNetwork, frames: np.ndarray, batch: int = 8) -> np.ndarray:
    """(T, D) FID features of frames (T, H, W, 3) uint8."""
    return np.concatenate([network(_chw(frames[i:i + batch])) for i in range(0, len(frames), batch)])


def video_features(network: OnnxNetwork, frames: np.ndarray, clip_frames: int) -> np.ndarray:
    """(K, D) FVD features of the K non-overlapping clips of `clip_frames` frames in a video."""
    clips = [frames[i:i + clip_frames] for i in range(0, len(frames) - clip_frames + 1, clip_frames)]
    if not clips:
        return np.zeros((0, 0))
    return network(np.stack([_chw(c).transpose(1, 0, 2, 3) for c in clips]))


def frechet_distance(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet distance between two feature sets (FID on image features, FVD on video features),
    computed by torchmetrics; NaN with fewer than two samples on either side."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real_features) < 2 or len(fake_features) < 2:
        return float("nan")

    class Precomputed(torch.nn.Module):
        num_features = int(real_features.shape[1])

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return features

    metric = FrechetInceptionDistance(feature=Precomputed(), normalize=True)
    metric.update(torch.from_numpy(np.asarray(real_features, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake_features, np.float64)), real=False)
    return float(metric.compute())
