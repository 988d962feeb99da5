#!/bin/sh
# One-shot `init` service of docker-compose.yml: train and promote the first model when the artifact
# store has none, so that the API replicas (which wait for this service) start ready. Also run by
# scripts/topology.py (tests/deploy) to create the first model outside Docker.
#
# Data: $INIT_DATA_PATH (default /data). In compose, with DATA_DIR unset a named volume is mounted
# there and the synthetic demo dataset is generated into it once (`python -m training synth`); with
# DATA_DIR pointing at a real dataset folder, that folder is mounted and must hold train.json,
# val.json and *_feat.npy (nothing is generated into it).
#
# Environment: ARTIFACT_ROOT, DATA_DIR, INIT_CONFIG (trainer YAML, relative to the working
# directory), INIT_OVERRIDES (space-separated key=value trainer overrides), SYNTH_USERS,
# SYNTH_ITEMS, SYNTH_SEED.
set -eu

root="${ARTIFACT_ROOT:-/artifacts}"
data="${INIT_DATA_PATH:-/data}"
config="${INIT_CONFIG:-configs/demo.yaml}"

if [ -s "$root/CURRENT" ]; then
    echo "init: $root/CURRENT names $(cat "$root/CURRENT"); nothing to do"
    exit 0
fi

if [ ! -f "$data/train.json" ]; then
    if [ -n "${DATA_DIR:-}" ]; then
        echo "init: DATA_DIR=$DATA_DIR is mounted at $data but holds no train.json" >&2
        exit 2
    fi
    echo "init: no dataset in $data: generating the synthetic demo dataset"
    python -m training synth --out "$data" \
        --users "${SYNTH_USERS:-600}" --items "${SYNTH_ITEMS:-400}" --seed "${SYNTH_SEED:-0}"
fi

echo "init: training on $data with $config ${INIT_OVERRIDES:-}; exporting to $root and promoting"
# The run directory sits in the store (the service ignores it: no manifest.json) so that an
# interrupted init resumes from its last checkpoint when started again.
# shellcheck disable=SC2086  # INIT_OVERRIDES is a list of key=value words
exec python -m training train --data "$data" --config "$config" --out "$root/.runs/init" \
    --no-progress --export-to "$root" --promote ${INIT_OVERRIDES:-}
