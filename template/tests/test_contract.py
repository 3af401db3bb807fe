"""The contract between your code and the ml-lifecycle library: its own checks on dataset.py, features.py,
model.py and settings.toml, as training and serving will use them. Keep this file as it is; a failure names
your file and the fix."""

import os

import pytest
from ml_lifecycle import get_settings, testing


@pytest.fixture
def your_data():
    """Skips while data.path names a file you have not brought yet (the demo data needs none); fails
    instead under REQUIRE_ALL_TOOLS=1, as the CI sets it (docs/deploying.md#cicd), so CI cannot pass
    without checking your data."""
    path = get_settings().data_path
    if path is not None and not path.exists():
        reason = f"data.path {path} does not exist yet: bring your data"
        if os.environ.get("REQUIRE_ALL_TOOLS") == "1":
            pytest.fail(f"{reason} (REQUIRE_ALL_TOOLS=1)")
        pytest.skip(reason)


@pytest.mark.parametrize("family", testing.model_families())
def test_every_model_family_fits_mixed_data_with_parameters_from_its_search_space(family):
    testing.check_model_family(family)


@pytest.mark.parametrize("family", testing.model_families())
def test_the_settings_accept_every_model_family(family):
    testing.check_settings(family)


def test_the_primary_metric_is_one_the_library_knows():
    testing.check_primary_metric()


def test_your_training_data_loads_and_passes_the_checks(your_data):
    testing.check_dataset()


def test_your_feature_steps_fit_your_training_data_and_keep_its_columns(your_data):
    testing.check_feature_steps()
