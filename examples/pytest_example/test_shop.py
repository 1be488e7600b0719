"""A tiny test suite to watch the DataCat pytest plugin record a run (see README.md here)."""

import pytest

PRICES = {"apple": 0.5, "pear": 0.75}


def total(basket: dict[str, int]) -> float:
    return sum(PRICES[item] * count for item, count in basket.items())


def test_total_of_an_empty_basket_is_zero() -> None:
    assert total({}) == 0


@pytest.mark.parametrize(("basket", "expected"), [({"apple": 2}, 1.0), ({"pear": 4}, 3.0)])
def test_total(basket: dict[str, int], expected: float) -> None:
    assert total(basket) == expected


@pytest.mark.datacat("pricing", owner="shop-team")
def test_unknown_items_are_rejected(record_datacat) -> None:
    record_datacat("item", "banana")
    with pytest.raises(KeyError):
        total({"banana": 1})


def test_a_test_can_log_its_own_data(datacat_session) -> None:
    with datacat_session.timer("checkout"):
        result = total({"apple": 3, "pear": 1})
    datacat_session.log_event("checkout_done", data={"total": result})
    datacat_session.log_metric("basket.total", result)


@pytest.mark.skip(reason="the discount engine is not written yet")
def test_discounts() -> None:
    raise NotImplementedError


@pytest.mark.xfail(reason="rounding is known to be off by a cent", strict=True)
def test_rounding() -> None:
    assert total({"pear": 1}) * 3 == 2.26


@pytest.mark.skipif(not hasattr(pytest, "Subtests"), reason="the subtests fixture is pytest 9's")
def test_each_fruit_has_a_price(subtests) -> None:
    for item in ("apple", "pear"):
        with subtests.test(msg="priced", item=item):  # one subtest_passed event each
            assert PRICES[item] > 0
