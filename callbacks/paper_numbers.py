"""Published numbers of Zhang et al. 2020 ("Interpretable Deep Learning under Fire"), keyed by our metric names.

Transcribed by hand from the paper's text; each block cites its table. Only numbers
printed in the text or in tables are here: Figures 5–6, 9–10, 13, 20 and 22 are plots without printed
values. Rates (ASR, detection rates) are fractions in [0, 1] as our metrics are (the paper's 98% is 0.98);
mc is the target-class probability; l1 / l2 are per-pixel map distances (the paper divides L1 by the number
of pixels and L2 by its square root); iou is the IoU of binarised maps.

Not transcribed: Table 2 (the localisation error of [10]'s benchmark, a different measure from our
``localization/<interpreter>/{iou, energy}``) and Table 8 (random-class target maps, which our callbacks
do not run). Tables 10–11 of Appendix B are hyper-parameters (see the configs).

Example:
    >>> published("imagenet_resnet50")["localization/rts_vs_rtsa/l1"]
    0.03
"""

from __future__ import annotations

PAPER = "Zhang et al. 2020"
INTERPRETERS = ("grad", "cam", "mask", "rts")
SQUEEZERS = ("bit_depth_2", "bit_depth_3", "median_3x3", "nlm_11_3_4")  # Table 4's rows, in order


def _per_interpreter(attack: str, metric: str, values: tuple[float, ...], prefix: str = "adv2") -> dict[str, float]:
    """``<prefix>/<interpreter>/<attack>/<metric>`` for GRAD, CAM, MASK, RTS (the paper's column order)."""
    return {f"{prefix}/{i}/{attack}/{metric}": v for i, v in zip(INTERPRETERS, values, strict=True)}


def _merge(*tables: dict[str, float]) -> dict[str, float]:
    """One table from several; a key given twice (e.g. Table 5 repeats Table 12) must agree."""
    out: dict[str, float] = {}
    for table in tables:
        for key, value in table.items():
            if key in out and out[key] != value:
                raise AssertionError(f"transcription conflict for {key}: {out[key]} vs {value}")
            out[key] = value
    return out


def _pgd_everywhere(asr: float, mc: float) -> dict[str, float]:
    # Table 3 prints PGD once per model: PGD ignores the interpreter, and we log it under each one.
    return {**_per_interpreter("pgd", "asr", (asr,) * 4), **_per_interpreter("pgd", "mc", (mc,) * 4)}


