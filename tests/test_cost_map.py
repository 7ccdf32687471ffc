import torch

from ovss_d2.modeling.cost_map import cost_map


def test_cost_map_is_cosine_of_every_pixel_and_prompt():
    torch.manual_seed(0)
    img = torch.randn(2, 8, 3, 5)
    txt = torch.randn(4, 3, 8)
    out = cost_map(img, txt)
    assert out.shape == (2, 3, 4, 3, 5)
    for b, p, n, y, x in [(0, 0, 0, 0, 0), (1, 2, 3, 2, 4), (0, 1, 2, 1, 3)]:
        u, v = img[b, :, y, x], txt[n, p]
        assert torch.allclose(out[b, p, n, y, x], (u @ v) / (u.norm() * v.norm()), atol=1e-6)
    per_image = cost_map(img, txt.expand(2, -1, -1, -1))
    assert torch.allclose(per_image, out, atol=1e-6)
