#!/usr/bin/env bash
# The main job: recipes -> models held against timm, a custom mixer, then the mixer-ablation sweep (issue 4 demo).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=.venv/bin/metablocks
PY=.venv/bin/python
$PY - <<'PY'
import torch, timm, metablocks
from metablocks.interop.timm import load_timm_state_dict
for name in ["poolformer_s12", "convformer_s18", "caformer_s18"]:
    ours, theirs = metablocks.create_model(name).eval(), timm.create_model(name).eval()
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    n = sum(p.numel() for p in ours.parameters())
    print(f"{name:16s} {n/1e6:6.2f}M params  timm weights loaded strictly  max |logit diff| = {diff:.1e}")
PY
$PY examples/custom_mixer.py
# The mixer ablation: 7 token mixers x 2 seeds trained on scikit-learn's digits, measured and compared.
# Re-running resumes (finished runs are kept); the table and plots land in runs/mixer_ablation/.
$MB sweep plan examples/mixer_ablation.yaml
$MB sweep run examples/mixer_ablation.yaml --out runs/mixer_ablation --workers 2 --no-progress
$MB sweep report runs/mixer_ablation
cat runs/mixer_ablation/results.md 2>/dev/null || true
