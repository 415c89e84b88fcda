"""MovieLens 100K as runtime logs: every rating is an exposure of that movie to that user.

A user's ratings on one UTC day, in time order, are split into requests of up to
`offers_per_request` movies; a rating of 4 or 5 is an accept. The movie's overall popularity
plays the runtime's `score`; prices are a fixed, synthetic function of the movie id (the data
has none). Source: GroupLens (see ml-100k/README for the terms of use).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_pipeline.ingest.runtime_logs import RuntimeLogs, build_runtime_logs

PREDICTOR = "ml100k_movies"
CHANNEL = "web"
ACCEPT_RATING = 4
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def _require(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens 100K file {path} is missing (expected u.data, u.user, u.item)")
    return path


def read_movielens(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratings, users, movies) as read from the GroupLens files."""
    directory = Path(directory)
    ratings = pd.read_csv(
        _require(directory, "u.data"),
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": "int64", "item_id": "int64", "rating": "int64", "timestamp": "int64"},
    )
    users = pd.read_csv(
        _require(directory, "u.user"),
        sep="|",
        names=["user_id", "age", "gender", "occupation", "zip"],
        dtype={"zip": str},
    )
    movies = pd.read_csv(
        _require(directory, "u.item"),
        sep="|",
        encoding="latin-1",
        header=None,
        names=["item_id", "title", "release_date", "video_release", "url", *GENRES],
    )
    return ratings, users, movies


def offer_name(item_id) -> str:
    return f"movie_{int(item_id)}"


def movie_price(item_ids: pd.Series) -> pd.Series:
    """The synthetic price of a movie (the data has none)."""
    return (2.99 + (item_ids % 3)).round(2).astype(float)


def offer_matrix_of(movies: pd.DataFrame) -> pd.DataFrame:
    """The movies as an offer matrix (key `offer_name`): title, release year, genres, price."""
    price = movie_price(movies["item_id"])
    genre_flags = movies[list(GENRES)].to_numpy(dtype=bool)
    return pd.DataFrame(
        {
            "offer_name": movies["item_id"].map(offer_name),
            "offer_id": movies["item_id"].astype(int),
            "title": movies["title"].astype(str),
            "release_year": pd.to_datetime(movies["release_date"], format="%d-%b-%Y", errors="coerce").dt.year.astype(
                "Int64"
            ),
            "genres": [[g for g, on in zip(GENRES, row) if on] for row in genre_flags],
            "price": price.astype(float),
            "cost": (price * 0.4).round(2).astype(float),
            "static_offers": False,
        }
    )


def customer_features_of(users: pd.DataFrame) -> pd.DataFrame:
    """The users as customer features (key `customer_id`): age, gender, occupation, zip region."""
    return pd.DataFrame(
        {
            "customer_id": users["user_id"].astype(str),
            "age": users["age"].astype(int),
            "gender": users["gender"].astype(str),
            "occupation": users["occupation"].astype(str),
            "zip_region": users["zip"].str[:1].where(users["zip"].str[:1].str.isdigit(), "other"),
        }
    )


def load_movielens(directory: str | Path, *, offers_per_request: int = 5, predictor: str = PREDICTOR) -> RuntimeLogs:
    ratings, users, movies = read_movielens(directory)
    price = movie_price(movies["item_id"])
    offer_matrix, customer_features = offer_matrix_of(movies), customer_features_of(users)
    counts = ratings["item_id"].value_counts()
    popularity = np.log1p(counts) / np.log1p(counts.max())
    when = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    ratings = ratings.assign(datetime=when, day=when.dt.strftime("%Y%m%d")).sort_values(
        ["user_id", "timestamp", "item_id"], kind="stable"
    )
    position = ratings.groupby(["user_id", "day"]).cumcount() // offers_per_request
    exposures = pd.DataFrame(
        {
            "request": ratings["user_id"].astype(str) + "/" + ratings["day"] + "/" + position.astype(str),
            "customer_id": ratings["user_id"].astype(str),
            "offer": ratings["item_id"].map(offer_name),
            "accepted": (ratings["rating"] >= ACCEPT_RATING).astype(int),
            "datetime": ratings["datetime"],
            "price": ratings["item_id"].map(dict(zip(movies["item_id"], price))).astype(float),
            "score": ratings["item_id"].map(popularity).round(6).astype(float),
        }
    )
    return build_runtime_logs(
        exposures,
        predictor=predictor,
        channel=CHANNEL,
        offer_matrix=offer_matrix,
        customer_features=customer_features,
        response_delay=dt.timedelta(seconds=45),
    )
