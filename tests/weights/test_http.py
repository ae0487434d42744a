"""Fills from a folder served over HTTP: listing, resume after a dropped connection, stalls."""

from __future__ import annotations

import json
import time
from pathlib import Path

from alpaca_weights import cli, errors
from tests.weights.helpers import TOTAL, no_marker, read_term, same_tree

BIG = "models/tiny/model-00001-of-00002.safetensors"


def fill(server, dest: Path, term: Path, *extra: str) -> int:
    source = f"{server.url}/models/tiny/"
    args = ["--termination-log", str(term), "fill", "--source", source, "--dest", str(dest)]
    return cli.main([*args, "--backoff", "0.05", "--progress-interval", "0.2", *extra])


def test_fill_lists_and_downloads_every_file(served, tmp_path, term_log):
    dest = tmp_path / "cache"
    assert fill(served, dest, term_log) == 0
    assert same_tree(served.root / "models" / "tiny", dest)
    manifest = json.loads((dest / ".alpaca" / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "sub/tokenizer.json",
    }
    assert manifest["totalBytes"] == TOTAL
    marker = json.loads((dest / ".alpaca" / "complete").read_text())
    assert marker["key"].startswith("weights-tiny-")
    progress = json.loads((dest / ".alpaca" / "progress.json").read_text())
    assert progress["bytesDone"] == progress["bytesTotal"] == TOTAL
    assert progress["phase"] == "complete"
    assert read_term(term_log).startswith("Filled: weights-tiny-")
    assert not (dest / ".alpaca" / "staging").exists()


def test_dropped_connection_resumes_where_it_stopped(served, tmp_path, term_log):
    served.faults.drop_after[BIG] = 1_000_000
    served.faults.times[BIG] = 2
    dest = tmp_path / "cache"
    assert fill(served, dest, term_log) == 0
    assert same_tree(served.root / "models" / "tiny", dest)
    ranges = [rng for method, path, rng in served.requests if path == "/" + BIG and method == "GET"]
    assert ranges == [None, "bytes=1000000-", "bytes=2000000-"]
    assert served.bytes_sent == TOTAL  # not one byte sent twice


def test_second_fill_of_a_filled_cache_downloads_nothing(served, tmp_path, term_log):
    dest = tmp_path / "cache"
    assert fill(served, dest, term_log) == 0
    sent = served.bytes_sent
    assert fill(served, dest, term_log) == 0
    assert served.bytes_sent == sent
    assert read_term(term_log).startswith("Reused: ")


def test_stall_fails_with_a_clear_reason_instead_of_hanging(served, tmp_path, term_log):
    served.faults.stall_after[BIG] = 500_000
    served.faults.times[BIG] = 10
    dest = tmp_path / "cache"
    started = time.monotonic()
    code = fill(served, dest, term_log, "--stall-seconds", "0.5", "--retries", "1")
    assert time.monotonic() - started < 10
    assert code == errors.EXIT_RETRY
    assert read_term(term_log).startswith("DownloadStalled: ")
    assert no_marker(dest)
    part = dest / ".alpaca" / "staging" / "model" / "model-00001-of-00002.safetensors.part"
    assert part.stat().st_size == 1_000_000  # two attempts of 500 kB each, kept for the next pod


def test_missing_folder_is_source_not_found(served, tmp_path, term_log):
    args = ["--termination-log", str(term_log), "fill", "--dest", str(tmp_path / "c")]
    code = cli.main([*args, "--source", f"{served.url}/models/nothing/"])
    assert code == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("SourceNotFound: ")


def test_the_operator_given_key_names_the_cache(served, tmp_path, term_log):
    dest = tmp_path / "cache"
    assert fill(served, dest, term_log, "--key", "weights-tiny-0123456789") == 0
    assert read_term(term_log).startswith("Filled: weights-tiny-0123456789 holds ")
    assert (
        json.loads((dest / ".alpaca" / "complete").read_text())["key"] == "weights-tiny-0123456789"
    )
