#!/usr/bin/env bash
# The checks that need a GPU, in one go (about 5 minutes on one H100/H200):
#   1. the meta-gradient, backend-agreement, BatchNorm and tangent-pass tests on CUDA (the tangent
#      rules and the zoo's meta-gradient against higher and finite differences included);
#   2. benchmarks/step_cost.py on CUDA, the paper's larger networks included;
#   3. the default job (`python main.py`) on CUDA.
# Usage: scripts/gpu_check.sh [OUTPUT_FOLDER]   (default: gpu_check/); results are written there.
set -uo pipefail
out=${1:-gpu_check}
mkdir -p "$out"
python=${PYTHON:-python}
export PYTHONUNBUFFERED=1 WANDB_SILENT=true

{ nvidia-smi -L; "$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
  2>&1 | tee "$out/gpu.txt"

ADALFL_TEST_DEVICE=cuda "$python" -m pytest -q -p no:cacheprovider -m "not slurm" tests/test_meta.py tests/test_models.py \
  tests/test_tangent.py -k "meta_gradient or backends or batchnorm or frozen or recorded_jvp or rule or chain or covered or in_place" \
  2>&1 | tee "$out/pytest_cuda.txt"
tests=${PIPESTATUS[0]}

"$python" benchmarks/step_cost.py device=cuda "models=[mlp,lenet5,smallcnn_bn,preresnet20,resnet18,wrn16_8]" \
  >"$out/step_cost_cuda.json" 2>"$out/step_cost_cuda.log"
bench=$?
tail -n 12 "$out/step_cost_cuda.log"

job=$(mktemp -d)
start=$EPOCHREALTIME
"$python" main.py runtime.device=cuda logger=none runtime.progress=false hydra.run.dir="$job" >"$out/default_job.log" 2>&1
default_job=$?
echo "default job: exit $default_job, $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }") s wall" | tee -a "$out/default_job.log"
cp "$job/result.json" "$out/default_job_result.json" 2>/dev/null

echo "tests: exit $tests; step_cost: exit $bench; default job: exit $default_job"
[ "$tests" = 0 ] && [ "$bench" = 0 ] && [ "$default_job" = 0 ]
