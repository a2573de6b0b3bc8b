"""``JobContext.predictor``: loaded models are cached per project (two versions each), for the
PREDICTOR_CACHE_PROJECTS most recently used projects, so one busy project never evicts another's model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ls_backend.jobs import JobContext
from ls_backend.settings import Settings, SettingsError
from tests.unit.app_support import make_settings, tiny_model


def context_with(tmp_path: Path, projects: dict[str, int], cache_projects: int) -> tuple[JobContext, dict]:
    """A context whose registry holds ``projects[name]`` published versions of each project."""
    context = JobContext(make_settings(tmp_path, predictor_cache_projects=cache_projects))
    versions = {
        name: [context.registry.publish(name, tiny_model(), num_train_tasks=2).version for _ in range(count)]
        for name, count in projects.items()
    }
    return context, versions


def test_versions_are_cached_per_project(tmp_path: Path) -> None:
    context, versions = context_with(tmp_path, {"1": 3, "2": 1}, cache_projects=2)
    (v1, v2, v3), (w,) = versions["1"], versions["2"]
    other = context.predictor("2", w)
    first = context.predictor("1", v1)
    assert context.predictor("1", v1) is first  # cached
    second = context.predictor("1", v2)
    # Two versions of project 1 in the cache do not push project 2's model out.
    assert context.predictor("2", w) is other
    assert context.predictor("1", v1) is first and context.predictor("1", v2) is second
    context.predictor("1", v3)  # a third version drops project 1's least recently used one (v1)
    assert context.predictor("1", v2) is second
    assert context.predictor("1", v1) is not first
    assert context.predictor("2", w) is other


def test_the_least_recently_used_project_is_dropped_beyond_the_setting(tmp_path: Path) -> None:
    context, versions = context_with(tmp_path, {"1": 1, "2": 1, "3": 1}, cache_projects=2)
    a = context.predictor("1", versions["1"][0])
    b = context.predictor("2", versions["2"][0])
    assert context.predictor("1", versions["1"][0]) is a  # project 1 used last: project 2 goes next
    context.predictor("3", versions["3"][0])
    assert context.predictor("1", versions["1"][0]) is a
    assert context.predictor("2", versions["2"][0]) is not b


def test_the_setting_must_keep_at_least_one_project() -> None:
    with pytest.raises(SettingsError, match="PREDICTOR_CACHE_PROJECTS"):
        Settings.from_env({"PREDICTOR_CACHE_PROJECTS": "0"})
    assert Settings.from_env({}).predictor_cache_projects == 4
