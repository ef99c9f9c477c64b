#!/usr/bin/env bash
# The learned-loss study of docs/loss_study.md, as it was run: every job a plain `python main.py`
# with the variant's overrides, two jobs at a time with one thread each (2-core machine).
#   scripts/loss_study.sh [OUT] [PART...]   (OUT defaults to multirun/loss_study; PARTs default to all:
#       base digits_ablations diabetes_default fashion_ablations ml3_default)
# Fashion-MNIST must be in ./data/FashionMNIST/raw (docs/datasets.md). Tables:
#   python scripts/loss_study_table.py OUT/fashion_mnist/* OUT/digits/* OUT/diabetes/*
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-multirun/loss_study}
shift || true
PARTS=${*:-base digits_ablations diabetes_default fashion_ablations ml3_default}
PY=${PYTHON:-.venv/bin/python}

# The variants (method.loss.*): the defaults before the study, and the no-bias network it chose.
OLD="method.loss.bias=true method.loss.init=default method.loss.output_activation=softplus"
NOBIAS="method.loss.bias=false method.loss.init=kaiming_normal method.loss.output_activation=none"
TASKTERM="$NOBIAS method.loss.task_loss_term=true"

job() {  # job DATASET METHOD NAME SEED overrides...
    local ds=$1 method=$2 name=$3 seed=$4; shift 4
    local dir="$OUT/$ds/$name/s$seed"
    [ -f "$dir/result.json" ] && grep -q '"status": "done"' "$dir/result.json" && return 0
    mkdir -p "$dir"
    "$PY" main.py dataset="$ds" method="$method" seed="$seed" logger=none runtime.threads=1 runtime.progress=false \
        checkpoint.every=0 hydra.run.dir="$dir" "$@" > "$dir.log" 2>&1 || echo "failed: $dir (see $dir.log)"
}
export -f job; export OUT PY

base() {  # sessions 3-4: the variants on all three datasets
  for s in 0 1 2 3 4; do
    echo "job fashion_mnist ce CE $s dataset.eval_interval=500"
    echo "job fashion_mnist adalfl nobias $s dataset.eval_interval=500 $NOBIAS"
    echo "job fashion_mnist ml3 ml3 $s dataset.eval_interval=500"
    echo "job fashion_mnist adalfl old_3000 $s dataset.steps=3000 dataset.eval_interval=500 $OLD"
  done
  echo "job fashion_mnist adalfl taskterm_3000 0 dataset.steps=3000 dataset.eval_interval=500 $TASKTERM"
  for s in 0 1 2 3 4 5 6 7 8 9; do
    echo "job digits ce CE $s"
    echo "job digits adalfl old $s $OLD"
    echo "job digits adalfl nobias $s $NOBIAS"
  done
  for s in 0 1 2; do
    echo "job diabetes ce CE_2000 $s dataset.steps=2000"
    echo "job diabetes adalfl nobias_2000 $s dataset.steps=2000 $NOBIAS"
  done
}

# One override at a time against the default loss network (no bias, Kaiming-normal, no output
# activation, beta 10, gamma 0.01, mean, online Adam 1e-5). Job names are the overrides.
ABLATIONS=(
  "method.loss.output_activation=softplus"
  "method.loss.output_activation=smooth_leaky_relu"
  "method.loss.bias=true"
  "method.loss.init=default"
  "method.loss.init=xavier"
  "method.loss.beta=2 method.loss.gamma=0.25"
  "method.loss.reduction=sum"
  "offline.steps=500"
  "offline.steps=0"
  "method.meta.online_lr=0"
  "method.meta.online_lr=1e-4"
)
name_of() { echo "$1" | tr ' =' '_-'; }

digits_ablations() {  # session 5
  for a in "${ABLATIONS[@]}"; do
    for s in 0 1 2 3 4; do echo "job digits adalfl $(name_of "$a") $s $a"; done
  done
}

diabetes_default() {  # session 7: the default (residual input) at the default budget, ten seeds
  for s in 0 1 2 3 4 5 6 7 8 9; do
    echo "job diabetes ce CE_10k $s"
    echo "job diabetes adalfl residual_10k $s"
  done
}

fashion_ablations() {  # session 7: a 2,000-step screen (the claims are checked at 10,000 above)
  for s in 0 1 2 3 4; do
    echo "job fashion_mnist ce CE_2000 $s dataset.steps=2000 dataset.eval_interval=500"
    echo "job fashion_mnist adalfl default_2000 $s dataset.steps=2000 dataset.eval_interval=500"
  done
  for a in "method.loss.output_activation=softplus" "method.loss.output_activation=smooth_leaky_relu" \
           "method.loss.bias=true" "method.meta.online_lr=0"; do
    for s in 0 1 2 3 4; do
      echo "job fashion_mnist adalfl $(name_of "$a")_2000 $s dataset.steps=2000 dataset.eval_interval=500 $a"
    done
  done
}

ml3_default() {  # session 7: ML3 at its defaults where only Fashion-MNIST had been measured
  for s in 0 1 2 3 4 5 6 7 8 9; do echo "job digits ml3 ml3 $s"; done
  for s in 0 1 2 3 4; do echo "job diabetes ml3 ml3_10k $s"; done
}

for part in $PARTS; do "$part"; done | xargs -P 2 -I{} bash -c "{}"
