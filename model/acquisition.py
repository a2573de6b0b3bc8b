"""Acquisition: per-pair informativeness signals from one pass over the pool, and the strategies that
turn them into a batch of pairs to label.

Signals (all computed in one forward pass per batch, reduced on the device, by :func:`pair_signals` on the
output of :class:`model.inference.Predictor`, the backend's one inference path):

- ``inconsistency``: the paper's cross-modality inconsistency, reduced over classes as the model's config says
  (max by default), scale-balanced.
- ``inconsistency_flat`` / ``inconsistency_mean``: the ablations (flat mean over all predictions; mean over
  classes instead of max).
- ``fused_entropy``: intra-modality uncertainty of the fused branch alone: binary entropy of each prediction's
  one-vs-rest probability, max over foreground classes, scale-balanced.
- ``embedding``: pooled fused features, for diversity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model.data.dataset import collate_pairs
from model.data.sample import BACKGROUND_INDEX
from model.inconsistency import (
    Aggregation,
    Reduction,
    binary_entropy,
    branch_probabilities,
    flat_mean,
    inconsistency_maps,
    masked_scale_balanced_mean,
    modality_probabilities,
    object_masks,
    scale_balanced_mean,
)
from model.network import NetOutput, ThreeBranchNet


@dataclass
class PoolSignals:
    """Per-pair signals, aligned with the scored dataset's order. Arrays are (P,), ``embedding`` (P, C)."""

    inconsistency: np.ndarray
    inconsistency_flat: np.ndarray
    inconsistency_mean: np.ndarray
    #: I averaged over the predictions where either branch sees an object (see masked_scale_balanced_mean).
    inconsistency_objects: np.ndarray
    fused_entropy: np.ndarray
    embedding: np.ndarray

    def subset(self, positions: np.ndarray) -> PoolSignals:
        return PoolSignals(**{k: v[positions] for k, v in self.__dict__.items()})

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, float]], embeddings: Sequence[np.ndarray]) -> PoolSignals:
        """From per-pair signal dicts (``PairPrediction.signals``) and embeddings, in pool order."""
        names = [k for k in cls.__dataclass_fields__ if k != "embedding"]
        columns = {k: np.array([row[k] for row in rows], dtype=np.float64) for k in names}
        return cls(**columns, embedding=np.stack(list(embeddings)) if len(embeddings) else np.zeros((0, 0)))


def fused_entropy_maps(probabilities: list[torch.Tensor], class_dim: int) -> list[torch.Tensor]:
    """Max over foreground classes of the one-vs-rest binary entropy, per prediction, per level."""
    maps = []
    for p in probabilities:
        entropy = binary_entropy(p)
        keep = [c for c in range(p.shape[class_dim]) if c != BACKGROUND_INDEX]
        entropy = entropy.index_select(class_dim, torch.tensor(keep, device=p.device))
        maps.append(entropy.amax(dim=class_dim))
    return maps


def pair_signals(
    output: NetOutput, *, reduction: Reduction = "max", aggregation: Aggregation = "scale_balanced"
) -> dict[str, Tensor]:
    """Every per-pair signal of one forward pass, reduced on the outputs' device: (N,) tensors keyed by
    :class:`PoolSignals` field (``embedding`` (N, C)). ``inconsistency`` uses the model's class
    ``reduction`` and the predictor's ``aggregation``; the other fields are fixed ablations of it."""
    probabilities = modality_probabilities(output)  # one softmax per branch for every signal
    primary = inconsistency_maps(output, reduction=reduction, probabilities=probabilities)
    by_mean = inconsistency_maps(output, reduction="mean", probabilities=probabilities)
    entropy = fused_entropy_maps(branch_probabilities(output.fused), output.fused.class_dim)
    aggregate = scale_balanced_mean if aggregation == "scale_balanced" else flat_mean
    return {
        "inconsistency": aggregate(primary),
        "inconsistency_flat": flat_mean(primary),
        "inconsistency_mean": scale_balanced_mean(by_mean),
        "inconsistency_objects": masked_scale_balanced_mean(
            primary, object_masks(output, probabilities=probabilities)
        ),
        "fused_entropy": scale_balanced_mean(entropy),
        "embedding": output.embedding.float(),
    }


