"""Forward hooks that read the feature maps of any ``nn.Module`` CNN (captum's LayerGradCam style).

- :func:`capture_output`: a ``with`` block during which one module's output is recorded (optionally
  cut from the graph), used by Grad-CAM on a named layer and by
  :class:`~aid.models.WrappedClassifier` for its features.
- :func:`probe_levels`: the multi-scale feature levels of a network up to a named layer, found from the
  output shapes of its modules on a dummy input (like timm's ``feature_info``).
- :class:`HookedEncoder`: a network seen through those levels with timm's encoder interface
  (``forward_intermediates``, ``forward_head``, ``feature_info``), the RTS masker's encoder for a
  classifier that is not a timm model.

Every hook is removed when its block or call ends, also when it raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def _check_map(output, name: str) -> None:
    if not isinstance(output, Tensor) or output.dim() != 4:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise TypeError(f"layer {name!r} must output a (B, D, h, w) tensor, got {got}")


@contextlib.contextmanager
def capture_output(module: nn.Module, cut: bool = False, name: str = "layer") -> Iterator[list[Tensor]]:
    """Record the outputs (B, D, h, w) of ``module`` during the block, in call order.

    The network continues with a clone of each output, so later in-place operations (``ReLU(inplace=True)``,
    ``out += identity``) write into the clone, never into the recorded tensor. With ``cut=True`` each
    recorded output is a fresh leaf that requires grad: the graph then starts at the module (the part of
    the network before it records nothing when its parameters are frozen and its input needs no grad).

    Args:
        module: the module whose output is recorded.
        cut: detach the output and make it a leaf that requires grad (default False).
        name: the module's name, for the error raised when its output is not a 4-d tensor.

    Example::

        with capture_output(model.layer4) as acts:
            logits = model(x)
        a = acts[-1]  # (B, 512, h, w)
    """
    captured: list[Tensor] = []

    def hook(mod: nn.Module, inputs, output: Tensor) -> Tensor:
        _check_map(output, name)
        if cut:
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass(frozen=True)
class Level:
    """One feature level: the ``call``-th output (0-based) of module ``module``, ``num_chs`` channels at
    1/``reduction`` of the input side."""

    module: str
    call: int
    num_chs: int
    reduction: int


def probe_levels(model: nn.Module, layer: str, in_chans: int, size: int = 64) -> list[Level]:
    """The feature levels of ``model`` up to its module ``layer``: per stride, the deepest 4-d output.

    One forward pass of a (2, ``in_chans``, size, size) dummy input (seeded, on the model's device and
    dtype, in eval mode without gradients; the model's modes and flags are restored) records, in order of
    completion, the 4-d outputs of all modules. Up to the last output of ``layer``, each stride (input side
    / output side) keeps its last output (the deepest module: a block's container ends after its
    children), strides coarser than the layer's are dropped, and ``layer`` itself is the last level.
    A module called several times (a ReLU reused inside a block) is identified by its call index.

    Returns the levels in forward order (fine to coarse, ``layer`` last).
    """
    named = dict(model.named_modules())
    if layer not in named:
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}")
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    events: list[tuple[str, int, int, int]] = []  # (name, call, channels, height), in completion order
    calls: dict[str, int] = {}

    def make_hook(n: str):
        def hook(mod: nn.Module, inputs, output) -> None:
            call = calls.get(n, 0)
            calls[n] = call + 1
            if isinstance(output, Tensor) and output.dim() == 4 and output.shape[0] == 2:
                events.append((n, call, int(output.shape[1]), int(output.shape[-2])))

        return hook

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, int(in_chans), int(size), int(size), generator=g).to(device=device, dtype=dtype)
    handles = []
    modes = [m.training for m in model.modules()]
    try:
        for n, m in named.items():
            handles.append(m.register_forward_hook(make_hook(n)))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode
    ends = [i for i, e in enumerate(events) if e[0] == layer]
    if not ends:
        raise TypeError(f"layer {layer!r} of {type(model).__name__} gives no (B, D, h, w) output on "
                        f"{size}x{size} images")
    events = events[: ends[-1] + 1]
    top = max(1, round(size / events[-1][3]))
    deepest: dict[int, int] = {}
    for i, (_, _, _, h) in enumerate(events):
        r = max(1, round(size / h))
        if r < top:
            deepest[r] = i
    keep = sorted(deepest.values()) + [len(events) - 1]
    return [Level(events[i][0], events[i][1], events[i][2], max(1, round(size / events[i][3]))) for i in keep]


class HookedEncoder(nn.Module):
    """Any CNN classifier as a multi-scale encoder with timm's interface, its features read by hooks.

    The feature levels are those of :func:`probe_levels` (per stride the deepest module up to ``layer``);
    ``forward_intermediates(z)`` runs the whole network once and returns its own output (the logits) with
    the level outputs, and ``forward_head`` is the identity on those logits, so the encoder's logits are
    the network's.

    Args:
        model: the network on normalised images (used as is; copy it first to keep the original apart).
        layer: name of the deepest level (the bottleneck), as ``model.named_modules()`` names it.
        in_chans: input channels of the dummy input.
        num_classes: K, the width of the network's output.
        probe_size: side of the dummy input used to find the levels (default 64).

    Shapes: ``forward_intermediates(z (B, C, H, W))`` -> (logits (B, K), [(B, D_i, H / r_i, W / r_i)]);
    ``feature_info``: one dict per level with ``num_chs``, ``reduction``, ``module``.

    Example::

        encoder = HookedEncoder(copy.deepcopy(torchvision_resnet), "layer4", in_chans=3, num_classes=10)
        logits, feats = encoder.forward_intermediates(z)
    """

    def __init__(self, model: nn.Module, layer: str, in_chans: int, num_classes: int, probe_size: int = 64) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.num_classes = int(num_classes)
        self.levels = probe_levels(model, layer, in_chans, probe_size)
        self.feature_info = [
            {"module": lv.module, "num_chs": lv.num_chs, "reduction": lv.reduction} for lv in self.levels
        ]

    def forward(self, z: Tensor) -> Tensor:
        """The network's logits (B, K) of normalised images z."""
        return self.model(z)

    def forward_intermediates(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(logits (B, K), level outputs in the order of ``feature_info``) from one pass over z."""
        named = dict(self.model.named_modules())
        slots: list[Tensor | None] = [None] * len(self.levels)
        by_module: dict[str, list[tuple[int, int]]] = {}
        for i, lv in enumerate(self.levels):
            by_module.setdefault(lv.module, []).append((lv.call, i))
        calls: dict[str, int] = {}

        def make_hook(n: str):
            def hook(mod: nn.Module, inputs, output):
                call = calls.get(n, 0)
                calls[n] = call + 1
                for want, i in by_module[n]:
                    if want == call:
                        slots[i] = output
                        return output.clone()  # later in-place ops must not change the recorded level
                return None

            return hook

        handles = []
        try:
            for n in by_module:
                handles.append(named[n].register_forward_hook(make_hook(n)))
            logits = self.model(z)
        finally:
            for h in handles:
                h.remove()
        missing = [self.levels[i].module for i, s in enumerate(slots) if s is None]
        if missing:
            raise RuntimeError(f"the encoder's levels {missing} were not computed in this forward pass")
        return logits, slots

    def forward_head(self, final: Tensor) -> Tensor:
        """The logits that :meth:`forward_intermediates` returned (the network ends in its own head)."""
        return final
