"""readers.read on real files with real Spark: ML-100K, ML-1M layout, generic CSV + Parquet,
and the errors a bad input gets (file, exact line or row, column, value)."""

from __future__ import annotations

import re
import shutil
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.plumbing.config import DataConf, FileConf
from jobs.readers import FORMATS, DataError, RawData, read

INTERACTIONS = [
    ("user_id", "string"),
    ("item_id", "string"),
    ("rating", "double"),
    ("timestamp", "bigint"),
]
ITEMS = [("item_id", "string"), ("title", "string"), ("genres", "array<string>")]
USERS = [("user_id", "string"), ("attributes", "map<string,string>")]


def _rows(df) -> dict:
    """First column -> the rest of the row, as plain Python values."""
    return {r[0]: tuple(r[1:]) for r in df.collect()}


def _ml100k_copy(src: Path, dst: Path, inter: Callable[[list[str]], None] | None = None) -> Path:
    """A copy of ML-100K whose .inter lines (index 0 = line 1, the header) `inter` may edit."""
    dst.mkdir()
    for name in ("ml-100k.item", "ml-100k.user"):
        shutil.copy(src / name, dst / name)
    lines = (src / "ml-100k.inter").read_text(encoding="utf-8").split("\n")
    if inter is not None:
        inter(lines)
    (dst / "ml-100k.inter").write_text("\n".join(lines), encoding="utf-8")
    return dst


def _set_field(line_no: int, index: int, value: str) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        fields = lines[line_no - 1].split("\t")
        fields[index] = value
        lines[line_no - 1] = "\t".join(fields)

    return edit


def test_every_configurable_format_has_a_reader_and_no_other() -> None:
    """A format the config accepts without a reader would fail only at run time (KeyError)."""
    accepted = typing.get_args(DataConf.model_fields["format"].annotation)
    assert sorted(FORMATS) == sorted(accepted)


def test_movielens_100k_reads_whole_and_typed(spark, ml100k: Path) -> None:
    raw = read(spark, DataConf(format="movielens-100k", path=ml100k))

    assert raw.interactions.dtypes == INTERACTIONS
    assert raw.items.dtypes == ITEMS
    assert raw.users is not None and raw.users.dtypes == USERS
    assert raw.interactions.count() == 100_000
    assert raw.interactions.where("user_id is null or rating is null").count() == 0
    assert raw.interactions.select("user_id").distinct().count() == 943
    items = _rows(raw.items)
    assert len(items) == 1_682
    assert items["1"] == ("Toy Story (1995)", ["Animation", "Children's", "Comedy"])
    users = _rows(raw.users)
    assert len(users) == 943
    assert users["1"] == ({"age": "24", "gender": "male", "occupation": "technician"},)
    first = raw.interactions.where("user_id = '196' and item_id = '242'").first()
    assert (first["rating"], first["timestamp"]) == (3.0, 881250949)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set_field(17, 2, "abc"), "line 17, column 'rating': 'abc' is not a number"),
        (_set_field(5, 0, " "), "line 5, column 'user_id': the value is empty"),
        (_set_field(9, 3, "soon"), "line 9, column 'timestamp': 'soon' is not a number"),
    ],
)
def test_bad_interaction_names_file_line_column_value(
    spark, ml100k: Path, tmp_path: Path, edit, expected: str
) -> None:
    root = _ml100k_copy(ml100k, tmp_path / "ml", edit)
    with pytest.raises(DataError) as err:
        read(spark, DataConf(format="movielens-100k", path=root))
    message = str(err.value)
    assert message.startswith(f"{root / 'ml-100k.inter'}, {expected}")
    assert "Fix the row or remove it" in message


@pytest.fixture
def small_splits(spark) -> Iterator[None]:
    """Split a 2 MB file into many Spark partitions, as a big file on a cluster would be."""
    key = "spark.sql.files.maxPartitionBytes"
    old = spark.conf.get(key)
    spark.conf.set(key, "200000")
    yield
    spark.conf.set(key, old)


def test_line_numbers_stay_exact_across_splits(
    spark, ml100k: Path, tmp_path: Path, small_splits
) -> None:
    def edit(lines: list[str]) -> None:
        lines[73_456] = lines[73_456] + "\textra"  # line 73,457 gets a fifth field
        _set_field(90_001, 2, "x")(lines)

    root = _ml100k_copy(ml100k, tmp_path / "ml", edit)
    with pytest.raises(DataError) as err:
        read(spark, DataConf(format="movielens-100k", path=root))
    message = str(err.value)
    assert f"{root / 'ml-100k.inter'}, line 73457: expected 4 fields" in message
    assert "found 5" in message
    assert "(2 bad rows in all; this is the first.)" in message


def test_unknown_item_id_fails_at_its_line(spark, ml100k: Path, tmp_path: Path) -> None:
    root = _ml100k_copy(ml100k, tmp_path / "ml", _set_field(4_242, 1, "99999"))
    with pytest.raises(DataError) as err:
        read(spark, DataConf(format="movielens-100k", path=root))
    message = str(err.value)
    assert message.startswith(f"{root / 'ml-100k.inter'}, line 4242: item id '99999'")
    assert str(root / "ml-100k.item") in message


def test_missing_column_lists_what_the_file_has(spark, ml100k: Path, tmp_path: Path) -> None:
    root = _ml100k_copy(ml100k, tmp_path / "ml", _set_field(1, 2, "stars:float"))
    with pytest.raises(DataError) as err:
        read(spark, DataConf(format="movielens-100k", path=root))
    assert str(err.value).startswith(
        f"{root / 'ml-100k.inter'}: column 'rating' is missing; the file has columns: "
        "user_id, item_id, stars, timestamp."
    )


