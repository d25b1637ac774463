"""thrum.jsonedit: edits splice text, so the user's bytes survive; parsing matches json.loads."""

from __future__ import annotations

import copy
import json
import re
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from thrum.jsonedit import Document, JSONEditError

CLAUDE = """{
  "permissions": {
    "allow": ["Bash(git status:*)", "Read"]
  },
  "hooks": {
    "PostToolUse": [
      {
        "matcher": "*",
        "hooks": [
          {
            "type": "command",
            "command": "x"
          }
        ]
      }
    ]
  }
}
"""

FILES = {
    "claude": CLAUDE,
    "claude-compact": '{"hooks": {"PostToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": "x"}]}]}}',
    "four-spaces": ('{\n    "a": 1,\n    "hooks": {\n        "Stop": [\n            {"command": "y"}\n'
                    '        ]\n    }\n}\n'),
    "tabs": '{\n\t"a": [\n\t\t1,\n\t\t2\n\t],\n\t"hooks": {\n\t\t"Stop": []\n\t}\n}\n',
    "crlf": '{\r\n  "a": "b",\r\n  "hooks": {\r\n    "Stop": [\r\n      {"command": "y"}\r\n    ]\r\n  }\r\n}\r\n',
    "no-final-newline": '{\n  "a": 1,\n  "hooks": {"Stop": [1, 2]}\n}',
    "unicode": '{\n  "naïve": "日本語 \\u00e9 \\ud83d\\ude00 😀",\n  "hooks": {\n    "Stop": ["ü"]\n  }\n}\n',
    "odd-spacing": '{ "a" : 1 ,\n   "hooks" :{ "Stop" : [ 1 ,2 ] } }\n',
    "trailing-spaces": '{\n  "a": [\n    1, \n    2\n  ], \n  "hooks": {\n    "Stop": []\n  }\n}\n',
    "empty-object": "{}\n",
    "empty-hooks": '{\n  "hooks": {}\n}\n',
}

COMMENTED = {
    "gemini": """{
  // Gemini CLI settings
  "theme": "Default", // trailing note
  /* block */ "hooks": {
    "Stop": [
      {"command": "y"}, // ours? no
    ],
  },
}
""",
    "line-comments": '{\n  "a": 1, // one\n  "hooks": { // h\n    "Stop": [ // s\n      1 // last\n    ]\n  }\n}\n',
    "only-comments-inside": '{\n  // nothing yet\n  "hooks": {\n    /* later */\n  }\n}\n',
    "crlf-comments": '{\r\n  "a": 1, // x\r\n  "hooks": {"Stop": [/* none */]}\r\n}\r\n',
}

ENTRY = {"matcher": "*", "hooks": [{"type": "command", "command": "thrum hook stop"}]}


def is_ours(value) -> bool:
    return value == ENTRY or value == {"command": "thrum"}


def members(text: str) -> list[str]:
    """The text of each top-level member, found with json's own decoder (not the code under test)."""
    decoder, out = json.JSONDecoder(), []
    pos = text.index("{") + 1
    while True:
        pos = re.compile(r"\s*").match(text, pos).end()
        if text[pos] == "}":
            return out
        _, key_end = decoder.raw_decode(text, pos)
        colon = re.compile(r"\s*:\s*").match(text, key_end).end()
        _, end = decoder.raw_decode(text, colon)
        out.append(text[pos:end])
        pos = re.compile(r"\s*,?").match(text, end).end()


