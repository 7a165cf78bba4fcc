#!/bin/sh
# The seqattn image's entrypoint (deploy/Dockerfile).
#
#   serve | select | pipeline | demo ...   `seqattn ARGS`. With RAY_ADDRESS=HOST:PORT this container first
#                                          joins that Ray cluster as a node with no CPUs: a Ray driver
#                                          must run on a node of its cluster, and Ray Train places its
#                                          controller and Ray Data's coordinators beside the driver, so
#                                          the jobs' workers still go to the worker nodes only.
#   ray ... | python ... | sh ...          run as given (a Ray head or worker node, a shell).
#   anything else                          `seqattn ARGS` (synth, export, --help).
set -eu

case "${1:-serve}" in
  ray|python|python3|sh|bash)
    exec "$@" ;;
  serve|select|pipeline|demo)
    address="${RAY_ADDRESS:-}"
    if [ -n "$address" ] && [ "${address#ray://}" = "$address" ]; then
      ray start --address="$address" --num-cpus=0 --disable-usage-stats
    fi ;;
esac
exec seqattn "$@"
