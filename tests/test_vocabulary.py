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


# ---- issue 28: encodings, "dataset:" without a name, very large vocabularies --------------------------
def test_a_byte_order_mark_is_not_part_of_the_first_class(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbfgrass\r\nsky\r\n")
    assert read_vocabulary_file(str(path)) == parse_vocabulary(str(path)) == ["grass", "sky"]


@pytest.mark.parametrize("data, offset, line, extra", [
    ("grass\ncaf\u00e9\n".encode("latin-1"), 9, 2, ""),
    (b"\xef\xbb\xbfsky\n\xff", 7, 2, ""),  # offsets count the BOM: they are the file's
    ("sky\n".encode("utf-16"), 0, 1, " (it starts with a UTF-16 byte-order mark)"),
])
def test_a_file_in_another_encoding_names_file_offset_and_fix(tmp_path, data, offset, line, extra):
    path = tmp_path / "classes.txt"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        parse_vocabulary(str(path))
    message = str(info.value)
    assert message.startswith(f"Vocabulary file {path} is not UTF-8 text{extra}: byte 0x{data[offset]:02x} at offset "
                              f"{offset} (line {line}) is not valid UTF-8. Save it as UTF-8 (e.g. iconv")
    with pytest.raises(UnicodeDecodeError) as raw:  # the offset is the one Python's decoder finds in the bytes
        data.decode("utf-8")
    assert raw.value.start == offset


@pytest.mark.parametrize("spec", ["dataset:", "dataset:  "])
def test_dataset_prefix_without_a_name(spec):
    for parse in (parse_vocabulary, parse_vocabulary_text):
        with pytest.raises(ValueError, match="^dataset: names no dataset: write dataset:NAME with a registered"):
            parse(spec)


def test_a_large_vocabulary_is_checked_in_linear_time():
    """65,536 distinct names and one repeat: the duplicate warning is found without comparing
    every pair (which took minutes)."""
    import time

    names = [f"class {i}" for i in range(65536)] + ["Class 7"]
    start = time.perf_counter()
    with pytest.warns(DuplicateClassWarning, match="'class 7' at positions 7, 65536"):
        assert check_vocabulary(names) == names
    assert time.perf_counter() - start < 5
