from pathlib import Path

import pytest

from ls_backend.settings import SETTINGS, Settings, SettingsError, settings_table_markdown


def test_defaults_and_parsing():
    settings = Settings.from_env(
        {
            "MODEL_IMAGE_SIZE": "480x640",
            "ALLOWED_IMAGE_HOSTS": "cdn.example.com, *.bucket.example.org",
            "LOCAL_FILES_ROOT": "/data/pairs",
            "TORCH_COMPILE": "true",
            "TRAIN_EPOCHS": "3",
            "TRAIN_LR": "0.01",
        }
    )
    assert settings.model_image_size == (480, 640)
    assert settings.allowed_image_hosts == ("cdn.example.com", "*.bucket.example.org")
    assert settings.local_files_root == Path("/data/pairs")
    assert settings.torch_compile is True and settings.train_epochs == 3 and settings.train_lr == 0.01
    assert Settings.from_env({}).redis_url == ""
    assert Settings.from_env({}).cache_dir == Path("models/.image-cache")
    assert Settings.from_env({"ACQUISITION": "ppal"}).acquisition == "ppal"


def test_acquisition_default_is_the_benchmark_default():
    from model.acquisition import DEFAULT_STRATEGY

    assert Settings().acquisition == DEFAULT_STRATEGY


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRAIN_EPOCHS": "ten"}, "TRAIN_EPOCHS"),
        ({"QUEUE_CLUSTERS": "-1"}, "QUEUE_CLUSTERS"),
        ({"QUEUE_CLUSTERS": "5000"}, "QUEUE_CLUSTERS"),
        ({"ACQUISITION": "ls-queue"}, "ACQUISITION"),
        ({"MODEL_IMAGE_SIZE": "big"}, "MODEL_IMAGE_SIZE"),
        ({"TORCH_COMPILE": "maybe"}, "TORCH_COMPILE"),
        ({"BASIC_AUTH_USER": "admin"}, "BASIC_AUTH_PASS"),
        ({"HOLDOUT_FRACTION": "1.5"}, "HOLDOUT_FRACTION"),
        ({"PUSH_PAGE_SIZE": "0"}, "PUSH_PAGE_SIZE"),
        ({"ACQUISITION": "most-confusing"}, "ACQUISITION must be one of random, inconsistency"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_secrets_masked_and_table_lists_every_variable():
    settings = Settings.from_env(
        {
            "LABEL_STUDIO_URL": "http://ls:8080",
            "LABEL_STUDIO_API_KEY": "abc",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "p",
        }
    )
    public = settings.public()
    assert public["LABEL_STUDIO_API_KEY"] == "***" and public["BASIC_AUTH_PASS"] == "***"
    assert public["BASIC_AUTH_USER"] == "u"
    table = settings_table_markdown()
    for name in SETTINGS:
        assert f"| `{name}` |" in table
    assert "`512x640`" in table
