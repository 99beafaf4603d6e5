"""SeparationProbe: logit-gradient norms and cross-sensitivity, without changing training."""

import numpy as np
import torch

from dnlseg.callbacks import SeparationProbe
from dnlseg.evaluation.tensorboard_scalars import read_scalars
from tests.callbacks.conftest import final_weights


def test_probe_logs_finite_values_and_separates_dnl_from_nl(fit):
    cross = {}
    for context in ("nl", "dnl"):
        trainer = fit(context=context, callbacks=[SeparationProbe(every_n_steps=2)])
        scalars = read_scalars(trainer.logger.log_dir)
        prefix = "separation/decode_head.context/"
        for name in ("pairwise_logit_grad", "unary_logit_grad", "cross_sensitivity"):
            steps, values = scalars[prefix + name]
            assert steps.tolist() == [2, 4]
            assert np.isfinite(values).all()
        cross[context] = scalars[prefix + "cross_sensitivity"][1].max()
    assert cross["dnl"] == 0.0
    assert cross["nl"] > 1e-4


def test_probe_leaves_weights_bitwise_equal_to_a_run_without_it(fit):
    for context in ("nl", "dnl"):
        with_probe = final_weights(fit(context=context, callbacks=[SeparationProbe(every_n_steps=1)]))
        without = final_weights(fit(context=context))
        assert with_probe.keys() == without.keys()
        for key in without:
            assert torch.equal(with_probe[key], without[key]), key
