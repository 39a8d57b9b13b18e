"""schema.column_values: one slice read, the same values as iterating the column."""

from __future__ import annotations

import datasets

from hfaug import schema


def test_column_values_equal_the_rows_after_select_and_for_nested_columns():
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(10)],
                                     "soft_label": [[i / 10, 1 - i / 10] for i in range(10)]})
    picked = ds.select([7, 2, 5])  # an indices mapping: the slice must follow it
    assert schema.column_values(picked, "text") == ["t7", "t2", "t5"]
    assert schema.column_values(picked, "soft_label") == [row["soft_label"] for row in picked]
    assert isinstance(schema.column_values(ds, "text"), list)
    assert schema.column_values(ds.select([]), "text") == []
