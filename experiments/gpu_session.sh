#!/usr/bin/env bash
# What a lent GPU session runs (one call of the device tool, BUDGET seconds): the CUDA path of the main
# job, beside it the sweeps of PLANS (each "plan.yaml:jobs") side by side on the one card. Python packages
# the device image lacks travel as wheels in .whl/; a classifier and RTS trained here can travel in
# .prereq/runs (their run folders: the main job and the sweeps then find them as finished prerequisites;
# without them both are trained on the GPU first).
#   OUT=/tmp/out BUDGET=420 PLANS="experiments/plans/mask_unrolled_gpu.yaml:7" bash experiments/gpu_session.sh
# MAINJOB=0 runs the sweeps alone; ONLY="a,b" runs those variants of every plan.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
PLANS=${PLANS:-"experiments/plans/aid_variants.yaml:5 experiments/plans/mask_attack.yaml:3"}
el() { echo $(( $(date +%s) - T0 )); }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, torch.cuda.get_device_name())"
if [ -d .prereq/runs ]; then
  echo "[$(el) s] classifier and RTS from .prereq/runs"; mkdir -p runs; cp -r .prereq/runs/* runs/
else
  echo "[$(el) s] prerequisites (classifier, RTS) on the GPU"
  python3 train.py --config rts.yaml > "$OUT/prereq.log" 2>&1 || { tail -c 3000 "$OUT/prereq.log"; exit 1; }
fi
LEFT=$(( ${BUDGET:-560} - $(el) ))
[ "$LEFT" -gt 30 ] || { echo "BUDGET ${BUDGET:-560} s leaves ${LEFT} s after the set-up: nothing to run"; exit 1; }
echo "[$(el) s] main job and sweeps (${LEFT} s left)"
if [ "${MAINJOB:-1}" = 1 ]; then
  ( timeout $LEFT python3 train.py --config rts_aid.yaml > "$OUT/mainjob.log" 2>&1; echo "main job rc=$? at $(el) s" ) &
fi
names=()
for spec in $PLANS; do
  plan=${spec%%:*}; jobs=1; [ "$spec" != "$plan" ] && jobs=${spec##*:}   # "plan.yaml" alone: one job
  name=$(basename "$plan" .yaml); names+=("$name")
  timeout $LEFT python3 experiments/sweep.py "$plan" --out "/tmp/sw_$name" --jobs "$jobs" --threads 1 ${ONLY:+--only "$ONLY"} \
    --deadline $(( LEFT > 300 ? LEFT - 150 : LEFT / 2 )) > "$OUT/sweep_$name.log" 2>&1 &
done
wait
echo "[$(el) s] done"
[ "${MAINJOB:-1}" = 1 ] && cp runs/rts_aid-*/report/summary.json "$OUT/mainjob_summary.json" 2>/dev/null
for n in "${names[@]}"; do cp "/tmp/sw_$n/results.json" "$OUT/results_$n.json" 2>/dev/null; done
tar czf "$OUT/logs.tar.gz" /tmp/sw_*/*/log.txt runs/*/report/report.md "$OUT"/*.log 2>/dev/null
grep -h "Total\|rc=" "$OUT/mainjob.log" 2>/dev/null | tail -3
[ "${MAINJOB:-1}" = 1 ] && python3 - <<'PY'
import glob, json
found = glob.glob("runs/rts_aid-*/report/summary.json")
d = json.load(open(found[0])) if found else {}
for k in ["localization/rts_vs_rtsa/l1", "adv2/rts/adv2/l1", "adv2/rtsa/adv2/l1", "adv2/grad/adv2/l1", "adv2/mask/adv2/iou"]:
    print(k, d.get(k))
PY
for n in "${names[@]}"; do cat "/tmp/sw_$n/results.md" 2>/dev/null; done
