"""Kopf builds no essence of an object for this operator (``handlers.NoEssence``): right
only while nothing would diff one, no change handler and no daemon or timer."""

from __future__ import annotations

import kopf

from shardwright.operator import handlers


def test_the_operator_has_no_handler_that_diffs_an_essence():
    assert handlers.REGISTRY._changing.get_all_handlers() == []
    assert handlers.REGISTRY._spawning.get_all_handlers() == []
    assert handlers.REGISTRY._watching.get_all_handlers()  # the event handlers it does have


def test_an_event_copies_nothing_of_the_object():
    node = kopf.Body({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "labels": {"a": "b"}},
                      "status": {"images": [{"names": [f"image-{i}"]} for i in range(1000)]}})
    assert handlers.NoEssence(prefix="shardwright.io", key="last-handled").build(body=node) == {}
