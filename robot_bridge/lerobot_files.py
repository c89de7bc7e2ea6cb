"""The files of a LeRobot v3.0 dataset, byte-level facts only (what they hold: EPISODES.md).

Facts taken from datasets LeRobot 0.4.4 writes (../shared/lerobot/example_v30) and its documentation:
* an `image` feature is a parquet struct `{bytes: binary, path: string}` holding the PNG file,
  which Hugging Face `datasets` decodes as an `Image` (the schema metadata says so);
* vectors are fixed-size lists, scalars plain columns;
* `meta/tasks.parquet` is a pandas frame whose *index* is the task text and whose one column is
  `task_index`: pandas (and so LeRobot) reads the text only through the pandas schema metadata;
* per-episode stats are flattened into `stats/<feature>/<stat>` columns of the episodes table.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000                 # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100        # a data file is closed once it grows past this
VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
CARD_PATH = "README.md"
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TASK_TEXT_COLUMN = "__index_level_0__"  # pandas' name for an unnamed index
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def next_file(chunk_index: int, file_index: int) -> tuple[int, int]:
    """The (chunk, file) after this one: CHUNKS_SIZE files per chunk folder."""
    return (chunk_index + 1, 0) if file_index == CHUNKS_SIZE - 1 else (chunk_index, file_index + 1)


def hf_feature(feature: dict) -> dict:
    """The `datasets` feature record of a LeRobot feature (written into the data parquet's schema)."""
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    if list(feature["shape"]) == [1]:
        return {"dtype": feature["dtype"], "_type": "Value"}
    return {"feature": {"dtype": feature["dtype"], "_type": "Value"}, "length": int(feature["shape"][0]),
            "_type": "List"}


def arrow_type(feature: dict) -> pa.DataType:
    if feature["dtype"] == "image":
        return IMAGE_STRUCT
    scalar = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    return scalar if list(feature["shape"]) == [1] else pa.list_(scalar, int(feature["shape"][0]))


def data_schema(features: dict) -> pa.Schema:
    """Columns in `features` order (video features live in mp4 files, not in the table)."""
    stored = {name: feature for name, feature in features.items() if feature["dtype"] != "video"}
    metadata = {"huggingface": json.dumps({"info": {"features": {n: hf_feature(f) for n, f in stored.items()}}})}
    return pa.schema([(name, arrow_type(feature)) for name, feature in stored.items()], metadata=metadata)


def column(values, feature: dict) -> pa.Array:
    """One episode's values of a feature as an Arrow array of the feature's type."""
    if feature["dtype"] == "image":
        return pa.array(values, type=IMAGE_STRUCT)  # values: [{"bytes": png, "path": name}, ...]
    array = np.asarray(values, dtype=feature["dtype"])
    if list(feature["shape"]) == [1]:
        return pa.array(array.reshape(-1))
    width = int(feature["shape"][0])
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), width)


def tasks_table(tasks: dict[str, int]) -> pa.Table:
    """task text -> index, as the pandas frame LeRobot writes: the text is the (unnamed) index."""
    pandas_metadata = {
        "index_columns": [TASK_TEXT_COLUMN],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": TASK_TEXT_COLUMN, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    ordered = sorted(tasks.items(), key=lambda item: item[1])
    schema = pa.schema([("task_index", pa.int64()), (TASK_TEXT_COLUMN, pa.large_string())],
                       metadata={"pandas": json.dumps(pandas_metadata)})
    return pa.table({"task_index": [index for _, index in ordered], TASK_TEXT_COLUMN: [text for text, _ in ordered]},
                    schema=schema)


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> text, for tables written by pandas (unnamed or `task` index)."""
    table = pq.read_table(root / TASKS_PATH)
    text_column = next((name for name in (TASK_TEXT_COLUMN, "task") if name in table.column_names), None)
    if text_column is None or "task_index" not in table.column_names:
        raise ValueError(f"{root / TASKS_PATH}: expected columns task_index and task, got {table.column_names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text_column).to_pylist()))


def write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")


def write_json(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=4, ensure_ascii=False))
    os.replace(temporary, path)


def size_in_mb(path: Path) -> float:
    return path.stat().st_size / (1024 ** 2) if path.exists() else 0.0
