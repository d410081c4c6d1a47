import torch

from convscope.ops import HaarDWT2d, HaarIDWT2d, haar_dwt2d, haar_idwt2d


def test_haar_coefficients_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    ll, highs = haar_dwt2d(x)
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    torch.testing.assert_close(ll.flatten(), torch.tensor([(a + b + c + d) / 2]))
    torch.testing.assert_close(highs.flatten(), torch.tensor([(a + b - c - d) / 2, (a - b + c - d) / 2,
                                                              (a - b - c + d) / 2]))


def test_idwt_inverts_dwt_exactly():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    ll, highs = haar_dwt2d(x)
    assert ll.shape == (2, 3, 8, 6) and highs.shape == (2, 3, 3, 8, 6)
    torch.testing.assert_close(haar_idwt2d(ll, highs), x, atol=1e-12, rtol=0)
    ll3, hs = HaarDWT2d(3)(x[..., :8])
    torch.testing.assert_close(HaarIDWT2d()(ll3, hs), x[..., :8], atol=1e-12, rtol=0)
    # energy preserving (orthonormal) and odd sizes zero-padded at the end
    assert torch.isclose(ll.pow(2).sum() + highs.pow(2).sum(), x.pow(2).sum())
    odd = x[..., :7, :5]
    torch.testing.assert_close(haar_idwt2d(*haar_dwt2d(odd), size=(7, 5)), odd, atol=1e-12, rtol=0)
