#!/usr/bin/env bash
# Submit the paper-scale comparison (benchmarks/compare.py) to a running Ray cluster as a Ray job.
#
#   ray dashboard examples/cluster/cluster.yaml &     # ssh tunnel to the head's 127.0.0.1:8265
#   examples/cluster/submit.sh                         # both tasks, --preset paper
#   examples/cluster/submit.sh --task reward_lambda    # extra arguments go to compare.py
#   examples/cluster/submit.sh --resume                # continue an interrupted experiment
#   examples/cluster/submit.sh --set data_root=/mnt/shared/data   # --preset paper needs full MNIST (MNIST/raw)
#
# Settings (environment variables, with their defaults):
#   RAY_DASHBOARD   http://127.0.0.1:8265          the head's dashboard (local end of the ssh tunnel)
#   RAY_AUTH_MODE   token                          must match the cluster (README.md: token authentication)
#   STORAGE         /mnt/shared/ray_bilevel        Tune's storage_path: a folder every node sees, or s3://bucket/path
#   OUT             $STORAGE/compare               tables, CSV/JSON and plots, written by the driver on the head node
#   RESOURCES       cpu=2,gpu=0.5                  per trial; gpu=0.5 puts two trials on each GPU
#   PRESET          paper
#   NO_WAIT         (unset)                        set to 1 to return at once (then: ray job logs -f <id>)
#   DRY_RUN         (unset)                        set to 1 to print the command instead of running it
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root is the job's working dir

RAY_DASHBOARD="${RAY_DASHBOARD:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
STORAGE="${STORAGE:-/mnt/shared/ray_bilevel}"
PRESET="${PRESET:-paper}"
RESOURCES="${RESOURCES:-cpu=2,gpu=0.5}"
if [[ -z "${OUT:-}" ]]; then
  if [[ "$STORAGE" == *://* ]]; then
    echo "error: with STORAGE=$STORAGE (a URI) set OUT to an absolute folder on the head node, e.g. OUT=/home/ray/compare (fetch it with ray rsync-down)." >&2
    exit 2
  fi
  OUT="$STORAGE/compare"
fi
if [[ "$STORAGE" != /* && "$STORAGE" != *://* ]]; then
  echo "error: STORAGE must be an absolute folder or a URI, got '$STORAGE'." >&2
  exit 2
fi
if [[ "$OUT" != /* ]]; then
  echo "error: OUT must be an absolute folder (the job runs in a temporary copy of the repository), got '$OUT'." >&2
  exit 2
fi

# Keep the upload small: no git history, virtualenvs or results (also listed in .rayignore).
EXCLUDES='{"excludes": [".git", ".venv", "results", "ray_results", ".pytest_cache", "**/__pycache__", "*.egg-info"]}'
cmd=(ray job submit --address "$RAY_DASHBOARD" --working-dir . --runtime-env-json "$EXCLUDES")
[[ -n "${NO_WAIT:-}" ]] && cmd+=(--no-wait)
cmd+=(-- python benchmarks/compare.py --preset "$PRESET" --address auto
      --resources-per-trial "$RESOURCES" --storage-path "$STORAGE" --out "$OUT" "$@")

if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
