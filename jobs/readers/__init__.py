"""Raw inputs -> three normalized Spark DataFrames, validated at the boundary."""

from jobs.readers.validate import ML100K_FILES, DataError, RawData, read

__all__ = ["ML100K_FILES", "DataError", "RawData", "read"]
