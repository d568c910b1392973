"""The real `openai` client against a running `asyncthink serve` (scripts/test-openai-client.sh).

Chat and completion calls, whole and streamed, n > 1, stop strings, log-probs, usage in the
last chunk, the AsyncThink mode, errors as the client's exception types. Usage: openai_client_check.py BASE_URL KEY
"""

import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
checks = []


def check(name):
    def wrap(f):
        checks.append((name, f))
        return f

    return wrap


MSG = [{"role": "user", "content": "What is 2+2?"}]
model = client.models.list().data[0].id


def chat(**kw):
    args = dict(model=model, messages=MSG, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    args.update(kw)
    return client.chat.completions.create(**args)


def cmpl(**kw):
    args = dict(model=model, prompt="The answer is", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    args.update(kw)
    return client.completions.create(**args)


def streamed_chat(stream):
    text, reasoning, finish, usage = {}, {}, {}, None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            extra = c.delta.model_extra or {}
            reasoning[c.index] = reasoning.get(c.index, "") + (extra.get("reasoning_content") or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return text, reasoning, finish, usage


@check("models.list names the served model")
def _():
    assert model == "tiny", model


@check("chat, whole")
def _():
    r = chat()
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert isinstance(r.choices[0].message.content, str)


@check("chat, streamed: same text, usage in the last chunk")
def _():
    whole = chat().choices[0].message
    text, reasoning, finish, usage = streamed_chat(chat(stream=True, stream_options={"include_usage": True}))
    assert text[0] == whole.content, (text, whole.content)
    assert reasoning[0] == ((whole.model_extra or {}).get("reasoning_content") or "")
    assert finish == {0: "length"}
    assert usage is not None and usage.completion_tokens == 12


@check("chat, n = 3, whole and streamed")
def _():
    r = chat(n=3, temperature=1.0, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    text, _, finish, _ = streamed_chat(chat(n=3, temperature=1.0, seed=11, stream=True))
    assert finish == {0: "length", 1: "length", 2: "length"}, finish
    assert [text[i] for i in range(3)] == [c.message.content for c in r.choices]


@check("completions, whole and streamed, n = 2")
def _():
    r = cmpl(n=2, temperature=0.7, seed=5)
    assert r.object == "text_completion" and len(r.choices) == 2
    parts = {}
    for ch in cmpl(n=2, temperature=0.7, seed=5, stream=True):
        for c in ch.choices:
            parts[c.index] = parts.get(c.index, "") + c.text
    assert [parts[0], parts[1]] == [c.text for c in r.choices]


@check("stop strings cut the text, whole and streamed")
def _():
    text = cmpl(max_tokens=24).choices[0].text
    assert len(text) >= 8, repr(text)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expect = text[: text.find(stop)]
    r = cmpl(max_tokens=24, stop=[stop])
    assert r.choices[0].text == expect and r.choices[0].finish_reason == "stop", (r, expect)
    got = "".join(c.choices[0].text for c in cmpl(max_tokens=24, stop=stop, stream=True) if c.choices)
    assert got == expect, (got, expect)


@check("log-probs, chat and completions")
def _():
    r = chat(logprobs=True)
    lps = r.choices[0].logprobs.content
    assert len(lps) == 12 and all(t.logprob <= 0 for t in lps)
    r = cmpl(logprobs=0)
    assert len(r.choices[0].logprobs.token_logprobs) == 12
    # Top alternatives: two per position, sorted, the chosen token's no better than the first.
    r = chat(logprobs=True, top_logprobs=2)
    for t in r.choices[0].logprobs.content:
        tops = [a.logprob for a in t.top_logprobs]
        assert len(tops) == 2 and tops[0] >= tops[1] and t.logprob <= tops[0], t
        assert all(isinstance(a.token, str) and a.bytes is not None for a in t.top_logprobs), t
    r = cmpl(logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.top_logprobs) == 12, lp
    for d, chosen in zip(lp.top_logprobs, lp.token_logprobs):
        assert 1 <= len(d) <= 2 and max(d.values()) >= chosen, (d, chosen)


@check("the AsyncThink mode through extra_body, whole and streamed")
def _():
    q = [{"role": "user", "content": "Compute 7*6, 4*9, 13*5."}]
    body = {"asyncthink": {"capacity": 4}}
    r = client.chat.completions.create(model=model, messages=q, temperature=0, extra_body=body)
    c = r.choices[0]
    episode = c.model_extra["asyncthink"]
    assert c.message.content == "7*6=42, 4*9=36, 13*5=65", c.message
    assert c.finish_reason == "stop" and episode["forks"] == 3, episode
    assert episode["critical_path_tokens"] < episode["total_tokens"], episode
    assert r.usage.completion_tokens == episode["total_tokens"]
    text, reasoning, finish, _ = streamed_chat(
        client.chat.completions.create(model=model, messages=q, temperature=0, extra_body=body, stream=True)
    )
    assert text[0] == c.message.content and finish == {0: "stop"}, (text, finish)
    assert reasoning[0] == c.message.model_extra["reasoning_content"]


@check("a bad field is a BadRequestError naming it")
def _():
    try:
        chat(temperature=5)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "temperature", e.body
    else:
        raise AssertionError("no error")


@check("a wrong key is an AuthenticationError")
def _():
    bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("no error")


passed = failed = 0
for name, f in checks:
    try:
        f()
        passed += 1
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 - report every check
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")
print(f"openai client {openai.__version__}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