def compute_signals(
    model: ThreeBranchNet,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: str | torch.device = "auto",
    num_workers: int = 0,
) -> PoolSignals:
    """Every acquisition signal for every pair of ``dataset`` (yielding ``to_tensors`` triples), through the
    backend's inference path (:meth:`model.inference.Predictor.signals_batch`)."""
    from model.inference import Predictor  # the predictor module imports pair_signals from here

    predictor = Predictor(model, device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_pairs)
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in PoolSignals.__dataclass_fields__}
    for rgb, thermal, _ in loader:
        for key, value in predictor.signals_batch(rgb, thermal).items():
            columns[key].append(value.cpu())
    # The predictor runs NHWC; training continues in the layout it had (its speed was measured in it).
    model.to(memory_format=torch.contiguous_format)
    return PoolSignals(**{k: torch.cat(v).numpy() for k, v in columns.items()})


# ------------------------------------------------------------------------------------------ strategies
class Strategy:
    """Picks ``count`` positions of the unlabelled pool; subclasses set ``name`` and implement ``select``.

    ``absolute``: the strategy ranks by one signal whose value means the same in every pool (the backend
    can push ``1 - value`` as each pair is scored); otherwise its order depends on the whole pool (ranks,
    batches) and the backend pushes the rank-encoded score of :meth:`order`.
    """

    name: str = ""
    needs_model: bool = True
    absolute: bool = False

    def select(
        self, signals: PoolSignals | None, count: int, rng: np.random.Generator, pool_size: int
    ) -> np.ndarray:
        raise NotImplementedError

    def base_score(self, signals: PoolSignals) -> np.ndarray:
        """Higher first: how the pairs after the first batch are ordered (see :meth:`order`)."""
        return signals.inconsistency

    def order(self, signals: PoolSignals, count: int, rng: np.random.Generator) -> np.ndarray:
        """A priority order of the whole pool (a permutation of its positions, first = label first): the
        batch of ``count`` this strategy selects, then every other pair by :meth:`base_score`."""
        size = len(signals.inconsistency)
        first = np.asarray(self.select(signals, min(count, size), rng, size), dtype=np.int64)
        rest = np.setdiff1d(np.arange(size), first)
        rest = rest[np.argsort(-self.base_score(signals)[rest], kind="stable")]
        return np.concatenate([first, rest])


class RandomStrategy(Strategy):
    name = "random"
    needs_model = False

    def select(self, signals, count, rng, pool_size):
        return rng.choice(pool_size, size=min(count, pool_size), replace=False)

    def order(self, signals, count, rng):
        return rng.permutation(len(signals.inconsistency))


def _top(values: np.ndarray, count: int) -> np.ndarray:
    # Stable sort so ties (e.g. identical scores) resolve by position, reproducibly.
    return np.argsort(-values, kind="stable")[:count]


class TopScoreStrategy(Strategy):
    """The ``count`` pairs with the highest value of one signal."""

    def __init__(
        self, name: str, signal: Callable[[PoolSignals], np.ndarray], *, absolute: bool = True
    ) -> None:
        self.name = name
        self.signal = signal
        self.absolute = absolute

    def select(self, signals, count, rng, pool_size):
        assert signals is not None
        return _top(self.signal(signals), count)

    def base_score(self, signals):
        return self.signal(signals)


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share the mean rank), so signals of different scales can be mixed."""
    if len(values) <= 1:
        return np.zeros_like(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values))
    # Average ranks over ties.
    _, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse] / (len(values) - 1)


def combined_score(signals: PoolSignals) -> np.ndarray:
    """Intra + inter-modality uncertainty: the mean of the percentile ranks of the fused branch's entropy
    and of the cross-modality inconsistency. Ranks, not raw values, because the two live on different
    scales and the entropy of a confident background dominates raw sums."""
    return (percentile_rank(signals.inconsistency) + percentile_rank(signals.fused_entropy)) / 2


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Plain k-means with k-means++ seeding; returns a cluster id per point."""
    n = len(points)
    k = min(k, n)
    centres = [points[rng.integers(n)]]
    for _ in range(1, k):
        distances = np.min([np.sum((points - c) ** 2, axis=1) for c in centres], axis=0)
        total = distances.sum()
        index = rng.choice(n, p=distances / total) if total > 0 else rng.integers(n)
        centres.append(points[index])
    centre_array = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        distances = ((points[:, None, :] - centre_array[None]) ** 2).sum(-1)
        new_labels = distances.argmin(1)
        if np.array_equal(new_labels, labels) and _ > 0:
            break
        labels = new_labels
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centre_array[j] = members.mean(0)
    return labels


