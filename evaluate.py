"""Evaluation entry point: the same CLI as ``train.py`` with ``test`` implied.

``python evaluate.py --config eval_adv2.yaml`` runs the evaluation callbacks of the config on the
test split; ``python evaluate.py validate --config ...`` uses the validation split. Runs use
``Trainer(inference_mode=False)`` because attacks need gradients.
"""

from __future__ import annotations

from train import main

if __name__ == "__main__":
    main(default_subcommand="test")