def test_missing_dataset_says_how_to_fetch_it(spark, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape("python -m jobs.plumbing.datasets")):
        read(spark, DataConf(format="movielens-100k", path=tmp_path / "nowhere"))


def _write_ml1m(root: Path) -> Path:
    root.mkdir()
    ratings = ["1::1193::5::978300760", "1::2::3::978302109", "2::1193::4::978298413"]
    movies = [
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
        "2::Jumanji (1995)::Adventure|Children's|Fantasy",
        "3::Café au lait (1993)::Comedy",
    ]
    users = ["1::F::1::10::48067", "2::M::56::16::70072"]
    for name, lines in (("ratings.dat", ratings), ("movies.dat", movies), ("users.dat", users)):
        (root / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return root


def test_movielens_1m_layout_latin1_and_decoded_codes(spark, tmp_path: Path) -> None:
    root = _write_ml1m(tmp_path / "ml-1m")
    assert "é".encode("latin-1") in (root / "movies.dat").read_bytes()  # not UTF-8 on disk

    raw = read(spark, DataConf(format="movielens-1m", path=root))

    assert raw.interactions.dtypes == INTERACTIONS
    assert sorted(raw.interactions.collect()) == [
        ("1", "1193", 5.0, 978300760),
        ("1", "2", 3.0, 978302109),
        ("2", "1193", 4.0, 978298413),
    ]
    items = _rows(raw.items)
    assert items["3"] == ("Café au lait (1993)", ["Comedy"])
    assert items["2"] == ("Jumanji (1995)", ["Adventure", "Children's", "Fantasy"])
    assert raw.users is not None
    assert _rows(raw.users) == {
        "1": ({"gender": "female", "age": "under-18", "occupation": "K-12 student"},),
        "2": ({"gender": "male", "age": "56+", "occupation": "self-employed"},),
    }


def _write_generic(root: Path) -> DataConf:
    """Interactions in Parquet (typed, real timestamps), items and users in CSV, all renamed."""
    root.mkdir()
    pq.write_table(
        pa.table(
            {
                "uid": pa.array([7, 7, 8], pa.int64()),
                "movie": pa.array(["m1", "m2", "m1"]),
                "stars": pa.array([4.5, 2.0, 5.0], pa.float32()),
                "when": pa.array([1_000_000, 1_000_100, 2_000_000], pa.timestamp("s")),
            }
        ),
        root / "events.parquet",
    )
    (root / "movies.csv").write_text(
        'movie,name,tags\nm1,"Amélie, or the Fabulous Destiny (2001)",Comedy|Romance\n'
        "\nm2,Heat (1995),\n",
        encoding="utf-8",
    )
    (root / "people.csv").write_text("id;years;job\n7;31;nurse\n8;;chef\n", encoding="utf-8")
    return DataConf(
        format="generic",
        interactions=FileConf(
            path=root / "events.parquet",
            format="parquet",
            columns={"user_id": "uid", "item_id": "movie", "rating": "stars", "timestamp": "when"},
        ),
        items=FileConf(
            path=root / "movies.csv",
            columns={"item_id": "movie", "title": "name", "genres": "tags"},
        ),
        users=FileConf(
            path=root / "people.csv",
            delimiter=";",
            columns={"user_id": "id", "age": "years", "occupation": "job"},
        ),
    )


def test_generic_csv_and_parquet_with_renamed_columns(spark, tmp_path: Path) -> None:
    raw: RawData = read(spark, _write_generic(tmp_path / "in"))

    assert raw.interactions.dtypes == INTERACTIONS
    assert sorted(raw.interactions.collect()) == [
        ("7", "m1", 4.5, 1_000_000),
        ("7", "m2", 2.0, 1_000_100),
        ("8", "m1", 5.0, 2_000_000),
    ]
    assert _rows(raw.items) == {
        "m1": ("Amélie, or the Fabulous Destiny (2001)", ["Comedy", "Romance"]),
        "m2": ("Heat (1995)", []),
    }
    assert raw.users is not None
    assert _rows(raw.users) == {
        "7": ({"age": "31", "occupation": "nurse"},),
        "8": ({"occupation": "chef"},),  # an empty attribute is left out, not kept as ""
    }


def test_generic_parquet_error_names_the_row_index(spark, tmp_path: Path) -> None:
    conf = _write_generic(tmp_path / "in")
    path = tmp_path / "in" / "events.parquet"
    table = pq.read_table(path)
    stars = pa.array([4.5, 2.0, None], pa.float32())
    pq.write_table(table.set_column(2, "stars", stars), path)
    with pytest.raises(DataError) as err:
        read(spark, conf)
    assert str(err.value).startswith(
        f"{path}, row index 2 (0-based), column 'stars' (rating): the value is empty"
    )


def test_generic_errors_missing_column_and_duplicate_id(spark, tmp_path: Path) -> None:
    conf = _write_generic(tmp_path / "in")
    items = conf.items
    assert items is not None
    wrong = conf.model_copy(
        update={"items": items.model_copy(update={"columns": {"item_id": "movie", "title": "T"}})}
    )
    with pytest.raises(DataError) as err:
        read(spark, wrong)
    assert str(err.value).startswith(
        f"{items.path}: column 'T' (title) is missing; the file has columns: movie, name, tags. "
        "Map it in data.items.columns"
    )

    with Path(items.path).open("a", encoding="utf-8") as f:
        f.write("m2,Heat again (1995),Crime\n")
    with pytest.raises(DataError) as err:
        read(spark, conf)
    message = str(err.value)
    assert "item_id 'm2' appears 2 times" in message
    assert f"first at {items.path}, line 4, last at {items.path}, line 5" in message