class InconsistencyDiverseStrategy(Strategy):
    """Top ``candidate_factor * count`` pairs by inconsistency, clustered on fused-branch features into
    ``count`` clusters; the most inconsistent pair of each cluster is taken. Avoids spending a batch on
    near-duplicates of one hard scene."""

    name = "inconsistency-diverse"

    def __init__(self, candidate_factor: int = 3) -> None:
        self.candidate_factor = candidate_factor

    def select(self, signals, count, rng, pool_size):
        assert signals is not None
        candidates = _top(signals.inconsistency, min(pool_size, self.candidate_factor * count))
        if len(candidates) <= count:
            return candidates
        features = signals.embedding[candidates].astype(np.float64)
        features = (features - features.mean(0)) / (features.std(0) + 1e-8)
        labels = kmeans(features, count, rng)
        chosen = []
        for cluster in np.unique(labels):
            members = candidates[labels == cluster]
            chosen.append(members[np.argmax(signals.inconsistency[members])])
        chosen_array = np.array(chosen)
        if len(chosen_array) < count:  # empty clusters: fill with the next most inconsistent candidates
            rest = [c for c in candidates if c not in set(chosen_array.tolist())]
            chosen_array = np.concatenate(
                [chosen_array, np.array(rest[: count - len(chosen_array)], dtype=np.int64)]
            )
        return chosen_array[:count]


def kmeans_pp_picks(
    points: np.ndarray, count: int, first: int, rng: np.random.Generator
) -> list[int]:
    """``count`` row indices of ``points`` by k-means++ seeding from row ``first``: each next pick is drawn
    with probability proportional to its squared distance to the nearest pick so far (spread out, but not
    only the outliers that a farthest-first pick would take)."""
    count = min(count, len(points))
    picks = [first]
    nearest = np.sum((points - points[first]) ** 2, axis=1)
    while len(picks) < count:
        total = nearest.sum()
        if total <= 0:  # every remaining point duplicates a pick: take them in order
            rest = [i for i in range(len(points)) if i not in set(picks)]
            picks += rest[: count - len(picks)]
            break
        index = int(rng.choice(len(points), p=nearest / total))
        picks.append(index)
        nearest = np.minimum(nearest, np.sum((points - points[index]) ** 2, axis=1))
    return picks


class ShortlistDiverseStrategy(Strategy):
    """PPAL-like (Yang et al., "Plug and Play Active Learning for Object Detection", CVPR 2024): an
    uncertainty shortlist, then diversity inside it.

    1. Shortlist the ``candidate_factor * count`` pairs with the highest :func:`combined_score` (intra- plus
       inter-modality uncertainty, standing in for PPAL's difficulty-calibrated uncertainty).
    2. Pick ``count`` of them by k-means++ seeding on standardised fused-branch embeddings, starting from the
       most uncertain (PPAL's diversity step seeds k-means++ the same way, on its own image similarity).

    Unlike ``inconsistency-diverse`` (the best pair of each k-means cluster), a pick far from the others
    can be any shortlisted pair, not only its cluster's most uncertain.
    """

    name = "ppal"

    def __init__(self, candidate_factor: int = 4) -> None:
        self.candidate_factor = candidate_factor

    def base_score(self, signals):
        return combined_score(signals)

    def select(self, signals, count, rng, pool_size):
        assert signals is not None
        score = combined_score(signals)
        candidates = _top(score, min(pool_size, self.candidate_factor * count))
        if len(candidates) <= count:
            return candidates
        features = signals.embedding[candidates].astype(np.float64)
        features = (features - features.mean(0)) / (features.std(0) + 1e-8)
        picks = kmeans_pp_picks(features, count, 0, rng)  # candidates[0] is the most uncertain
        return candidates[np.array(picks, dtype=np.int64)]


