"""Vocabularies as users give them (ovss_d2.utils.vocabulary): the demo's --vocabulary (a file, a
comma-separated line, dataset:NAME) and the web demo's class box follow one set of rules."""
import os
import warnings

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovss_d2.utils.vocabulary import (DuplicateClassWarning, check_vocabulary, parse_vocabulary,
                                      parse_vocabulary_text, read_vocabulary_file)

TEXT = "person, people\n# a comment\n\n  car \n"
DATASET = "vocabulary_test_dataset"
if DATASET not in DatasetCatalog.list():
    DatasetCatalog.register(DATASET, list)
    MetadataCatalog.get(DATASET).set(stuff_classes=["road", "tree, trees"])


def test_a_text_of_several_lines_reads_as_the_same_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text(TEXT)
    assert parse_vocabulary_text(TEXT) == read_vocabulary_file(str(path)) == parse_vocabulary(str(path))
    assert parse_vocabulary_text(TEXT) == ["person, people", "car"]
    assert parse_vocabulary_text("grass, sky\r\nwater") == ["grass, sky", "water"]  # a browser's line ends


def test_one_line_reads_as_the_demo_reads_it():
    for line in (" grass, sky ,red circle ", "grass,", f"dataset:{DATASET}"):
        assert parse_vocabulary_text(line) == parse_vocabulary(line)
    assert parse_vocabulary_text(f" dataset:{DATASET} ") == ["road", "tree, trees"]
    assert parse_vocabulary_text("grass, sky\n") == ["grass", "sky"]  # one line and a line end


def test_a_text_never_reads_a_file(tmp_path, monkeypatch):
    (tmp_path / "classes").write_text("secret\n")
    monkeypatch.chdir(tmp_path)
    assert parse_vocabulary("classes") == ["secret"]  # the command line reads an existing file
    assert parse_vocabulary_text("classes") == ["classes"]  # a text box does not
    for name in ("classes.txt", str(tmp_path), "a/b"):
        with pytest.raises(ValueError, match="does not read files"):
            parse_vocabulary_text(name)
        if not os.path.exists(name):
            with pytest.raises(FileNotFoundError, match="not found"):
                parse_vocabulary(name)


@pytest.mark.parametrize("text, error, words", [
    ("  ", ValueError, "The vocabulary is empty"),
    (" ,\n ", ValueError, "The vocabulary is empty"),
    ("# only\n# comments", ValueError, "The vocabulary is empty"),
    ("dataset:nope", KeyError, "no registered dataset 'nope'"),
])
def test_errors_are_the_packages(text, error, words):
    with pytest.raises(error, match=words):
        parse_vocabulary_text(text)


def test_duplicates_warn_from_every_entry_point_but_not_in_models(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("sky\ngrass\nSky\n")
    for parse, arg in ((parse_vocabulary_text, "sky, grass, Sky"), (parse_vocabulary_text, "sky\ngrass\nSky"),
                       (parse_vocabulary, str(path)), (parse_vocabulary, "sky,grass,Sky")):
        with pytest.warns(DuplicateClassWarning, match="'sky' at positions 0, 2"):
            assert parse(arg) == ["sky", "grass", "Sky"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_vocabulary(["sky", "sky"], warn_duplicates=False) == ["sky", "sky"]
    with pytest.raises(TypeError, match=r"\['a', 'b'\]"):
        check_vocabulary("a,b", warn_duplicates=False)
