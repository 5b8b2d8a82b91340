"""The router's plugins alone: filters, scorers and pickers on plain candidates (no I/O)."""

from __future__ import annotations

from shardwright.workers.serve.router.plugins import Candidate, LoadScorer, Pick, PrefixScorer, pipeline_for


def _c(name: str, load: int = 0, routable: bool = True) -> Candidate:
    return Candidate(name, routable, load)


def test_only_routable_endpoints_not_yet_tried_are_picked():
    p = pipeline_for("round-robin", block_size=4)
    cands = [_c("a", routable=False), _c("b"), _c("c")]
    assert {p.pick(Pick([1, 2, 3]), cands).name for _ in range(4)} == {"b", "c"}
    assert p.pick(Pick([1], exclude=frozenset({"b"})), cands).name == "c"
    assert p.pick(Pick([1], exclude=frozenset({"b", "c"})), cands) is None


def test_round_robin_takes_every_endpoint_in_turn():
    p = pipeline_for("round-robin", block_size=4)
    cands = [_c("a"), _c("b"), _c("c")]
    assert [p.pick(Pick([1]), cands).name for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_least_load_picks_the_emptiest():
    p = pipeline_for("least-load", block_size=4)
    assert p.pick(Pick([1]), [_c("a", 3), _c("b", 1), _c("c", 2)]).name == "b"


def test_prefix_aware_sends_a_shared_prefix_back_where_it_went():
    p = pipeline_for("prefix-aware", block_size=4)
    cands = [_c("a"), _c("b")]
    shared = list(range(16))
    first = p.pick(Pick(shared + [40, 41]), cands).name
    assert all(p.pick(Pick(shared + [50 + i]), cands).name == first for i in range(5))
    # a prompt with no known prefix spreads by load
    other = "b" if first == "a" else "a"
    loaded = [_c(first, load=5), _c(other, load=0)]
    assert p.pick(Pick([60, 61, 62, 63, 64]), loaded).name == other


def test_prefix_overlap_outweighs_a_little_load_but_not_a_lot():
    prefix = PrefixScorer(block_size=2)
    prefix.routed(Pick([1, 2, 3, 4, 5, 6]), "a")
    scores = prefix.score(Pick([1, 2, 3, 4, 9, 9]), [_c("a"), _c("b")])
    assert scores == {"a": 2 / 3, "b": 0.0}
    prefix.forget("a")
    assert prefix.score(Pick([1, 2, 3, 4]), [_c("a")]) == {"a": 0.0}
    p = pipeline_for("prefix-aware", block_size=2)
    p.pick(Pick([1, 2, 3, 4]), [_c("a"), _c("b", routable=False)])
    assert p.pick(Pick([1, 2, 3, 4]), [_c("a", load=1), _c("b")]).name == "a"
    assert p.pick(Pick([1, 2, 3, 4]), [_c("a", load=50), _c("b")]).name == "b"
    assert LoadScorer().score(Pick([1]), [_c("a", 1)]) == {"a": 0.5}