# ------------------------------------------------------------------------------ Label Studio's queue
#: A prediction whose ``cluster`` is null (what the bulk ``import/predictions`` route stores).
NULL_CLUSTER = -1


def embedding_clusters(embedding: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids in [0, k) of the pairs whose fused-branch embeddings are ``embedding`` (P, C): k-means
    (:func:`kmeans`) on the standardised embeddings, the same for the same ``seed``. (P,) int64; fewer
    than ``k`` distinct ids when P < k or a cluster empties."""
    if len(embedding) == 0:
        return np.zeros(0, dtype=np.int64)
    features = embedding.astype(np.float64)
    features = (features - features.mean(0)) / (features.std(0) + 1e-8)
    return kmeans(features, max(1, k), np.random.default_rng(seed))


def label_studio_next_order(
    scores: np.ndarray,
    clusters: np.ndarray,
    solved_clusters: Sequence[int] = (),
    count: int | None = None,
) -> np.ndarray:
    """The order in which Label Studio's ``/next`` serves the pool to ONE annotator under "Uncertainty
    sampling" when the annotator labels every task it serves: positions of ``scores`` (P,) / ``clusters``
    (P,) (``NULL_CLUSTER`` for a null ``cluster``), the first ``count`` (default all). ``solved_clusters``:
    the cluster of each task the annotator had labelled before (ids absent from the pool count for none).

    The rule, read from Label Studio 1.23.2's ``projects/functions/next_task.py``
    (``_try_uncertainty_sampling``, called by ``get_next_task`` through ``get_task_from_qs_with_sampling``):

    - candidates: the tasks the user has not annotated (skips count as annotated), not ``is_labeled``, with a
      prediction of the project's ``model_version``;
    - ``Counter`` of ``Max(predictions__cluster)`` over the tasks this user annotated; each candidate gets
      the count of its prediction's cluster (``Case(When(predictions__cluster=k, then=n))``, default 0; a
      null cluster matches the null key, as Django turns ``=None`` into ``IS NULL``, so null-cluster tasks
      share one count);
    - ``order_by('cluster_num_solved', 'predictions__score')``: fewest labelled in the cluster first, then
      the lowest score; the first task not locked by another user is served. No randomness, with one
      exception this model leaves out: when ``project.annotators()`` (members of a team the project is
      linked to, or invited project members; none in the open-source edition) counts more than one, the
      task is drawn at random instead (``_get_random_unlocked`` re-orders by ``'?'``).

    Labelling the served task adds one to its cluster's count, so the queue round-robins across clusters.
    Ties of (count, score) are in database order in Label Studio; here by position (rank-encoded scores
    never tie).
    """
    scores = np.asarray(scores, dtype=np.float64)
    clusters = np.asarray(clusters, dtype=np.int64)
    size = len(scores) if count is None else min(count, len(scores))
    solved: dict[int, int] = {}
    for cluster in solved_clusters:
        solved[int(cluster)] = solved.get(int(cluster), 0) + 1
    # Per cluster, its tasks by ascending score (stable: ties by position), consumed from the front.
    members: dict[int, list[int]] = {}
    for position in np.argsort(scores, kind="stable").tolist():
        members.setdefault(int(clusters[position]), []).append(position)
    heads = {cluster: 0 for cluster in members}
    order: list[int] = []
    while len(order) < size:
        best = min(
            (c for c in members if heads[c] < len(members[c])),
            key=lambda c: (solved.get(c, 0), scores[members[c][heads[c]]], members[c][heads[c]]),
        )
        order.append(members[best][heads[best]])
        heads[best] += 1
        solved[best] = solved.get(best, 0) + 1
    return np.array(order, dtype=np.int64)


#: Pairs of a batch per cluster under ``ls-queue``: K = ceil(b / 5) clusters (5 for the CPU benchmark's
#: b = 25), so each batch takes its best few pairs from each of several regions of the embedding space.
LS_QUEUE_PAIRS_PER_CLUSTER = 5


def ls_queue_clusters(batch: int) -> int:
    """K of the ``ls-queue`` strategy for batches of ``batch`` pairs (also the suggested ``QUEUE_CLUSTERS``
    for ``TRAIN_EVERY_N_ANNOTATIONS = batch``)."""
    return max(1, -(-batch // LS_QUEUE_PAIRS_PER_CLUSTER))


class LabelStudioQueueStrategy(Strategy):
    """What an annotator is actually served: the ``count`` tasks Label Studio's ``/next`` gives one annotator
    (:func:`label_studio_next_order`) when the backend pushes the ``base`` strategy's queue scores
    (:func:`queue_scores`) with ``QUEUE_CLUSTERS = K`` clusters of the pool's fused-branch embeddings
    (:func:`embedding_clusters`; K = :func:`ls_queue_clusters` of the batch unless given).

    The annotator starts the batch with no labelled task in the new clusters: the backend writes cluster ids
    that are new with every model version (see ``ls_backend.jobs``), so what was labelled under an
    earlier version counts for no current cluster, as in the simulator where each cycle is one version.
    """

    name = "ls-queue"

    def __init__(self, base: str | None = None, clusters: int | None = None) -> None:
        self.base = make_strategy(base or DEFAULT_STRATEGY)
        self.clusters = clusters

    def base_score(self, signals):
        return self.base.base_score(signals)

    def select(self, signals, count, rng, pool_size):
        assert signals is not None
        scores = queue_scores(self.base, signals, count, rng)
        k = self.clusters or ls_queue_clusters(count)
        clusters = embedding_clusters(signals.embedding, k, int(rng.integers(2**31)))
        return label_studio_next_order(scores, clusters, count=count)


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "random": RandomStrategy,
    "inconsistency": lambda: TopScoreStrategy("inconsistency", lambda s: s.inconsistency),
    "fused-entropy": lambda: TopScoreStrategy("fused-entropy", lambda s: s.fused_entropy),
    "combined": lambda: TopScoreStrategy("combined", combined_score, absolute=False),
    "inconsistency-diverse": InconsistencyDiverseStrategy,
    "ppal": ShortlistDiverseStrategy,
    # The default's order as Label Studio's /next serves it with QUEUE_CLUSTERS (round-robin over clusters).
    "ls-queue": LabelStudioQueueStrategy,
    # I over the regions where a branch sees an object, not over the whole image (the background's I
    # dominates the paper's mean while the network is not yet confident).
    "inconsistency-objects": lambda: TopScoreStrategy(
        "inconsistency-objects", lambda s: s.inconsistency_objects
    ),
    # Ablations of the paper's choices.
    "inconsistency-flat": lambda: TopScoreStrategy("inconsistency-flat", lambda s: s.inconsistency_flat),
    "inconsistency-mean": lambda: TopScoreStrategy("inconsistency-mean", lambda s: s.inconsistency_mean),
}


def queue_scores(
    strategy: Strategy, signals: PoolSignals, count: int, rng: np.random.Generator
) -> np.ndarray:
    """The ``score`` to push per pair so that Label Studio's uncertainty sampling (lowest score first)
    serves the pool in ``strategy``'s order: ``1 - value`` for a strategy ranking by one absolute signal,
    else the rank-encoded ``rank / N`` of :meth:`Strategy.order` with a first batch of ``count``. (P,) in
    [0, 1]."""
    if strategy.absolute:
        return np.clip(1.0 - strategy.base_score(signals), 0.0, 1.0)
    order = strategy.order(signals, count, rng)
    scores = np.empty(len(order), dtype=np.float64)
    scores[order] = np.arange(len(order)) / max(len(order), 1)
    return scores


#: The product's default (``ACQUISITION`` in ls_backend/settings.py), chosen on the benchmark's evidence; the
#: README's active-learning section says why.
DEFAULT_STRATEGY = "combined"


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
