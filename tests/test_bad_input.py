"""Bad input, class by class: each gets a clear error (file, line, column or key, and the fix)
or a counted, documented repair. Real Spark on real files; the README's "Bad input and
personal data" section lists the same classes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from suite_paths import ROOT

from jobs import cli, encode, prepare
from jobs.plumbing import tables
from jobs.plumbing.config import DataConf, FileConf, load_config
from jobs.readers import DataError, read

GOOD_EVENTS = ["u1,i1,4,1000000000", "u1,i2,2,1000000100", "u2,i1,5,1000000200"]
GOOD_ITEMS = ["i1,Heat (1995),Crime", "i2,Babe (1995),Children"]


def generic(tmp: Path, events=GOOD_EVENTS, items=GOOD_ITEMS, users=None, **conf) -> DataConf:
    """A generic-layout dataset in `tmp` (CSV lines without the header) and its DataConf."""
    tmp.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: str, rows, encoding: str = "utf-8") -> Path:
        path = tmp / name
        body = (
            rows
            if isinstance(rows, bytes)
            else ("\n".join([header, *rows]) + "\n").encode(encoding)
        )
        path.write_bytes(body)
        return path

    files = {
        "interactions": FileConf(
            path=write("events.csv", "user_id,item_id,rating,timestamp", events)
        ),
        "items": FileConf(path=write("items.csv", "item_id,title,genres", items)),
    }
    if users is not None:
        files["users"] = FileConf(path=write("users.csv", "user_id,age,zip", users))
    return DataConf(format="generic", path=None, **files, **conf)


def message(spark, conf: DataConf) -> str:
    with pytest.raises(DataError) as err:
        read(spark, conf)
    return str(err.value)


# class -> (events, items, config, what the message must say)
ERRORS = {
    "rating above the scale": (
        [*GOOD_EVENTS, "u2,i2,7,1000000300"],
        GOOD_ITEMS,
        {},
        r"events.csv, line 5, column 'rating': '7' is outside the rating scale 1 to 5 "
        r"\(data.rating_scale",
    ),
    "negative rating": (
        ["u1,i1,-3,1000000000"],
        GOOD_ITEMS,
        {},
        r"line 2, column 'rating': '-3' is outside the rating scale",
    ),
    "rating outside a configured scale": (
        GOOD_EVENTS,
        GOOD_ITEMS,
        {"rating_scale": (0, 1)},
        r"line 2, column 'rating': '4' is outside the rating scale 0 to 1",
    ),
    "zero timestamp": (
        [*GOOD_EVENTS, "u2,i2,3,0"],
        GOOD_ITEMS,
        {},
        r"events.csv, line 5, column timestamp: 0 \(s\) is not a time between 1970 and now "
        r"\+ data.max_future_days",
    ),
    "far-future timestamp": (
        [*GOOD_EVENTS, "u2,i2,3,4102444800"],
        GOOD_ITEMS,
        {},
        r"line 5, column timestamp: 4102444800 \(s\) is not a time between 1970",
    ),
    "conflicting duplicates": (
        [*GOOD_EVENTS, "u1,i2,5,1000000100"],
        GOOD_ITEMS,
        {},
        r"user 'u1' rated item 'i2' at the same time 1000000100 with different ratings "
        r"\(.*events.csv, line 3 and .*events.csv, line 5\); keep one of the rows",
    ),
    "wrong delimiter": (
        [e.replace(",", ";") for e in GOOD_EVENTS],
        GOOD_ITEMS,
        {},
        r"events.csv, line 2: expected 4 fields .* The line looks ';'-separated, not ',': set "
        r"data.interactions.delimiter: ';'",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_fails_with_file_line_and_fix(spark, tmp_path, case):
    events, items, extra, expected = ERRORS[case]
    conf = generic(tmp_path, events, items, **extra)
    assert re.search(expected, message(spark, conf)), message(spark, conf)


def test_headers_are_not_read_with_the_wrong_delimiter_header_too(spark, tmp_path):
    conf = generic(tmp_path)
    path = Path(conf.interactions.path)
    path.write_text(path.read_text().replace(",", ";"))
    assert "The header looks ';'-separated, not ','" in message(spark, conf)


def test_non_utf8_bytes_name_the_line_and_the_encoding_key(spark, tmp_path):
    latin1 = "i1,Café Society (2016),Drama".encode("latin-1")
    conf = generic(tmp_path, items=[])
    Path(conf.items.path).write_bytes(
        b"item_id,title,genres\n" + latin1 + b"\ni2,Babe (1995),Kids\n"
    )
    got = message(spark, conf)
    assert "items.csv, line 2: the line holds bytes that are not valid utf-8" in got
    assert "Set data.items.encoding to the file's encoding (e.g. latin-1)" in got
    items = FileConf.model_validate({**conf.items.model_dump(), "encoding": "latin-1"})
    assert items.encoding == "iso-8859-1"  # Python's name, validated into Spark's
    fixed = conf.model_copy(update={"items": items})
    titles = {r["item_id"]: r["title"] for r in read(spark, fixed).items.collect()}
    assert titles["i1"] == "Café Society (2016)"


def test_standard_csv_quoting_is_read_as_csv_readers_do(spark, tmp_path):
    items = ['i1,"""Crocodile"" Dundee (1986)","Comedy|Adventure"', 'i2,"Heat, the (1995)",Crime']
    raw = read(spark, generic(tmp_path / "a", items=items))
    titles = {r["item_id"]: r["title"] for r in raw.items.collect()}
    assert titles == {"i1": '"Crocodile" Dundee (1986)', "i2": "Heat, the (1995)"}

    # A quoted newline: the file is read record by record (prepare's cleaning joins the lines).
    raw = read(spark, generic(tmp_path / "b", items=['i1,"Heat', '(1995)",Crime', *items[1:]]))
    titles = {r["item_id"]: r["title"] for r in raw.items.collect()}
    assert titles == {"i1": "Heat\n(1995)", "i2": "Heat, the (1995)"}
    bad = generic(tmp_path / "c", items=['i1,"Heat', '(1995)",Crime', ",Babe,Kids"])
    assert "items.csv, record 2 (1-based, after the header; a record may span lines), column" in (
        message(spark, bad)
    )


