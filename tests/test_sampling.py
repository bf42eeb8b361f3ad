import pytest
import torch

from polytask.sampling import REGISTRY, build_sampler

TASKS, SIZES = ["a", "b", "c"], [100, 400, 1600]


def test_proportional_and_temperature_probabilities():
    p = build_sampler("proportional", TASKS, SIZES, 0).probabilities(0, 10)
    assert torch.allclose(p, torch.tensor([1, 4, 16], dtype=torch.float64) / 21)
    p = build_sampler("temperature", TASKS, SIZES, 0, {"T": 2}).probabilities(0, 10)
    assert torch.allclose(p, torch.tensor([10, 20, 40], dtype=torch.float64) / 70)  # sqrt of sizes
    p = build_sampler("uniform", TASKS, SIZES, 0).probabilities(0, 10)
    assert torch.allclose(p, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_annealed_goes_from_proportional_towards_uniform():
    s = build_sampler("annealed", TASKS, SIZES, 0)
    first, last = s.probabilities(0, 11), s.probabilities(10, 11)
    assert torch.allclose(first, torch.tensor([1, 4, 16], dtype=torch.float64) / 21)
    expected = torch.tensor(SIZES, dtype=torch.float64) ** 0.2
    assert torch.allclose(last, expected / expected.sum())


def test_round_robin_cycles():
    s = build_sampler("round_robin", TASKS, SIZES, 0)
    assert [s.sample(i, 9) for i in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_empirical_frequencies_follow_probabilities():
    s = build_sampler("proportional", TASKS, SIZES, 5)
    draws = [s.sample(i, 4000) for i in range(4000)]
    assert abs(draws.count("c") / 4000 - 16 / 21) < 0.03


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_round_trip_reproduces_draws(name):
    s = build_sampler(name, TASKS, SIZES, 1)
    for i in range(5):
        s.sample(i, 20)
    state = s.state_dict()
    expected = [s.sample(i, 20) for i in range(5, 15)]
    fresh = build_sampler(name, TASKS, SIZES, 99)
    fresh.load_state_dict(state)
    assert [fresh.sample(i, 20) for i in range(5, 15)] == expected


def test_bad_temperature():
    with pytest.raises(ValueError):
        build_sampler("temperature", TASKS, SIZES, 0, {"T": 0})
