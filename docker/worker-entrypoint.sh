#!/usr/bin/env bash
# Give this worker replica one GPU of its own, then run its command (the Celery worker).
#
# `docker compose up --scale worker=N` starts N identical containers and compose cannot hand each a
# different device, so every replica sees all GPUs and claims a free one here: an flock on
# $GENQ_GPU_LOCK_DIR/gpu-<i>.lock (a volume shared by the replicas), held by the worker for its whole
# life (file descriptor 9 stays open through exec). CUDA_VISIBLE_DEVICES then shows it only that GPU.
# With CUDA_VISIBLE_DEVICES already set, or no GPU at all, the command runs as it is.
set -euo pipefail

lock_dir="${GENQ_GPU_LOCK_DIR:-/var/lock/genq-gpus}"

gpu_count() {
  if [[ -n "${GENQ_GPU_COUNT:-}" ]]; then
    echo "$GENQ_GPU_COUNT"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  count="$(gpu_count)"
  if [[ "$count" -gt 0 ]]; then
    mkdir -p "$lock_dir"
    claimed=""
    # Replicas start together: try for a while before deciding there is no free GPU.
    for _ in $(seq 1 "${GENQ_GPU_CLAIM_TRIES:-30}"); do
      for ((i = 0; i < count; i++)); do
        exec 9>"$lock_dir/gpu-$i.lock"
        if flock --nonblock 9; then
          claimed="$i"
          break 2
        fi
        exec 9>&-
      done
      sleep 1
    done
    if [[ -z "$claimed" ]]; then
      echo "genq worker: all $count GPUs are taken by other workers; scale down to at most $count" >&2
      exit 1
    fi
    export CUDA_VISIBLE_DEVICES="$claimed"
    echo "genq worker: using GPU $claimed of $count" >&2
  fi
fi

exec "$@"