def test_repairs_exact_duplicates_and_counts_entities_without_interactions(spark, tmp_path):
    events = [*GOOD_EVENTS, GOOD_EVENTS[0], GOOD_EVENTS[0]]
    items = [*GOOD_ITEMS, "i3,Fargo (1996),Crime"]
    raw = read(spark, generic(tmp_path, events, items, users=["u1,24,1", "u9,30,2"]))
    assert raw.interactions.count() == 3
    assert raw.repairs == {
        "exact_duplicate_interactions_dropped": 2,
        "items_without_interactions": 1,
        "users_without_interactions": 1,
    }


def test_millisecond_timestamps_are_detected_or_configured(spark, tmp_path):
    events = [e[: e.rindex(",")] + "," + e[e.rindex(",") + 1 :] + "123" for e in GOOD_EVENTS]
    raw = read(spark, generic(tmp_path, events))
    assert sorted(r["timestamp"] for r in raw.interactions.collect()) == [
        1000000000,
        1000000100,
        1000000200,
    ]
    assert "(s) is not a time" in message(spark, generic(tmp_path, events, timestamp_unit="s"))


def test_a_mix_of_second_and_millisecond_timestamps_names_a_row_of_each(spark, tmp_path):
    """Under `auto` the largest value decided "ms" for the whole column, so the rows in
    seconds silently became 1970 dates."""
    events = [*GOOD_EVENTS, "u2,i2,3,1000000300123"]
    text = message(spark, generic(tmp_path, events))
    assert "events.csv, line 2" in text and "1000000000" in text  # the first row in seconds
    assert "line 5" in text and "1000000300123" in text  # and the first in milliseconds
    assert "data.timestamp_unit" in text


