"""Checkpoints: a state saved under one layout and restored under another fails with a message that names
the checkpoint and says what to do, not orbax's tree-structure dump."""

import jax.numpy as jnp
import numpy as np
import pytest

from qajax.errors import CheckpointError
from qajax.train.checkpoint import Checkpoints, abstract_like


def test_restoring_another_layout_names_the_checkpoint(tmp_path):
    saved = {"params": {"w": jnp.ones((2, 3))}, "opt": (jnp.zeros((2, 3)), jnp.zeros(()))}
    checkpoints = Checkpoints(tmp_path / "ckpt", every_steps=1, asynchronous=False)
    assert checkpoints.save(1, saved, {"epoch": 0})
    checkpoints.wait()

    state, position = checkpoints.restore(1, abstract_like(saved))  # the same layout restores exactly
    np.testing.assert_array_equal(state["params"]["w"], saved["params"]["w"])
    assert position == {"epoch": 0}

    other = {"params": {"w": jnp.ones((2, 3))}, "opt": {"mu": jnp.zeros((2, 3))}}
    with pytest.raises(CheckpointError, match=r"ckpt/1: the saved train state has another layout"):
        checkpoints.restore(1, abstract_like(other))
    checkpoints.close()
