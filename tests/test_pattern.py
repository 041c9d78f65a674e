import pytest
import torch

from eggs_ptp.pattern import Pattern, pattern_violations


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


def test_sparsity_string_reads_back_exactly():
    # An OWL layer at 0.3243407 keeps round(4096 * 0.6756593) = round(2767.5005) = 2768 per row;
    # the former 6-digit string "0.324341" read back allowed round(2767.4993) = 2767.
    pattern = Pattern(sparsity=0.3243407)
    assert str(pattern) == "0.3243407"
    assert Pattern.parse(str(pattern)).kept_per_row(4096) == pattern.kept_per_row(4096) == 2768


def test_percent_is_divided_in_decimal():
    # 14.3 / 100 in floats is 0.14300000000000002, a pattern whose string would not be "0.143".
    pattern = Pattern.parse("14.3%")
    assert pattern == Pattern.parse("0.143") and str(pattern) == "0.143"


@pytest.mark.parametrize("shape", [(8,), (2, 6), (2, 2, 4)])
def test_pattern_violations_rejects_unusable_shapes_with_value_error(shape):
    with pytest.raises(ValueError, match=r"2-D|not divisible by M=4"):
        pattern_violations(torch.ones(shape), Pattern(n=2, m=4))


def test_pattern_violations_accepts_a_weight_without_rows():
    assert pattern_violations(torch.ones(0, 8), Pattern(n=2, m=4)) is None
