"""A1111's prompt language: emphasis, escapes, BREAK, editing/alternation schedules, AND, network tags.

Expected values are A1111's (its doctests and its regex/grammar semantics), including its quirks: a trailing
':number' is an AND weight even without AND; an unclosed bracket runs to the end; a prompt the schedule
grammar rejects is used verbatim.
"""
from __future__ import annotations

import pytest

from webui.engine.prompt_parser import (ExtraNetworkCall, parse_extra_networks, parse_prompt_attention,
                                        prompt_schedule, segments_for_mode, split_and)

ATTENTION = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("unbalanced)", [("unbalanced)", 1.0)]),                       # a stray closer is text
    ("a ] b", [("a ] b", 1.0)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("\\\\(x)", [("\\", 1.0), ("x", 1.1)]),                         # escaped backslash, then emphasis
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("((a))", [("a", 1.1 * 1.1)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("(a:1.3)", [("a", 1.3)]),
    ("(a: 0.5 )", [("a", 0.5)]),
    ("(a:-1)", [("a", -1.0)]),
    ("([a]:1.5)", [("a", 1.5 / 1.1)]),
    ("a:b (c:d)", [("a:b ", 1.0), ("c:d", 1.1)]),                  # ':' without a number is text
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),    # A1111: a weighted BREAK is plain text
    ("aBREAKb", [("aBREAKb", 1.0)]),                               # only a whole word
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("text,expected", ATTENTION)
def test_emphasis_table(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_emphasis_modes():
    assert segments_for_mode("(a) b", "None") == [("(a) b", 1.0)]
    assert segments_for_mode("(a) b", "Ignore") == [("a", 1.0), (" b", 1.0)]
    assert ("BREAK", -1.0) in segments_for_mode("(a) BREAK b", "Ignore")
    assert segments_for_mode("(a) b", "No norm") == segments_for_mode("(a) b", "Original") == [("a", 1.1), (" b", 1.0)]


SCHEDULES = [   # A1111's doctests (10 steps), then more edge cases
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    ("[from::0.3] x", [(3, "from x"), (10, " x")]),
    ("[cat:dog:0.5]", [(5, "cat"), (10, "dog")]),
    ("[cat:dog:25]", [(10, "cat")]),                               # a step beyond the end: never switches
    ("[cat:dog:0]", [(10, "dog")]),
    ("[a:b:+3]", [(3, "a"), (10, "b")]),                            # SIGNED_NUMBER
    ("[a:b:1e1]", [(10, "a")]),                                     # no '.': a step number (10)
    ("[a:b:c:3]", [(10, "[a:b:c:3]")]),                             # no parse of the bracket: literal
    ("a | b [c:2]", [(10, "a | b [c:2]")]),                         # top-level '|': whole prompt verbatim
    ("x\\", [(10, "x\\")]),                                         # trailing lone backslash: verbatim
    ("smiling :) [cat:dog:0.5]", [(5, "smiling :) cat"), (10, "smiling :) dog")]),
    ("\\[a:b:3\\]", [(10, "\\[a:b:3\\]")]),                         # escaped brackets are text
    ("[a|b] [c:d:0.5]", [(i, ("a" if i % 2 else "b") + " " + ("c" if i <= 5 else "d")) for i in range(1, 11)]),
    ("[" * 40 + "a", [(10, "[" * 40 + "a")]),                       # deep nesting is fast and literal
]


@pytest.mark.parametrize("text,expected", SCHEDULES)
def test_schedule_table(text, expected):
    assert prompt_schedule(text, 10) == expected


def test_hires_schedule_uses_the_second_range():
    # A1111: during hires, fractions are in 1..2 and step numbers are offset by the base steps.
    assert prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:13] c", 10, hires_steps=10) == [(3, "a  c"), (10, "a b c")]


def test_old_scheduling_treats_below_one_as_fraction():
    assert prompt_schedule("[a:b:0.5]", 10, use_old_scheduling=True) == [(5, "a"), (10, "b")]
    assert prompt_schedule("[a:b:3.0]", 10, use_old_scheduling=True) == [(3, "a"), (10, "b")]


@pytest.mark.parametrize("text,expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat :1.2 AND a dog", [("a cat", 1.2), (" a dog", 1.0)]),
    ("a AND b:-0.5 AND c : .5", [("a", 1.0), (" b", -0.5), (" c", 0.5)]),   # trailing spaces dropped
    ("ANDROID AND x", [("ANDROID", 1.0), (" x", 1.0)]),            # \bAND\b only
    ("score:9", [("score", 9.0)]),                                  # A1111 quirk: weight without AND
    ("(x:1.2)", [("(x:1.2)", 1.0)]),                                # emphasis is not an AND weight
])
def test_and_split(text, expected):
    assert split_and(text) == expected


@pytest.mark.parametrize("text,stripped,calls", [
    ("a <lora:foo:0.5> b", "a  b", [ExtraNetworkCall("lora", ["foo", "0.5"])]),
    ("<lora:foo:0.2:0.8>", "", [ExtraNetworkCall("lora", ["foo", "0.2", "0.8"])]),
    ("<lora:foo:te=0.2:unet=1:dyn=8>", "", [ExtraNetworkCall("lora", ["foo"], {"te": "0.2", "unet": "1", "dyn": "8"})]),
    ("<lyco:x> <hypernet:y:1>", " ", [ExtraNetworkCall("lyco", ["x"]), ExtraNetworkCall("hypernet", ["y", "1"])]),
    ("no tags <here", "no tags <here", []),
    ("<lora:sub/dir name:1>", "", [ExtraNetworkCall("lora", ["sub/dir name", "1"])]),
])
def test_extra_network_tags(text, stripped, calls):
    assert parse_extra_networks(text) == (stripped, calls)


# ------------------------------------------------------------------ conditioning (SD1/SDXL fixtures)

import torch  # noqa: E402

from conftest import small_params  # noqa: E402
from webui.engine.conditioning import Conditioning, PromptOptions  # noqa: E402
from webui.engine.denoiser import CFGDenoiser  # noqa: E402
from webui.engine.prompt_schedule import BatchConditioning, CondSchedule, ConditioningCache  # noqa: E402


@pytest.fixture(scope="module")
def encoder(sd1_engine):
    return sd1_engine.models.current.prompt_encoder


def test_original_emphasis_scales_tokens_then_restores_the_chunk_mean(encoder):
    plain = encoder.encode_text("a red circle").context
    got = encoder.encode_text("a red (circle:1.5)").context
    weights = torch.ones(1, 77, 1)
    weights[0, 3] = 1.5                           # [start] a red circle
    expected = plain * weights
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.mean(), plain.mean())


