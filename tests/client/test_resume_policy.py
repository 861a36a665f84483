"""The client's resume bookkeeping: which failures resume, the next request, bounded backoff."""

import grpc
import pytest

from seedstream.client import ResumePolicy
from seedstream.client._requests import generate_request
from seedstream.client._resume import StreamResume
from seedstream.v1 import textgen_pb2 as pb


class _Error(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code


def _message(tokens, seed=99, finish=pb.FINISH_REASON_UNSPECIFIED):
    return pb.GenerateStreamResponse(token_ids=tokens, seed=seed, finish_reason=finish)


def test_next_request_carries_the_seed_and_every_token_received():
    state = StreamResume(generate_request("hi", temperature=0.5, max_new_tokens=9), ResumePolicy(), None)
    assert not state.next_request().resume_token_ids and not state.next_request().HasField("seed")
    state.seen(_message([5]))
    state.seen(_message([7, 8]))
    again = state.next_request()
    assert list(again.resume_token_ids) == [5, 7, 8] and again.seed == 99
    assert again.prompt == "hi" and again.temperature == 0.5 and again.max_new_tokens == 9


def test_only_unavailable_resumes_and_attempts_are_bounded():
    state = StreamResume(
        generate_request("hi", seed=1),
        ResumePolicy(max_attempts=2, initial_backoff=0.1, max_backoff=0.3, multiplier=4),
        None,
    )
    assert not state.should_retry(_Error(grpc.StatusCode.INVALID_ARGUMENT))
    assert not state.should_retry(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert state.should_retry(_Error(grpc.StatusCode.UNAVAILABLE))
    assert [state.backoff(), state.backoff()] == [0.1, 0.3]
    assert not state.should_retry(_Error(grpc.StatusCode.UNAVAILABLE))


@pytest.mark.parametrize(
    "request_kwargs,policy",
    [
        (dict(n=2), ResumePolicy()),  # several samples interleave: not resumed
        (dict(), None),  # resume turned off
    ],
)
def test_no_resume_for_samples_or_when_off(request_kwargs, policy):
    state = StreamResume(generate_request("hi", seed=1, **request_kwargs), policy, None)
    assert not state.should_retry(_Error(grpc.StatusCode.UNAVAILABLE))


def test_a_finished_stream_is_not_resumed():
    state = StreamResume(generate_request("hi", seed=1), ResumePolicy(), None)
    state.seen(_message([5], finish=pb.FINISH_REASON_LENGTH))
    assert not state.should_retry(_Error(grpc.StatusCode.UNAVAILABLE))


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        ResumePolicy(max_attempts=-1)
    with pytest.raises(ValueError):
        ResumePolicy(initial_backoff=5, max_backoff=1)
