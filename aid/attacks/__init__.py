"""Targeted attacks on [0, 1] inputs: PGD, ADV² (per interpreter family), StAdv, adaptive ADV².

Importing this package imports every attack module, so the ``ATTACKS`` registry is full.
"""

from aid.attacks.adaptive import ADV2Adaptive, ADV2MaskAdaptive
from aid.attacks.adv2 import ADV2, ADV2_VARIANTS, make_adv2
from aid.attacks.adv2_mask import ADV2Mask  # also the ADV² variant for "mask"
from aid.attacks.base import ATTACKS, Attack, AttackResult, attack_class, build_attack, check_pixel_value
from aid.attacks.pgd import PGD
from aid.attacks.stadv import ADV2StAdv, StAdv
from aid.attacks.strategies import STRATEGIES, InterpretationLoss, build_interpretation_loss

__all__ = [
    "ADV2",
    "ADV2Adaptive",
    "ADV2Mask",
    "ADV2MaskAdaptive",
    "ADV2StAdv",
    "ADV2_VARIANTS",
    "ATTACKS",
    "PGD",
    "STRATEGIES",
    "StAdv",
    "Attack",
    "AttackResult",
    "InterpretationLoss",
    "attack_class",
    "build_attack",
    "build_interpretation_loss",
    "check_pixel_value",
    "make_adv2",
]
