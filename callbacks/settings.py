"""Checks of the evaluation callbacks' settings when a callback is built (LightingCLI builds callbacks before
training), so that a typo fails at parse time instead of after a whole training run.

* interpreter names: a registry name (``aid.interpreters.INTERPRETERS``) or one a module provides (``rts``,
  ``rtsa``);
* ``attack_kwargs``: keys ``<attack>`` or ``<attack>.<interpreter>``; inner keys are arguments of the attack
  that will run (for ADV² that depends on the interpreter's family and, for MASK, on ``estimate``: ``ADV2``,
  ``ADV2Mask`` / ``ADV2MaskUnrolled`` / ``ADV2MaskMinMax`` for MASK, ..., see
  :func:`aid.attacks.base.attack_class`), ``strategy_kwargs`` keys arguments of the family's ℓ_int
  strategy; ``eps`` / ``alpha`` lie in (0, 1]. An un-suffixed table (``adv2``) applies to every interpreter
  of the callback, so one of its keys must fit at least one of them, and is then passed only to the
  interpreters whose attack accepts it (:func:`attack_settings`); a suffixed one (``adv2.mask``) must fit
  that interpreter. The estimate of an interpreter's attack is the suffixed table's ``estimate``, else the
  un-suffixed one's (:func:`effective_estimate`);
* ``interpreter_kwargs``: keys interpreter names, inner keys arguments of that interpreter's constructor.

Every error is a ``ValueError`` that names the callback, the key path (``attack_kwargs.pdg``), the offender,
a close match and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aid.attacks.base import attack_arguments, attack_class, check_pixel_value
from aid.attacks.strategies import STRATEGIES, InterpretationLoss
from aid.interpreters.base import INTERPRETERS
from aid.registry import accepted_arguments, suggest

#: Interpreters that evaluation modules provide themselves (``pl_module.interpreters()``), besides the registry.
MODULE_INTERPRETERS = ("rts", "rtsa")
#: Arguments the callbacks pass to every attack / interpreter themselves.
PASSED_BY_CALLBACK = ("classifier", "interpreter")
#: Attack arguments measured in pixel units of [0, 1] images.
PIXEL_ARGUMENTS = ("eps", "alpha")


def known_interpreters() -> list[str]:
    """Interpreter names a callback accepts: the registry's and the modules' own, sorted."""
    import aid.interpreters  # noqa: F401  (fills the registry)

    return sorted({*INTERPRETERS.names(), *MODULE_INTERPRETERS})


def interpreter_family(name: str) -> str:
    """The family (registry name of its class, as ``Interpreter.name``) of an interpreter name: ``rtsa`` -> ``rts``."""
    import aid.interpreters  # noqa: F401  (fills the registry)

    if name in MODULE_INTERPRETERS:
        return "rts"
    return getattr(INTERPRETERS.get(name), "name", name) if name in INTERPRETERS else name


def strategy_class(family: str) -> type | None:
    """The ℓ_int strategy class ADV² builds for an interpreter family; None for one without a strategy
    (MASK: not differentiable, attacked by its own attacks, :mod:`aid.attacks.adv2_mask`)."""
    interp_cls = INTERPRETERS.get(family) if family in INTERPRETERS else None
    if interp_cls is not None and getattr(interp_cls, "differentiable", True) is False:
        return None
    return STRATEGIES.get(family) if family in STRATEGIES else InterpretationLoss


def _accepted(target: type | None, passed: tuple[str, ...] = PASSED_BY_CALLBACK) -> set[str] | None:
    """The keyword names a user may give ``target`` (None: unknown, so all; a missing target: none)."""
    if target is None:
        return set()
    names = accepted_arguments(target)
    return None if names is None else set(names) - set(passed)


def _attack_accepted(attack: str, family: str | None, estimate: str | None) -> set[str] | None:
    """The keyword names a user may give ``attack`` against ``family`` with ``estimate`` (None: unknown, so all)."""
    names = attack_arguments(attack, family, estimate)
    return None if names is None else set(names) - set(PASSED_BY_CALLBACK)


def effective_estimate(table: Mapping[str, Any], attack: str, interpreter: str | None) -> str | None:
    """The ``estimate`` that ``attack`` against ``interpreter`` gets: the suffixed table's, else the un-suffixed
    table's (None: the default)."""
    own = table.get(f"{attack}.{interpreter}") if interpreter is not None else None
    base = table.get(attack)
    for settings in (own, base):
        if isinstance(settings, Mapping) and "estimate" in settings:
            return settings["estimate"]
    return None