def test_other_emphasis_modes(encoder):
    plain = encoder.encode_text("a red circle").context
    weights = torch.ones(1, 77, 1)
    weights[0, 3] = 1.1 * 1.1
    no_norm = encoder.encode_text("a red ((circle))", options=PromptOptions(emphasis="No norm")).context
    torch.testing.assert_close(no_norm, plain * weights, atol=1e-6, rtol=1e-6)
    ignore = encoder.encode_text("a red ((circle))", options=PromptOptions(emphasis="Ignore")).context
    assert torch.equal(ignore, plain)
    literal = encoder.encode_text("a red ((circle))", options=PromptOptions(emphasis="None")).context
    assert torch.equal(literal, encoder.encode([("a red ((circle))", 1.0)]).context)
    assert not torch.equal(literal, plain)


def test_break_starts_an_independent_chunk(encoder):
    got = encoder.encode_text("a red BREAK circle").context
    assert got.shape[1] == 154
    assert torch.equal(got[:, :77], encoder.encode_text("a red").context)
    assert torch.equal(got[:, 77:], encoder.encode_text("circle").context)


def test_comma_backtrack_moves_the_words_after_a_late_comma(encoder):
    text = "x " * 70 + ", " + "y " * 10
    moved = encoder.tokenize_text(text)
    assert [len(c.tokens) for c in moved.chunks] == [71, 10]
    fixed = encoder.tokenize_text(text, PromptOptions(comma_padding_backtrack=0))
    assert [len(c.tokens) for c in fixed.chunks] == [75, 6]
    assert encoder.encode_text(text).context.shape[1] == 154


def test_sdxl_clip_skip_follows_a1111(checkpoints, tmp_path_factory):
    from webui.engine.engine import Engine
    from webui.engine.paths import DataPaths

    checkpoints.path("sdxl")
    engine = Engine(DataPaths.create(tmp_path_factory.mktemp("xl_skip"), ckpt_dir=checkpoints.ckpt_dir), device="cpu")
    xl = engine.load_checkpoint("sdxl.safetensors").prompt_encoder
    one = xl.encode_text("a red circle", clip_skip=1).context
    assert torch.equal(one, xl.encode_text("a red circle", clip_skip=2).context)     # ignored by default
    opt = PromptOptions(sdxl_clip_l_skip=True)
    last = xl.encode_text("a red circle", clip_skip=1, options=opt).context
    assert not torch.equal(last[..., :64], one[..., :64])          # CLIP-L: now the last layer
    assert torch.equal(last[..., 64:], one[..., 64:])               # bigG: always the penultimate
    assert torch.equal(xl.encode_text("a red circle", clip_skip=2, options=opt).context, one)


