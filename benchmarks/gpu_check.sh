#!/usr/bin/env bash
# The device check in one command, for a fresh machine with one GPU, torch with CUDA installed and no network:
#
#   bash benchmarks/gpu_check.sh              # installs beside the site's torch, runs everything, one table
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU, tiny sizes (the test suite runs it)
#
# Our other dependencies travel as wheels in a git-ignored folder, $STGNN_WHEELS (default .whl/: hydra-core,
# omegaconf, antlr4-python3-runtime, submitit; see benchmarks/RESULTS.md for the download command). The
# project is installed into a venv made with --system-site-packages, so torch is the machine's own
# (TORCH_SPEC=system in scripts/setup.sh does the same). Each step's JSON line lands in $CHECK_DIR
# (default $OUT where set, else /tmp/stgnn-gpu-check), then one summary table is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
CHECK_DIR="${CHECK_DIR:-${OUT:-/tmp/stgnn-gpu-check}}"
mkdir -p "$CHECK_DIR"
RESULTS="$CHECK_DIR/gpu_check.jsonl"
: > "$RESULTS"
started=$(date +%s)

if [ "$DRY" = 1 ]; then
  PY="${PYTHON:-python3}"
  SIZE=(dataset.num_nodes=12 dataset.num_steps=800 batching.batch_size=16)
  TGCN=(model.params.hidden=8)
  DCRNN=(model.params.rnn_units=8)
  GWNET=(model.params.residual_channels=8 model.params.dilation_channels=8 model.params.skip_channels=16 model.params.end_channels=16)
  PROBE=(--cpu-ok --warmup 2 --steps 3)
  RANKS_EXTRA=(launcher.cpu=true)
else
  WHEELS="${STGNN_WHEELS:-.whl}"
  SITE="${STGNN_CHECK_SITE:-/tmp/stgnn-check-site}"
  PY="${PYTHON:-python3}"  # the machine's interpreter and its torch, untouched
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl || exit 1
  fi
  export PYTHONPATH="$SITE:$(pwd)${PYTHONPATH:+:$PYTHONPATH}"  # the project from this checkout
  SIZE=(dataset.num_nodes=325 dataset.num_steps=8064 batching.batch_size=64)
  TGCN=()
  DCRNN=(model.params.rnn_units=64)
  GWNET=()
  PROBE=(--warmup 5 --steps 20)
  RANKS_EXTRA=()
fi
export STGNN_CACHE="${STGNN_CACHE:-$CHECK_DIR/cache}"
export PYTHONUNBUFFERED=1
"$PY" - <<'EOF' | tee -a "$RESULTS"
import json, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(json.dumps({"label": "machine", "torch": torch.__version__, "gpu": gpu,
                  "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}))
EOF

step() {  # label, timeout seconds, command...: one JSON line with the outcome
  local label=$1 limit=$2; shift 2
  local t0=$(date +%s) rc
  timeout "$limit" "$@" > "$CHECK_DIR/$label.log" 2>&1; rc=$?
  echo "{\"label\": \"$label\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" | tee -a "$RESULTS"
  if [ $rc != 0 ]; then tail -25 "$CHECK_DIR/$label.log"; fi
}
probe() {  # label, overrides...: the in-process probe (syncs per step, step time, planner vs allocator)
  local label=$1; shift
  local t0=$(date +%s)
  if timeout 240 "$PY" benchmarks/gpu_probe.py --label "$label" "${PROBE[@]}" "${SIZE[@]}" "$@" \
      > "$CHECK_DIR/$label.log" 2>&1; then
    tail -1 "$CHECK_DIR/$label.log" | tee -a "$RESULTS"
  else
    echo "{\"label\": \"$label\", \"rc\": 1, \"seconds\": $(( $(date +%s) - t0 ))}" | tee -a "$RESULTS"
    tail -25 "$CHECK_DIR/$label.log"
  fi
}

if [ "$DRY" = 0 ]; then
  step gpu-tests 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
fi
probe default "${TGCN[@]}"
probe index-gpu batching=index batching.device=gpu "${TGCN[@]}"
probe index-host batching=index batching.device=cpu "${TGCN[@]}"
probe dist-index-host batching=dist_index batching.device=cpu "${TGCN[@]}"
probe standard-gpu batching=standard batching.device=gpu "${TGCN[@]}"
probe standard-host batching=standard batching.device=cpu "${TGCN[@]}"
probe bf16 trainer.bf16=true "${TGCN[@]}"
probe deterministic trainer.deterministic=true "${TGCN[@]}"
probe dcrnn model=dcrnn "${DCRNN[@]}" batching.batch_size=16
probe gwnet model=gwnet "${GWNET[@]}" batching.batch_size=16
probe compile trainer.compile=true "${TGCN[@]}"
# Two ranks on the one GPU with gloo (NCCL cannot put two ranks on one device): the node-shared series, the
# feed thread's device, DDP, the stop vote and predictions to rank 0 on the multi-rank GPU code path.
step two-ranks-gloo 240 "$PY" -m stgnn_launch.cli.train gpus=2 batching=dist_index launcher.backend=gloo \
  "${SIZE[@]}" "${TGCN[@]}" "${RANKS_EXTRA[@]}" trainer.max_epochs=1 trainer.max_batches_per_epoch=20 trainer.max_eval_batches=4 \
  trainer.save_predictions=true trainer.progress=false "hydra.run.dir=$CHECK_DIR/two_ranks"
if [ -f "$CHECK_DIR/two_ranks/results.json" ]; then
  "$PY" - "$CHECK_DIR/two_ranks/results.json" <<'EOF' | tee -a "$RESULTS"
import json, sys
r = json.load(open(sys.argv[1]))
keep = ("world_size", "backend", "device", "data_bytes", "node_data_bytes", "series_bytes_per_rank",
        "series_bytes_per_node", "host_data_bytes_per_rank", "device_data_bytes_per_rank", "device_peak_allocated_bytes")
print(json.dumps({"label": "two-ranks-record", "plan": r["plan"], "test_mae": r["test"]["avg"]["mae"],
                  **{k: r.get(k) for k in keep}}))
EOF
fi

"$PY" - "$RESULTS" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip().startswith("{")]
failed = 0
print(f"\ngpu check: {sys.argv[2]} s")
print(f"{'check':<18} {'ok':>3} {'syncs/step':>10} {'step ms':>8} {'est GiB':>8} {'alloc GiB':>9} {'est/alloc':>9} "
      f"{'est/used':>8} {'test MAE':>8}")
g = lambda v: f"{v / 2**30:8.3f}" if isinstance(v, (int, float)) else f"{'-':>8}"
for r in rows:
    if r["label"] == "machine":
        print(f"machine: {r['gpu']} (torch {r['torch']}, CUDA {r['cuda']})")
        continue
    ok = r.get("rc", 0) == 0
    failed += not ok
    f = lambda k, fmt: format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"
    print(f"{r['label']:<18} {'yes' if ok else 'NO':>3} {f('syncs_per_step', '.2f'):>10} {f('step_ms', '.1f'):>8} "
          f"{g(r.get('device_tensor_estimate_bytes'))} {g(r.get('max_allocated_bytes')):>9} "
          f"{f('estimate_over_allocated', '.2f'):>9} {f('estimate_over_used', '.2f'):>8} {f('test_mae', '.3f'):>8}")
print(f"{failed} failed")
sys.exit(1 if failed else 0)
EOF