def test_backslash_escaped_quotes_read_with_the_escape_setting(spark, tmp_path):
    """`\\"` inside a quoted field (Spark's own default escape; Hive and MySQL exports)."""
    items = ['i1,"\\"Crocodile\\" Dundee, (1986)",Comedy', "i2,Heat (1995),Crime"]
    text = message(spark, generic(tmp_path / "a", items=items))
    assert "items.csv, line 2" in text and "data.items.escape: '\\\\'" in text
    assert "delimiter" not in text.split("expected")[-1]  # no ';' hint for this line

    conf = generic(tmp_path / "b", items=items)
    conf = conf.model_copy(update={"items": conf.items.model_copy(update={"escape": "\\"})})
    titles = {r["item_id"]: r["title"] for r in read(spark, conf).items.collect()}
    assert titles == {"i1": '"Crocodile" Dundee, (1986)', "i2": "Heat (1995)"}


def test_empty_folders_and_folders_of_part_files(spark, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    conf = generic(tmp_path / "d")
    folder = conf.model_copy(
        update={"interactions": conf.interactions.model_copy(update={"path": empty})}
    )
    assert "interactions path" in message(spark, folder) and "is a folder with no data files" in (
        message(spark, folder)
    )
    ml = DataConf(format="movielens-100k", path=empty)
    assert f"data.path {empty} is an empty directory" in message(spark, ml)

    # A folder of part files is read whole; an error names the part file and its line.
    parts = tmp_path / "events"
    parts.mkdir()
    (parts / "part-0.csv").write_text("user_id,item_id,rating,timestamp\n" + GOOD_EVENTS[0] + "\n")
    (parts / "part-1.csv").write_text("user_id,item_id,rating,timestamp\nu2,i1,9,1000000000\n")
    bad = conf.model_copy(
        update={"interactions": conf.interactions.model_copy(update={"path": parts})}
    )
    assert f"{parts / 'part-1.csv'}, line 2, column 'rating'" in message(spark, bad)


def test_no_ctr_samples_fails_before_any_table_is_written(spark, tmp_path, make_config):
    data = generic(tmp_path / "in", events=["u1,i1,4,1000000000", "u2,i2,3,1000000000"])
    conf = make_config().model_copy(update={"data": data})
    with pytest.raises(DataError, match="prepare found no CTR samples in 2 users' histories"):
        prepare.run(conf, "r", spark)
    assert tables.version(conf.table_path("prompts")) is None
    assert tables.version(conf.table_path("samples")) is None


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_unusable_output_dir_exits_2_before_any_spark_work(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = blocker if where == "a file" else blocker / "out"
    kar = Path(sys.executable).with_name("kar")
    result = subprocess.run(
        [str(kar), "run", "--conf", str(ROOT / "conf" / "local.yaml"), f"run.output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"run.output_dir {out} cannot be used as a directory" in result.stderr
    assert "log4j" not in result.stderr  # failed before Spark started


def test_config_defaults_agree_with_the_shipped_config():
    shipped = load_config(ROOT / "conf" / "local.yaml")
    assert shipped.generate.retry_statuses == load_config().generate.retry_statuses
    assert "length" not in load_config().generate.retry_statuses
    assert shipped.data.rating_scale == load_config().data.rating_scale


def test_input_errors_exit_2_and_any_other_error_keeps_its_traceback(tmp_path, monkeypatch):
    """A missing upstream table or a model that is not there is the runner's to fix (exit 2,
    what to do); a FileNotFoundError from inside a stage is a bug and is not reported as bad
    input."""
    out = f"run.output_dir={tmp_path / 'out'}"
    with pytest.raises(SystemExit) as exited:
        cli.main(["encode", out])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        cli.main(["encode", out, "encoder.model=bundled:smollm2-135m-instruct"])
    assert exited.value.code == 2

    def broken(conf: object) -> None:
        raise FileNotFoundError("a library's own file")

    monkeypatch.setattr(encode, "pending_inputs", broken)
    with pytest.raises(FileNotFoundError, match="a library's own file"):
        cli.main(["encode", out])
