#!/usr/bin/env bash
# `ray job submit --working-dir . -- bash jobs/from_tree.sh VERB ARGS...` runs the portraitflow CLI
# from the submitted working tree instead of the copy installed in the cluster's image.
# The tree's folders (jobs/, operators/, ...) become `portraitflow.*` only through the install's
# package-dir mapping, so the working directory alone is not importable as portraitflow: the tree
# is installed without dependencies (the image has them) into a job-local folder put first on
# PYTHONPATH. init_ray then ships this driver's code to every worker (ray.ship_code).
set -euo pipefail
target="$(mktemp -d)"
trap 'rm -rf "$target"' EXIT
python -m pip install --quiet --no-deps --target "$target" .
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" python -m portraitflow.jobs.cli "$@"
