#!/usr/bin/env bash
# Runs one distributed mprec command as two hosts on this machine: two network namespaces joined by a veth
# pair, each with an address of its own (10.77.0.1 and 10.77.0.2) and its own loopback, so every byte between
# the ranks of different hosts crosses a network interface. torchrun runs in each namespace with --nnodes 2;
# host 0 is the rendezvous (its address is the master address), as on real hosts.
#
#   sudo scripts/two-hosts.sh [--nproc-per-node N] [--python PYTHON] -- train --sharding auto --checkpoint run/ ...
#
# The arguments after -- are mprec's (python -m mprec.cli ...). Needs root (ip netns) and iproute2. The
# namespaces share this machine's file system, as hosts share one for checkpoints (a folder every rank sees).
# On real hosts run, on each host h in 0 .. N-1:
#   torchrun --nnodes N --node-rank h --nproc-per-node P --master-addr HOST0 --master-port 29500 \
#       -m mprec.cli train --sharding auto --checkpoint /shared/run ...
set -euo pipefail

NPROC=1
PYTHON=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nproc-per-node) NPROC=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "two-hosts.sh: unknown option $1 (mprec's arguments go after --)" >&2; exit 2 ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "usage: two-hosts.sh [--nproc-per-node N] [--python PYTHON] -- <mprec arguments>" >&2
    exit 2
fi

TAG=$$
HOSTS=(mprec-h0-$TAG mprec-h1-$TAG)
LINKS=(mpr0-$TAG mpr1-$TAG)
ADDRS=(10.77.0.1 10.77.0.2)
PORT=$((20000 + TAG % 20000))

cleanup() {
    for ns in "${HOSTS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

for i in 0 1; do
    ip netns add "${HOSTS[$i]}"
    ip -n "${HOSTS[$i]}" link set lo up
done
ip link add "${LINKS[0]}" type veth peer name "${LINKS[1]}"
for i in 0 1; do
    ip link set "${LINKS[$i]}" netns "${HOSTS[$i]}"
    ip -n "${HOSTS[$i]}" addr add "${ADDRS[$i]}/24" dev "${LINKS[$i]}"
    ip -n "${HOSTS[$i]}" link set "${LINKS[$i]}" up
done

pids=()
for i in 0 1; do
    # Gloo connects through the interface named here; rank 0's address is the rendezvous.
    ip netns exec "${HOSTS[$i]}" env GLOO_SOCKET_IFNAME="${LINKS[$i]}" MPREC_HOST="${HOSTS[$i]}" \
        "$PYTHON" -m torch.distributed.run --nnodes 2 --node-rank "$i" --nproc-per-node "$NPROC" \
        --master-addr "${ADDRS[0]}" --master-port "$PORT" -m mprec.cli "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
