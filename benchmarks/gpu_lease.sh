#!/usr/bin/env bash
# One lease of a GPU machine, as one command: check the CUDA-graph training against eager
# training, measure where a CNN round's time goes, then run the CNN queue's heaviest cells
# (issue 14) until the lease's deadline, and pack what they wrote.
#
#   bash benchmarks/gpu_lease.sh OUT_DIR SECONDS [CELL_PATTERN...]
#
# SECONDS is the whole script's budget; the queue stops in time to pack. The machine needs
# python3 with a CUDA torch; the other packages come unpacked from .whl/site.tar.xz and
# MNIST from .mnist/*.xz (both prepared beside the repo, not committed), unless
# PREPARED=1 says they are in place (FEDAVG_MNIST_DATA set, packages importable).
# OUT_DIR receives lease.log, gpu_round.json, results.tgz (the cells' run directories
# without checkpoints) and ckpt<N>.tgz (the checkpoint of each cell left unfinished).
set -u
out=${1:?usage: gpu_lease.sh OUT_DIR SECONDS [CELL_PATTERN...]}
budget=${2:?usage: gpu_lease.sh OUT_DIR SECONDS [CELL_PATTERN...]}
shift 2
py=${PY:-python3}
jobs=${JOBS:-4}
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
mkdir -p "$out"
marker=$(mktemp)
exec > >(tee "$out/lease.log") 2>&1

if [ "${PREPARED:-0}" != 1 ]; then
    mkdir -p /tmp/site /tmp/mnist/MNIST/raw
    tar -C /tmp/site -xJf .whl/site.tar.xz || exit 1
    for f in .mnist/*.xz; do xz -dc "$f" >"/tmp/mnist/MNIST/raw/$(basename "$f" .xz)"; done
    export PYTHONPATH=/tmp/site:/tmp/site/_fallback:$PWD FEDAVG_MNIST_DATA=/tmp/mnist
fi
export FLWR_TELEMETRY_ENABLED=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc)"
$py -c "import torch, flwr, ray; print('torch', torch.__version__, 'flwr', flwr.__version__, 'ray', ray.__version__)"

echo "== CUDA graphs against eager training, $(left) s left"
timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_local_training.py

echo "== where a round's time goes, $(left) s left"
timeout 150 $py -m benchmarks.gpu_round --out "$out/gpu_round.json"

echo "== the queue, $jobs cells at once, $(left) s left"
if [ $# -gt 0 ]; then cells=(--cells "$@"); else cells=(); fi
timeout $(($(left) - 15)) $py -m fedavg_mnist.ops.campaign run conf/campaign/cnn.yaml \
    --jobs "$jobs" --keep-going --time-limit $(($(left) - 45)) "${cells[@]}"
$py -m fedavg_mnist.ops.campaign status conf/campaign/cnn.yaml

echo "== packing, $(left) s left"
cd docs/runs || exit 1
mapfile -t dirs < <(find table1_cnn table2_cnn -name results.json -newer "$marker" -printf '%h\n')
tar czf "$out/results.tgz" --exclude=checkpoint.pt --exclude=partitions.npz "${dirs[@]}" STATUS.md
n=0
for dir in "${dirs[@]}"; do
    if [ -f "$dir/checkpoint.pt" ] && [ $n -lt 5 ]; then # at most 8 files come back
        tar czf "$out/ckpt$n.tgz" "$dir/checkpoint.pt"
        n=$((n + 1))
    fi
done
ls -la "$out"
echo "done in $(($(date +%s) - start)) s"
