"""Linear probes: features from taps, models or checkpoints; the logistic and k-NN probes."""
from __future__ import annotations

import pytest
import torch

from convscope.explain.probe import extract_features, fit_logistic, knn_predict, linear_probe
from convscope.models import save_weights

from .zoo import small_model, tiny_convnext, tiny_input


def _blobs(n: int, seed: int, d: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


def test_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    x, y = _blobs(60, 0)
    w, b, mean, std = fit_logistic(x, y, 3, weight_decay=0.1)
    z = ((x.double() - mean) / std).numpy()
    ref = LogisticRegression(C=1 / (0.1 * len(x)), tol=1e-10, max_iter=10000).fit(z, y.numpy())
    ours = torch.softmax(torch.from_numpy(z) @ w.T + b, 1)
    torch.testing.assert_close(ours, torch.from_numpy(ref.predict_proba(z)), rtol=0, atol=1e-5)


def test_probes_on_separable_features():
    train, test = _blobs(90, 1), _blobs(30, 2)
    for kind in ("logistic", "knn"):
        res = linear_probe(*train, *test, kind=kind, k=5)
        assert res.accuracy == 1.0 and res.predictions.tolist() == test[1].tolist()


def test_knn_by_hand():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    # the nearest is class 1, but two class-0 neighbours at similarity ~0.7 outvote it at temperature 1
    test_x = torch.tensor([[0.6, 0.8]])
    assert knn_predict(train_x, train_y, test_x, k=1).tolist() == [1]
    assert knn_predict(train_x, train_y, test_x, k=3, temperature=1.0).tolist() == [0]


def test_features_are_pooled_taps():
    model = tiny_convnext()
    x = tiny_input(model, batch=3)
    maps = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    torch.testing.assert_close(extract_features(model, x, layer=1, batch_size=2), maps.mean((2, 3)))
    assert extract_features(model, x, layer="pre_logits").shape == (3, 16)


def test_token_model_features():
    model = small_model("volo_d1_224")
    x = tiny_input(model, batch=2)
    assert extract_features(model, x).shape == (2, model.feature_info[-1]["num_chs"])


def test_features_from_a_checkpoint(tmp_path):
    model = small_model("convnext_atto")
    path = save_weights(model, tmp_path / "atto.safetensors")
    x = tiny_input(model, batch=2)
    torch.testing.assert_close(extract_features("convnext_atto", x, layer=2, checkpoint=path),
                               extract_features(model, x, layer=2))


def test_probe_on_model_features():
    # bright versus dark images: the features of even an untrained network separate them
    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 32, 32, generator=g) * 0.2 + torch.arange(40).remainder(2).float()[:, None, None, None]
    labels = torch.arange(40) % 2
    feats = extract_features(tiny_convnext(), images, layer=0)
    res = linear_probe(feats[:30], labels[:30], feats[30:], labels[30:])
    assert res.accuracy == 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="svm"), "kind must be one of"),
    (dict(k=0, kind="knn"), "k must be a positive integer"),
    (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
])
def test_bad_probe_values(kwargs, match):
    x, y = _blobs(9, 0)
    with pytest.raises(ValueError, match=match):
        linear_probe(x, y, x, y, **kwargs)


def test_bad_labels_and_layers():
    x, y = _blobs(9, 0)
    with pytest.raises(ValueError, match="labels must be 9 non-negative integer classes"):
        linear_probe(x, y.float(), x, y)
    with pytest.raises(ValueError, match="differ in width"):
        linear_probe(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="layer must be a feature_info index"):
        extract_features(tiny_convnext(), torch.zeros(1, 3, 32, 32), layer=4)
    with pytest.raises(ValueError, match="either a model object or a model name"):
        extract_features(tiny_convnext(), torch.zeros(1, 3, 32, 32), checkpoint="x.safetensors")
