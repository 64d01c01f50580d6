#!/usr/bin/env bash
# The GPU figures of issue 15 in one command that fits 8 minutes on one GPU (an H200 here):
#
#   1. the CUDA tests (pytest -k cuda): the Triton DAC kernel's forward and backward against the
#      float64 reference in fp32 and bf16 at every ResNet20 conv shape, layer dispatch, loaders;
#   2. benchmarks/variant_step.py: every variant of ResNet20 v1 and ViT-Tiny on CUDA, bf16
#      autocast, channels_last (target: DAC at most 1.5x the baseline step);
#   3. benchmarks/trainer_overhead.py --device cuda: the trainer against a bare loop (target
#      at most 1.05x);
#   4. variant_step.py again with torch.compile, for the baseline, DAC and DNRT variants;
#   5. benchmarks/gpu_sweep_check.py: `sweep --gpus all --workers-per-gpu 2` on the DAC SGEMM
#      smoke study: every run on CUDA, each worker on one device, every device used.
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh      # default folder: gpu_check_out
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Every part runs under its own time limit (seconds: TESTS_S, EAGER_S, TRAINER_S, COMPILE_S, SWEEP_S) and
# the script goes on after a part fails or runs out of time, saying so; the exit code is the
# number of parts that failed. Outputs (at most 8 files, as the device tool returns them):
# summary.txt, tests.txt, variant_step_cuda.{txt,json}, variant_step_compile.{txt,json},
# trainer_overhead_cuda.{txt,json} (the sweep part's log stays in /tmp: its tail is in
# summary.txt). Without a CUDA device every part is skipped with a line
# saying so, and the exit code is 0.
#
# On a machine whose python lacks some of biasbench's dependencies (the device image of
# 2026-11 has no mnist1d), carry them as wheels in .whl/ (see the device tool's README: pip
# download --no-deps --only-binary=:all: --python-version 3.12 ... mnist1d);
# this script installs .whl/*.whl into /tmp/site first when the folder exists.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }
failed=0

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" && say "installed $(ls .whl/*.whl | wc -l) wheels from .whl/"
fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  for part in "CUDA tests" "variant steps (bf16)" "trainer vs bare loop" "variant steps (compiled)" \
    "sweep pinned to GPUs"; do
    say "skipped (torch sees no CUDA device): $part"
  done
  exit 0
fi
say "$("$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory >> 30} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')")"
missing=$("$PYTHON" -c "
import importlib.util as u
print(' '.join(m for m in ('mnist1d', 'statsmodels', 'timm', 'triton', 'typer', 'rich', 'yaml', 'tabulate') if u.find_spec(m) is None))")
[ -n "$missing" ] && say "python lacks: $missing (carry wheels in .whl/)"

# run NAME SECONDS LOGFILE COMMAND...: one part under a time limit, its outcome in the summary
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then
    say "$name: ok in ${took} s ($(basename "$log"))"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    say "$name: stopped at its ${limit} s limit ($(basename "$log"))"
    failed=$((failed + 1))
  else
    say "$name: FAILED, exit $rc after ${took} s ($(basename "$log"))"
    failed=$((failed + 1))
  fi
  tail -n 25 "$log" | sed 's/^/    /' >>"$SUMMARY"
}

run "CUDA tests" "${TESTS_S:-120}" "$OUT/tests.txt" \
  "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/test_dac_layers.py tests/test_data_augment.py
run "variant steps (bf16)" "${EAGER_S:-110}" "$OUT/variant_step_cuda.txt" \
  "$PYTHON" benchmarks/variant_step.py --device cuda --amp bf16 --channels-last --no-memory \
  --model resnet20_v1,vit_tiny_patch4 --variants all --batch 128 --reps 10 --json "$OUT/variant_step_cuda.json"
run "trainer vs bare loop" "${TRAINER_S:-80}" "$OUT/trainer_overhead_cuda.txt" \
  "$PYTHON" benchmarks/trainer_overhead.py --device cuda --repeats 3 --json "$OUT/trainer_overhead_cuda.json"
run "variant steps (compiled)" "${COMPILE_S:-140}" "$OUT/variant_step_compile.txt" \
  "$PYTHON" benchmarks/variant_step.py --device cuda --amp bf16 --channels-last --compile --no-memory \
  --model resnet20_v1,vit_tiny_patch4 --variants baseline,dac,dnrt --batch 128 --reps 10 \
  --json "$OUT/variant_step_compile.json"
run "sweep pinned to GPUs" "${SWEEP_S:-120}" "${TMPDIR:-/tmp}/gpu_check_sweep.txt" \
  "$PYTHON" benchmarks/gpu_sweep_check.py --study studies/dac_sgemm.yaml --per-gpu 2
say "$failed part(s) failed; total ${SECONDS} s"
exit $failed
