#!/usr/bin/env bash
# What a GPU lease carries for benchmarks/gpu_lease.sh, prepared here (the machine has no
# network): the project's packages for its Python 3.12 unpacked into .whl/site.tar.xz, and
# MNIST's four IDX files as .mnist/*.xz. Both folders are kept out of git (.git/info/exclude)
# and travel with `carry: [".whl", ".mnist"]`; the lease's image already has torch, numpy,
# pandas, pyarrow, matplotlib and their kind, so those stay out (the list below).
#
#   bash benchmarks/prepare_lease.sh MNIST_ROOT     # the folder holding MNIST/raw/
#
# Run it inside the project's virtualenv (pip must reach PyPI).
set -euo pipefail
root=${1:?usage: prepare_lease.sh MNIST_ROOT}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p .git/info .whl .mnist
for folder in /.whl/ /.mnist/; do
    grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >>.git/info/exclude
done

platforms=()
for tag in manylinux_2_{5,17,24,27,28,31,34}_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")
# the pins of pyproject.toml; hydra-core and omegaconf without their dependencies, since
# their antlr4 runtime (4.9) exists only as source: it is installed here (pure Python)
pip download -q -d "$work/wheels" "${target[@]}" "flwr[simulation]==1.42.0" \
    "flwr-datasets==0.6.1" "datasets==4.8.5" "cryptography==50.0.2" PyYAML joblib
# Opacus's own needs (torch, scipy, opt-einsum) are the image's
pip download -q -d "$work/wheels" --no-deps "${target[@]}" "hydra-core==1.3.8" \
    "omegaconf==2.3.1" "hydra-joblib-launcher==1.2.0" "opacus==1.6.0"
pip install -q --no-deps --target "$work/site" "antlr4-python3-runtime==4.9.3"

# on the lease's image already (/work/.library/device/KINDS.md), or not needed there
image='^(torch|numpy|scipy|pyarrow|pandas|matplotlib|pillow|fonttools|contourpy|kiwisolver|hf_xet|uv|aiohttp|yarl|multidict|frozenlist|propcache|charset_normalizer|markupsafe|pyyaml|uvloop|xxhash|msgpack|seaborn|tzdata|pygments|huggingface_hub|nvidia_.*|triton|sympy|networkx|mpmath|jinja2|setuptools)-'
for wheel in "$work"/wheels/*.whl; do
    name=$(basename "$wheel")
    if ! [[ ${name,,} =~ $image ]]; then unzip -q -o "$wheel" -d "$work/site"; fi
done
# Opacus's wheel also installs top-level `benchmarks` and `examples` packages: the first
# would shadow this project's `benchmarks` on the lease's PYTHONPATH
rm -rf "$work"/site/{benchmarks,examples}
# Ray's parts a simulation does not use: Java, RLlib, Serve, Data, Train, Tune, LLM, the
# dashboard's web client; then the binaries' symbols
rm -rf "$work"/site/ray/{jars,rllib,serve,data,llm,train,tune,dashboard/client}
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
find "$work/site" -type f \( -name '*.so*' -o -path '*/ray/core/src/*' \) \
    -exec strip --strip-unneeded {} + 2>/dev/null || true
tar -C "$work/site" -cf - . | xz -9 -T0 >.whl/site.tar.xz

for file in "$root"/MNIST/raw/*-ubyte; do
    xz -9 -T0 -c "$file" >".mnist/$(basename "$file").xz"
done
du -sh .whl/site.tar.xz .mnist
