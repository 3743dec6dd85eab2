"""Targeted attacks on [0, 1] inputs."""

from aid.attacks.base import ATTACKS, Attack, AttackResult, build_attack

__all__ = ["ATTACKS", "Attack", "AttackResult", "build_attack"]
