#!/usr/bin/env bash
# The GPU check: run whenever a GPU is lent (one H100 / H200, under 10 minutes), from the repository root:
#
#     bash benchmarks/gpu_check.sh                      # writes its figures into benchmarks/RESULTS.md
#     bash benchmarks/gpu_check.sh --reduced OUT.md     # CPU-sized (wan-tiny: Wan's layout at width 48), the same
#                                                       # steps (tests/test_gpu_check.py)
#
# 1. the `gpu` tests; 2. `probe bench --size wan1.3b` (SCD vs baseline at 4 and 50 steps, random weights);
# 3. every layer probed at 480p with a 21-frame context against the same generation unprobed (overhead ratio,
# peak memory); 4. a Self-Forcing-shaped random model (Wan-1.3B size) sampled with --timesteps 1000,750,500,250
# warped at shift 5, re-noising, a 12-frame window and 3 sinks, against the growing cache (frames/s, memory).
# Each figure is recorded with the device and the command. The machine needs torch, diffusers and
# transformer-lens importable (see benchmarks/RESULTS.md, "The GPU check", for the device image's limits).
set -euo pipefail
cd "$(dirname "$0")/.."
REDUCED=0
RESULTS=benchmarks/RESULTS.md
if [ "${1:-}" = "--reduced" ]; then REDUCED=1; RESULTS=${2:?--reduced needs the results file}; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ $REDUCED = 1 ]; then
  DEVICE=cpu; LATENT=8x8; SIZE=wan-tiny; BENCH=(--steps 2,4 --context 1,3 --frames 2 --repeats 1)
  PROBE=(--context 3 --frames 1 --steps 2 --repeats 1); ROLL=(--frames 6 --window 4 --sinks 1 --repeats 1)
else
  DEVICE=cuda; LATENT=60x104; SIZE=wan1.3b; BENCH=(--steps 4,50 --context 1,21 --frames 2 --repeats 3)
  PROBE=(--context 21 --frames 2 --steps 4 --repeats 2); ROLL=(--frames 60 --window 12 --sinks 3 --repeats 2)
fi
PY=${PYTHON:-python}
echo "== 1. gpu tests"
GPU_TESTS=$(grep -rl "mark.gpu" tests --include='*.py' | sort)  # the files that hold them: the rest need no collecting
$PY -m pytest -q -m gpu $GPU_TESTS -p no:randomly -n 0 2>&1 | tail -3 | tee "$WORK/tests.txt"
echo "== 2. probe bench --size $SIZE"
BENCH_CMD=(-m probe_cli bench --size "$SIZE" --latent-size "$LATENT" --device "$DEVICE" "${BENCH[@]}"
           --out "$WORK/bench" --force --quiet)
$PY "${BENCH_CMD[@]}"
echo "== 3. every layer probed at scale"
PROBE_CMD=(benchmarks/bench_probes.py --scale "$SIZE" --device "$DEVICE" --latent-size "$LATENT" "${PROBE[@]}")
$PY "${PROBE_CMD[@]}" | tail -1 > "$WORK/probes.json"
echo "== 4. Self-Forcing-shaped rollout, window and sinks"
ROLL_CMD=(benchmarks/bench_rolling.py --size "$SIZE" --device "$DEVICE" --latent-size "$LATENT" "${ROLL[@]}" --out "$WORK/rolling.json")
$PY "${ROLL_CMD[@]}" > /dev/null
$PY benchmarks/gpu_results.py "$WORK" "$RESULTS" "python ${BENCH_CMD[*]}" "python ${PROBE_CMD[*]}" "python ${ROLL_CMD[*]}"
echo "wrote $RESULTS"
