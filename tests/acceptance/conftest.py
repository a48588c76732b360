"""The acceptance run uses the integration tests' local platform."""

from tests.integration.conftest import fresh_local_platform, local_platform  # noqa: F401 - fixtures