_RESNET50 = _merge(
    # Table 3 (ResNet): ASR (MC) of PGD and ADV².
    _pgd_everywhere(1.0, 1.0),
    _per_interpreter("adv2", "asr", (1.0, 1.0, 0.98, 1.0)),
    _per_interpreter("adv2", "mc", (0.99, 1.0, 0.99, 1.0)),
    # Table 12 (ResNet columns): per-pixel L1 / L2 between benign and adversarial maps.
    _per_interpreter("pgd", "l1", (0.10, 0.22, 0.28, 0.22)),
    _per_interpreter("adv2", "l1", (0.04, 0.05, 0.09, 0.01)),
    _per_interpreter("pgd", "l2", (0.14, 0.28, 0.38, 0.42)),
    _per_interpreter("adv2", "l2", (0.07, 0.06, 0.16, 0.06)),
    # Table 5 (ResNet, the feature-squeezing study): L1 and IoU for MASK / RTS; P, A, A* = pgd, adv2, adv2_adaptive.
    {
        "adv2/mask/pgd/l1": 0.28, "adv2/mask/adv2/l1": 0.09, "adv2/mask/adv2_adaptive/l1": 0.09,
        "adv2/rts/pgd/l1": 0.22, "adv2/rts/adv2/l1": 0.01, "adv2/rts/adv2_adaptive/l1": 0.02,
        "adv2/mask/pgd/iou": 0.21, "adv2/mask/adv2/iou": 0.65, "adv2/mask/adv2_adaptive/iou": 0.61,
        "adv2/rts/pgd/iou": 0.29, "adv2/rts/adv2/iou": 0.93, "adv2/rts/adv2_adaptive/iou": 0.94,
    },  # fmt: skip
    # Table 4 (ResNet): detection rates. Columns PGD, MASK-A, RTS-A, MASK-A*, RTS-A* map to our attack keys
    # pgd, adv2 (first interpreter: mask), adv2_rts, adv2_adaptive, adv2_adaptive_rts (callbacks/squeeze.py).
    {
        f"squeeze/{sq}/{col}/detection_rate": rate
        for sq, rates in zip(
            SQUEEZERS,
            (
                (0.923, 0.841, 0.940, 0.117, 0.294),  # bit depth 2-bit
                (0.727, 0.892, 0.883, 0.359, 0.139),  # bit depth 3-bit
                (0.973, 0.986, 0.990, 0.165, 0.034),  # local (median) smoothing 3×3
                (0.523, 0.747, 0.753, 0.517, 0.294),  # non-local means 11-3-4
            ),
            strict=True,
        )
        for col, rate in zip(("pgd", "adv2", "adv2_rts", "adv2_adaptive", "adv2_adaptive_rts"), rates, strict=True)
    },
    # Table 6 (ResNet): ASR (MC) of ADV² towards random-patch target maps (our adv2_patch evaluation).
    _per_interpreter("adv2", "asr", (1.0, 1.0, 0.99, 1.0), prefix="adv2_patch"),
    _per_interpreter("adv2", "mc", (0.98, 1.0, 0.95, 1.0), prefix="adv2_patch"),
    # Table 7 (ResNet): L1 of ADV² maps to the benign maps (∆b) and to the target patches (∆t).
    _per_interpreter("adv2", "l1", (0.16, 0.50, 0.42, 0.49), prefix="adv2_patch"),
    _per_interpreter("adv2", "l1_target", (0.10, 0.04, 0.15, 0.07), prefix="adv2_patch"),
    # Table 9 (ResNet): L1 of maps on the target interpreter (column) of ADV² examples made against the
    # source interpreter (row), and of PGD examples (last row).
    {
        f"transfer/{src}/{tgt}/l1": v
        for src, row in (
            ("grad", (0.04, 0.24, 0.22, 0.24)),
            ("cam", (0.09, 0.05, 0.18, 0.13)),
            ("mask", (0.12, 0.34, 0.09, 0.74)),
            ("rts", (0.10, 0.17, 0.20, 0.01)),
            ("pgd", (0.10, 0.22, 0.28, 0.22)),
        )
        for tgt, v in zip(INTERPRETERS, row, strict=True)
    },
    # Table 10 of §5 (AID, ResNet): benign L1 between RTS and RTSA maps; ADV² L1 on RTS and on RTSA.
    {"localization/rts_vs_rtsa/l1": 0.03, "adv2/rts/adv2/l1": 0.01, "adv2/rtsa/adv2/l1": 0.10},
)

_DENSENET169 = _merge(
    # Table 3 (DenseNet): ASR (MC) of PGD and ADV².
    _pgd_everywhere(1.0, 1.0),
    _per_interpreter("adv2", "asr", (1.0, 1.0, 0.96, 1.0)),
    _per_interpreter("adv2", "mc", (0.98, 1.0, 0.98, 1.0)),
    # Table 12 (DenseNet columns): per-pixel L1 / L2 between benign and adversarial maps.
    _per_interpreter("pgd", "l1", (0.11, 0.31, 0.27, 0.26)),
    _per_interpreter("adv2", "l1", (0.05, 0.04, 0.09, 0.02)),
    _per_interpreter("pgd", "l2", (0.15, 0.36, 0.37, 0.48)),
    _per_interpreter("adv2", "l2", (0.07, 0.05, 0.17, 0.09)),
)

_ISIC2018 = _merge(
    # Table 13 (skin cancer case study, ResNet backbone): per-pixel L1 / L2 between benign and adversarial maps.
    _per_interpreter("pgd", "l1", (0.19, 0.25, 0.23, 0.15)),
    _per_interpreter("adv2", "l1", (0.06, 0.06, 0.08, 0.02)),
    _per_interpreter("pgd", "l2", (0.23, 0.31, 0.30, 0.26)),
    _per_interpreter("adv2", "l2", (0.09, 0.08, 0.11, 0.07)),
)

_REFERENCES: dict[str, dict[str, float]] = {
    "imagenet_resnet50": _RESNET50,
    "imagenet_densenet169": _DENSENET169,
    "isic2018_resnet": _ISIC2018,
}


def references() -> list[str]:
    """Names of the published tables (one per model / dataset of the paper)."""
    return sorted(_REFERENCES)


def published(reference: str) -> dict[str, float]:
    """The paper's numbers for ``reference`` (e.g. ``imagenet_resnet50``) as ``{metric key: value}`` (a copy).

    Raises:
        ValueError: ``reference`` is not a known name; the message lists the known ones.
    """
    if reference not in _REFERENCES:
        raise ValueError(f"unknown paper reference {reference!r}; known references: {', '.join(references())}")
    return dict(_REFERENCES[reference])
