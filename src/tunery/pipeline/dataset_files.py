"""Streaming raw records out of JSONL, CSV and Parquet files, within fixed limits.

A dataset is read one record at a time (a JSONL line, a CSV row, a Parquet batch), never
whole, and a file over a limit is refused before its records are decoded: JSONL and CSV by
their size on disk, Parquet by the row count and uncompressed size in its metadata. Each
record comes with its 1-based line (the row for Parquet); a record that cannot be decoded
comes as a ``RowFailure`` in its place, so the caller reports it with its line and goes on.
Nothing here raises anything but ``DatasetError`` for what a file holds; ``OSError`` means
the file itself could not be read.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunery.errors import DatasetError

MAX_DATASET_ROWS = 1_000_000
"""Rows one dataset file may hold. Parquet is refused from its metadata before any row is
decoded; JSONL and CSV stop at the first row over the limit."""

MAX_DATASET_BYTES = 512 * 2**20
"""Decoded bytes one dataset file may hold (512 MiB): the file's size for JSONL and CSV; for
Parquet the uncompressed size its metadata records, and then the decoded size of its rows,
since dictionary-encoded text can decode to far more than the metadata says."""

PARQUET_BATCH_ROWS = 256
"""Parquet rows decoded at a time: bounds the memory one batch can take before its size is
counted against ``MAX_DATASET_BYTES``."""

STRUCTURED_COLUMNS = (
    "messages",
    "conversations",
    "metadata",
    "preferred_output",
    "non_preferred_output",
)
"""CSV columns whose cells hold JSON; every other cell is text as written (and ``input``,
Alpaca's text, is JSON in a file of OpenAI's preference format)."""


class RowFailure(Exception):
    """A problem with one record; the reader reports it with the record's line."""


def size_limit_error(name: str, decoded_bytes: int) -> DatasetError:
    return DatasetError.single(
        name,
        f"the file holds {decoded_bytes / 2**20:,.1f} MiB of data; the limit is "
        f"{MAX_DATASET_BYTES // 2**20} MiB per dataset",
        hint="split the data into several datasets, or keep a sample of it",
    )


def row_limit_error(name: str) -> DatasetError:
    return DatasetError.single(
        name,
        f"the file holds more than {MAX_DATASET_ROWS:,} rows, the limit per dataset",
        hint="split the data into several datasets, or keep a sample of it",
    )


def decode_json(text: str) -> Any:
    """``json.loads`` whose every failure is a RowFailure saying why (syntax, nesting deeper
    than Python's recursion limit, an integer longer than its digit limit)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RowFailure(f"{error.msg} at column {error.colno}") from None
    except RecursionError:
        raise RowFailure("nested too deeply") from None
    except ValueError as error:
        raise RowFailure(str(error)) from None


def raw_records(path: Path, name: str, suffix: str) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line or row, raw record or the RowFailure it produced).

    Raises DatasetError, before decoding when it can, for a file over the limits.
    """
    if suffix == ".parquet":
        records = _parquet_records(path, name)
    else:
        size = path.stat().st_size
        if size > MAX_DATASET_BYTES:
            raise size_limit_error(name, size)
        records = _jsonl_records(path) if suffix == ".jsonl" else _csv_records(path, name)
    for count, record in enumerate(records, start=1):
        if count > MAX_DATASET_ROWS:
            raise row_limit_error(name)
        yield record


def _utf8_lines(path: Path, *, lone_cr_ends_line: bool) -> Iterator[tuple[int, str | RowFailure]]:
    """Physical lines, each decoded alone: ``\\n`` ends one, and a lone ``\\r`` too when
    ``lone_cr_ends_line`` (CSV from old spreadsheets; JSON Lines allows only ``\\n``)."""
    with path.open("rb") as file:
        number = 0
        for chunk in file:
            if number == 0:
                chunk = chunk.removeprefix(codecs.BOM_UTF8)
            split = lone_cr_ends_line and b"\r" in chunk
            for raw in re.split(rb"(?<=\r)(?!\n)", chunk) if split else (chunk,):
                if not raw:
                    continue
                number += 1
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield (
                        number,
                        RowFailure(
                            f"invalid UTF-8 (byte {error.start + 1} of the line); "
                            "save the file as UTF-8"
                        ),
                    )


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    for number, text in _utf8_lines(path, lone_cr_ends_line=False):
        if isinstance(text, RowFailure):
            yield number, text
            continue
        if not text.strip():
            continue
        try:
            yield number, decode_json(text)
        except RowFailure as failure:
            yield number, RowFailure(f"invalid JSON: {failure}")