def test_schedule_picks_conditioning_per_step_and_encodes_each_text_once(encoder, monkeypatch):
    calls = []
    real = encoder.encode_tokens
    monkeypatch.setattr(encoder, "encode_tokens", lambda t, *a, **k: calls.append(t) or real(t, *a, **k))
    cache = ConditioningCache(encoder)
    cond = cache.positive(["[red:blue:0.5] circle, [a|b]"], steps=4)
    assert len(calls) == 5     # "red circle, a/b", "blue circle, a/b" and "" (for padding), each once
    picked = [cond.at(step).cond for step in range(4)]
    assert len(calls) == 5 and picked[0] is picked[1]
    texts = ["red circle, a", "red circle, a", "red circle, b", "blue circle, a"]
    for step, text in enumerate(texts):   # A1111: step s uses the first entry whose end >= s
        assert torch.equal(picked[step].context, encoder.encode_text(text).context), step


def _marker_inner(log: list):
    """A fake UNet: the output is x plus each row's first context value, so the mix is readable."""
    def inner(x, sigma, context, added=None, extra=None):
        log.append(tuple(context.shape))
        return x + context[:, :1, :1].reshape(-1, 1, 1, 1)
    return inner


def _const(value: float, tokens: int = 77) -> Conditioning:
    return Conditioning(torch.full((1, tokens, 3), value))


def test_and_combines_weighted_conds_in_cfg():
    parts = [[(CondSchedule.constant(_const(2.0)), 1.2), (CondSchedule.constant(_const(5.0)), -0.5)],
             [(CondSchedule.constant(_const(3.0)), 1.0)]]
    cond = BatchConditioning(parts, _const(0.0))
    uncond = BatchConditioning([[(CondSchedule.constant(_const(-1.0)), 1.0)]] * 2, _const(0.0))
    x, sigma, scale = torch.zeros(2, 4, 2, 2), torch.ones(2), 7.0
    out = CFGDenoiser(_marker_inner([]), cond, uncond, scale)(x, sigma)
    first = -1.0 + scale * (1.2 * (2.0 + 1.0) - 0.5 * (5.0 + 1.0))
    second = -1.0 + scale * (3.0 + 1.0)
    assert torch.allclose(out[0], torch.full((4, 2, 2), first)) and torch.allclose(out[1], torch.full((4, 2, 2), second))


def test_different_lengths_run_separately_or_padded():
    log: list = []
    long, short = _const(1.0, 154), _const(-1.0)
    out = CFGDenoiser(_marker_inner(log), long, short, 2.0)(torch.zeros(1, 4, 2, 2), torch.ones(1))
    assert log == [(1, 154, 3), (1, 77, 3)] and torch.allclose(out, torch.full_like(out, -1.0 + 2.0 * 2.0))
    log.clear()
    batch = lambda c: BatchConditioning([[(CondSchedule.constant(c), 1.0)]], _const(9.0))  # noqa: E731
    CFGDenoiser(_marker_inner(log), batch(long), batch(short), 2.0, pad_conds=True)(torch.zeros(1, 4, 2, 2), torch.ones(1))
    assert log == [(2, 154, 3)]


def test_prompt_editing_and_and_in_generation(sd1_engine):
    run = lambda prompt: sd1_engine.txt2img(small_params(prompt=prompt, steps=4, sampler_name="Euler"))  # noqa: E731
    red, blue = run("red circle"), run("blue circle")
    edited = run("[red:blue:0.5] circle")
    assert edited.images[0].tobytes() not in (red.images[0].tobytes(), blue.images[0].tobytes())
    assert run("[red:blue:9] circle").images[0].tobytes() == red.images[0].tobytes()    # never switches
    assert run("[red:blue:0] circle").images[0].tobytes() == blue.images[0].tobytes()
    composed = run("red circle AND blue square :0.5")
    assert composed.images[0].tobytes() != red.images[0].tobytes()
    assert run("red circle AND blue square :0").images[0].tobytes() == red.images[0].tobytes()
    emphasised = sd1_engine.txt2img(small_params(prompt="(red:1.4) circle", steps=4, sampler_name="Euler"))
    assert emphasised.images[0].tobytes() != red.images[0].tobytes()
