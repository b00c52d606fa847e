"""Weighted kNN against a brute-force reference: Python loops over test and train samples."""

import math

import pytest
import torch

from sslpipe.errors import SslpipeError
from sslpipe.eval.knn import default_k, knn_accuracy, knn_classify
from sslpipe.eval.metrics import accuracy


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _data(n=30, m=7, d=8, c=4, seed=0):
    labels = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed + 2))
    return _randn(n, d, seed=seed), labels, _randn(m, d, seed=seed + 1)


def naive_knn(train, labels, test, k, temperature, num_classes):
    """For each test row: cosines to all train rows, sort, sum exp(cos / T) of the k best per class."""
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    train_rows = [unit(row) for row in train.tolist()]
    scores = []
    for row in test.tolist():
        row = unit(row)
        cosines = [(sum(a * b for a, b in zip(row, other)), label)
                   for other, label in zip(train_rows, labels.tolist())]
        cosines.sort(key=lambda pair: -pair[0])
        votes = [0.0] * num_classes
        for cosine, label in cosines[:k]:
            votes[label] += math.exp(cosine / temperature)
        scores.append(votes)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (10, 0.5)])
def test_matches_brute_force(k, temperature):
    train, labels, test = _data()
    scores = knn_classify(train, labels, test, k=k, temperature=temperature, num_classes=4)
    assert scores.shape == (7, 4) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), naive_knn(train, labels, test, k, temperature, 4),
                               rtol=1e-5, atol=0)


def test_k_is_clipped_to_the_train_set():
    train, labels, test = _data(n=12)
    scores = knn_classify(train, labels, test, k=200, temperature=0.1, num_classes=4)
    assert torch.equal(scores, knn_classify(train, labels, test, k=12, temperature=0.1, num_classes=4))
    torch.testing.assert_close(scores.double(), naive_knn(train, labels, test, 12, 0.1, 4), rtol=1e-5, atol=0)


def test_chunking_does_not_change_the_scores():
    train, labels, test = _data(m=23)
    whole = knn_classify(train, labels, test, k=5, num_classes=4)
    for chunk in (1, 4, 22, 23):
        chunked = knn_classify(train, labels, test, k=5, num_classes=4, chunk=chunk)
        # A matrix product of another shape may round the float32 cosines differently (1 ulp, 6e-8),
        # and exp(cos / 0.07) multiplies a relative error by 1/0.07 = 14: 1e-6 is within reach.
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0)
        assert torch.equal(chunked.argmax(dim=1), whole.argmax(dim=1))


def test_temperature_decides_between_one_close_and_two_farther_neighbours():
    # One neighbour of class 0 at cos 1; two of class 1 at cos(0.5) = 0.88. A sharp T trusts the
    # closest, a flat T counts heads.
    train = torch.tensor([[1.0, 0.0], [math.cos(0.5), math.sin(0.5)], [math.cos(0.5), -math.sin(0.5)]])
    labels, test = torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    assert knn_classify(train, labels, test, k=3, temperature=0.07).argmax().item() == 0
    assert knn_classify(train, labels, test, k=3, temperature=10.0).argmax().item() == 1


def test_features_are_normalized_and_computed_in_float32():
    train, labels, test = _data()
    scores = knn_classify(train, labels, test, k=5, num_classes=4)
    scaled = knn_classify(7.0 * train, labels, 0.1 * test, k=5, num_classes=4)
    torch.testing.assert_close(scaled, scores, rtol=1e-5, atol=0)
    low = knn_classify(train.bfloat16(), labels, test.bfloat16(), k=5, num_classes=4)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()


def test_accuracy_reports_top5_only_with_five_classes():
    train, labels, test = _data(n=60, m=20, c=4)
    test_labels = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(5))
    result = knn_accuracy(train, labels, test, test_labels, k=7, temperature=0.1)
    expected = accuracy(naive_knn(train, labels, test, 7, 0.1, 4), test_labels)
    assert set(result) == {"top1"} and result["top1"] == pytest.approx(expected["top1"])

    six = knn_accuracy(train, labels, test, test_labels, k=7, temperature=0.1, num_classes=6)
    assert set(six) == {"top1", "top5"} and six["top1"] == result["top1"]
    reference = accuracy(naive_knn(train, labels, test, 7, 0.1, 6), test_labels)
    assert six["top5"] == pytest.approx(reference["top5"])
    # Each test sample's nearest neighbour is itself.
    assert knn_accuracy(train, labels, train, labels, k=1)["top1"] == 100.0


def test_default_k_and_errors():
    assert default_k(500) == default_k(9_999) == 20 and default_k(10_000) == default_k(1_281_167) == 200
    train, labels, test = _data()
    for settings, word in [({"k": 0}, "k"), ({"temperature": 0.0}, "temperature"), ({"chunk": 0}, "chunk"),
                           ({"num_classes": 2}, "num_classes")]:
        with pytest.raises(SslpipeError, match=word):
            knn_classify(train, labels, test, **settings)
    with pytest.raises(SslpipeError, match="features"):
        knn_classify(train, labels, test[:, :3])
    with pytest.raises(SslpipeError, match="-1"):
        knn_classify(train, torch.full((30,), -1), test)
