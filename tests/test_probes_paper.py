import numpy as np

from probes.fit import fit_probe
from probes.paper import paper_loss, train_paper_probe
from probes.resample import upsample_nearest
from test_probes_linear import planted


def test_paper_trainer_learns_planted_saliency_and_depth():
    # no bias and no standardisation (as in the paper), so the weight also has to absorb the channel offsets:
    # judge it by what it predicts, not by its direction
    a, u, s, depth, prob = planted(n=12, c=16)
    truth = prob > 0.5
    masks = upsample_nearest(truth.astype(np.float32), 32, 32)
    p = train_paper_probe(a, masks, kind="saliency", epochs=10, lr=3e-2, seed=0)
    assert (p.method, p.bias) == ("paper", 0.0)
    pred = p.predict(a) > 0.5
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.85
    q = fit_probe(a, depth, "depth", mode="paper", epochs=10, lr=3e-2)
    assert np.corrcoef(q.predict(a).ravel(), s.ravel())[0, 1] > 0.95


def test_paper_loss_upsamples_predictions_to_label_resolution():
    import torch

    out = torch.zeros(1, 2, 2, 1)
    out[0, 0, 0, 0] = 2.0  # one layer cell covers a 2x2 block of labels
    labels = torch.zeros(1, 4, 4)
    # Huber(2, delta 1) = 1.5 on 4 of 16 label pixels
    assert abs(float(paper_loss(out, labels, "depth")) - 1.5 * 4 / 16) < 1e-6
    logits = torch.zeros(1, 2, 2, 2)
    assert abs(float(paper_loss(logits, labels, "saliency")) - np.log(2)) < 1e-6


def test_paper_trainer_is_seeded():
    a, _, _, depth, _ = planted(n=8, c=8)
    w1 = train_paper_probe(a, depth, kind="depth", epochs=2, seed=3).weight
    w2 = train_paper_probe(a, depth, kind="depth", epochs=2, seed=3).weight
    np.testing.assert_array_equal(w1, w2)
