"""Acquisition strategies and signals: each test fails when a ranking is reversed, a strategy is replaced
by random, or the simulator's signals leave the backend's inference path."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from model.acquisition import (
    DEFAULT_STRATEGY,
    NULL_CLUSTER,
    STRATEGIES,
    InconsistencyDiverseStrategy,
    LabelStudioQueueStrategy,
    PoolSignals,
    ShortlistDiverseStrategy,
    Strategy,
    TopScoreStrategy,
    combined_score,
    compute_signals,
    embedding_clusters,
    fused_entropy_maps,
    kmeans,
    kmeans_pp_picks,
    label_studio_next_order,
    ls_queue_clusters,
    make_strategy,
    pair_signals,
    percentile_rank,
    queue_scores,
)
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.synthetic import SYNTH_CLASSES, SyntheticRGBT
from model.data.transforms import eval_transform
from model.inference import Predictor, score_dataset
from model.network import ThreeBranchNet


def signals(inconsistency, fused_entropy=None, embedding=None, objects=None) -> PoolSignals:
    inconsistency = np.asarray(inconsistency, dtype=np.float64)
    n = len(inconsistency)
    return PoolSignals(
        inconsistency=inconsistency,
        inconsistency_flat=inconsistency.copy(),
        inconsistency_mean=inconsistency.copy(),
        inconsistency_objects=np.asarray(objects if objects is not None else inconsistency, np.float64),
        fused_entropy=np.asarray(fused_entropy if fused_entropy is not None else np.zeros(n), np.float64),
        embedding=np.asarray(embedding if embedding is not None else np.zeros((n, 2)), np.float32),
    )


def two_scenes(rng: np.random.Generator) -> PoolSignals:
    """A pool where the 6 most inconsistent pairs are near-duplicates of one scene (embedding ~(0, 0)), the
    7th and 8th most inconsistent are another scene (~(10, 10)), and 12 dull pairs sit at (-10, 5)."""
    inconsistency = np.concatenate([np.linspace(0.9, 0.8, 6), [0.75, 0.7], np.linspace(0.2, 0.1, 12)])
    embedding = np.concatenate(
        [
            rng.normal(0, 0.01, (6, 2)),
            rng.normal(10, 0.01, (2, 2)),
            rng.normal(0, 0.01, (12, 2)) + np.array([-10.0, 5.0]),
        ]
    )
    return signals(inconsistency, fused_entropy=inconsistency, embedding=embedding)


def test_percentile_rank_orders_ascending_and_shares_ties():
    ranks = percentile_rank(np.array([0.3, 0.1, 0.2, 0.2, 0.9]))
    np.testing.assert_allclose(ranks, [3 / 4, 0.0, 1.5 / 4, 1.5 / 4, 1.0])
    assert percentile_rank(np.array([5.0])).tolist() == [0.0]


def test_kmeans_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (15, 2)) for c in centres])
    labels = kmeans(points, 3, np.random.default_rng(1))
    groups = [set(labels[i * 15 : (i + 1) * 15].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups)  # each blob is one cluster
    assert len(set().union(*groups)) == 3  # and the three are different


def test_combined_score_mixes_the_two_ranks():
    # Pair 0 is most inconsistent, pair 1 has the most fused entropy, pair 2 is second on both.
    s = signals([0.9, 0.0, 0.5, 0.1], fused_entropy=[0.0, 0.9, 0.5, 0.1])
    score = combined_score(s)
    np.testing.assert_allclose(score, [0.5, 0.5, 2 / 3, 1 / 3])
    assert int(np.argmax(score)) == 2
    # Raw values on different scales do not change it (ranks, not sums).
    scaled = signals([0.9, 0.0, 0.5, 0.1], fused_entropy=[0.0, 900.0, 500.0, 100.0])
    np.testing.assert_allclose(combined_score(scaled), score)


def test_top_score_strategy_takes_the_highest_first():
    strategy = TopScoreStrategy("t", lambda s: s.inconsistency)
    s = signals([0.2, 0.9, 0.1, 0.5, 0.7])
    rng = np.random.default_rng(0)
    assert strategy.select(s, 3, rng, 5).tolist() == [1, 4, 3]
    assert strategy.order(s, 2, rng).tolist() == [1, 4, 3, 0, 2]
    assert make_strategy("inconsistency").select(s, 2, rng, 5).tolist() == [1, 4]
    objects = signals([0.9, 0.1, 0.1], objects=[0.0, 0.2, 0.8])
    assert make_strategy("inconsistency-objects").select(objects, 1, rng, 3).tolist() == [2]


def test_inconsistency_diverse_spends_the_batch_on_two_scenes_not_one():
    s = two_scenes(np.random.default_rng(0))
    picks = InconsistencyDiverseStrategy(candidate_factor=4).select(s, 2, np.random.default_rng(0), 20)
    # The most inconsistent pair of each scene (top-2 by I alone would be two duplicates: [0, 1]).
    assert sorted(picks.tolist()) == [0, 6]


def test_ppal_shortlists_by_uncertainty_then_spreads_the_batch():
    s = two_scenes(np.random.default_rng(0))
    for seed in range(5):
        picks = ShortlistDiverseStrategy(candidate_factor=4).select(s, 2, np.random.default_rng(seed), 20)
        assert picks[0] == 0  # the most uncertain pair first
        assert picks[1] in (6, 7)  # then the other scene of the shortlist, never a duplicate nor a dull pair
    order = ShortlistDiverseStrategy().order(s, 2, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(20))
    assert order[0] == 0 and order[1] in (6, 7)
    # After the batch, the rest follows the combined score: the 12 dull pairs come last.
    assert set(order[-12:].tolist()) == set(range(8, 20))


def test_strategies_are_not_random():
    """On a pool whose informative pairs have the highest signals, every model-based strategy labels them;
    random labels what it draws."""
    rng = np.random.default_rng(3)
    n, informative = 200, np.arange(190, 200)
    inconsistency = rng.uniform(0, 0.3, n)
    inconsistency[informative] = rng.uniform(0.8, 1.0, 10)
    embedding = rng.normal(0, 1, (n, 4))
    s = signals(inconsistency, fused_entropy=inconsistency, embedding=embedding)
    for name in STRATEGIES:
        strategy = make_strategy(name)
        picks = strategy.select(s, 5, np.random.default_rng(0), n)
        share = np.isin(picks, informative).mean()
        if name == "random":
            assert share <= 0.2
        elif name in ("inconsistency-diverse", "ppal"):  # diversity may trade a little score for spread
            assert share >= 0.6, name
        else:
            assert share == 1, name


def test_default_strategy_exists_and_ranks_by_the_whole_pool():
    strategy = make_strategy(DEFAULT_STRATEGY)
    assert strategy.needs_model
    assert not make_strategy("ppal").absolute and not make_strategy("combined").absolute
    assert make_strategy("inconsistency").absolute


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_simulator_signals_come_from_the_predictor_path(reduction):
    """compute_signals (the simulator) gives the scores Predictor gives the backend, with the model's own
    class reduction."""
    torch.manual_seed(0)
    size = (32, 40)
    config = NetConfig(class_names=SYNTH_CLASSES, width=0.0625, image_size=size, class_reduction=reduction)
    model = ThreeBranchNet(config).eval()
    data = PairDataset(SyntheticRGBT(5, seed=0, image_size=size), eval_transform(size))
    pool = compute_signals(model, data, batch_size=2, device="cpu")
    # Training goes on in the contiguous layout the predictor switched away from.
    assert all(p.is_contiguous() for p in model.parameters())
    scores, embeddings, _ = score_dataset(Predictor(model, "cpu"), data, batch_size=3)
    np.testing.assert_allclose(pool.inconsistency, scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pool.embedding, embeddings, rtol=1e-5, atol=1e-6)
    other = pool.inconsistency_mean if reduction == "mean" else pool.inconsistency
    np.testing.assert_allclose(pool.inconsistency, other)
    # The backend's predictions carry the same signals.
    records = [SyntheticRGBT(5, seed=0, image_size=size)[i] for i in range(5)]
    predictor = Predictor(model, "cpu")
    batch = predictor.prepare_batch([(r.rgb, r.thermal) for r in records])
    predicted = predictor.predict_batch(batch, with_signals=True)
    for i, prediction in enumerate(predicted):
        assert prediction.signals is not None
        assert prediction.signals["fused_entropy"] == pytest.approx(pool.fused_entropy[i], rel=1e-4, abs=1e-6)
        assert prediction.signals["inconsistency"] == pytest.approx(prediction.inconsistency, rel=1e-6)
    assert all(p.signals is None for p in predictor.predict_batch(batch))


def test_queue_scores_make_label_studio_serve_the_strategy_order():
    """Label Studio serves the lowest score first: ascending scores must follow each strategy's order."""
    s = two_scenes(np.random.default_rng(0))
    absolute = queue_scores(make_strategy("inconsistency"), s, 2, np.random.default_rng(0))
    np.testing.assert_allclose(absolute, 1 - s.inconsistency)
    combined = queue_scores(make_strategy("combined"), s, 2, np.random.default_rng(0))
    expected = np.argsort(-combined_score(s), kind="stable")
    assert np.argsort(combined, kind="stable").tolist() == expected.tolist()
    assert sorted(combined.tolist()) == [i / 20 for i in range(20)]  # rank / N
    served = np.argsort(queue_scores(make_strategy("ppal"), s, 2, np.random.default_rng(0)))
    assert served[0] == 0 and served[1] in (6, 7)  # the diverse first batch, then the rest
    assert set(served[-12:].tolist()) == set(range(8, 20))
    names = [k for k in PoolSignals.__dataclass_fields__ if k != "embedding"]
    rows = [{k: float(getattr(s, k)[i]) for k in names} for i in range(20)]
    rebuilt = PoolSignals.from_rows(rows, list(s.embedding))
    np.testing.assert_allclose(rebuilt.fused_entropy, s.fused_entropy)
    np.testing.assert_allclose(rebuilt.embedding, s.embedding)


