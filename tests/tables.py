"""The two tables the store tests run on: the pure-Python Store and the compact one (server/_cstore.pyx).

The compact table is compiled (``python setup.py build_ext --inplace``, as
.ci/run does); without it these tests fail to import rather than skip.
"""

from __future__ import annotations

import pytest

from server._cstore import CompactStore, JournaledCompactStore
from server.journaled_store import JournaledStore
from server.store import Store

#: Parametrize a test over both tables (the argument is the table's class).
TABLES = pytest.mark.parametrize("table", [Store, CompactStore], ids=["python", "compact"])

#: Parametrize a test over both journaled tables.
JOURNALED_TABLES = pytest.mark.parametrize("journaled", [JournaledStore, JournaledCompactStore],
                                           ids=["python", "compact"])
