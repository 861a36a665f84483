"""A Transcript file: its folder is made when missing (lm-eval's output folder does not exist yet), lines read back."""

from __future__ import annotations

from seedstream.client.transcript import Transcript, read_records


def test_a_transcript_makes_its_folder_and_reads_back(tmp_path):
    path = tmp_path / "eval-results" / "run" / "eval.jsonl"
    record = {"transcript": 1, "kind": "score", "rpc": "Score", "request": {}, "outputs": []}
    with Transcript(path) as transcript:
        transcript.write(record, {"model_identity": "x"})
        transcript.write(record, {"model_identity": "y"})
    assert [(n, r["server"]["model_identity"]) for n, r in read_records(path)] == [(1, "x"), (2, "y")]
