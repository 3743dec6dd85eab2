"""Targeted attacks on [0, 1] inputs: PGD, ADV² (per interpreter family; three estimates against MASK), StAdv,
adaptive ADV².

Importing this package imports every attack module, so the ``ATTACKS`` registry is full.
"""

from aid.attacks.adaptive import (
    ADV2Adaptive,
    ADV2MaskAdaptive,
    ADV2MaskMinMaxAdaptive,
    ADV2MaskUnrolledAdaptive,
    adaptive_class,
)
from aid.attacks.adv2 import ADV2, ADV2_VARIANTS, adv2_class, make_adv2
from aid.attacks.adv2_mask import MASK_ESTIMATES, ADV2Mask, ADV2MaskBase  # ADV2Mask: the ADV² variant for "mask"
from aid.attacks.adv2_mask_minmax import ADV2MaskMinMax
from aid.attacks.adv2_mask_unrolled import ADV2MaskUnrolled
from aid.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    attack_arguments,
    attack_class,
    build_attack,
    check_pixel_value,
)
from aid.attacks.mask_follower import MaskFollower
from aid.attacks.pgd import PGD
from aid.attacks.stadv import ADV2StAdv, StAdv
from aid.attacks.strategies import STRATEGIES, InterpretationLoss, build_interpretation_loss

__all__ = [
    "ADV2",
    "ADV2Adaptive",
    "ADV2Mask",
    "ADV2MaskAdaptive",
    "ADV2MaskBase",
    "ADV2MaskMinMax",
    "ADV2MaskMinMaxAdaptive",
    "ADV2MaskUnrolled",
    "ADV2MaskUnrolledAdaptive",
    "ADV2StAdv",
    "ADV2_VARIANTS",
    "ATTACKS",
    "MASK_ESTIMATES",
    "MaskFollower",
    "PGD",
    "STRATEGIES",
    "StAdv",
    "Attack",
    "AttackResult",
    "InterpretationLoss",
    "adaptive_class",
    "adv2_class",
    "attack_arguments",
    "attack_class",
    "build_attack",
    "build_interpretation_loss",
    "check_pixel_value",
    "make_adv2",
]