def test_pool_signals_subset_keeps_every_field_aligned():
    s = signals([0.1, 0.2, 0.3], fused_entropy=[1.0, 2.0, 3.0], embedding=[[0, 0], [1, 1], [2, 2]])
    part = s.subset(np.array([2, 0]))
    for name in PoolSignals.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(part, name), getattr(s, name)[[2, 0]])


def test_the_base_strategy_needs_a_select_and_orders_the_rest_by_inconsistency():
    with pytest.raises(NotImplementedError):
        Strategy().select(None, 1, np.random.default_rng(0), 1)
    s = signals([0.2, 0.9, 0.1, 0.5], embedding=np.zeros((4, 2)))
    assert Strategy().base_score(s) is s.inconsistency
    # inconsistency-diverse keeps the base order after its batch: the rest by descending I.
    assert InconsistencyDiverseStrategy().order(s, 1, np.random.default_rng(0)).tolist() == [1, 3, 0, 2]


def test_random_strategy_draws_without_a_model_and_without_repeats():
    strategy = make_strategy("random")
    assert not strategy.needs_model and not strategy.absolute
    s = signals(np.linspace(0, 1, 30))
    picks = strategy.select(s, 40, np.random.default_rng(0), 30)
    assert sorted(picks.tolist()) == list(range(30))  # capped at the pool, no pair twice
    order = strategy.order(s, 5, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(30)) and order.tolist() != list(range(30))
    assert order.tolist() == strategy.order(s, 5, np.random.default_rng(0)).tolist()  # seeded


