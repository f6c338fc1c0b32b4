#!/usr/bin/env bash
# The GPU table in one command: our JAX engine against timm (AMP + channels_last, then the same under
# torch.compile) for MobileNetV3-Large, MobileNetV3-Small, MobileNetV1 and ShuffleNetV1 (ours only:
# timm has none) at batch 256, 224 px, bfloat16, training and inference, with peak device memory;
# then the input pipeline for 1, 2, 4, 8 and 16 workers. About 6 minutes; a deadline skips what
# would not fit in 8. Writes benchmarks/results/gpu_<date>_<commit>.{md,jsonl} and
# benchmarks/results/gpu_<date>_<commit>_data.jsonl.
#
#   bash benchmarks/gpu.sh --download-wheels  # first, where pip works: what the GPU machine lacks, into .whl/
#   bash benchmarks/gpu.sh                    # on the GPU machine, from the repository root (installs .whl/)
#   bash benchmarks/gpu.sh --smoke            # the same JAX path on the CPU, tiny sizes (tests/test_bench.py)
#
# The GPU machine has jax (CUDA), flax, optax, orbax, torch, timm, pillow and OpenCV, but not
# ml_collections, simplejpeg, TensorFlow or MindSpore: this path imports neither of the last two.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
CARRIED=(ml_collections==1.1.0 simplejpeg==1.9.0)  # versions as in requirements.lock

case "${1:-}" in
  --download-wheels)
    # the GPU machine's Python is 3.12; both are small (pure Python, and one manylinux wheel)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "${CARRIED[@]}"
    ls "$WHEELS"
    exit 0 ;;
  --smoke) SMOKE=1 ;;
  "") SMOKE=0 ;;
  *) echo "usage: bash benchmarks/gpu.sh [--download-wheels | --smoke]" >&2; exit 2 ;;
esac

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  site=${TMPDIR:-/tmp}/mobilenets_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PY" -c '
import importlib.util as u
print(" ".join(m for m in ("jax", "flax", "optax", "ml_collections", "simplejpeg", "cv2", "PIL") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  echo "gpu.sh: $PY lacks $missing; run 'bash benchmarks/gpu.sh --download-wheels' where pip works and bring .whl/ along" >&2
  exit 2
fi

stamp=gpu_$(date -u +%Y-%m-%d)_$(git rev-parse --short HEAD 2>/dev/null || echo worktree)
results=benchmarks/results
engines=(jax)
"$PY" -c 'import timm, torch' 2>/dev/null && engines+=(timm timm-compile)
if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  stamp=smoke_$stamp
  results=${SMOKE_RESULTS:-$(mktemp -d)}
  sizes=(--batch 2 --size 32 --warmup 1 --steps 1 --repeats 1 --timeout 300)
  families=(shufflenet_v1)  # the fastest to compile; every family runs the same step code
  engines=(jax)  # the JAX path is what the GPU run depends on; timm's is timm's
  data=(--images 16 --size 32 --batch 8 --workers 1 2 --rounds 1)
else
  sizes=(--batch 256 --size 224 --warmup 2 --steps 10 --repeats 3 --timeout 240 --deadline 330)
  families=(mobilenet_v3_large mobilenet_v3_small mobilenet_v1 shufflenet_v1)
  data=(--images 4096 --workers 1 2 4 8 16 --rounds 3)
fi
mkdir -p "$results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# One round: every figure is one process (compare.py); the GPU's clocks drift less than a shared CPU's.
"$PY" benchmarks/compare.py --device gpu --rounds 1 --families "${families[@]}" --engines "${engines[@]}" \
  "${sizes[@]}" --torch-python "$PY" --out "$results/$stamp.md"
# Decode + augment on the host's cores, ours only (no TensorFlow there).
"$PY" benchmarks/data_pipeline.py --no-tf "${data[@]}" | tee "$results/${stamp}_data.jsonl"
echo "gpu.sh: wrote $results/$stamp.md, $results/$stamp.jsonl and $results/${stamp}_data.jsonl"
