"""Lint: the training step has no host synchronisation (`.item()` & co.) outside logging intervals (issue 10).

On a GPU each of these calls stalls the CPU until the device catches up. The check reads the source of every
function on the hot path; a line may opt out only with a comment containing "host sync:" saying why.
"""

import ast
import inspect
import textwrap

import pytest

from epg.engine.model import TrainedModel
from epg.engine.trainer import Trainer
from epg.nn import denoiser
from epg.objectives import augment, consistency, diffusion, pretrain

FORBIDDEN_METHODS = {"item", "tolist", "numpy", "cpu", "synchronize"}
FORBIDDEN_BUILTINS = {"float", "bool"}

HOT = [Trainer.train_step, TrainedModel.grad_norm, TrainedModel.update, pretrain.info_nce,
       pretrain.PretrainObjective.forward, pretrain.PretrainObjective.grid_pair,
       pretrain.PretrainObjective.after_optimizer_step, diffusion.DiffusionObjective.forward, denoiser.x0_prediction,
       denoiser.encode, consistency.ConsistencyObjective.forward, denoiser.consistency_function,
       augment.augment_view, augment.gaussian_blur, augment.random_resized_crop_flip, augment.color_jitter]


def _violations(fn) -> list[str]:
    source = textwrap.dedent(inspect.getsource(fn))
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        bad = (isinstance(f, ast.Attribute) and f.attr in FORBIDDEN_METHODS) or (
            isinstance(f, ast.Name) and f.id in FORBIDDEN_BUILTINS)
        if bad and "host sync:" not in lines[node.lineno - 1]:
            found.append(lines[node.lineno - 1].strip())
    return found


@pytest.mark.parametrize("fn", HOT, ids=lambda f: f.__qualname__)
def test_hot_path_has_no_host_sync(fn):
    assert _violations(fn) == []


def test_the_lint_catches_a_sync():
    def step(loss):
        return loss.item() + float(loss)

    assert len(_violations(step)) == 2
