"""The console's learning-rate schedule and ``update_interval``: the rate the tool reads as
"the console's rate" is the rate of the console's last update, checked against the rate
``nnabla_cli train`` really set (recorded from its own entry point) and against nnabla's
scheduler objects; ``--lr solver`` and the check's epoch take it (the cap of ``--lr auto``
stays the base rate), ``settings.yaml`` and the summary say so; a definition without a
schedule reads as before, bit for bit.

The fixtures: the logistic regression of ``data7`` (50 rows, batch 16: 3 iterations an epoch,
3 epochs, 9 iterations), one definition per schedule kind the console offers
(:data:`support.schedules.KINDS`), each trained by ``nnabla_cli train`` (about a second).
"""

import math
import os

import numpy as np
import pytest
from nnabla.utils import learning_rate_scheduler as lrs

from sgd_influence_plugin import curvature, recommend, resolved, summary
from sgd_influence_plugin.heldout_check import check_rate
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.settings import InfluenceSettings
from support.netdef import NetSpec, write_nntxt
from support.results import fix_random_seeds
from support.schedules import KINDS, set_schedule, train_recording_rates

F32_LR = float(np.float32(0.1))  # what the definition stores and nnabla's scheduler starts from
#: kind -> nnabla's own scheduler for the same fields, and the last update's iteration.
NNABLA = {
    "Cosine": (lrs.CosineScheduler(F32_LR, 9), 8),
    "Polynomial": (lrs.PolynomialScheduler(F32_LR, 10, 2.0), 8),
    "Exponential": (lrs.ExponentialScheduler(F32_LR, 0.5, 2), 8),
    "Step": (lrs.StepScheduler(F32_LR, 0.1, [3, 6]), 8),
    "lr_decay": (lrs.ExponentialScheduler(F32_LR, float(np.float32(0.7)), 2), 8),
    "Cosine with linear warm-up": (
        lrs.LinearWarmupScheduler(lrs.CosineScheduler(F32_LR, 12), 4),
        8,
    ),
    "Step, update_interval 2": (lrs.StepScheduler(F32_LR, 0.1, [4]), 7),
}


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, data7):
    """Factory: kind (a key of KINDS, or "none") -> (result folder, the rates nnabla_cli train
    set, in order); trained once per module.
    """
    made = {}

    def get(kind):
        if kind not in made:
            folder = str(tmp_path_factory.mktemp("sched"))
            spec = NetSpec(
                arch="logreg", input_shape=(1, 7, 7), batch_size=16, lr=0.1, max_epoch=3,
                iter_per_epoch=3, weight_decay=0.01, train_csv=data7["train"],
                val_csv=data7["val"],
            )  # fmt: skip
            nntxt = write_nntxt(spec, os.path.join(folder, "net.nntxt"))
            fix_random_seeds(nntxt, 313)
            if kind != "none":
                set_schedule(nntxt, KINDS[kind])
            made[kind] = folder, train_recording_rates(folder, nntxt)
        return made[kind]

    return get


def _solver(folder):
    return load_model(model=os.path.join(folder, "results.nnp")).info.solver


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_final_rate_is_the_rate_nnabla_cli_train_ended_at(scheduled, kind):
    folder, rates = scheduled(kind)
    sched = _solver(folder).schedule
    scheduler, last = NNABLA[kind]
    assert sched.final_lr == pytest.approx(rates[-1], rel=1e-6)
    assert sched.final_lr == pytest.approx(scheduler.get_learning_rate(last), rel=1e-6)
    assert sched.last_update == last and sched.iterations == 9
    assert sched.kind == kind.split(",")[0] and sched.base_lr == 0.1
    assert sched.final_lr < 0.1 / 3  # each fixture ends well below its base rate
    assert (
        _solver(folder)
        .describe_rate()
        .startswith(f"the console's final rate ({kind.split(',')[0]} from 0.1)")
    )


