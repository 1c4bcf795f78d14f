"""An agent configured with the URLs of several nodes of one coordinator moves to the
next when the one in use does not answer, and reads the list from its configuration."""

from __future__ import annotations

import pytest

from aeamc.agent.config import ConfigError, config_from_mapping, coordinator_urls
from aeamc.agent.locator import CoordinatorLocator


def test_the_next_node_is_used_when_the_current_one_is_unreachable() -> None:
    locator = CoordinatorLocator("https://10.0.0.1:8443, https://10.0.0.2:8443/")
    assert locator.url == "https://10.0.0.1:8443"
    assert locator.unreachable("https://10.0.0.1:8443")
    assert locator.url == "https://10.0.0.2:8443"
    # A late failure report about the node already left behind moves nothing.
    assert not locator.unreachable("https://10.0.0.1:8443")
    assert locator.url == "https://10.0.0.2:8443"
    assert locator.unreachable("https://10.0.0.2:8443")
    assert locator.url == "https://10.0.0.1:8443"  # round again


def test_one_configured_url_is_kept_whatever_happens() -> None:
    locator = CoordinatorLocator("https://10.0.0.1:8443")
    assert not locator.unreachable("https://10.0.0.1:8443")
    assert locator.url == "https://10.0.0.1:8443"


def test_several_urls_in_the_configuration_are_each_checked() -> None:
    assert coordinator_urls("https://a:1, https://b:2") == ["https://a:1", "https://b:2"]
    config_from_mapping({"coordinator_url": "https://a:8443,https://b:8443"})
    with pytest.raises(ConfigError, match=r"TLS 1\.3 only"):
        config_from_mapping({"coordinator_url": "https://a:8443, http://b:8443"})
    with pytest.raises(ConfigError, match="base URL only"):
        config_from_mapping({"coordinator_url": "https://a:8443, https://b:8443/v1"})
