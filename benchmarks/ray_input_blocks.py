"""What Ray Data's blocks cost the curation driver: one input per block against grouped inputs.

The curate pass hands Ray Data one row per input (`pipelines/curate.py::curate_inputs`). Each block
is one actor task, and every block costs the driver the same whatever its work: building the
dataset (`ray.data.from_items` puts each block in the object store) and Ray Data's own scheduling
of its task. This runs the same rows through an actor pool whose stage does nothing, with one
block per input and with `pipelines.curate.input_blocks` (the rule the pass uses), on a local Ray
of `--cpus` CPUs, and reports the seconds of each side by side.

    .venv/bin/python benchmarks/ray_input_blocks.py [--inputs 5000] [--cpus 2]
"""
from __future__ import annotations

import argparse
import time

import ray
import ray.data

from portraitflow.pipelines.curate import input_blocks


class _Nothing:
    def __call__(self, batch: dict) -> dict:
        return batch


def _run(rows: list[dict], blocks: int) -> tuple[float, float]:
    started = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    built = time.perf_counter()
    ds = ds.map_batches(_Nothing, batch_size=1, num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1, max_tasks_in_flight_per_actor=2))
    assert len(ds.take_all()) == len(rows)
    return built - started, time.perf_counter() - built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=5000)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"uri": f"/corpus/videos/batch_{i // 1000:04d}/video_{i:07d}.mp4", "input_key": f"video_{i:07d}_0123abcd",
             "packed": "[]"} for i in range(args.inputs)]
    results = {name: _run(rows, blocks) for name, blocks in
               (("one input per block", args.inputs), ("input_blocks", input_blocks(args.inputs, 0)))}
    print(f"{args.inputs} inputs, local Ray of {args.cpus} CPUs, one 1-CPU actor doing nothing")
    print(f"{'blocks':22} {'count':>7} {'build s':>8} {'run s':>8} {'ms/input':>9}")
    for (name, (build, run)), blocks in zip(results.items(), (args.inputs, input_blocks(args.inputs, 0))):
        print(f"{name:22} {blocks:7d} {build:8.2f} {run:8.2f} {1000 * (build + run) / args.inputs:9.2f}")
    (old_build, old_run), (new_build, new_run) = results.values()
    print(f"ratio (input_blocks / one per block): {(new_build + new_run) / (old_build + old_run):.3f}")


if __name__ == "__main__":
    main()
