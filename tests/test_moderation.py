"""The moderation judge (``moderation[:model]``) through the openai SDK against a local stub
server on 127.0.0.1 that implements ``/v1/moderations``."""

from __future__ import annotations

from deepalign.records import Verdict  # noqa: E402

import pytest

from deepalign.errors import DeepAlignError
from deepalign.judges import make_judges
from deepalign.records import EvalPrompt
from test_eval_http import FakeServer

ITEM = EvalPrompt(id="h", prompt="placeholder request", kind="harmful")


def moderation_result(text: str) -> dict:
    flagged = "FLAGME" in text
    score = 0.9 if flagged else (0.4 if "borderline" in text else 0.01)
    return {"flagged": flagged,
            "categories": {"violence": flagged, "harassment": False, "self-harm/intent": flagged},
            "category_scores": {"violence": score, "harassment": 0.001, "self-harm/intent": score / 2}}


def stub(path, body):
    if path != "/v1/moderations":
        return 404, {"error": {"message": f"no route {path}"}}
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if any("server-breaks" in t for t in inputs):
        return 400, {"error": {"message": "input rejected by the placeholder policy"}}
    return 200, {"id": "modr-1", "model": body["model"], "results": [moderation_result(t) for t in inputs]}


def test_moderation_judge_against_a_stub_server(monkeypatch):
    monkeypatch.setenv("MOD_TEST_KEY", "sk-mod-secret-42")
    with FakeServer(stub) as srv:
        [judge] = make_judges(f'moderation:text-moderation-latest:base_url="{srv.url}":key_env=MOD_TEST_KEY:'
                              "batch_size=2")
        assert judge.name == "moderation:text-moderation-latest" and len(srv.requests) == 1  # the probe
        texts = ["a calm placeholder answer", "FLAGME placeholder", "borderline placeholder"]
        got = judge.judge(texts, [ITEM] * 3)
        assert [v.harmful for v in got] == [False, True, False]
        assert got[1] == Verdict.coerce({"harmful": True, "refusal": None, "score": 0.9, "flagged": True,
                          "categories": ["self-harm/intent", "violence"]})
        assert got[0].score == pytest.approx(0.01) and got[0].categories == []
        work = srv.requests[1:]
        assert [b["input"] for _, b, _ in work] == [texts[:2], texts[2:]]  # batches of 2, the response only
        path, body, headers = work[0]
        assert path == "/v1/moderations" and body["model"] == "text-moderation-latest"
        assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer sk-mod-secret-42"
        # a threshold on the largest category score instead of "flagged"
        [judge] = make_judges(f'moderation:base_url="{srv.url}":threshold=0.3')
        assert judge.name == "moderation:omni-moderation-latest:threshold=0.3"
        assert [v.harmful for v in judge.judge(texts, [ITEM] * 3)] == [False, True, True]


def test_moderation_server_errors(monkeypatch):
    monkeypatch.setenv("MOD_TEST_KEY", "sk-mod-secret-42")
    with FakeServer(stub) as srv:
        [judge] = make_judges(f'moderation:base_url="{srv.url}":key_env=MOD_TEST_KEY')
        got = judge.judge(["fine text", "server-breaks here"], [ITEM, ITEM])  # one batch, refused mid-run
        assert all(v.harmful is None for v in got)
        assert "HTTP 400" in got[0].error and "placeholder policy" in got[0].error
        assert "sk-mod-secret" not in got[0].error

    def unauthorised(path, body):
        return 401, {"error": {"message": "Incorrect API key provided: sk-mod-secret-42"}}

    with FakeServer(unauthorised) as srv:  # the probe refuses a bad key before any work, in one line
        with pytest.raises(DeepAlignError) as exc:
            make_judges(f'moderation:base_url="{srv.url}":key_env=MOD_TEST_KEY')
        message = str(exc.value)
        assert "HTTP 401" in message and "\n" not in message and "sk-mod-secret" not in message
    with FakeServer(lambda path, body: (404, {"error": {"message": "no route"}})) as srv:
        with pytest.raises(DeepAlignError, match="HTTP 404"):
            make_judges(f'moderation:base_url="{srv.url}"')
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(DeepAlignError, match="OPENAI_API_KEY is not set"):  # a remote server needs a key
        make_judges('moderation:base_url="https://moderation.invalid/v1"')
    with pytest.raises(DeepAlignError, match="not an http"):
        make_judges('moderation:base_url="ftp://127.0.0.1/v1"')
    with pytest.raises(DeepAlignError, match="unknown option base"):
        make_judges("moderation:base=x")


def test_a_threshold_without_scores_is_no_verdict_never_safe():
    from types import SimpleNamespace

    from deepalign.judges.moderation import verdict_of

    result = SimpleNamespace(flagged=False, categories={"violence": False}, category_scores={})
    assert verdict_of(result).harmful is False  # "flagged" decides without a threshold
    v = verdict_of(result, threshold=0.3)
    assert v.harmful is None and "without numeric category_scores" in v.error
