"""Review app over one run directory: ``audit app RUN`` (or ``streamlit run app/streamlit_app.py -- RUN``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st


def run_dir_from_argv() -> Path:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return Path(args[0] if args else os.environ.get("AUDIT_RUN_DIR", "artifacts/digits"))


@st.cache_data(show_spinner=False)
def load_examples(run_dir: str) -> tuple[pd.DataFrame, dict]:
    from audit.io import read_json

    return pd.read_parquet(Path(run_dir) / "examples.parquet"), read_json(Path(run_dir) / "manifest.json")


@st.cache_resource(show_spinner=False)
def load_images(spec: str) -> tuple[np.ndarray, np.ndarray]:
    from audit.data import load_dataset

    ds = load_dataset(spec)
    return ds.images, ds.example_ids


def thumbnail(img: np.ndarray, size: int = 96) -> np.ndarray:
    """(C, H, W) uint8 -> (size, size[, 3]) nearest-neighbour upscale for crisp small digits."""
    from PIL import Image

    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.NEAREST))


def flagged_grid_ui(df: pd.DataFrame, images: np.ndarray, row_of: dict, class_names: list[str], cols: int = 6) -> None:
    flagged = df[(df["split"] == "train") & df["is_label_issue"]].sort_values("issue_score", ascending=False)
    st.caption(f"{len(flagged)} flagged training examples, most suspicious first")
    page = flagged.head(cols * 5)
    grid = st.columns(cols)
    for i, r in enumerate(page.itertuples(index=False)):
        with grid[i % cols]:
            st.image(thumbnail(images[row_of[r.example_id]]), width="content")
            st.markdown(f"**{class_names[r.given_label]} → {class_names[r.suggested_label]}**  \n"
                        f"`{r.example_id}` · {r.category} · {r.issue_score:.3f}")


def main() -> None:
    st.set_page_config(page_title="benign-audit review", layout="wide")
    run_dir = run_dir_from_argv()
    st.title("benign-audit")
    if not (run_dir / "examples.parquet").exists():
        st.error(f"{run_dir}: no examples.parquet — run `audit run --out {run_dir}` first")
        return
    df, man = load_examples(str(run_dir))
    images, ids = load_images(man["dataset"]["spec"])
    row_of = {e: i for i, e in enumerate(ids)}
    class_names = man["dataset"]["class_names"]
    m = man.get("metrics", {})
    c = st.columns(4)
    c[0].metric("training examples", man["dataset"]["num_train"])
    c[1].metric("flagged", m.get("num_flagged_train", 0))
    c[2].metric("estimated noise rate", f"{m.get('estimated_noise_rate', 0):.1%}")
    c[3].metric("natural test accuracy", f"{m.get('natural_test_accuracy', float('nan')):.1%}")
    flagged_grid_ui(df, images, row_of, class_names)


if __name__ == "__main__":
    main()
