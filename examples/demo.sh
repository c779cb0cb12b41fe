#!/usr/bin/env bash
# The main job: recipes -> models held against timm, a custom mixer, then the mixer-ablation sweep (issue 4 demo).
# MB and PY may name another metablocks command and Python (default: the .venv that `make setup` creates).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${MB:-.venv/bin/metablocks}
PY=${PY:-.venv/bin/python}
echo "== 1. shipped recipes with timm's weights: same parameters, same logits"
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
echo
echo "== 2. a token mixer of your own (examples/custom_mixer.py), then the same file as a CLI plugin"
$PY examples/custom_mixer.py
$MB validate examples/custom_mixer.yaml --plugin examples/custom_mixer.py
echo
# The mixer ablation: 7 token mixers x 2 seeds trained on scikit-learn's digits, measured and compared.
# Re-running resumes (finished runs are kept); the table and plots land in runs/mixer_ablation/.
echo "== 3. the mixer ablation: 7 token mixers x 2 seeds, 10 epochs each, two runs at a time (a few minutes)"
$MB sweep plan examples/mixer_ablation.yaml
$MB sweep run examples/mixer_ablation.yaml --out runs/mixer_ablation --workers 2 --no-progress
