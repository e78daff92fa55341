"""Raw inputs -> three normalized Spark DataFrames, validated at the boundary.

Each `data.format` has a reader (its own module) that finds the files and says which columns
they hold; `validate` does the loading, checking and error messages they all share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from jobs.plumbing.config import DataConf
from jobs.readers import generic, movielens
from jobs.readers.movielens import ML100K_FILES
from jobs.readers.validate import DataError, Inputs, RawData, finish

__all__ = ["FORMATS", "ML100K_FILES", "DataError", "RawData", "read"]

log = logging.getLogger(__name__)

# data.format -> its reader; the keys are the formats DataConf.format accepts.
FORMATS: dict[str, Callable[[SparkSession, DataConf], Inputs]] = {
    "movielens-100k": movielens.read_100k,
    "movielens-1m": movielens.read_1m,
    "generic": generic.read,
}


def read(spark: SparkSession, conf: DataConf) -> RawData:
    """Read and validate the configured inputs; raise DataError at the first bad row."""
    started = time.monotonic()
    raw = finish(FORMATS[conf.format](spark, conf), conf)
    log.info("read and validated %s inputs in %.1f s", conf.format, time.monotonic() - started)
    return raw