def strip_comments(text: str) -> str:
    """A reference JSONC reader: drop // and /* */ outside strings, then trailing commas."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', lambda m: m.group() if m.group()[0] == '"' else "",
                  text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"|,(\s*[}\]])', lambda m: m.group(1) or m.group(), text)


# -- the user's bytes stay -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FILES))
def test_add_then_remove_gives_back_the_original(name):
    original = FILES[name]
    doc = Document(original)
    doc.append_to_array(("hooks", "Stop"), ENTRY)
    doc.set_member((), "thrum", {"version": 1, "nested": {"list": [1, {"a": None}]}})
    doc.set_member(("hooks",), "Extra", [])
    assert doc.get(("hooks", "Stop", -1)) is None  # indexes are >= 0; absent, not an error
    assert doc.get(("hooks", "Stop"))[-1] == ENTRY
    expected = json.loads(original)
    expected.setdefault("hooks", {}).setdefault("Stop", []).append(ENTRY)
    expected["thrum"] = {"version": 1, "nested": {"list": [1, {"a": None}]}}
    expected["hooks"]["Extra"] = []
    assert json.loads(doc.text) == expected == doc.value
    assert doc.remove_member(("hooks",), "Extra") is True
    assert doc.remove_member((), "thrum") is True
    assert doc.remove_array_items(("hooks", "Stop"), is_ours) == 1
    drop_created(doc, json.loads(original))
    assert doc.text == original


def drop_created(doc, original):
    """Remove what append_to_array created: "Stop", and "hooks" if that was not there either."""
    if "hooks" not in original:
        assert doc.prune(("hooks", "Stop")) == 2
    elif "Stop" not in original["hooks"]:
        assert doc.remove_member(("hooks",), "Stop") is True


@pytest.mark.parametrize("name", sorted(n for n in FILES if n != "empty-object"))
def test_original_members_are_kept_verbatim(name):
    original = FILES[name]
    doc = Document(original)
    doc.set_member((), "thrum", {"hooks": ["a", "b"]})
    doc.append_to_array(("hooks", "Stop"), ENTRY)
    after = members(doc.text)
    for member in members(original):
        if not member.startswith('"hooks"'):
            assert member in after
    assert after[-1].startswith('"thrum"')
    assert doc.text.endswith(("\n" if original.endswith("\n") else "}"))
    newline = "\r\n" if "\r\n" in original else "\n"
    assert doc.text.count(newline) == doc.text.count("\n")  # no mixed line endings introduced


@pytest.mark.parametrize("name", sorted(COMMENTED))
def test_comments_stay_in_place(name):
    original = COMMENTED[name]
    with pytest.raises(JSONEditError, match="comments are not allowed"):
        Document(original)
    doc = Document(original, comments=True)
    assert doc.value == json.loads(strip_comments(original))
    doc.append_to_array(("hooks", "Stop"), {"command": "thrum"})
    doc.set_member((), "thrum", True)
    for comment in re.findall(r"//[^\n\r]*|/\*.*?\*/", original):
        assert comment in doc.text
    assert json.loads(strip_comments(doc.text)) == doc.value
    assert doc.remove_array_items(("hooks", "Stop"), is_ours) == 1
    doc.remove_member((), "thrum")
    drop_created(doc, json.loads(strip_comments(original)))
    assert doc.text == original


def test_layout_of_inserted_text():
    doc = Document('{\n    "a": 1\n}\n')
    doc.set_member(("hooks",), "Stop", [{"type": "command"}])
    assert doc.text == ('{\n    "a": 1,\n    "hooks": {\n        "Stop": [\n            {\n'
                        '                "type": "command"\n            }\n        ]\n    }\n}\n')
    doc = Document('{"a":1,"b":[]}')  # compact stays compact, separators copied
    doc.set_member((), "c", {"d": [1, 2]})
    doc.append_to_array(("b",), "x")
    assert doc.text == '{"a":1,"b":["x"],"c":{"d":[1,2]}}'
    doc = Document('{\r\n\t"a": 1\r\n}')
    doc.set_member((), "b", [1])
    assert doc.text == '{\r\n\t"a": 1,\r\n\t"b": [\r\n\t\t1\r\n\t]\r\n}'
    doc = Document('{\n  "a": 1 // why\n}\n', comments=True)  # the comment stays with its entry
    doc.set_member((), "b", 2)
    assert doc.text == '{\n  "a": 1, // why\n  "b": 2\n}\n'
    doc = Document('{\n  "a": [1,],\n}\n', comments=True)  # trailing commas are copied
    doc.set_member((), "b", 2)
    doc.append_to_array(("a",), 2)
    assert doc.text == '{\n  "a": [1, 2,],\n  "b": 2,\n}\n'


def test_remove_looks_like_a_person_did_it():
    doc = Document('{\n  "a": 1,\n  "b": 2,\n  "c": 3\n}\n')
    doc.remove_member((), "c")
    assert doc.text == '{\n  "a": 1,\n  "b": 2\n}\n'
    doc.remove_member((), "a")
    assert doc.text == '{\n  "b": 2\n}\n'
    doc.remove_member((), "b")
    assert doc.text == "{}\n"
    with pytest.raises(JSONEditError, match="not an object"):
        Document('[1, 2, 3, 2]').remove_array_items((), lambda v: v == 2)
    doc = Document('{"x": [1, 2, 3, 2]}')
    assert doc.remove_array_items(("x",), lambda v: v == 2) == 2
    assert doc.text == '{"x": [1, 3]}'
    assert doc.remove_array_items(("x",), lambda v: True) == 2
    assert doc.text == '{"x": []}'
    doc = Document('{\n  // keep me\n  "a": 1, // goes with a\n  "b": /* inside b */ 2\n}', comments=True)
    doc.remove_member((), "a")
    assert doc.text == '{\n  // keep me\n  "b": /* inside b */ 2\n}'
    doc.remove_member((), "b")
    assert doc.text == '{\n  // keep me\n}'
    # a comment before the removed entry never ends up swallowing the text after it
    for text, key, expected in [
        ('{\n  /* c */ "a": 1,\n  "b": 2\n}', "a", '{\n  /* c */\n  "b": 2\n}'),
        ('{"a": 1, // x\n  "b": 2 }', "b", '{"a": 1 // x\n }'),
        ('{\n  "a": 1,\n  /* c */ "b": 2\n}', "b", '{\n  "a": 1\n  /* c */\n}'),
    ]:
        doc = Document(text, comments=True)
        doc.remove_member((), key)
        assert doc.text == expected
    doc = Document('{"a": [ /* c */ 1 ]}', comments=True)
    assert doc.remove_array_items(("a",), lambda v: True) == 1
    assert doc.text == '{"a": [ /* c */ ]}'


def test_set_member_replaces_only_the_value():
    doc = Document('{\n  "a" :  {"x": 1},\n  "b": [1, 2]  \n}')
    doc.set_member((), "a", {"x": 1})  # equal already: not rewritten
    assert doc.text == '{\n  "a" :  {"x": 1},\n  "b": [1, 2]  \n}'
    doc.set_member((), "a", 7)
    assert doc.text == '{\n  "a" :  7,\n  "b": [1, 2]  \n}'
    doc.set_member((), "b", {"k": True})
    assert doc.text == '{\n  "a" :  7,\n  "b": {\n    "k": true\n  }  \n}'
    doc.set_member((), "b", 1.0)  # 1.0 is not 1: rewritten
    assert doc.get(("b",)) == 1.0 and isinstance(doc.get(("b",)), float)
    doc.set_member((), "c", {1: (2, 3)})  # written as json.dumps writes it
    before = doc.text
    doc.set_member((), "c", {"1": [2, 3]})  # which is what is there already
    assert doc.text == before and doc.get(("c",)) == {"1": [2, 3]}


def test_empty_documents():
    for text in ("", "  \n", "\r\n"):
        doc = Document(text)
        assert doc.value == {} and doc.get(()) == {} and doc.get(("a",)) is None and doc.text == text
        assert doc.remove_member((), "a") is False and doc.remove_array_items(("a",), bool) == 0
        doc.set_member(("hooks",), "Stop", [])
        newline = "\r\n" if text == "\r\n" else "\n"
        assert doc.text == '{\n  "hooks": {\n    "Stop": []\n  }\n}\n'.replace("\n", newline)
    doc = Document("// settings\n", comments=True)
    doc.set_member((), "a", 1)
    assert doc.text == '// settings\n{\n  "a": 1\n}\n'


def test_duplicate_keys_edit_the_last_one():
    doc = Document('{"a": 1, "b": 0, "a": 2}')
    assert doc.value == json.loads(doc.text) == {"a": 2, "b": 0} and doc.get(("a",)) == 2
    doc.set_member((), "a", 3)
    assert doc.text == '{"a": 1, "b": 0, "a": 3}'
    assert doc.remove_member((), "a") is True
    assert doc.text == '{"b": 0}'


def test_edits_that_do_not_fit():
    doc = Document('{"a": [1], "s": "x"}')
    for edit in (lambda: doc.set_member(("a",), "k", 1), lambda: doc.set_member(("s", "t"), "k", 1),
                 lambda: doc.append_to_array(("s",), 1), lambda: doc.append_to_array(("a", 5), 1),
                 lambda: doc.remove_member(("a",), "k"), lambda: doc.set_member((), "n", float("nan")),
                 lambda: Document("[]").set_member((), "a", 1)):
        with pytest.raises(JSONEditError):
            edit()
    assert doc.text == '{"a": [1], "s": "x"}'
    with pytest.raises(TypeError):
        doc.get("a")
    too_deep = []
    for _ in range(600):
        too_deep = [too_deep]
    with pytest.raises(JSONEditError, match="nested deeper"):
        doc.set_member((), "deep", too_deep)
    assert doc.text == '{"a": [1], "s": "x"}'
    assert Document("[1]").get((0,)) == 1 and Document("[1]").value == [1]


# -- parsing -------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, column", [
    ('{\n  "a": 1\n  "b": 2\n}', 3, 3),
    ('{\n  "a": 1,\n}', 3, 1),
    ('{"a": [1, 2,]}', 1, 13),
    ('{"a": tru}', 1, 7),
    ('{"a": "x\ny"}', 1, 9),
    ('{"a": "\\x"}', 1, 8),
    ('{"a": "open', 1, 7),
    ('{"a": 01}', 1, 8),
    ('{"a": -}', 1, 7),
    ('{"a": 1} {}', 1, 10),
    ('{"a": NaN}', 1, 7),
    ("{'a': 1}", 1, 2),
    ('{"a": 1,\n\n   /* x */ "b": 2}', 3, 4),
    ('{\n  "a": {\n', 3, 1),
])
def test_invalid_json_says_where(text, line, column):
    with pytest.raises(JSONEditError) as e:
        Document(text)
    assert (e.value.line, e.value.column) == (line, column)
    assert str(e.value).startswith(f"line {line} column {column}: ")
    with pytest.raises(ValueError):  # JSONEditError is a ValueError
        Document(text)


def test_hostile_nesting_is_an_error_not_a_crash():
    start = time.monotonic()
    for text in ("[" * 100_000, "{\"a\":" * 100_000, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(JSONEditError, match="nested deeper"):
            Document(text)
    assert time.monotonic() - start < 1
    with pytest.raises(JSONEditError, match="unterminated"):
        Document("[/* " * 1000, comments=True)


def test_deep_nesting_parses_and_edits():
    deep = {"a": 1}
    for _ in range(250):
        deep = {"k": deep}
    text = json.dumps({"root": deep, "arr": json.loads("[" * 200 + "]" * 200)}, indent=2)
    doc = Document(text)
    assert doc.value == json.loads(text)
    path = ("root",) + ("k",) * 250
    doc.set_member(path, "b", [2])
    assert doc.get(path) == {"a": 1, "b": [2]}
    doc.remove_member(path, "b")
    assert doc.text == text


@pytest.mark.parametrize("text", [
    r'{"s": "\" \\ \/ \b \f \n \r \t \u0041 \u00e9 \ud83d\ude00 \udc00 日本"}',
    '{"n": [0, -0, 1, -1, 0.5, -0.0, 1e3, 1E+3, 1e-3, 2.5E-300, 1e400, 123456789012345678901234567890]}',
    '{"x": [true, false, null, {}, [], "", {"": ""}]}',
    '\ufeff{"bom": 1}',
])
def test_values_match_json_loads(text):
    doc = Document(text)
    assert repr(doc.value) == repr(json.loads(text.lstrip("\ufeff")))


# -- properties ----------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
objects = st.dictionaries(st.text(max_size=5), values, max_size=5)
MARKER = {"\x00thrum-test": [1, {"k": None}]}
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def styled(draw, obj):
    """`obj` written the ways people and tools write JSON."""
    indent = draw(st.sampled_from([None, 0, 1, 2, 4, "\t"]))
    separators = draw(st.sampled_from([None, (",", ":"), (", ", ": "), (",", ": ")]))
    text = json.dumps(obj, indent=indent, separators=separators, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text += "\n"
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text


def containers(value, path=()):
    if isinstance(value, (dict, list)):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from containers(child, path + (key,))


def at(value, path):
    for part in path:
        value = value[part]
    return value


@FAST
@given(st.data())
def test_random_edits_match_the_same_edits_on_the_value(data):
    model = data.draw(objects)
    doc = Document(data.draw(styled(model)))
    assert doc.value == model
    for _ in range(data.draw(st.integers(1, 6))):
        path, target = data.draw(st.sampled_from(list(containers(model))))
        if isinstance(target, dict):
            key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=3) if target else st.text(max_size=3))
            if data.draw(st.booleans()):
                value = data.draw(values)
                doc.set_member(path, key, copy.deepcopy(value))
                target[key] = value
            else:
                assert doc.remove_member(path, key) == (key in target)
                target.pop(key, None)
        elif data.draw(st.booleans()) or not target:
            value = data.draw(values)
            doc.append_to_array(path, copy.deepcopy(value))
            target.append(value)
        else:
            victim = data.draw(st.sampled_from(target))
            matches = [v for v in target if v == victim]
            assert doc.remove_array_items(path, lambda v: v == victim) == len(matches)
            target[:] = [v for v in target if v != victim]
        assert json.loads(doc.text) == model == doc.value


@FAST
@given(st.data())
def test_append_then_remove_restores_the_text(data):
    model = data.draw(objects)
    text = data.draw(styled(model))
    assume(json.dumps(MARKER)[2:10] not in json.dumps(model))
    doc = Document(text)
    path, target = data.draw(st.sampled_from(list(containers(model))))
    if isinstance(target, dict):
        doc.set_member(path, "\x00thrum-test", MARKER)
        assert at(json.loads(doc.text), path)["\x00thrum-test"] == MARKER
        assert doc.remove_member(path, "\x00thrum-test")
    else:
        doc.append_to_array(path, MARKER)
        assert at(json.loads(doc.text), path)[-1] == MARKER
        assert doc.remove_array_items(path, lambda v: v == MARKER) == 1
    assert doc.text == text


@FAST
@given(st.data())
def test_comments_survive_edits(data):
    model = data.draw(objects)
    lines = json.dumps(model, indent=data.draw(st.sampled_from([2, "\t"]))).split("\n")
    for i, line in enumerate(lines):
        choice = data.draw(st.sampled_from(["", "end", "start", "both"]))
        if choice in ("start", "both") and i:
            body = line.lstrip()
            line = line[:len(line) - len(body)] + f"/* s{i} */ " + body
        if choice in ("end", "both"):
            line += f" // e{i}"
        lines[i] = line
    text = "\n".join(lines) + "\n"
    doc = Document(text, comments=True)
    assert doc.value == model
    path, target = data.draw(st.sampled_from(list(containers(model))))
    if isinstance(target, dict):
        doc.set_member(path, "\x00thrum-test", MARKER)
        assert at(json.loads(strip_comments(doc.text)), path)["\x00thrum-test"] == MARKER
        doc.remove_member(path, "\x00thrum-test")
    else:
        doc.append_to_array(path, MARKER)
        assert at(json.loads(strip_comments(doc.text)), path)[-1] == MARKER
        doc.remove_array_items(path, lambda v: v == MARKER)
    assert doc.text == text
    if model:
        key = data.draw(st.sampled_from(sorted(model)))
        doc.remove_member((), key)
        del model[key]
        assert json.loads(strip_comments(doc.text)) == model == doc.value


@FAST
@given(values)
def test_parse_matches_json_loads(value):
    for text in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        assert Document(text).value == json.loads(text)
