"""Feast definitions for the KAR vectors: a reasoning vector per user, a fact vector per item.

The sources are the Delta tables `kar publish` keeps (one row per entity and
published vectors version, event_timestamp = that version's commit time), so
Feast's point-in-time joins give a training set the vectors that were live when
each sample happened, and `materialize` puts the live version online.
"""

import os
import posixpath
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import DeltaFormat
from feast.types import Array, Float32, Int64

# A path or an object-store URI (kept a string: a URI is not a path). On S3-compatible
# stores, Feast's file offline store reads AWS_ENDPOINT_URL for its endpoint.
TABLES = os.environ.get("KAR_FEAST_TABLES") or os.path.abspath("kar-output/tables")
ENDPOINT = os.environ.get("AWS_ENDPOINT_URL") if TABLES.startswith("s3://") else None

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)

kar_user = FeatureView(
    name="kar_user",
    entities=[user],
    ttl=timedelta(0),  # 0 = no expiry: a vector stays valid until a newer version replaces it
    schema=[
        Field(name="reasoning", dtype=Array(Float32)),
        Field(name="vectors_version", dtype=Int64),
    ],
    source=FileSource(
        name="kar_user_vectors",
        path=posixpath.join(TABLES, "features_user"),
        s3_endpoint_override=ENDPOINT,
        file_format=DeltaFormat(),
        timestamp_field="event_timestamp",
    ),
    online=True,
)

kar_item = FeatureView(
    name="kar_item",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="fact", dtype=Array(Float32)),
        Field(name="vectors_version", dtype=Int64),
    ],
    source=FileSource(
        name="kar_item_vectors",
        path=posixpath.join(TABLES, "features_item"),
        s3_endpoint_override=ENDPOINT,
        file_format=DeltaFormat(),
        timestamp_field="event_timestamp",
    ),
    online=True,
)

DEFINITIONS = [user, item, kar_user, kar_item]
