"""The resource checks every path the launchpad can set before anything uses it."""

import pytest

from cprec_assets.resources import ProfileResource
from cprec_core.config import ConfigError


@pytest.mark.parametrize("field", ["data_dir", "landing_dir", "config_file"])
@pytest.mark.parametrize("value", ["a\0b", "two\nlines"])
def test_paths_from_the_launchpad_are_checked_where_they_enter(field, value):
    resource = ProfileResource(**{field: value})
    with pytest.raises(ConfigError, match=field):
        resource.profile if field != "landing_dir" else resource.landing_root()


@pytest.mark.parametrize("name", ["../../..", "x'y", "a;b", "/abs", "a\0b"])
def test_a_profile_name_from_the_launchpad_must_be_a_named_profile(name):
    with pytest.raises(ConfigError, match="profile"):
        _ = ProfileResource(profile_name=name).profile
