"""`decide_input_size`: the model input size for a data set from plain facts about the model, and why."""
from __future__ import annotations

import pytest

import convscope
from convscope.data import decide_input_size
from convscope.train.pipeline import model_size_facts

TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
ATTO = dict(name="convnext_atto", min_side=32, fixed=None, multiple=1, card_side=224, last_stride=32)


def test_model_size_facts_from_the_registry():
    atto = convscope.models.model_traits("convnext_atto")
    tiny = convscope.models.model_traits("convnext_atto", **TINY_CONVNEXT)
    rf = convscope.models.model_traits("randformer_s12")
    assert model_size_facts("convnext_atto", atto) == ATTO == model_size_facts("convnext_atto", tiny)
    facts = model_size_facts("randformer_s12", rf)
    assert facts["fixed"] == (224, 224) and facts["multiple"] == 1 and facts["card_side"] == 224


def test_in_memory_data_keeps_its_size_raised_to_the_minimum():
    def size(native, requested=None, **kw):
        return decide_input_size(native, requested, from_files=False, **dict(ATTO, **kw))

    assert size((28, 28)) == ((32, 32), "the data's 28x28 raised to the model's minimum")
    assert size((64, 48)) == ((64, 48), "")
    assert size((28, 28), 40) == ((40, 40), "")                       # asked for: no note
    assert size((28, 28), fixed=(224, 224)) == ((224, 224), "the only size the model takes")
    with pytest.raises(ValueError, match="convnext_atto needs inputs of at least 32x32; got --input-size 16"):
        size((28, 28), 16)
    with pytest.raises(ValueError, match="only takes 224x224 inputs; got --input-size 64"):
        size((28, 28), 64, fixed=(224, 224))


def test_images_from_files_are_raised_to_the_useful_size_at_most_the_cards():
    """Images smaller than the card's size train at their own size raised to twice the last stage's stride (the
    smallest input whose last feature map is 2x2), at least the model's minimum, at most the card's size."""
    def size(native, **kw):
        return decide_input_size(native, **dict(ATTO, **kw))

    assert size((28, 28)) == ((64, 64), "the data's 28x28 raised to 64: the smallest size at which convnext_atto's "
                                        "last stage (stride 32) still sees 2x2")
    assert size((48, 40))[0] == (64, 64)
    assert size((100, 100)) == ((100, 100), "")                      # already above it: its own size
    assert size((224, 224)) == ((224, 224), "")                      # the card's size
    assert size((500, 375)) == ((224, 224), "")                      # larger images: the card's size
    assert size((28, 28), card_side=48) == ((48, 48), "the data's 28x28 raised to 48, the model card's size")
    assert size((20, 20), card_side=32) == ((32, 32), "the data's 20x20 raised to the model's minimum")
    assert size((20, 20), last_stride=0) == ((32, 32), "the data's 20x20 raised to the model's minimum")
    assert size((100, 100), fixed=(224, 224)) == ((224, 224), "the only size the model takes")
    assert size((28, 28), fixed=(64, 64))[1].startswith("the data's 28x28 raised to 64")   # the rule's own reason


def test_the_input_multiple_rounds_up_and_refuses_requests_off_it():
    assert decide_input_size((100, 100), **dict(ATTO, multiple=32)) == (
        (128, 128), "the data's 100x100 rounded up to 128x128 (multiples of 32, as convnext_atto needs)")
    size, why = decide_input_size((28, 28), from_files=False, **dict(ATTO, min_side=24, multiple=16))
    assert size == (32, 32) and why == "the data's 28x28 rounded up to 32x32 (multiples of 16, as convnext_atto needs)"
    size, why = decide_input_size((20, 20), from_files=False, **dict(ATTO, min_side=24, multiple=16))
    assert size == (32, 32) and why == ("the data's 20x20 raised to the model's minimum, rounded up to 32x32 "
                                        "(multiples of 16, as convnext_atto needs)")
    assert decide_input_size((28, 28), 96, **dict(ATTO, multiple=32)) == ((96, 96), "")
    with pytest.raises(ValueError, match="takes input sides that are multiples of 32; got --input-size 80"):
        decide_input_size((28, 28), 80, **dict(ATTO, multiple=32))
