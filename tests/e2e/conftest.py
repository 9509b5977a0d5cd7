"""The operator suite's `env` fixture (a release of the chart and a webhook sink), for every
end-to-end module that runs tasks without importing it by name."""

from tests.e2e.test_operator_e2e import env  # noqa: F401
