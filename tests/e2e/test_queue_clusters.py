"""QUEUE_CLUSTERS against a real Label Studio: pool scoring writes each prediction's ``cluster`` (the bulk
import route drops it), and ``/next`` then serves two annotators, each with a labelling history of their
own, exactly the order :func:`model.acquisition.label_studio_next_order` predicts: round-robin over the
clusters, fewest labelled by that annotator first, then the lowest score."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from ls_backend.jobs import CLUSTER_ID_STRIDE
from ls_backend.processes import Worker, child_env
from ls_backend.queues import RQRunner
from ls_backend.registry import version_number
from ls_backend.settings import Settings
from ls_backend.studio import StudioClient
from ls_backend.studio_server import LabelStudioServer
from model.acquisition import label_studio_next_order
from tests.e2e.conftest import SHARED_REDIS_URL, LabelledProject, stack_settings
from tests.e2e.test_faults import registered_project

K = 3
PAIRS = 14


def signed_up_token(server: LabelStudioServer) -> str:
    """A second user of the server's organisation (signed up through the web form with the organisation's
    invite link, as a person would: the server allows no other sign-up) and their legacy API token."""
    with StudioClient(server.url, server.token) as admin:
        invite = str(admin.request("GET", "api/invite")["invite_url"])
    session = requests.Session()
    page = server.url + "/user/signup/?token=" + invite.split("token=", 1)[1]
    session.get(page, timeout=30).raise_for_status()
    answer = session.post(
        page,
        data={
            "email": f"annotator-{uuid.uuid4().hex[:8]}@example.com",
            "password": "annotator-password-1",
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": page},
        timeout=30,
    )
    answer.raise_for_status()
    token = session.get(server.url + "/api/current-user/token", timeout=30).json()["token"]
    assert token, "the signed-up user has no token"
    return str(token)


def test_clusters_are_written_and_next_serves_each_annotator_round_robin(
    label_studio: LabelStudioServer,
    labelled_project: Callable[..., LabelledProject],
    queue_name: str,
    tmp_path: Path,
) -> None:
    project = labelled_project("queue clusters", pairs=PAIRS, annotated=0)
    values = stack_settings(
        label_studio.url,
        label_studio.token,
        tmp_path / "models",
        redis_url=SHARED_REDIS_URL,
        queue=queue_name,
        QUEUE_CLUSTERS=str(K),
        ACQUISITION="combined",
    )
    _, version = registered_project(values, project)
    # Scored by a real `rgbt-al worker --burst` (the torch and BLAS threads of scoring stay out of the test
    # process, whose later tests fork).
    runner = RQRunner(Settings.from_env(values))
    job_id = runner.enqueue("ls_backend.jobs.score_pool", project.key, version, description="score pool")
    with Worker(env=child_env(values), log_path=tmp_path / "worker.log", burst=True) as worker:
        assert worker.process is not None and worker.process.wait(600) == 0, worker.log_path.read_text()
    state = runner.job(job_id)
    assert state is not None and state.status == "finished", (state, worker.log_path.read_text()[-3000:])
    assert state.result["status"] == "scored" and state.result["scored"] == PAIRS

    admin = StudioClient(label_studio.url, label_studio.token)
    other = StudioClient(label_studio.url, signed_up_token(label_studio))
    stored = [p for p in admin.list_predictions(project_id=project.id) if p["model_version"] == version]
    assert len(stored) == PAIRS
    # Every prediction keeps its cluster: ids of this version, K of them in use.
    first_id = version_number(version) * CLUSTER_ID_STRIDE
    clusters = {int(p["task"]): p["cluster"] for p in stored}
    assert all(c is not None and first_id <= c < first_id + K for c in clusters.values()), clusters
    assert len(set(clusters.values())) >= 2
    scores = {int(p["task"]): float(p["score"]) for p in stored}
    assert admin.get_project(project.id)["model_version"] == version

    def expected_order(history: list[int], labelled: set[int]) -> list[int]:
        tasks = sorted(t for t in scores if t not in labelled)
        order = label_studio_next_order(
            np.array([scores[t] for t in tasks]),
            np.array([clusters[t] for t in tasks]),
            [clusters[t] for t in history],
        )
        return [tasks[i] for i in order]

    def label(client: StudioClient, task_id: int) -> None:
        client.create_annotation(task_id, [])

    def score_order(labelled: set[int]) -> list[int]:
        return sorted((t for t in scores if t not in labelled), key=scores.get)

    # Histories: the admin labelled one task, chosen (deterministically, from the stored scores and
    # clusters) so that the rule serves something other than score order; the other user two tasks of
    # another cluster. Each then takes four tasks from /next, labelling each one served.
    by_score = score_order(set())

    def other_history(first: int) -> list[int]:
        return [t for t in by_score if clusters[t] != clusters[first]][:2]

    def differs(first: int) -> bool:
        labelled = {first, *other_history(first)}
        return expected_order([first], labelled)[:4] != score_order(labelled)[:4]

    # None found: the clusters change nothing, which the last assertion reports.
    first = next((t for t in by_score if differs(t)), by_score[0])
    second = other_history(first)
    histories = {"admin": [first], "other": second}
    label(admin, first)
    for task_id in second:
        label(other, task_id)
    labelled = {first, *second}
    score_only = []
    for name, client in (("admin", admin), ("other", other)):
        expected = expected_order(histories[name], labelled)[:4]
        served = []
        for _ in range(4):
            task = client.next_task(project.id)
            assert task is not None
            served.append(int(task["id"]))
            label(client, int(task["id"]))
        assert served == expected, (name, served, expected, {t: (clusters[t], scores[t]) for t in scores})
        score_only.append(score_order(labelled)[:4] != served)
        labelled |= set(served)
    assert any(score_only), "the clusters changed nothing: the test would pass on score order alone"
