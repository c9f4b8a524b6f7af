#!/usr/bin/env bash
# The GPU checks, in one pass on a CUDA machine (run from the repository root):
#   1. the CUDA tests (tests/test_cuda.py: a digits run on CUDA against the same run on the CPU, the
#      resident training pixels, PGD on both devices);
#   2. `--preset paper` on mnist10k.npz, 15% symmetric noise, seed 0, with the preset's full evaluation
#      (PGD-100 x 2 restarts) and --eval-attack apgd (APGD-CE + APGD-T), then benchmarks/paper_claims.py;
#   3. the default recipe on the same data, for its time on a GPU;
#   4. benchmarks/paper_preset_cost.py on the GPU.
# Needs benchmarks/data/mnist10k.npz (python benchmarks/fetch_mnist.py builds one) and the package's
# dependencies importable. Prints its log; writes the JSON files under $OUT (default: artifacts/gpu_check).
# EXTRA adds options to both runs (a quick dry run on a CPU: EXTRA="--epochs 1 --robust-epochs 1 ...").
#   bash benchmarks/gpu_check.sh 2>&1 | tee artifacts/gpu_check.log
set -u
OUT=${OUT:-artifacts/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python3}
DATA=${DATA:-benchmarks/data/mnist10k.npz}
RUNS=${RUNS:-/tmp/gpu_check_runs}
THREADS=${THREADS:-$(nproc)}
EXTRA=${EXTRA:-}
ONLY=${ONLY:-1,2,3,4}  # which of the numbered checks to run
want() { [[ ",$ONLY," == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
rm -rf "$RUNS"; mkdir -p "$RUNS"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
"$PY" -c "import torch, sys; print(sys.version.split()[0], torch.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" 2>&1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$OUT/smi.csv" 2>/dev/null &
SMI=$!

stamp() { date +%s.%N; }
elapsed() { "$PY" -c "print(round($2 - $1, 1))"; }

if want 1; then
echo "== 1. CUDA tests"
t0=$(stamp)
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tail -n 30
echo "cuda tests: $(elapsed "$t0" "$(stamp)") s"
fi

if want 2; then
echo "== 2. --preset paper, full evaluation + APGD"
t0=$(stamp)
timeout "${PAPER_TIMEOUT:-320}" "$PY" -m audit run --dataset "npz:$DATA" --noise 0.15 --seed 0 --preset paper --eval-attack apgd \
    --threads "$THREADS" --out "$RUNS/paper" $EXTRA 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 40
echo "paper preset run: $(elapsed "$t0" "$(stamp)") s"
cp "$RUNS/paper/manifest.json" "$OUT/paper_manifest.json" 2>/dev/null
"$PY" benchmarks/paper_claims.py "$RUNS/paper" --out "$OUT/paper_preset_claims_gpu.json" 2>&1 | tail -n 5
fi

if want 3; then
echo "== 3. default recipe"
t0=$(stamp)
timeout 90 "$PY" -m audit run --dataset "npz:$DATA" --noise 0.15 --seed 0 --threads "$THREADS" \
    --out "$RUNS/default" $EXTRA 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 20
echo "default run: $(elapsed "$t0" "$(stamp)") s"
cp "$RUNS/default/manifest.json" "$OUT/default_manifest.json" 2>/dev/null
fi

if want 4; then
echo "== 4. preset cost on the GPU"
timeout 40 "$PY" benchmarks/paper_preset_cost.py --device cuda --threads "$THREADS" >"$OUT/paper_preset_cost_gpu.json"
cat "$OUT/paper_preset_cost_gpu.json"
fi
kill "$SMI" 2>/dev/null
