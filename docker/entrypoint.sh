#!/usr/bin/env bash
# fracscan container entrypoint (docker/Dockerfile, docker/Dockerfile.cpu).
#
# 1. Runs NVIDIA's entrypoint first when the image has one (banner, CUDA compatibility setup).
# 2. If the repository has `tensorrt_plan` members: builds missing or stale engines with
#    `python -m fracscan.export.tensorrt build`, inside this container (its TensorRT version is
#    the one Triton's TensorRT backend loads), caching them on $FRACSCAN_ENGINE_CACHE.
#    An up-to-date engine is skipped; one with the same cache key in the cache is copied.
# 3. Execs tritonserver with the command line fracscan builds (`python3 -m fracscan.server --command`,
#    the one `fracscan serve` uses): explicit python-backend shared-memory settings, no model control
#    (models are fixed at start-up) and the shared-memory, logging and trace APIs restricted over HTTP
#    and gRPC: they need header fracscan-admin-key with a random key made at each start and written
#    nowhere, so nobody who reaches the ports can register /dev/shm regions or change the log settings.
#
# Arguments are appended to the tritonserver command line; a first argument that is not an
# option (e.g. `bash`) is run instead.
#
# Environment:
#   FRACSCAN_MODEL_REPOSITORY   repository to serve (default /models)
#   FRACSCAN_ENGINE_CACHE       engine cache folder, a volume (default /var/cache/fracscan/engines)
#   FRACSCAN_PRECISION          fp16 (default) | bf16 | fp32
#   FRACSCAN_BUILD_ARGS         extra arguments for the engine build (e.g. "--max-batch 16")
#   FRACSCAN_SKIP_ENGINE_BUILD  1 to never build (engines must already be in the repository)
#   FRACSCAN_SHM_DEFAULT_BYTES  python backend shm-default-byte-size (default 64 MiB)
#   FRACSCAN_SHM_GROWTH_BYTES   python backend shm-growth-byte-size (default 64 MiB)
#   FRACSCAN_ORT_THREADS        ONNX Runtime threads per python-backend member (cpu target)
#   FRACSCAN_ALLOW_API          comma-separated APIs to leave open, of shared-memory,logging,trace (default none)
set -euo pipefail

if [[ -x /opt/nvidia/nvidia_entrypoint.sh && -z "${FRACSCAN_NV_ENTRYPOINT_DONE:-}" ]]; then
    export FRACSCAN_NV_ENTRYPOINT_DONE=1
    exec /opt/nvidia/nvidia_entrypoint.sh "$0" "$@"
fi

if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi

repo="${FRACSCAN_MODEL_REPOSITORY:-/models}"
cache="${FRACSCAN_ENGINE_CACHE:-/var/cache/fracscan/engines}"

if [[ ! -f "$repo/fracscan.toml" ]]; then
    echo "fracscan: $repo is not a fracscan repository (no fracscan.toml); run 'fracscan export' first" >&2
    exit 2
fi

build=0
if [[ "${FRACSCAN_SKIP_ENGINE_BUILD:-0}" != "1" ]] && grep -qs 'platform: "tensorrt_plan"' "$repo"/*/config.pbtxt; then
    build=1
fi
if [[ "$build" == 1 && ! -w "$repo" ]]; then
    # Read-only mount: serve a writable mirror (real folders, files linked to the originals);
    # new engines and the rewritten config.pbtxt files land in the mirror.
    work="${FRACSCAN_WRITABLE_REPOSITORY:-/tmp/fracscan-models}"
    if [[ -d "$work" ]]; then chmod -R u+w "$work"; rm -rf "$work"; fi
    cp -as "$(readlink -f "$repo")" "$work"
    find "$work" -type d -exec chmod u+w {} +
    repo="$work"
fi

# Built (and the settings checked) before any engine is: a bad setting fails in a second, not after a build.
if ! server_command="$(python3 -m fracscan.server --command --repository "$repo" \
    --allow-api "${FRACSCAN_ALLOW_API:-}" \
    --shm-default-bytes "${FRACSCAN_SHM_DEFAULT_BYTES:-67108864}" \
    --shm-growth-bytes "${FRACSCAN_SHM_GROWTH_BYTES:-67108864}")"; then
    echo "fracscan: check FRACSCAN_ALLOW_API, FRACSCAN_SHM_DEFAULT_BYTES and FRACSCAN_SHM_GROWTH_BYTES" >&2
    exit 2
fi
mapfile -t command <<<"$server_command"

if [[ "$build" == 1 ]]; then
    build_args=(build --repository "$repo" --cache-dir "$cache" --precision "${FRACSCAN_PRECISION:-fp16}")
    if [[ -n "${FRACSCAN_BUILD_ARGS:-}" ]]; then
        read -r -a extra_args <<<"$FRACSCAN_BUILD_ARGS"
        build_args+=("${extra_args[@]}")
    fi
    echo "fracscan: checking TensorRT engines in $repo (cache $cache)"
    python3 -m fracscan.export.tensorrt "${build_args[@]}"
fi

exec "${command[@]}" "$@"
