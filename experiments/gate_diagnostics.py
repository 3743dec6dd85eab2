"""Why do RTSA's benign maps move? The presence gate's belief against the classifier's, per class.

On N correctly classified validation images (a seeded draw) of a main-job run (its classifier, RTS and RTSA), prints:

- the classifier's confidence in the true class and the gate's belief in it (what multiplies RTS's map),
  overall and per class, with the benign L1 between RTS's and RTSA's maps;
- the same on ADV² examples made against RTSA (the evaluation's settings, random target classes): the
  gate's belief in the target class (what ADV² must raise) and in the true class;
- how much of the benign drift the gate explains: the L1 between RTS's map and RTS's map times the gate.

    python experiments/gate_diagnostics.py runs/rts_aid-<hash>            (64 images, about 1 min)
    python experiments/gate_diagnostics.py runs/rts_aid-<hash> --images 256 --no-attack
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aid.attacks import build_attack  # noqa: E402
from aid.interpreters.rts import RTSInterpreter, RTSMasker, load_masker_state  # noqa: E402
from aid.metrics import map_l1  # noqa: E402
from aid.modules.target_classifier import target_classifier  # noqa: E402


def load_run(run_dir: Path):
    """(classifier, RTS masker, RTSA masker, datamodule, config) of a finished main-job run folder."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    args = cfg["model"]["init_args"]
    classifier = target_classifier(args["classifier_ckpt"])
    rts = RTSMasker.from_classifier(classifier, mask_scale=args.get("mask_scale", 2))
    load_masker_state(rts, args["rts_ckpt"])
    rtsa = RTSMasker.from_classifier(classifier, mask_scale=args.get("mask_scale", 2))
    load_masker_state(rtsa, run_dir / "checkpoints" / "last.ckpt")
    module, _, name = cfg["data"]["class_path"].rpartition(".")
    data = getattr(__import__(module, fromlist=[name]), name)(**cfg["data"]["init_args"])
    return classifier, rts.eval(), rtsa.eval(), data, cfg


def correct_images(classifier, dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n correctly classified images (n, C, H, W) and labels (n,) of a seeded permutation of
    ``dataset`` (a draw over the whole split: folders list their images class by class)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    xs, ys = [], []
    for x, y, *_ in DataLoader(Subset(dataset, order), batch_size=256):
        with torch.no_grad():
            ok = classifier(x).argmax(1) == y
        xs.append(x[ok])
        ys.append(y[ok])
        if sum(len(v) for v in ys) >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def gate_belief(masker: RTSMasker, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The gate's belief (B,) in class c (B,) on images x."""
    logits = masker.presence(masker.normalize(x))
    return masker.presence.gate(logits, c).flatten()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--no-attack", action="store_true", help="benign statistics only")
    args = p.parse_args()
    torch.manual_seed(0)
    classifier, rts, rtsa, data, cfg = load_run(args.run_dir)
    if rtsa.presence is None:
        raise SystemExit(f"{args.run_dir}: RTSA has no presence gate")
    data.setup("validate")
    x, y = correct_images(classifier, data.val_dataloader().dataset, args.images, seed=0)
    names = list(getattr(data, "classes", range(classifier.num_classes)))
    with torch.no_grad():
        conf = classifier(x).softmax(1).gather(1, y[:, None]).flatten()
        belief = gate_belief(rtsa, x, y)
        m_rts, m_rtsa = rts(x, y)[0], rtsa(x, y)[0]
        drift = map_l1(m_rts, m_rtsa)
        scaled = map_l1(m_rts, m_rts * belief[:, None, None, None])
    print(f"{len(y)} correctly classified validation images")
    with torch.no_grad():
        top1 = (rtsa.presence(rtsa.normalize(x)).argmax(1) == y).float().mean()
    print(f"benign: classifier confidence {conf.mean():.3f}, gate belief {belief.mean():.3f} "
          f"(min {belief.min():.3f}), gate top-1 = true class {top1:.3f}")
    print(f"benign L1 RTS vs RTSA {drift.mean():.4f}; RTS vs RTS x gate {scaled.mean():.4f}; "
          f"corr(belief, L1) {torch.corrcoef(torch.stack([belief, drift]))[0, 1]:.3f}")
    print("| class | images | confidence | gate belief | benign L1 |")
    print("|---|---|---|---|---|")
    for c in range(classifier.num_classes):
        sel = y == c
        if sel.any():
            print(f"| {names[c]} | {int(sel.sum())} | {conf[sel].mean():.3f} | {belief[sel].mean():.3f} | "
                  f"{drift[sel].mean():.4f} |")
    if args.no_attack:
        return
    callbacks = cfg["trainer"]["callbacks"]
    adv2 = next(cb for cb in callbacks if cb["class_path"].endswith("ADV2Evaluation"))
    settings = dict(adv2["init_args"]["attack_kwargs"]["adv2"])
    target = (y + torch.randint(1, classifier.num_classes, y.shape)) % classifier.num_classes
    attack = build_attack("adv2", classifier, interpreter=RTSInterpreter(classifier, masker=rtsa), **settings)
    result = attack(x, target)
    ok = result.success
    with torch.no_grad():
        b_t = gate_belief(rtsa, result.x_adv, target)
        b_y = gate_belief(rtsa, result.x_adv, y)
        l1 = map_l1(rtsa(result.x_adv, target)[0], m_rtsa)
    print(f"ADV² against RTSA ({settings}): success {ok.float().mean():.3f}; on successful examples the gate's "
          f"belief in the target {b_t[ok].mean():.3f}, in the true class {b_y[ok].mean():.3f}, "
          f"ADV² L1 {l1[ok].mean():.4f}")


if __name__ == "__main__":
    main()
