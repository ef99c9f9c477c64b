#!/usr/bin/env bash
# Real Fashion-MNIST without downloading from its site: Debian's dataset-fashion-mnist package (60k/10k
# idx files, gzipped) copied into the data root, where dataset=fashion_mnist reads (and unpacks) them.
# With network access, `python main.py dataset=fashion_mnist dataset.download=true` fetches the same
# files through torchvision instead (the one download path of every dataset, adalfl.data.files.fetch).
#   scripts/fetch_fashion_mnist.sh [ROOT]     (ROOT defaults to $ADALFL_DATA_ROOT, else ./data)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-${ADALFL_DATA_ROOT:-data}}
SRC=/usr/share/datasets/fashion-mnist
if [ ! -f "$SRC/train-images-idx3-ubyte.gz" ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
mkdir -p "$ROOT/FashionMNIST/raw"
cp "$SRC"/*-ubyte.gz "$ROOT/FashionMNIST/raw/"
echo "Fashion-MNIST in $ROOT/FashionMNIST/raw"