def test_update_interval_becomes_one_step_on_the_mean_of_k_batches(scheduled):
    """nnabla_cli train sums the gradients of k mini-batches of B and adds lambda * theta once:
    a plain-SGD step on the mean of k * B rows at k times the rate, weight decay lambda / k.
    """
    folder, rates = scheduled("Step, update_interval 2")
    solver = _solver(folder)
    assert len(rates) == 4  # 9 iterations, an update every 2nd: iterations 1, 3, 5, 7
    assert solver.update_interval == 2 and solver.batch_size == 32
    assert solver.lr == pytest.approx(2 * rates[-1], rel=1e-6)
    assert solver.weight_decay == pytest.approx(0.01 / 2)
    assert solver.describe_rate().endswith("x 2 (update_interval 2)")


def test_without_a_schedule_the_rate_reads_as_before(scheduled):
    """The console's default (lr_decay 1 every iteration): the same numbers, bit for bit, and
    the same words as before the schedule was read.
    """
    folder, rates = scheduled("none")
    solver = _solver(folder)
    assert rates == [F32_LR] * 9
    assert (solver.lr, solver.weight_decay, solver.batch_size) == (0.1, 0.01, 16)
    assert solver.schedule.kind == "constant" and solver.schedule.final_lr == 0.1
    assert solver.describe_rate() == "the console's rate"
    assert check_rate(solver.type, solver.lr, math.nan, solver.describe_rate()) == (
        0.1,
        "the console's rate (Sgd)",
    )
    model = load_model(model=os.path.join(folder, "results.nnp"))
    run = resolved.resolve(model, InfluenceSettings(lr="solver"))
    assert run.lr == 0.1 and not run.warnings and summary._rate_lines(run.lr_selection()) == []


def test_the_check_and_lr_solver_take_the_final_rate_and_auto_the_base(scheduled, data7):
    """Step from 0.1 ended at 0.001: ``--lr solver`` and the check's epoch take 0.001, the
    cap of ``--lr auto`` stays 0.1; settings.yaml and the summary say which rate it is.
    """
    from sgd_influence_plugin.dataset import load_dataset

    folder, rates = scheduled("Step")
    model = load_model(model=os.path.join(folder, "results.nnp"))
    words = "the console's final rate (Step from 0.1)"
    run = resolved.resolve(model, InfluenceSettings(lr="solver"))
    assert run.lr == 0.001 == pytest.approx(rates[-1], rel=1e-6)
    sel = run.lr_selection()
    assert sel["solver_lr"] == 0.001 and sel["solver_rate"] == words
    assert sel["console_schedule"]["base_lr"] == 0.1
    assert sel["console_schedule"]["final_lr"] == 0.001
    assert summary._rate_lines(sel) == [f"lr: {words}"]
    assert any("Step from 0.1" in w and "0.001" in w for w in run.warnings)
    assert recommend.check_rate_or_why_not(model, 100, math.nan)[:2] == (0.001, words + " (Sgd)")
    train = load_dataset(data7["train"], model.info.input_shapes).arrays
    auto = resolved.resolve(model, InfluenceSettings(lr="auto"))
    resolved.choose_lr(model, train, InfluenceSettings(lr="auto"), auto)
    # --lr auto stays capped by the base rate: the curvature decides, as without a schedule
    # (a Cosine schedule's final rate, near 0, would make the replay a first-order product).
    assert auto.lr_choice.bounds["solver rate"] == 0.1 and auto.lr <= 0.1


def test_the_cap_names_the_final_rate_when_it_sets_the_rate():
    curv = curvature.Curvature(1.0, 0.0, [1.0], [0.0], 1, 6, 16, 0.0)
    words = "the console's final rate (Cosine from 0.1)"
    choice = curvature.stable_lr(curv, steps=10, cap=0.003, cap_words=words)
    assert choice.lr == 0.003 and choice.limit.startswith(words + " already satisfies")
    plain = curvature.stable_lr(curv, steps=10, cap=0.003)
    assert plain.limit == "the console's own rate already satisfies both curvature bounds"
