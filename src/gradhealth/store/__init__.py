"""The run store: one SQLite file per run directory, written off the hot path.

- :class:`RunStore` writes (batched, on a background thread, never raising into training);
- :func:`load_run` reads a finished, crashed or still-running run back as a :class:`Run`;
- :func:`to_pandas` / :meth:`Run.to_pandas` export DataFrames.

The tables, columns and versioning rules are documented in ``docs/store.md``.
"""

from .reader import Run, load_run, to_pandas, to_records
from .schema import DB_NAME, SCHEMA_VERSION
from .writer import RunStore, StoreWarning

__all__ = ["RunStore", "StoreWarning", "Run", "load_run", "to_pandas", "to_records",
           "DB_NAME", "SCHEMA_VERSION"]
