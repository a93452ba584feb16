#!/usr/bin/env bash
# Run the GPU benchmarks (P2-P6) one after another; each writes its JSON to OUT_DIR,
# and all their output goes to OUT_DIR/bench.log. One failing benchmark does not stop the others. On the lent CUDA machine:
#   source .devwheels/bootstrap.sh && bash benchmarks/run_gpu.sh $OUT p2 p4 p3
set -uo pipefail
out="${1:?usage: run_gpu.sh OUT_DIR [p2 p2seeds p3 p3q p4 p5 p6 p6rest overhead tests]...}"
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
cd "$(dirname "$0")/.."
export RAYTUNE_CTR_DATA="${RAYTUNE_CTR_DATA:-/tmp/data}"
[ $# -eq 0 ] && set -- p2 p4 p3
run() {  # name, command...
  local name=$1; shift
  echo "=== $name: $* ($(date -u +%T))"
  local t0=$SECONDS
  "$@" >"$out/$name.tmp" 2>&1
  echo "=== $name: rc=$? in $((SECONDS - t0)) s"
  tail -n 25 "$out/$name.tmp"
  cat "$out/$name.tmp" >>"$out/bench.log" && rm "$out/$name.tmp"
}
for b in "$@"; do
  case $b in
    tests) run tests python -m pytest -q -rs tests/test_gpu.py ;;
    p2) run p2 python benchmarks/gpu_speed.py --data-dir "$RAYTUNE_CTR_DATA/fashion-mnist" --out "$out/p2.json" ;;
    p2seeds) run p2seeds python benchmarks/gpu_speed.py --data-dir "$RAYTUNE_CTR_DATA/fashion-mnist" --seeds 1,2,3 --variants fp32,bf16 --out "$out/p2seeds.json" ;;
    p3) run p3 python benchmarks/gpu_packing.py --data-dir "$RAYTUNE_CTR_DATA/fashion-mnist" --out "$out/p3.json" ;;
    overhead) run overhead python benchmarks/trial_overhead.py --quickstart --out "$out/overhead.json" ;;
    p3q) run p3q python benchmarks/gpu_packing.py --data-dir "$RAYTUNE_CTR_DATA/fashion-mnist" --gpu-fraction 0.25 --out "$out/p3q.json" ;;
    p4) run p4 python benchmarks/gpu_throughput.py --out "$out/p4.json"
        run p4c python benchmarks/gpu_throughput.py --compile --out "$out/p4c.json" ;;
    p5) run p5 python benchmarks/search_efficiency.py --gpu-fraction 0.125 --out-dir "$out" ;;
    p6) run p6 python benchmarks/worker_scaling.py --cpus "$(nproc)" --out "$out/p6.json" ;;
    p6rest) run p6 python benchmarks/worker_scaling.py --layouts 1x16,8x2,16x1 --out "$out/p6.json" ;;
    *) echo "unknown benchmark $b" >&2 ;;
  esac
done
