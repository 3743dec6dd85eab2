#!/usr/bin/env bash
# What a lent GPU session runs (one call of the device tool, ~9 minutes): the CUDA path of the whole
# main job, then the AID and MASK variant sweeps side by side on the one card. Python packages the
# device image lacks travel as wheels in .whl/ (see /work/.library/device/README.md).
#   OUT=/tmp/out bash scripts/gpu_session.sh
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
el() { echo $(( $(date +%s) - T0 )); }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, torch.cuda.get_device_name())"
echo "[$(el) s] prerequisites (classifier, RTS) on the GPU"
python3 train.py --config rts.yaml > "$OUT/prereq.log" 2>&1 || { tail -c 3000 "$OUT/prereq.log"; exit 1; }
grep -h '"val/acc"\|localization/rts/iou' runs/classifier/report/summary.json runs/rts/report/summary.json | head
echo "[$(el) s] main job (AID + evaluation) and sweeps"
LEFT=$(( ${BUDGET:-560} - $(el) ))
( timeout $LEFT python3 train.py --config rts_aid.yaml > "$OUT/mainjob.log" 2>&1; echo "main job rc=$? at $(el) s" ) &
timeout $LEFT python3 scripts/sweep.py scripts/plans/aid_variants.yaml --out /tmp/sw_aid --prereq . \
  --jobs ${AID_JOBS:-5} --threads 1 --deadline $(( LEFT - 200 )) > "$OUT/aid_sweep.log" 2>&1 &
timeout $LEFT python3 scripts/sweep.py scripts/plans/mask_attack.yaml --out /tmp/sw_mask --prereq . \
  --jobs ${MASK_JOBS:-3} --threads 1 --deadline $(( LEFT - 150 )) > "$OUT/mask_sweep.log" 2>&1 &
wait
echo "[$(el) s] done"
cp runs/rts_aid/report/summary.json "$OUT/mainjob_summary.json" 2>/dev/null
for s in aid mask; do cp /tmp/sw_$s/results.json "$OUT/${s}_results.json" 2>/dev/null; done
tar czf "$OUT/logs.tar.gz" /tmp/sw_aid/*/log.txt /tmp/sw_mask/*/log.txt runs/*/report/report.md 2>/dev/null
grep -h "Total\|rc=" "$OUT/mainjob.log" | tail -3
python3 - <<'PY'
import json
d = json.load(open("runs/rts_aid/report/summary.json")) if __import__("os").path.exists("runs/rts_aid/report/summary.json") else {}
for k in ["localization/rts_vs_rtsa/l1", "adv2/rts/adv2/l1", "adv2/rtsa/adv2/l1", "adv2/grad/adv2/l1", "adv2/mask/adv2/iou"]:
    print(k, d.get(k))
PY
cat /tmp/sw_aid/results.md /tmp/sw_mask/results.md 2>/dev/null
