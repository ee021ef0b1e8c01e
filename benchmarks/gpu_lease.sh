#!/usr/bin/env bash
# One lease of a GPU machine, as one command: check the CUDA-graph training against eager
# training, measure where a CNN round's time goes, then run the CNN queue's heaviest cells
# (issue 14) until the lease's deadline, and pack what they wrote.
#
#   bash benchmarks/gpu_lease.sh OUT_DIR SECONDS [CELL_PATTERN...]
#
# SECONDS is the whole script's budget; the queue stops in time to pack. The machine needs
# python3 with a CUDA torch; the other packages come unpacked from .whl/site.tar.xz and
# MNIST from .mnist/*.xz (both made by benchmarks/prepare_lease.sh, kept out of git), unless
# PREPARED=1 says they are in place (FEDAVG_MNIST_DATA set, packages importable).
# OUT_DIR receives lease.log, gpu_round.json, results.tgz (the cells' run directories
# without checkpoints) and ckpt<N>.tgz (the checkpoints of the cells left unfinished, two a
# file, as many as the 8 files a lease brings back allow).
# Optional steps: CHECK=0 skips the CUDA-graph check (a second call on a warm machine);
# ROUND_BENCH=0 skips the round benchmark; COHORT=<file> runs that cohort
# benchmark (`cnn 10 10`); HEADLINE=1 times the headline CNN run (IID, C=0.1, E=5, B=10,
# stopping at 99%) from launch to exit, alone on the machine, into docs/runs/h200_headline/.
set -u
out=${1:?usage: gpu_lease.sh OUT_DIR SECONDS [CELL_PATTERN...]}
budget=${2:?usage: gpu_lease.sh OUT_DIR SECONDS [CELL_PATTERN...]}
shift 2
py=${PY:-python3}
jobs=${JOBS:-4}
queue=${QUEUE:-conf/campaign/cnn.yaml}
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

if [ "${CHECK:-1}" != 0 ]; then
    echo "== CUDA graphs against eager training, $(left) s left"
    timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_local_training.py
fi

if [ "${ROUND_BENCH:-1}" != 0 ]; then
    echo "== where a round's time goes, $(left) s left"
    timeout 150 $py -m benchmarks.gpu_round --out "$out/gpu_round.json"
fi

if [ -n "${COHORT:-}" ]; then
    echo "== the cohort benchmark, $(left) s left"
    timeout 120 $py "$COHORT" cnn 10 10
fi

extra=()
if [ "${HEADLINE:-0}" = 1 ]; then
    echo "== the headline CNN run, launch to exit, $(left) s left"
    headline=docs/runs/h200_headline
    rm -rf "$headline"
    launched=$(date +%s.%N)
    # shellcheck disable=SC2086  # HEADLINE_ARGS: more overrides, word by word
    timeout 240 $py -m fedavg_mnist.main stop_at_target=true "hydra.run.dir=$headline" ${HEADLINE_ARGS:-}
    code=$?
    exited=$(date +%s.%N)
    seconds=$($py -c "print(round($exited - $launched, 2))")
    echo "headline run: exit $code, $seconds s from launch to exit"
    mkdir -p "$headline"
    printf '{"exit_status": %s, "launch_to_exit_s": %s}\n' "$code" "$seconds" \
        >"$headline/launch_to_exit.json"
    extra=(h200_headline)
fi

echo "== the queue, $jobs cells at once, $(left) s left"
if [ $# -gt 0 ]; then cells=(--cells "$@"); else cells=(); fi
timeout $(($(left) - 15)) $py -m fedavg_mnist.ops.campaign run "$queue" \
    --jobs "$jobs" --keep-going --time-limit $(($(left) - 45)) "${cells[@]}"
$py -m fedavg_mnist.ops.campaign status "$queue"

echo "== packing, $(left) s left"
cd docs/runs || exit 1
mapfile -t dirs < <(find table1_cnn table2_cnn -name results.json -newer "$marker" -printf '%h\n')
tar czf "$out/results.tgz" --exclude=checkpoint.pt --exclude=partitions.npz "${dirs[@]}" \
    "${extra[@]}" STATUS.md
# the unfinished cells' checkpoints, the one with the most rounds first
mapfile -t ckpts < <($py -c '
import json, pathlib, sys
dirs = [pathlib.Path(d) for d in sys.argv[1:] if pathlib.Path(d, "checkpoint.pt").is_file()]
rounds = lambda d: json.loads((d / "results.json").read_text()).get("completed_rounds", 0)
print("\n".join(str(d / "checkpoint.pt") for d in sorted(dirs, key=rounds, reverse=True)))
' "${dirs[@]}")
# at most 8 files and 64 MiB come back, 16 MiB a file: two checkpoints (about 6 MiB each)
# a file, while the whole stays under 52 MiB
files=$(find "$out" -maxdepth 1 -type f | wc -l)
for ((i = 0, n = 0; i < ${#ckpts[@]} && files + n < 8; i += 2, n++)); do
    [ "$(du -sb "$out" | cut -f1)" -lt $((52 << 20)) ] || break
    tar czf "$out/ckpt$n.tgz" "${ckpts[@]:i:2}"
done
if [ $i -lt ${#ckpts[@]} ]; then echo "checkpoints left behind: ${ckpts[*]:i}"; fi
ls -la "$out"
echo "done in $(($(date +%s) - start)) s"