def test_diverse_strategies_with_few_candidates_or_identical_scenes():
    rng = np.random.default_rng(0)
    s = signals([0.2, 0.9, 0.1], embedding=[[0, 0], [5, 5], [9, 1]])
    # A pool no larger than the batch: the candidates themselves, by descending score.
    assert InconsistencyDiverseStrategy().select(s, 3, rng, 3).tolist() == [1, 0, 2]
    assert ShortlistDiverseStrategy().select(s, 3, rng, 3).tolist() == [1, 0, 2]
    # Every pair looks the same: k-means leaves clusters empty, the batch is filled by inconsistency.
    same = signals([0.2, 0.9, 0.1, 0.5, 0.7, 0.3], embedding=np.ones((6, 2)))
    assert InconsistencyDiverseStrategy().select(same, 3, rng, 6).tolist() == [1, 4, 3]
    assert kmeans_pp_picks(np.ones((5, 2)), 3, 2, rng) == [2, 0, 1]  # duplicates: in order after the first


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown strategy 'best'; choose from random, inconsistency, "):
        make_strategy("best")


def test_queue_scores_stay_in_unit_range_and_pool_signals_from_no_rows():
    stray = signals([-0.2, 0.5, 1.3])  # a signal outside [0, 1] still gives Label Studio a score in it
    scores = queue_scores(
        TopScoreStrategy("t", lambda s: s.inconsistency), stray, 1, np.random.default_rng(0)
    )
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.0])
    empty = PoolSignals.from_rows([], [])
    assert empty.embedding.shape == (0, 0) and empty.inconsistency.shape == (0,)
    names = [k for k in PoolSignals.__dataclass_fields__ if k != "embedding"]
    counted = PoolSignals.from_rows([dict.fromkeys(names, 1)], [np.zeros(3)])
    assert counted.inconsistency.dtype == np.float64 and counted.embedding.shape == (1, 3)


