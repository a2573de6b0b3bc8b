#!/usr/bin/env bash
# The GPU checks in one prepared command, for a lent GPU machine with no network (run from the repository root):
#   1. the whole active-learning pipeline on the smoke preset, on CUDA (about 30 s; stops here on failure);
#   2. the paper-size detection simulation (`--preset paper --parallel`), stopped at a deadline; it resumes
#      from runs/ if the machine is still warm, and its finished cycles are packed every 20 s;
#   3. the GPU rows of the performance table (`run_all.py --only scoring training`), under a time limit.
# Everything lands in OUT_DIR/results.tgz (benchmarks/results/ and the parts' results.json and logs) plus logs.
#
#   bash benchmarks/device_check.sh [OUT_DIR] [AL_DEADLINE_SECONDS] [BENCH_SECONDS]
#
# DEVICE=cpu PYTHON=.venv/bin/python runs the same steps on a CPU (a dry run of the script itself).
# Python packages missing there (faster-coco-eval, defusedxml) travel as wheels in .whl/ (see the device
# tool's notes); they are installed into /tmp/site when the interpreter lacks them.
set -uo pipefail
out=${1:-${OUT:-/tmp/device-check}}
deadline=${2:-360}
bench_seconds=${3:-120}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
mkdir -p "$out"
if ! "$python" -c "import faster_coco_eval, defusedxml" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1

pack() {
    local parts
    parts=$(ls runs/al_synthetic/*/*/parts/*/results.json runs/al_synthetic/*/*/parts/*/log.txt 2>/dev/null)
    # shellcheck disable=SC2086  # one path per word
    tar czf "$out/results.tgz.tmp" --exclude="benchmarks/results/*/runs" benchmarks/results $parts && mv "$out/results.tgz.tmp" "$out/results.tgz"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
if ! "$python" benchmarks/al_synthetic.py --preset smoke --parallel --out /tmp/smoke --device "$device" --threads 2 \
    >"$out/smoke.log" 2>&1; then
    tail -40 "$out/smoke.log"
    grep -h -A20 Traceback /tmp/smoke/runs/*/parts/*/log.txt | head -60
    exit 3
fi
(while sleep 20; do pack; done) &
packer=$!
"$python" benchmarks/al_synthetic.py --preset paper --parallel --tasks detection --device "$device" --threads 2 \
    --deadline "$deadline" --no-readme --quiet >"$out/al.log" 2>&1
echo "paper-size detection: exit $?"
timeout "$bench_seconds" "$python" benchmarks/run_all.py --only scoring training --device "$device" --no-readme \
    >"$out/bench.log" 2>&1
echo "benchmarks: exit $?"
kill "$packer"
pack
grep -E "exit|stopped|Full-data|\| (random|inconsistency) \|" "$out/al.log" | head -20
