import torch

from domainfm.shared.tasks.probes import fit_logistic_probe, fit_softmax_probe, knn_scores


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(60) % 3
    centres = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    return centres[labels] + torch.randn(60, 4, generator=generator) + 100.0, labels  # offset: standardised


def test_softmax_probe_separates_classes_and_scores_probabilities():
    features, labels = _blobs()
    torch.manual_seed(0)
    score = fit_softmax_probe(features, labels, 3, steps=100)
    probabilities = score(features)
    assert probabilities.shape == (60, 3) and torch.allclose(probabilities.sum(1), torch.ones(60))
    assert (probabilities.argmax(1) == labels).float().mean() == 1.0


def test_logistic_probe_scores_each_label():
    features, labels = _blobs(1)
    multilabel = torch.stack([labels == 0, labels != 2], 1).long()
    torch.manual_seed(0)
    probabilities = fit_logistic_probe(features, multilabel, steps=100)(features)
    assert probabilities.shape == (60, 2) and not probabilities.requires_grad
    assert ((probabilities > 0.5).long() == multilabel).float().mean() > 0.95


def test_probes_are_seeded():
    features, labels = _blobs(2)
    torch.manual_seed(3)
    first = fit_softmax_probe(features, labels, 3, steps=5)(features)
    torch.manual_seed(3)
    assert torch.equal(first, fit_softmax_probe(features, labels, 3, steps=5)(features))


def test_knn_is_the_mean_label_of_the_cosine_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 1]])
    scores = knn_scores(train, labels, torch.tensor([[2.0, 0.1], [0.0, 3.0]]), k=2)
    assert torch.allclose(scores, torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    assert torch.allclose(knn_scores(train, labels, train[:1], k=99), torch.tensor([[0.5, 0.75]]))
