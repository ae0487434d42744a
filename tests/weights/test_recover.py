"""Stanford Alpaca weight-diff recovery on tiny Llamas: round trip bit for bit, the integrity
check, `.bin` diffs, pad-token handling, and a full fill with `--recover-base` over HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alpaca_dev.fileserver import FileServer
from alpaca_weights import cli, convert, errors, recover
from tests.weights.helpers import no_marker, read_term

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def state_of(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(path))
    return out


def assert_bit_equal(a: Path, b: Path) -> None:
    left, right = state_of(a), state_of(b)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert torch.equal(left[key], right[key]), key


def test_recover_gives_back_tuned_bit_for_bit_and_the_checksum_passes(llamas, tmp_path):
    out = tmp_path / "out"
    checksum = recover.recover(llamas.diff, llamas.raw, out, expected_checksum=llamas.checksum)
    assert_bit_equal(out, llamas.tuned)
    assert abs(checksum - llamas.checksum) <= recover.ATOL
    # the tokenizer and config come from the diff: the "[PAD]" token is there
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer.get("pad_token") == "[PAD]"
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == state_of(out)["model.embed_tokens.weight"].shape[0]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state_of(out))


def test_the_base_grows_by_mean_rows_like_smart_tokenizer_and_embedding_resize(llamas, tmp_path):
    """raw has no pad token; the diff has one more row. The recovered row is diff + mean(raw)."""
    raw = state_of(llamas.raw)["model.embed_tokens.weight"]
    diff = state_of(llamas.diff)["model.embed_tokens.weight"]
    assert diff.shape[0] == raw.shape[0] + 1
    out = tmp_path / "out"
    recover.recover(llamas.diff, llamas.raw, out)
    got = state_of(out)["model.embed_tokens.weight"]
    assert torch.equal(got[-1], diff[-1] + raw.mean(dim=0))
    assert torch.equal(got[:-1], diff[:-1] + raw)


def test_a_wrong_expected_checksum_is_an_integrity_failure(llamas, tmp_path):
    with pytest.raises(errors.WeightsError) as caught:
        recover.recover(llamas.diff, llamas.raw, tmp_path / "o", expected_checksum=50637.1836)
    assert caught.value.reason == errors.INTEGRITY_CHECK_FAILED
    assert "50637.1836" in caught.value.message


def test_a_base_that_does_not_fit_is_a_recovery_failure(llamas, tmp_path):
    """A base of another shape (here: the diff against itself with a row too many)."""
    with pytest.raises(errors.WeightsError) as caught:
        recover.recover(llamas.raw, llamas.diff, tmp_path / "o")
    assert caught.value.reason == errors.RECOVERY_FAILED
    assert "does not fit" in caught.value.message


def test_bin_diff_converts_in_state_dict_order_and_recovers(llamas, tmp_path):
    diff = tmp_path / "diff-bin"
    shutil.copytree(llamas.diff_bin, diff)
    written = convert.convert_folder(diff)
    assert [p.name for p in written] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not list(diff.glob("*.bin")) and (diff / "model.safetensors.index.json").exists()
    out = tmp_path / "out"
    checksum = recover.recover(diff, llamas.raw, out, expected_checksum=llamas.checksum)
    assert_bit_equal(out, llamas.tuned)
    assert abs(checksum - llamas.checksum) <= recover.ATOL


def test_cli_recover_command(llamas, tmp_path, capsys):
    diff = tmp_path / "diff"
    shutil.copytree(llamas.diff_bin, diff)
    out = tmp_path / "out"
    args = ["recover", "--diff", str(diff), "--base", str(llamas.raw), "--out", str(out)]
    assert cli.main([*args, "--expected-checksum", repr(llamas.checksum)]) == 0
    assert capsys.readouterr().out.startswith("Recovered: ")
    assert_bit_equal(out, llamas.tuned)


@pytest.fixture
def llama_server(llamas, tmp_path):
    root = tmp_path / "www"
    shutil.copytree(llamas.diff_bin, root / "alpaca-diff")
    shutil.copytree(llamas.raw, root / "llama")
    with FileServer(root) as server:
        yield server


def test_fill_with_recover_base_over_http(llamas, llama_server, tmp_path, term_log):
    dest = tmp_path / "cache"
    args = ["--termination-log", str(term_log), "fill", "--dest", str(dest), "--to-safetensors"]
    args += ["--source", f"{llama_server.url}/alpaca-diff/"]
    args += ["--recover-base", f"{llama_server.url}/llama/"]
    code = cli.main([*args, "--expected-checksum", repr(llamas.checksum)])
    assert code == 0, read_term(term_log)
    assert read_term(term_log).startswith("Filled: ")
    assert_bit_equal(dest, llamas.tuned)
    manifest = json.loads((dest / ".alpaca" / "manifest.json").read_text())
    assert abs(manifest["recoveredChecksum"] - llamas.checksum) <= recover.ATOL
    assert manifest["identity"]["recoverBase"] == f"{llama_server.url}/llama"
    assert not (dest / ".alpaca" / "staging").exists()  # the diff and base are gone


def test_fill_with_a_wrong_checksum_leaves_no_marked_cache(
    llamas, llama_server, tmp_path, term_log
):
    dest = tmp_path / "cache"
    args = ["--termination-log", str(term_log), "fill", "--dest", str(dest)]
    args += ["--source", f"{llama_server.url}/alpaca-diff/"]
    args += ["--recover-base", f"{llama_server.url}/llama/", "--expected-checksum", "50637.1836"]
    assert cli.main(args) == errors.EXIT_PERMANENT
    assert read_term(term_log).startswith("IntegrityCheckFailed: sum of tensor sums ")
    assert no_marker(dest)


def test_tensorfile_round_trips_with_the_safetensors_library(tmp_path):
    from safetensors import safe_open

    from alpaca_weights import tensorfile

    tensors = {
        "b.weight": torch.randn(3, 5).to(torch.bfloat16),
        "a.weight": torch.randn(7),
        "empty": torch.empty(0, 4),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    layout = [(k, tensorfile.code_of(t.dtype), tuple(t.shape)) for k, t in tensors.items()]
    writer = tensorfile.Writer(tmp_path / "ours.safetensors", layout, {"format": "pt"})
    for key, tensor in tensors.items():
        writer.write(key, tensor)
    writer.close()
    with safe_open(tmp_path / "ours.safetensors", framework="pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        for key, tensor in tensors.items():
            assert torch.equal(fh.get_tensor(key), tensor), key
    safetensors_torch.save_file(tensors, tmp_path / "theirs.safetensors")
    header = tensorfile.read_header(tmp_path / "theirs.safetensors")
    with open(tmp_path / "theirs.safetensors", "rb") as fh:
        for entry in header.entries:
            assert torch.equal(tensorfile.read_tensor(fh, header, entry), tensors[entry.name])


def test_tensorfile_writer_refuses_out_of_order_or_missing_tensors(tmp_path):
    from alpaca_weights import tensorfile

    layout = [("a", "F32", (2,)), ("b", "F32", (2,))]
    writer = tensorfile.Writer(tmp_path / "x.safetensors", layout, {})
    with pytest.raises(ValueError, match="b written where a belongs"):
        writer.write("b", torch.zeros(2))
    writer.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="1 tensors missing"):
        writer.close()