def test_label_studio_next_order_round_robins_by_the_annotators_history():
    """/next: fewest tasks this annotator labelled in the cluster first, then the lowest score; each served
    task counts for its cluster (Label Studio 1.23.2 served [0, 4, 1, 5] for two clusters of four)."""
    scores = np.arange(8) / 8
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert label_studio_next_order(scores, clusters).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    # Two tasks of cluster 1 already labelled: cluster 0 first until the counts are level.
    assert label_studio_next_order(scores, clusters, [1, 1]).tolist() == [0, 1, 2, 4, 3, 5, 6, 7]
    # Scores order inside a cluster (not positions), and count cuts the order.
    shuffled = np.array([0.5, 0.1, 0.3, 0.7, 0.2, 0.0, 0.6, 0.4])
    assert label_studio_next_order(shuffled, clusters, count=4).tolist() == [5, 1, 4, 2]
    # Null clusters share one count; ids the pool lacks count for none.
    nulls = np.array([0, 0, 0, 0, NULL_CLUSTER, NULL_CLUSTER, NULL_CLUSTER, NULL_CLUSTER])
    assert label_studio_next_order(scores, nulls, [NULL_CLUSTER, 7, 7]).tolist() == [0, 1, 4, 2, 5, 3, 6, 7]


def test_embedding_clusters_are_seeded_and_follow_the_embeddings():
    rng = np.random.default_rng(0)
    embedding = np.concatenate([rng.normal(0, 0.1, (10, 3)), rng.normal(5, 0.1, (10, 3))]).astype(np.float32)
    labels = embedding_clusters(embedding, 2, seed=7)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1
    assert labels[0] != labels[10]
    noise = rng.normal(0, 1, (40, 3))
    assert embedding_clusters(noise, 4, 3).tolist() == embedding_clusters(noise, 4, 3).tolist()
    assert ls_queue_clusters(25) == 5 and ls_queue_clusters(3) == 1


def test_label_studio_next_order_keeps_ties_in_pool_order():
    """Rank-encoded scores never tie, raw ones can: equal scores are served in pool order (40 ties, more
    than numpy's unstable sort keeps in order)."""
    ties = np.array([0.5, 0.25] * 20)
    order = label_studio_next_order(ties, np.zeros(40, dtype=np.int64)).tolist()
    assert order == [*range(1, 40, 2), *range(0, 40, 2)]


def test_embedding_clusters_of_nothing_and_on_standardised_features():
    """An empty pool has no clusters (an int64 array of none); a nuisance dimension a thousand times wider
    than the two scenes' does not decide the clusters: features are standardised first."""
    empty = embedding_clusters(np.zeros((0, 4), np.float32), 3, 0)
    assert empty.shape == (0,) and empty.dtype == np.int64
    scene = np.repeat([0.0, 1.0], 6)
    embedding = np.column_stack([np.tile([0.0, 1000.0], 6), *[scene] * 32])
    for seed in range(4):
        labels = embedding_clusters(embedding, 2, seed)
        assert len(set(labels[:6].tolist())) == 1 and labels[0] != labels[6], seed
    assert ls_queue_clusters(26) == 6 and isinstance(ls_queue_clusters(26), int)


def test_ls_queue_ranks_by_its_base_strategy():
    s = two_scenes(np.random.default_rng(0))
    np.testing.assert_array_equal(
        LabelStudioQueueStrategy().base_score(s), make_strategy(DEFAULT_STRATEGY).base_score(s)
    )


