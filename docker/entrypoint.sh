#!/usr/bin/env bash
# fracscan container entrypoint (docker/Dockerfile, docker/Dockerfile.cpu).
#
# 1. Runs NVIDIA's entrypoint first when the image has one (banner, CUDA compatibility setup).
# 2. If the repository has `tensorrt_plan` members: builds missing or stale engines with
#    `python -m fracscan.export.tensorrt build`, inside this container (its TensorRT version is
#    the one Triton's TensorRT backend loads), caching them on $FRACSCAN_ENGINE_CACHE.
#    An up-to-date engine is skipped; one with the same cache key in the cache is copied.
# 3. Execs tritonserver on the repository with explicit python-backend shared-memory settings,
#    no model control (models are fixed at start-up) and the shared-memory, logging and trace
#    APIs restricted over HTTP and gRPC: they need header fracscan-admin-key with a random key
#    made here at each start and written nowhere, so nobody who reaches the ports can register
#    /dev/shm regions or change the log settings.
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
# A batch of 8 pre-processed frames at S = 1024 is 8 x 8 MiB: start the python backend's
# shared-memory pool there and grow it in the same steps (Triton's defaults are 1 MiB).
shm_default="${FRACSCAN_SHM_DEFAULT_BYTES:-67108864}"
shm_growth="${FRACSCAN_SHM_GROWTH_BYTES:-67108864}"

restricted=""
IFS=, read -r -a allowed <<<"${FRACSCAN_ALLOW_API:-}"
for api in "${allowed[@]}"; do
    case "$api" in
        shared-memory | logging | trace | "") ;;
        *)
            echo "fracscan: FRACSCAN_ALLOW_API: cannot allow '$api' (choose from shared-memory,logging,trace)" >&2
            exit 2
            ;;
    esac
done
for api in shared-memory logging trace; do
    if [[ ",${FRACSCAN_ALLOW_API:-}," != *",$api,"* ]]; then restricted+="${restricted:+,}$api"; fi
done
restrict_args=()
if [[ -n "$restricted" ]]; then
    key="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    restrict_args=(
        "--http-restricted-api=$restricted:fracscan-admin-key=$key"
        "--grpc-restricted-protocol=$restricted:fracscan-admin-key=$key"
    )
fi

if [[ ! -f "$repo/fracscan.toml" ]]; then
    echo "fracscan: $repo is not a fracscan repository (no fracscan.toml); run 'fracscan export' first" >&2
    exit 2
fi

if [[ "${FRACSCAN_SKIP_ENGINE_BUILD:-0}" != "1" ]] && grep -qs 'platform: "tensorrt_plan"' "$repo"/*/config.pbtxt; then
    if [[ ! -w "$repo" ]]; then
        # Read-only mount: serve a writable mirror (real folders, files linked to the originals);
        # new engines and the rewritten config.pbtxt files land in the mirror.
        work="${FRACSCAN_WRITABLE_REPOSITORY:-/tmp/fracscan-models}"
        if [[ -d "$work" ]]; then chmod -R u+w "$work"; rm -rf "$work"; fi
        cp -as "$(readlink -f "$repo")" "$work"
        find "$work" -type d -exec chmod u+w {} +
        repo="$work"
    fi
    build_args=(build --repository "$repo" --cache-dir "$cache" --precision "${FRACSCAN_PRECISION:-fp16}")
    if [[ -n "${FRACSCAN_BUILD_ARGS:-}" ]]; then
        read -r -a extra_args <<<"$FRACSCAN_BUILD_ARGS"
        build_args+=("${extra_args[@]}")
    fi
    echo "fracscan: checking TensorRT engines in $repo (cache $cache)"
    python3 -m fracscan.export.tensorrt "${build_args[@]}"
fi

exec tritonserver \
    --model-repository="$repo" \
    --model-control-mode=none \
    --strict-readiness=true \
    --exit-on-error=true \
    --http-port=8000 \
    --grpc-port=8001 \
    --metrics-port=8002 \
    --allow-metrics=true \
    --backend-config=python,shm-default-byte-size="$shm_default" \
    --backend-config=python,shm-growth-byte-size="$shm_growth" \
    "${restrict_args[@]}" \
    "$@"
