#!/bin/bash
# GPU checks in one go (CI has no GPU): the `gpu`-marked tests, the SDM benchmark on CUDA at the
# issue's shape and a larger one, the trainer benchmark on CUDA (operators, host syncs, images/s:
# demo and default configurations, loader and on-device data, eager and compiled), and trainer
# throughput (demo config with the device cache + compile; recipe config with eager and compiled
# SDM). Logs and JSON go to $RESULTS (default gpu-results/).
#
#   bash benchmarks/gpu_check.sh                 # with the package installed, or from a checkout
#   PY=.venv/bin/python bash benchmarks/gpu_check.sh
set -u
RESULTS=${RESULTS:-gpu-results}; mkdir -p "$RESULTS"
export PYTHONPATH=$PWD/src:$PWD/examples${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}
t0=$(date +%s)
stamp() { echo "=== $1 at +$(( $(date +%s) - t0 ))s"; }

stamp env
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
$PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

stamp gpu-tests
timeout 300 $PY -m pytest -m gpu -q -p no:cacheprovider -rfEs tests 2>&1 | tee "$RESULTS/gpu_tests.log" | tail -8

stamp bench-sdm
timeout 120 $PY benchmarks/bench_sdm.py --device cuda --repeats 100 --json "$RESULTS/bench_sdm_cuda.json" \
  > "$RESULTS/bench_sdm_cuda.md" 2>&1
timeout 120 $PY benchmarks/bench_sdm.py --device cuda --repeats 30 --shape 2048,2048,6144,512 \
  --json "$RESULTS/bench_sdm_cuda_big.json" > "$RESULTS/bench_sdm_cuda_big.md" 2>&1
grep -E "^\| (irra|floor|default|compiled|chunk|reduce-overhead)" "$RESULTS"/bench_sdm_cuda*.md
# SDM per query modality (4 query modalities) against one pooled call, same shape
timeout 120 $PY benchmarks/bench_sdm.py --device cuda --part per-modality --repeats 100 \
  --json "$RESULTS/bench_sdm_per_modality_cuda.json" > "$RESULTS/bench_sdm_per_modality_cuda.md" 2>&1
grep -E "^\| " "$RESULTS/bench_sdm_per_modality_cuda.md" | head -12

stamp bench-trainer
timeout 900 $PY benchmarks/bench_trainer.py --device cuda --variants loader,device_cache --compile \
  --steps 40 --set train.compile_mode=reduce-overhead --json "$RESULTS/bench_trainer_cuda.json" > "$RESULTS/bench_trainer_cuda.md" 2>&1
grep -E "^\| (config|demo|default)" "$RESULTS/bench_trainer_cuda.md"

stamp demo-device-cache-compiled
timeout 300 $PY examples/train.py --config examples/configs/demo.toml --set train.device=cuda \
  --set output.root="$RESULTS/runs" --set output.name=demo-fast --set output.progress=off --overwrite \
  --set data.device_cache=true --set train.compile=true --set train.compile_mode=reduce-overhead \
  > "$RESULTS/demo_fast.log" 2>&1
grep -E "^epoch (1|10|30|60) |\[eval\] test|device_cache|torch.compile" "$RESULTS/demo_fast.log" | cut -c1-200

stamp demo
timeout 300 $PY examples/train.py --config examples/configs/demo.toml --set train.device=cuda \
  --set output.root="$RESULTS/runs" --set output.name=demo --set output.progress=off --overwrite \
  --set data.num_workers=6 > "$RESULTS/demo.log" 2>&1
grep -E "^epoch (1|10|30|60) |\[eval\] test" "$RESULTS/demo.log" | cut -c1-200

for v in eager compiled; do
  stamp "recipe-$v"
  c=false; [ "$v" = compiled ] && c=true
  timeout 300 $PY examples/train.py --config examples/configs/default.toml --set train.device=cuda \
    --set output.root="$RESULTS/runs" --set output.name="recipe-$v" --set output.progress=off --overwrite \
    --set data.num_workers=8 --set train.epochs=5 --set train.max_steps_per_epoch=60 \
    --set eval.every=100 --set eval.test_at_end=false --set health.act=false \
    --set loss.sdm_compiled=$c --set output.plots=false > "$RESULTS/recipe_$v.log" 2>&1
  grep -E "^epoch " "$RESULTS/recipe_$v.log" | cut -c1-160
done
stamp done