def _fail(owner: str, path: str, message: str) -> None:
    raise ValueError(f"{owner}: {path}: {message}")


def check_interpreter_names(owner: str, key: str, names: Iterable[str]) -> None:
    """Every name of the callback's ``key`` (``interpreters``, ``compare``) is a known interpreter."""
    allowed = known_interpreters()
    for name in names:
        if name not in allowed:
            _fail(owner, key, f"unknown interpreter {name!r}{suggest(name, allowed)}; allowed: {', '.join(allowed)} "
                  "(rts / rtsa: the module's own maskers)")


def check_choices(owner: str, key: str, names: Iterable[str], allowed: Iterable[str]) -> None:
    """Every name of the callback's ``key`` (e.g. ``attacks``) is one of ``allowed``."""
    allowed = list(allowed)
    for name in names:
        if name not in allowed:
            _fail(owner, key, f"unknown name {name!r}{suggest(name, allowed)}; allowed: {', '.join(allowed)}")


def _check_table(owner: str, path: str, table: Any) -> Mapping[str, Any]:
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        _fail(owner, path, f"must be a mapping of settings, got {table!r}")
    return table


def check_interpreter_kwargs(owner: str, table: Mapping[str, Any] | None) -> None:
    """``interpreter_kwargs``: keys interpreter names, inner keys arguments of that interpreter's constructor."""
    allowed = known_interpreters()
    for name, settings in _check_table(owner, "interpreter_kwargs", table).items():
        path = f"interpreter_kwargs.{name}"
        if name not in allowed:
            _fail(owner, path, f"unknown interpreter {name!r}{suggest(name, allowed)}; allowed: {', '.join(allowed)}")
        accepted = _accepted(INTERPRETERS.get(interpreter_family(name)), ("classifier",))
        for key in _check_table(owner, path, settings):
            if accepted is not None and key not in accepted:
                _fail(owner, f"{path}.{key}", f"interpreter {name!r} has no argument {key!r}"
                      f"{suggest(key, sorted(accepted))}; accepted: {', '.join(sorted(accepted))}")


def check_attack_kwargs(
    owner: str,
    table: Mapping[str, Any] | None,
    attacks: Iterable[str],
    interpreter_free: Iterable[str],
    interpreters: Iterable[str],
) -> None:
    """``attack_kwargs`` of a callback whose attack names are ``attacks`` and interpreters ``interpreters``.

    Args:
        owner: the callback's name, for the messages.
        table: ``{"<attack>": {...}, "<attack>.<interpreter>": {...}}``.
        attacks: the attack names the table may hold (a table may set attacks the callback does not run,
            e.g. one YAML anchor shared by several callbacks).
        interpreter_free: those of ``attacks`` that attack no interpreter (no ``.<interpreter>`` suffix).
        interpreters: the callback's interpreters, to which the un-suffixed tables apply.
    """
    attacks, free = list(attacks), set(interpreter_free)
    interpreters = list(interpreters)
    known = known_interpreters()
    table = _check_table(owner, "attack_kwargs", table)
    for key, settings in table.items():
        path = f"attack_kwargs.{key}"
        attack, dot, interp = str(key).partition(".")
        if attack not in attacks:
            _fail(owner, path, f"unknown attack {attack!r}{suggest(attack, attacks)}; keys are <attack> or "
                  f"<attack>.<interpreter> with attack among {', '.join(attacks)}")
        if dot and attack in free:
            _fail(owner, path, f"{attack!r} attacks no interpreter: give its settings under {attack!r}")
        if dot and interp not in known:
            _fail(owner, path, f"unknown interpreter {interp!r}{suggest(interp, known)}; allowed: {', '.join(known)}")
        settings = _check_table(owner, path, settings)
        # The (family, estimate) of each attack that gets these settings: the named interpreter's, or those of
        # all of the callback's interpreters.
        names = [None] if attack in free else [interp] if dot else interpreters or [None]
        targets = list(dict.fromkeys(
            (None if n is None else interpreter_family(n), None if n is None else effective_estimate(table, attack, n))
            for n in names
        ))
        _check_attack_settings(owner, path, attack, targets, settings)