def test_ls_queue_takes_the_best_of_each_cluster_in_turn():
    """The default strategy alone spends the batch on the most uncertain scene; what Label Studio serves
    with two clusters alternates scenes, each scene's most uncertain pairs first."""
    rng = np.random.default_rng(1)
    uncertainty = np.concatenate([np.linspace(0.9, 0.8, 10), np.linspace(0.5, 0.4, 10)])
    embedding = np.concatenate([rng.normal(0, 0.1, (10, 2)), rng.normal(8, 0.1, (10, 2))])
    s = signals(uncertainty, fused_entropy=uncertainty, embedding=embedding)
    default = make_strategy(DEFAULT_STRATEGY).select(s, 4, np.random.default_rng(0), 20)
    assert sorted(default.tolist()) == [0, 1, 2, 3]
    picks = LabelStudioQueueStrategy(clusters=2).select(s, 4, np.random.default_rng(0), 20)
    assert picks.tolist() == [0, 10, 1, 11]
    # b = 4: K = 1, the default order itself
    assert make_strategy("ls-queue").select(s, 4, np.random.default_rng(0), 20).tolist() == [0, 1, 2, 3]


def test_backend_writes_cluster_ids_that_are_new_with_every_version():
    """QUEUE_CLUSTERS: each held payload gets the k-means cluster of its embedding, numbered so that a later
    version's ids are all larger (Label Studio counts a labelled task by its largest cluster) and shards
    never share one; without it no payload carries a cluster (the bulk route stays in use)."""
    from ls_backend.jobs import CLUSTER_ID_STRIDE, _queue_ordered, cluster_ids
    from ls_backend.settings import Settings
    from model.inference import PairPrediction

    s = two_scenes(np.random.default_rng(0))
    names = [k for k in PoolSignals.__dataclass_fields__ if k != "embedding"]
    held = [
        (
            {"task": 100 + i, "result": [], "model_version": "rgbt-v3-20260101T000000"},
            PairPrediction(
                inconsistency=float(s.inconsistency[i]),
                embedding=s.embedding[i],
                boxes=np.zeros((0, 4)),
                scores=np.zeros(0),
                labels=np.zeros(0, np.int64),
                signals={k: float(getattr(s, k)[i]) for k in names},
            ),
        )
        for i in range(20)
    ]
    version = "rgbt-v3-20260101T000000"
    plain = _queue_ordered(held, Settings(), version)
    assert all("cluster" not in p for p in plain)
    clustered = _queue_ordered(held, Settings(queue_clusters=3), version, shard=2)
    ids = np.array([p["cluster"] for p in clustered])
    labels = embedding_clusters(s.embedding, 3, zlib.crc32(version.encode()))
    expected = 3 * CLUSTER_ID_STRIDE + 2 * 3 + labels
    assert ids.tolist() == expected.tolist()
    # The three scenes of two_scenes are the three clusters.
    assert len({ids[0], ids[6], ids[8]}) == 3 and len(set(ids[:6].tolist())) == 1
    assert [p["score"] for p in clustered] == [p["score"] for p in plain]
    later = cluster_ids(s.embedding, 3, "rgbt-v4-20260102T000000", shard=0)
    assert later.min() > cluster_ids(s.embedding, 3, version, shard=999).max()


def test_ties_keep_pool_order_in_the_batch_and_after_it():
    # 40 alternating values: numpy's default sort does not keep ties in order at this size.
    s = signals([0.5, 0.7] * 20)
    strategy = make_strategy("inconsistency")
    assert strategy.name == "inconsistency"
    expected = [*range(1, 40, 2), *range(0, 40, 2)]
    assert strategy.select(s, 40, np.random.default_rng(0), 40).tolist() == expected
    assert InconsistencyDiverseStrategy().order(s, 0, np.random.default_rng(0)).tolist() == expected
    # One candidate per pick (factor 1): the top pairs themselves, the dull ones never considered.
    assert InconsistencyDiverseStrategy(candidate_factor=1).select(
        two_scenes(np.random.default_rng(0)), 3, np.random.default_rng(0), 20
    ).tolist() == [0, 1, 2]


