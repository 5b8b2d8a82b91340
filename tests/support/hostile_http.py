"""Hypothesis strategies for hostile HTTP requests (issue 23), shared by the tests of every
server: JSON values of any type and size, a lying Content-Length, odd content types, headers
with NUL, CR or a second head, unknown methods and paths; ``framed`` draws one request."""

from __future__ import annotations

from hypothesis import strategies as st

NUMBERS = st.one_of(
    st.integers(-3, 3), st.sampled_from([95, 96, 97, 259, 260, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400]),
    st.integers(-(2**70), 2**70), st.floats(), st.sampled_from([-0.0, 2.0000001, 1e-320, 1e308, 0.5]),
)
TEXT = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "a\x00b", "\ud800", "\u202eevil", "é" * 200, "null", "true", "<|endoftext|>"]))
#: Any JSON value Python writes (NaN and Infinity too), nested a little.
JSON = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)
BAD_BODIES = st.one_of(
    st.sampled_from([b"", b"{", b"[]", b"null", b"1e999", b'"x"', b"\xff\xfe{}", b"\x00" * 10, b"[" * 5000, b'{"a": ' + b"9" * 5000 + b"}"]),
    st.binary(max_size=64),
)
OTHER_METHODS = st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "FOO", "get", "P\x00ST"])
ODD_PATHS = st.one_of(
    st.sampled_from(["/", "*", "//x", "/../x", "/%00", "/x#y", "/" + "a" * 5000, "http://evil.example/x", "/mödels", "/a b"]),
    # no newline: a request line cut in two words is HTTP/0.9, answered without a status line (it has none)
    st.text(max_size=30).filter(lambda t: "\n" not in t).map(lambda t: "/" + t),
)
LENGTHS = st.one_of(st.just("auto"), st.none(), st.sampled_from(["abc", "-1", "1e3", " 5", "+5", "5_0", "٣", "0x10", "", str(2**70), str(2**62)]),
                    st.integers(0, 200).map(str))
CONTENT_TYPES = st.sampled_from([None, "application/json", "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                                 "application/json; charset=latin-1", "", "\x00"])
HEADER_VALUES = st.one_of(st.text(max_size=20), st.sampled_from(["a\x00b", "a\rb", "x\r\nX-Injected: 1", "x\r\n\r\nGET / HTTP/1.1", "é", "v" * 9000]))
EXTRA = st.lists(st.one_of(
    st.tuples(st.sampled_from(["Content-Length", "Transfer-Encoding", "Expect", "Connection", "Host", "Authorization", "X-Test", "Content-Encoding"]),
              st.one_of(st.sampled_from(["3", "chunked", "gzip", "100-continue", "keep-alive", "upgrade"]), HEADER_VALUES)),
    st.tuples(st.text(min_size=1, max_size=10).filter(lambda n: ":" not in n and "\r" not in n and "\n" not in n), HEADER_VALUES),
), max_size=3)


@st.composite
def framed(draw, methods, paths, bodies, headers=st.just({})) -> dict:
    """Keyword arguments of ``rawhttp.request``: a method, path and body from the given
    strategies, a Content-Length from ``LENGTHS``, ``headers`` and ``EXTRA`` ones. A body
    shorter than its length is sent with the sending side closed (the client gave up): a
    client that stalls instead is each server's slow-client test."""
    body, length = draw(bodies), draw(LENGTHS)
    extra = draw(headers) | dict(draw(EXTRA))
    if (content_type := draw(CONTENT_TYPES)) is not None:
        extra["Content-Type"] = content_type
    declared = [v.strip() for k, v in extra.items() if k.lower() == "content-length"] + ([length.strip()] if length is not None else [])
    half_close = any(v.isascii() and v.isdigit() and int(v) > len(body) for v in declared)
    return {"method": draw(methods), "path": draw(paths), "body": body, "length": length, "headers": extra, "half_close": half_close}