def _check_attack_settings(
    owner: str, path: str, attack: str, targets: list[tuple[str | None, str | None]], settings: Mapping[str, Any]
) -> None:
    """Inner keys of one ``attack_kwargs`` entry: each accepted by the attack of at least one of ``targets``
    ((family, estimate) pairs; a suffixed key has one), ``strategy_kwargs`` keys likewise by the families' ℓ_int
    strategies; the table's own ``estimate`` names an estimate of each family that has them."""
    try:
        if "estimate" in settings:
            for family, _ in targets:
                attack_class(attack, family, settings["estimate"])
        classes = {t: attack_class(attack, *t) for t in targets}
    except ValueError as err:
        _fail(owner, f"{path}.estimate", str(err))
    accepted = {t: _attack_accepted(attack, *t) for t in targets}
    if any(a is None for a in accepted.values()):
        return  # an attack with arguments we cannot list: its constructor checks them
    union = sorted(set().union(*accepted.values()))
    what = "/".join(sorted({c.__name__ for c in classes.values()}))
    for key, value in settings.items():
        if key not in union:
            _fail(owner, f"{path}.{key}", f"{what} has no argument {key!r}{suggest(key, union)}; accepted: "
                  f"{', '.join(union)}")
        if key in PIXEL_ARGUMENTS:
            try:
                check_pixel_value(key, value)
            except ValueError as err:
                _fail(owner, f"{path}.{key}", str(err))
    inner = _check_table(owner, f"{path}.strategy_kwargs", settings.get("strategy_kwargs"))
    if inner:
        families = list(dict.fromkeys(f for f, _ in targets))
        # Families whose attack takes strategy settings and builds a strategy from them.
        strategies = {
            f: strategy_class(f) for (f, e) in targets if f is not None and "strategy_kwargs" in accepted[(f, e)]
        }
        if None in families:  # no interpreter known: any strategy may receive them
            strategies.update({s: STRATEGIES.get(s) for s in STRATEGIES.names()})
            strategies["generic"] = InterpretationLoss
        names = [_accepted(s) for s in strategies.values()]
        if any(n is None for n in names):
            return
        allowed = sorted(set().union(*names)) if names else []
        for key in inner:
            if key not in allowed:
                whose = ", ".join(sorted(f for f in strategies if strategies[f] is not None)) or "none"
                _fail(owner, f"{path}.strategy_kwargs.{key}", f"no ℓ_int strategy of the interpreters it applies "
                      f"to ({whose}) has an argument {key!r}{suggest(key, allowed)}; accepted: "
                      f"{', '.join(allowed) or 'none'}")


def attack_settings(table: Mapping[str, Any], attack: str, interpreter: str | None) -> dict[str, Any]:
    """Settings of ``attack`` against ``interpreter``: ``table[attack]`` updated by ``table[attack.interpreter]``.

    The un-suffixed table applies to every interpreter of a callback, so keys that the attack against this
    interpreter (with its :func:`effective_estimate`) does not take (checked to fit another interpreter when
    the callback was built, e.g. ``n_reset`` for MASK's Algorithm 1, or a ``strategy_kwargs`` key of GRAD's
    strategy) are left out here. The suffixed table is passed whole (checked against this interpreter's
    attack).
    """
    out = dict(table.get(attack) or {})
    if interpreter is None:
        return out
    family = interpreter_family(interpreter)
    try:
        accepted = _attack_accepted(attack, family, effective_estimate(table, attack, interpreter))
    except (KeyError, ValueError):
        accepted = None
    if accepted is not None:
        out = {k: v for k, v in out.items() if k in accepted}
    if isinstance(out.get("strategy_kwargs"), Mapping):
        names = _accepted(strategy_class(family), ("interpreter",))
        if names is not None:
            out["strategy_kwargs"] = {k: v for k, v in out["strategy_kwargs"].items() if k in names}
    out.update(table.get(f"{attack}.{interpreter}") or {})
    return out
