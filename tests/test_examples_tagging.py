"""The token-tagging examples (both frameworks) and their data module
``hvdtrain.datasets.tagging``."""

from __future__ import annotations

import numpy as np
import pytest

from hvdtrain.core.context import Context
from hvdtrain.datasets import tagging
from tests.launch import REPO, run_example

L = {name: index for index, name in enumerate(tagging.LABELS)}
X = tagging.IGNORE


def labels(*names: str) -> list[int]:
    return [L[name] for name in names]


def test_entities_follow_conll_chunking():
    # "f()" then "==": adjacent entities of one category stay apart only through B-.
    assert tagging.entities(labels("B-NAME", "B-OP", "B-OP", "O", "B-OP", "I-OP")) == {
        (0, 1, "NAME"),
        (1, 2, "OP"),
        (2, 3, "OP"),
        (4, 6, "OP"),
    }
    # An I- that does not continue its own category opens an entity, as in conlleval.
    assert tagging.entities(labels("I-NAME", "I-NAME", "I-STRING", "O", "I-OP")) == {
        (0, 2, "NAME"),
        (2, 3, "STRING"),
        (4, 5, "OP"),
    }
    assert tagging.entities(labels("O", "O")) == set()


def test_entity_counts_need_exact_span_and_category():
    true = np.array([labels("B-KEYWORD", "I-KEYWORD", "O", "B-NAME", "I-NAME", "B-OP") + [X, X]])
    predicted = np.array(
        [labels("B-KEYWORD", "I-KEYWORD", "O", "B-NAME", "B-NAME", "B-NUMBER", "B-OP", "B-OP")]
    )
    counts = tagging.entity_counts(true, predicted)
    # The keyword matches; the split name is one miss and two false alarms; OP vs NUMBER is a miss
    # and a false alarm; predictions on the padding do not count.
    assert {k: v for k, v in counts.items() if v} == {
        "KEYWORD/tp": 1,
        "KEYWORD/predicted": 1,
        "KEYWORD/true": 1,
        "NAME/predicted": 2,
        "NAME/true": 1,
        "OP/true": 1,
        "NUMBER/predicted": 1,
    }
    rows = tagging.report(counts)
    assert rows["KEYWORD"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert rows["NAME"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rows["STRING"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rows["micro avg"]["precision"] == pytest.approx(1 / 4)
    assert rows["micro avg"]["recall"] == pytest.approx(1 / 3)
    assert rows["micro avg"]["f1"] == pytest.approx(2 / 7)
    assert rows["micro avg"]["support"] == 3
    assert "micro avg" in tagging.format_report(rows)


def test_tag_source_labels_tokens_and_skips_lines_of_multiline_tokens():
    source = (
        'def f(x=0x1F):\n    """Doc\n    string."""\n    return x>=1.5  # done  \n'
        '    y = f"a{f\'{x!r}\'}b{{c}}" if x else None\n    z = f"""one\n    {x}"""\n\n'
    )
    tagged = {
        line: [(line[start:end], category) for start, end, category in spans]
        for line, spans in tagging.tag_source(source)
    }
    assert tagged == {
        "def f(x=0x1F):": [
            ("def", "KEYWORD"),
            ("f", "NAME"),
            ("(", "OP"),
            ("x", "NAME"),
            ("=", "OP"),
            ("0x1F", "NUMBER"),
            (")", "OP"),
            (":", "OP"),
        ],
        # a comment keeps its trailing blanks
        "return x>=1.5  # done  ": [
            ("return", "KEYWORD"),
            ("x", "NAME"),
            (">=", "OP"),
            ("1.5", "NUMBER"),
            ("# done  ", "COMMENT"),
        ],
        # An f-string is one STRING on every Python (3.12 tokenizes its pieces separately).
        "y = f\"a{f'{x!r}'}b{{c}}\" if x else None": [
            ("y", "NAME"),
            ("=", "OP"),
            ("f\"a{f'{x!r}'}b{{c}}\"", "STRING"),
            ("if", "KEYWORD"),
            ("x", "NAME"),
            ("else", "KEYWORD"),
            ("None", "KEYWORD"),
        ],
    }
    spans = next(spans for line, spans in tagging.tag_source(source) if line.startswith("def"))
    assert tagging.bio_labels(spans[:2], 6) == labels(
        "B-KEYWORD", "I-KEYWORD", "I-KEYWORD", "O", "B-NAME", "O"
    )


def test_pack_joins_whole_lines_and_keeps_their_entities():
    lines = [
        ("ab", labels("B-NAME", "I-NAME")),
        ("()", labels("B-OP", "B-OP")),
        ("x = 1", labels("B-NAME", "O", "B-OP", "O", "B-NUMBER")),
    ]
    ids, packed = tagging.pack(lines, max_len=6)
    assert ids.shape == packed.shape == (2, 6)
    assert "".join(map(chr, ids[0][:5])) == "ab\n()" and ids[0][5] == tagging.PAD
    assert packed[0].tolist() == labels("B-NAME", "I-NAME", "O", "B-OP", "B-OP") + [X]
    assert tagging.entities(packed[0][:5].tolist()) == {(0, 2, "NAME"), (3, 4, "OP"), (4, 5, "OP")}
    ids, _ = tagging.pack([("é=", labels("B-NAME", "B-OP"))], max_len=3)
    assert ids.tolist() == [[tagging.UNKNOWN, ord("="), tagging.PAD]]


def test_load_reads_the_stdlib_the_same_way_every_time():
    first = tagging.load(max_len=64, max_files=20, seed=1, max_train_lines=500)
    second = tagging.load(max_len=64, max_files=20, seed=1, max_train_lines=500)
    assert not set(first.train_files) & set(first.heldout_files)
    assert len(first.train_files) + len(first.heldout_files) == 20
    for name in ("train_ids", "train_labels", "heldout_ids", "heldout_labels"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.train_ids.shape[1] == 64 and first.train_ids.dtype == np.int32
    assert ((first.train_ids == tagging.PAD) == (first.train_labels == tagging.IGNORE)).all()
    assert tagging.load(max_len=64, max_files=20, seed=2).heldout_files != first.heldout_files
    with pytest.raises(ValueError, match="between 0 and 1"):
        tagging.load(max_files=20, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="no Python files"):
        tagging.load(root=REPO / "tf_examples" / "missing")


def test_evaluate_scores_a_predictor_on_every_row():
    data = tagging.load(max_len=64, max_files=10, seed=0, max_heldout_lines=300)
    ctx = Context(
        framework="numpy",
        rank=0,
        size=1,
        local_rank=0,
        local_size=1,
        device="cpu",
        broadcast_object=lambda obj, root: obj,
        average=dict,
    )
    oracle = {row.tobytes(): labels for row, labels in zip(data.heldout_ids, data.heldout_labels)}
    perfect = tagging.evaluate(
        lambda ids: np.array([oracle[row.tobytes()] for row in ids]),
        data.heldout_ids,
        data.heldout_labels,
        ctx,
        batch_size=7,
    )
    assert perfect["micro avg"]["f1"] == 1.0
    assert perfect["micro avg"]["support"] == sum(
        len(tagging.entities(row[row != X].tolist())) for row in data.heldout_labels
    )
    nothing = tagging.evaluate(np.zeros_like, data.heldout_ids, data.heldout_labels, ctx)
    assert (
        nothing["micro avg"]["f1"] == 0.0
        and nothing["micro avg"]["support"] == perfect["micro avg"]["support"]
    )


TINY = [
    "--files",
    "40",
    "--train-lines",
    "4000",
    "--heldout-lines",
    "600",
    "--epochs",
    "2",
    "--no-tracking",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, framework",
    [("torch_examples/token_tagging.py", "torch"), ("tf_examples/token_tagging.py", "keras")],
)
def test_example_tags_heldout_files_far_better_than_chance(tmp_path, path, framework):
    found, stdout = run_example(
        path, *TINY, "--checkpoint-dir", str(tmp_path / "ckpt"), out=tmp_path
    )
    assert (found["framework"], found["example"], found["workers"]) == (
        framework,
        "token_tagging",
        2,
    )
    assert (
        found["metric_name"] == "heldout_micro_f1"
        and found["metric"] == found["report"]["micro avg"]["f1"]
    )
    # Chance (or all "O") scores ~0: an entity needs its exact span and category.
    assert found["metric"] > 0.5, found["report"]
    assert found["report"]["OP"]["f1"] > 0.7
    assert found["report"]["micro avg"]["support"] > 1000
    assert found["run_id"] is None and found["wall_time_s"] > 0
    assert stdout.count("micro avg") == 1  # only rank 0 prints the report
    assert (
        sorted(p.suffix for p in (tmp_path / "ckpt").iterdir() if p.suffix != ".json")
        == [".keras" if framework == "keras" else ".pt"] * 2
    )