def test_kmeans_returns_a_fixed_point_of_lloyds_iteration():
    points = np.random.default_rng(4).uniform(0, 1, (300, 2))
    labels = kmeans(points, 6, np.random.default_rng(0))
    centres = np.stack([points[labels == j].mean(0) for j in range(6)])
    nearest = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest, labels)  # another Lloyd step changes nothing


def test_kmeans_plus_plus_seeds_one_centre_per_blob_at_any_scale():
    rng = np.random.default_rng(0)
    for scale in (0.01, 1000.0):  # the distances sum to less than 1 at the small scale
        centres = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) * scale
        points = np.concatenate([c + rng.normal(0, scale * 1e-4, (10, 2)) for c in centres])
        for seed in range(3):
            labels = kmeans(points, 3, np.random.default_rng(seed), iterations=1)  # the seeding alone
            assert [len(set(labels[i * 10 : (i + 1) * 10].tolist())) for i in range(3)] == [1, 1, 1]
            assert len(set(labels.tolist())) == 3
            picks = kmeans_pp_picks(points, 3, 0, np.random.default_rng(seed))
            assert sorted(p // 10 for p in picks) == [0, 1, 2]  # one pick per blob
    # Only one point differs from the first pick, by less than 1: it is drawn, not a duplicate.
    assert kmeans_pp_picks(np.array([[0.0, 0.0], [0.0, 0.0], [0.5, 0.0]]), 2, 0, rng) == [0, 2]


def test_inconsistency_diverse_clusters_on_standardised_features():
    """Scenes differ in 8 feature dimensions by 1; one nuisance dimension varies by 1000 within each scene.
    Standardised, the scenes dominate; raw (or scaled by one global std), the nuisance would split the batch
    inside the first scene."""
    scene = np.repeat([0.0, 1.0], 6)
    nuisance = np.tile([0.0, 1000.0], 6)
    embedding = np.column_stack([nuisance, *[scene] * 8])
    s = signals(np.linspace(0.9, 0.5, 12), embedding=embedding)
    for seed in range(3):
        picks = InconsistencyDiverseStrategy(candidate_factor=6).select(s, 2, np.random.default_rng(seed), 12)
        assert sorted(picks.tolist()) == [0, 6], seed


def test_percentile_rank_of_two_and_fused_entropy_over_foreground_classes():
    assert percentile_rank(np.array([0.2, 0.1])).tolist() == [1.0, 0.0]
    # Background 0.7, two foreground classes 0.2 and 0.1: the most uncertain foreground class, H(0.2).
    p = torch.tensor([0.7, 0.2, 0.1]).reshape(1, 3, 1, 1)
    (entropy,) = fused_entropy_maps([p], class_dim=1)
    expected = -(0.2 * np.log2(0.2) + 0.8 * np.log2(0.8))
    assert entropy.shape == (1, 1, 1) and float(entropy) == pytest.approx(expected, rel=1e-4)


def test_pair_signals_defaults_and_flat_aggregation():
    torch.manual_seed(0)
    config = NetConfig(class_names=SYNTH_CLASSES, width=0.0625, image_size=(32, 40))
    model = ThreeBranchNet(config).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 3, 32, 40), torch.rand(2, 1, 32, 40))
    default = pair_signals(output)
    explicit = pair_signals(output, reduction="max", aggregation="scale_balanced")
    flat = pair_signals(output, aggregation="flat")
    for key, value in default.items():
        torch.testing.assert_close(value, explicit[key])
    torch.testing.assert_close(flat["inconsistency"], flat["inconsistency_flat"])
    assert not torch.allclose(flat["inconsistency"], default["inconsistency"])


def test_ppal_spreads_its_batch_over_standardised_features():
    """As for inconsistency-diverse: 32 scene dimensions differ by 1, a nuisance one by 1000 within scenes."""
    scene = np.repeat([0.0, 1.0], 6)
    embedding = np.column_stack([np.tile([0.0, 1000.0], 6), *[scene] * 32])
    s = signals(np.linspace(0.9, 0.5, 12), fused_entropy=np.linspace(0.9, 0.5, 12), embedding=embedding)
    for seed in range(4):
        picks = ShortlistDiverseStrategy(candidate_factor=6).select(s, 2, np.random.default_rng(seed), 12)
        assert picks[0] == 0 and picks[1] >= 6, seed  # the most uncertain, then the other scene