def _csv_records(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    consumed = 0
    bad_encoding: tuple[int, RowFailure] | None = None

    def feed() -> Iterator[str]:
        # Counts physical lines, so a row that spans lines (quoted newlines) or follows
        # blank lines is reported at the line where it starts. A line that is not UTF-8
        # ends the file: the CSV state around it cannot be trusted.
        nonlocal consumed, bad_encoding
        for number, text in _utf8_lines(path, lone_cr_ends_line=True):
            consumed = number
            if isinstance(text, RowFailure):
                bad_encoding = (number, text)
                return
            yield text

    reader = csv.reader(feed())
    try:
        columns = next(reader)
    except StopIteration:
        columns = []
    except csv.Error as error:
        raise DatasetError.single(name, f"invalid CSV header: {error}", line=1) from None
    if bad_encoding is not None and consumed == 1:
        raise DatasetError.single(name, str(bad_encoding[1]), line=1)
    if len(set(columns)) != len(columns):
        raise DatasetError.single(name, "the header repeats a column name", line=1)
    while True:
        start = consumed + 1
        try:
            cells = next(reader)
        except (StopIteration, csv.Error) as error:
            if bad_encoding is not None:
                yield bad_encoding
            elif isinstance(error, csv.Error):
                yield start, RowFailure(f"invalid CSV: {error}")
            return
        if not cells:
            continue
        if len(cells) != len(columns):
            more_or_fewer = "more" if len(cells) > len(columns) else "fewer"
            yield (
                start,
                RowFailure(
                    f"the row has {more_or_fewer} cells than the header has columns "
                    f"({len(cells)} cells, {len(columns)} columns)"
                ),
            )
            continue
        yield start, _csv_record(columns, cells)


def _csv_record(columns: list[str], cells: list[str]) -> dict[str, Any] | RowFailure:
    record: dict[str, Any] = {}
    structured = set(STRUCTURED_COLUMNS)
    if "preferred_output" in columns:
        structured.add("input")
    for column, value in zip(columns, cells, strict=True):
        if value == "" and column == "input":
            continue  # an empty cell in Alpaca's optional column means the field is absent
        if column in structured and value:
            try:
                record[column] = decode_json(value)
            except RowFailure as failure:
                return RowFailure(f"column {column!r} is not valid JSON: {failure}")
        else:
            record[column] = value
    return record


def _parquet_records(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetError.single(name, f"not a readable Parquet file: {error}") from None
    metadata = parquet.metadata
    if metadata.num_rows > MAX_DATASET_ROWS:
        raise row_limit_error(name)
    stated = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if stated > MAX_DATASET_BYTES:
        raise size_limit_error(name, stated)
    decoded = 0
    first_row = 1
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as error:
            raise DatasetError.single(
                name, f"not a readable Parquet file: {error}", line=first_row, unit="row"
            ) from None
        decoded += sum(_decoded_size(column) for column in batch.columns)
        if decoded > MAX_DATASET_BYTES:
            raise size_limit_error(name, decoded)
        for offset, record in enumerate(_batch_records(batch)):
            yield first_row + offset, record
        first_row += batch.num_rows


def _decoded_size(array: Any) -> int:
    """Bytes ``array`` holds with every dictionary expanded, as converting it to Python will
    build them, computed without expanding anything."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary
        if len(values) == 0:
            return array.indices.nbytes
        if pa.types.is_string(values.type) or pa.types.is_binary(values.type):
            sizes = pc.binary_length(values)
        else:  # other dictionary values: the mean size of one, times the uses
            return array.indices.nbytes + len(array) * (_decoded_size(values) // len(values) + 1)
        used = pc.sum(pc.take(sizes, array.indices)).as_py() or 0
        return array.indices.nbytes + used
    if pa.types.is_struct(kind):
        return sum(_decoded_size(field) for field in array.flatten())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return array.offsets.nbytes + _decoded_size(array.flatten())
    return array.nbytes


def _batch_records(batch: Any) -> list[dict[str, Any] | RowFailure]:
    """The batch's rows as dicts; a row with a value Python cannot hold (a date past year
    9999, a timestamp out of range) becomes a RowFailure in its place."""
    try:
        return [_present(record) for record in batch.to_pylist()]
    except (ValueError, OverflowError, ArithmeticError, RecursionError):
        pass  # find which rows: convert one at a time
    records: list[dict[str, Any] | RowFailure] = []
    for index in range(batch.num_rows):
        try:
            records.append(_present(batch.slice(index, 1).to_pylist()[0]))
        except (ValueError, OverflowError, ArithmeticError, RecursionError) as error:
            records.append(RowFailure(f"a value cannot be read: {error}"))
    return records


def _present(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if value is not None}
