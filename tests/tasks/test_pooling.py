"""The head poolers: cls, mean and attention (Lin et al. 2017) over the backbone's positions."""

import torch

from polytask.tasks.base import Pooler, SequenceHead


def test_attention_pooling_ignores_masked_positions():
    torch.manual_seed(0)
    pool = Pooler("attention", hidden_size=8)
    hidden = torch.randn(3, 5, 8)  # (B, T, H)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    out = pool(hidden, mask)
    garbage = hidden.clone()
    garbage[mask == 0] = 1e4  # whatever sits at padded positions must not move the result
    again = pool(garbage, mask)
    assert torch.allclose(out, again, atol=1e-6 * hidden.abs().max().item())
    assert torch.allclose(out[2], hidden[2, 0], atol=1e-6)  # one position: its own vector


def test_attention_pooling_is_a_convex_combination_of_positions():
    torch.manual_seed(1)
    pool = Pooler("attention", hidden_size=4)
    hidden = torch.rand(2, 6, 4)
    out = pool(hidden, torch.ones(2, 6, dtype=torch.long))
    assert (out <= hidden.max(1).values + 1e-6).all() and (out >= hidden.min(1).values - 1e-6).all()


def test_attention_head_learns_a_position_the_average_cannot_see():
    """Labels defined by one position (the 'left digit') while the others carry a distractor of the
    other class: the attention head learns it; the global average (position 0) cannot beat chance."""
    torch.manual_seed(2)
    n, t, h = 256, 5, 6
    labels = torch.randint(0, 2, (n,))
    signal = torch.nn.functional.one_hot(labels, h).float()  # (n, H)
    hidden = torch.zeros(n, t, h)
    hidden[:, 2] = signal  # the position that decides
    hidden[:, 3] = torch.nn.functional.one_hot(1 - labels, h).float()  # the opposite, elsewhere
    hidden[:, 1, 5] = 1.0  # a position marker the attention can key on
    hidden[:, 2, 4] = 1.0
    hidden[:, 0] = hidden[:, 1:].mean(1)  # position 0: the global average, as vision backbones give
    mask = torch.ones(n, t, dtype=torch.long)
    accuracy = {}
    for mode in ("cls", "attention"):
        torch.manual_seed(3)
        head = SequenceHead(h, 2, mode, dropout=0.0)
        opt = torch.optim.Adam(head.parameters(), lr=0.05)
        for _ in range(200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(hidden, mask), labels).backward()
            opt.step()
        accuracy[mode] = (head(hidden, mask).argmax(-1) == labels).float().mean().item()
    assert accuracy["attention"] > 0.95
    assert accuracy["cls"] < 0.75
