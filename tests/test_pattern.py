import pytest

from eggs_ptp.pattern import Pattern


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4), (" 3 : 16 ", 3, 16)])
def test_parses_n_m(text, n, m):
    pattern = Pattern.parse(text)
    assert (pattern.n, pattern.m, pattern.structured) == (n, m, True)
    assert pattern.density == n / m
    assert str(pattern) == f"{n}:{m}"


@pytest.mark.parametrize("text,sparsity", [("0.5", 0.5), ("50%", 0.5), ("0.7", 0.7)])
def test_parses_unstructured(text, sparsity):
    pattern = Pattern.parse(text)
    assert not pattern.structured and pattern.sparsity == pytest.approx(sparsity)
    assert pattern.kept_per_row(10) == round(10 * (1 - sparsity))


@pytest.mark.parametrize("text", ["3:2", "0:4", "4:4", "2:4:8", "abc", "1.5", "0", "-0.2", "nan", ""])
def test_rejects_impossible_patterns_with_one_line(text):
    with pytest.raises(ValueError) as error:
        Pattern.parse(text)
    assert "\n" not in str(error.value)
