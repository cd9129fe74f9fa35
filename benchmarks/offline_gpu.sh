#!/usr/bin/env bash
# The GPU benchmarks on a machine that has a CUDA build of torch but no network and no install of
# this project (a lent or firewalled GPU box). Two steps:
#   bash benchmarks/offline_gpu.sh fetch                 # where pip reaches PyPI: wheels into .whl/
#   bash benchmarks/offline_gpu.sh run [SECONDS [STEP...]]   # on the GPU box, the checkout carried with .whl/
# `run` installs the wheels into a temporary folder, makes the checkout importable as
# `portraitflow` (the names pyproject.toml maps its folders to) and runs benchmarks/pending_gpu.sh
# with the same arguments. It fetches the two packages the lent GPU machines lacked (their image
# has torch with CUDA, Triton, numpy, scipy, scikit-image, OpenCV, Pillow, safetensors, requests,
# huggingface_hub, PyYAML and tqdm); a barer machine needs those from jobs/constraints.txt too.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.whl
case ${1:-} in
fetch)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$wheels" \
        diffusers==0.42.1 importlib_metadata==9.1.0
    ;;
run)
    shift
    scratch=$(mktemp -d)
    python3 -m pip install --quiet --no-deps --no-index --target "$scratch/site" "$wheels"/*.whl
    mkdir -p "$scratch/ns/portraitflow"
    for folder in models operators jobs pipelines; do
        ln -s "$PWD/$folder" "$scratch/ns/portraitflow/$folder"
    done
    PYTHONPATH="$scratch/ns:$scratch/site${PYTHONPATH:+:$PYTHONPATH}" bash benchmarks/pending_gpu.sh "$@"
    ;;
*)
    echo "usage: $0 fetch | run [SECONDS [STEP...]]" >&2
    exit 2
    ;;
esac
