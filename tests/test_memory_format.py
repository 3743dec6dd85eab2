"""The opt-in channels-last switch converts the run's weights and leaves outputs unchanged."""

import torch

from aid.attacks import PGD
from callbacks.memory_format import ChannelsLast


def test_channels_last_converts_conv_weights_and_keeps_logits_and_attacks(tiny_classifier):
    import copy

    import pytorch_lightning as pl

    class Holder(pl.LightningModule):
        def __init__(self, clf):
            super().__init__()
            self.classifier = clf

    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 0, 1, 0]) % tiny_classifier.num_classes
    ref_logits = tiny_classifier(x).detach()
    ref_adv = PGD(tiny_classifier, eps=0.05, alpha=0.01, steps=3)(x, t).x_adv
    module = Holder(copy.deepcopy(tiny_classifier))
    ChannelsLast().setup(None, module, "fit")
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    torch.testing.assert_close(module.classifier(x), ref_logits, rtol=1e-4, atol=1e-5)
    adv = PGD(module.classifier, eps=0.05, alpha=0.01, steps=3)(x, t).x_adv
    assert (adv - ref_adv).abs().max() <= 0.01 + 1e-6  # at most one step apart where a gradient sign flips
