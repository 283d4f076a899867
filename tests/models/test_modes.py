"""eval_mode: eval inside the block, the previous mode back afterwards, also on an error."""

from __future__ import annotations

import pytest
from torch import nn

from cimpt.models.modes import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_puts_the_previous_mode_back(training: bool) -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train(training)
    with eval_mode(net) as inside:
        assert inside is net and not net.training and not net[1].training
    assert net.training is training and net[1].training is training


def test_eval_mode_puts_training_back_when_the_block_raises() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with pytest.raises(RuntimeError, match="bad batch"), eval_mode(net):
        raise RuntimeError("bad batch")
    assert net.training and net[1].training


def test_eval_mode_keeps_a_frozen_submodule_in_eval() -> None:
    class Frozen(nn.Linear):
        def train(self, mode: bool = True) -> Frozen:
            return super().train(False)  # as a frozen tokenizer does

    net = nn.Sequential(nn.Linear(2, 2), Frozen(2, 2)).train()
    with eval_mode(net):
        pass
    assert net.training and net[0].training and not net[1].training
