"""Fixtures shared by every test module.

The cluster fixtures are session-scoped and hold a machine-wide lock: they must be
defined once, here, or each module importing them would get its own "session" cluster
and wait forever for the lock the first one holds.
"""

from tests.cluster.fixtures import (  # noqa: F401
    cluster_fixture,
    fast_cluster_fixture,
    qemu_cluster_fixture,
)
from tests.postgres import postgres  # noqa: E402, F401
