"""Each loss and the teacher centering against its formula on small hand-checkable tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from vla_dino.ssl.centering import SoftmaxCenter, TeacherTargets, joint_targets, sinkhorn_knopp, sinkhorn_knopp_joint
from vla_dino.ssl.losses import cross_entropy, dino_loss, gram_loss, ibot_loss, koleo_loss, masked_patch_weights, prototype_cross_entropy


def test_cross_entropy_by_hand():
    # s / τ = [0, ln 3] → p = [1/4, 3/4]; t = [1/2, 1/2] → H = −½(ln ¼ + ln ¾)
    student = torch.tensor([[0.0, math.log(3.0) * 0.1]])
    target = torch.tensor([[0.5, 0.5]])
    expected = -0.5 * (math.log(0.25) + math.log(0.75))
    assert cross_entropy(student, target, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_is_fp32_for_bf16_inputs():
    student = torch.randn(3, 5).bfloat16()
    target = torch.softmax(torch.randn(3, 5), -1).bfloat16()
    assert cross_entropy(student, target, 0.1).dtype == torch.float32


def _naive_dino(student_global, student_local, targets, temp):
    """The 2L + 2 cross-view terms written out one by one, as in DINOv2's DINOLoss loops."""
    s_glob = student_global.chunk(2)
    t_a, t_b = targets.chunk(2)
    s_loc = student_local.chunk(student_local.shape[0] // t_a.shape[0])
    terms_local = [cross_entropy(s, t, temp).mean() for s in s_loc for t in (t_a, t_b)]
    terms_global = [cross_entropy(s_glob[0], t_b, temp).mean(), cross_entropy(s_glob[1], t_a, temp).mean()]
    n = len(terms_local) + len(terms_global)
    return sum(terms_local) / n, sum(terms_global) / n


def test_dino_loss_matches_the_term_by_term_sum():
    batch, num_local, k = 3, 4, 7
    student_global = torch.randn(2 * batch, k)
    student_local = torch.randn(num_local * batch, k)
    targets = torch.softmax(torch.randn(2 * batch, k), -1)
    local, glob = dino_loss(student_global, student_local, targets, 0.1)
    ref_local, ref_glob = _naive_dino(student_global, student_local, targets, 0.1)
    torch.testing.assert_close(local, ref_local)
    torch.testing.assert_close(glob, ref_glob)


def test_dino_loss_by_hand_one_image_one_local_crop():
    # B = 1, L = 1, K = 2; student logits 0 → log p = ln ½ everywhere, so every term = ln 2
    # whatever the targets: local = 2·ln2 / 4, global = 2·ln2 / 4.
    zeros = torch.zeros(2, 2)
    targets = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    local, glob = dino_loss(zeros, torch.zeros(1, 2), targets, 0.1)
    assert local.item() == pytest.approx(math.log(2) / 2)
    assert glob.item() == pytest.approx(math.log(2) / 2)
    # Global crop A is taught by teacher crop B: a one-hot target on the first prototype
    # for crop B makes only student crop A's first logit matter.
    student = torch.tensor([[math.log(3.0) * 0.1, 0.0], [0.0, 0.0]])
    _, glob = dino_loss(student, None, torch.tensor([[0.5, 0.5], [1.0, 0.0]]), 0.1)
    assert glob.item() == pytest.approx((-math.log(0.75) + math.log(2)) / 2)


def test_ibot_loss_weights_each_image_by_its_masked_count():
    # 3 images × 4 patches; image 0 has 2 masked patches, image 1 has 1, image 2 none.
    masks = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(masked_patch_weights(masks), torch.tensor([0.5, 0.5, 1.0]))
    features, prototypes = torch.randn(3, 4), torch.randn(5, 4)
    targets = torch.softmax(torch.randn(3, 5), -1)
    h = cross_entropy(features @ prototypes.T, targets, 0.1)
    expected = ((h[0] + h[1]) / 2 + h[2]) / 3  # the unmasked image counts in the mean with 0
    torch.testing.assert_close(ibot_loss(features, prototypes, targets, masks, 0.1), expected)
    with pytest.raises(ValueError, match="2 masked-patch features for 3 masked patches"):
        ibot_loss(features[:2], prototypes, targets[:2], masks, 0.1)


def _plain_prototype_loss(features, prototypes, targets, temp, weights):
    """The path the fused loss replaces: logits, then the row cross-entropy (saves (M, K) tensors)."""
    return (cross_entropy(F.linear(features, prototypes), targets, temp) * weights).sum()


@pytest.mark.parametrize("chunk_rows", [None, 3, 64])  # one chunk; 4 chunks with a remainder; more rows than M
def test_prototype_cross_entropy_matches_the_plain_path_with_its_gradients(chunk_rows):
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    weight = torch.randn(32, 8, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.softmax(torch.randn(10, 32, generator=g, dtype=torch.float64) * 3, -1) * 0.9  # rows sum to 0.9
    weights = torch.rand(10, generator=g, dtype=torch.float64)
    fused = prototype_cross_entropy(features, F.normalize(weight, dim=-1), targets, 0.1, weights, chunk_rows)
    grads = torch.autograd.grad(fused * 1.7, (features, weight))
    plain = _plain_prototype_loss(features, F.normalize(weight, dim=-1), targets, 0.1, weights)
    expected = torch.autograd.grad(plain * 1.7, (features, weight))
    torch.testing.assert_close(fused, plain.float())  # the loss is accumulated in fp32
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # a rank without masked patches: zero loss, zero gradients, still part of the graph (DDP waits for every grad)
    empty = prototype_cross_entropy(features[:0], F.normalize(weight, dim=-1), targets[:0], 0.1, weights[:0], chunk_rows)
    assert empty.item() == 0.0 and torch.autograd.grad(empty, weight)[0].abs().sum() == 0


def test_prototype_cross_entropy_under_bf16_autocast_rounds_the_logits_like_f_linear():
    g = torch.Generator().manual_seed(1)
    features = F.normalize(torch.randn(12, 16, generator=g), dim=-1).requires_grad_()
    prototypes = F.normalize(torch.randn(40, 16, generator=g), dim=-1).requires_grad_()
    targets, weights = torch.softmax(torch.randn(12, 40, generator=g), -1), torch.full((12,), 1 / 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = prototype_cross_entropy(features, prototypes, targets, 0.1, weights, chunk_rows=5)
        plain = _plain_prototype_loss(features, prototypes, targets, 0.1, weights)  # F.linear in bf16 here
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)  # the same bf16 logits, the rest fp32
    for got, want in zip(torch.autograd.grad(fused, (features, prototypes)), torch.autograd.grad(plain, (features, prototypes))):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-4)  # bf16 matmuls in backward on both paths


def test_prototype_cross_entropy_keeps_no_rows_by_prototypes_matrix_but_the_targets():
    rows, k = 24, 256
    features = F.normalize(torch.randn(rows, 8), dim=-1).requires_grad_()
    prototypes = F.normalize(torch.randn(k, 8), dim=-1).requires_grad_()
    targets, weights = torch.softmax(torch.randn(rows, k), -1), torch.ones(rows)

    def saved_matrices(loss_fn) -> list[int]:
        saved = []

        def pack(tensor):
            if tensor.shape == (rows, k):
                saved.append(tensor.data_ptr())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss_fn(features, prototypes, targets, 0.1, weights).backward()
        return saved

    assert saved_matrices(prototype_cross_entropy) == [targets.data_ptr()]  # made by the teacher anyway
    plain = saved_matrices(_plain_prototype_loss)
    assert len([ptr for ptr in plain if ptr != targets.data_ptr()]) >= 1  # the plain path keeps log-probabilities
    with pytest.raises(ValueError, match="expected \\(M, d\\), \\(K, d\\)"):
        prototype_cross_entropy(features, prototypes[:5], targets, 0.1, weights)


def test_koleo_by_hand():
    # Unit vectors a=(1,0), b=(0.6,0.8), c=(−1,0): nn(a)=b, nn(b)=a, nn(c)=b.
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    d_ab, d_cb = math.sqrt(0.16 + 0.64), math.sqrt(1.6**2 + 0.8**2)
    expected = -(2 * math.log(d_ab) + math.log(d_cb)) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-6)
    assert koleo_loss(5.0 * x).item() == pytest.approx(expected, abs=1e-6)  # normalised first
    with pytest.raises(ValueError, match="n >= 2"):
        koleo_loss(x[:1])


def test_koleo_prefers_spread_features():
    spread = torch.eye(4)
    clumped = torch.eye(4) * 0.1 + 1.0
    assert koleo_loss(spread) < koleo_loss(clumped)


def test_gram_loss_by_hand():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # Gram = I
    reference = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # normalised → Gram = all ones
    assert gram_loss(student, reference).item() == pytest.approx(0.5)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # Gram [[1, −1], [−1, 1]]
    assert gram_loss(opposite, reference).item() == pytest.approx(2.0)
    assert gram_loss(opposite, reference, remove_negative=True).item() == pytest.approx(0.5)
    assert gram_loss(reference, reference).item() == pytest.approx(0.0)


def _naive_sinkhorn(logits, temp, iterations):
    """Upstream's loop (dinov2/loss/dino_clstoken_loss.py), single process."""
    q = torch.exp(logits.double() / temp).t()
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def test_sinkhorn_matches_upstream_and_is_doubly_normalised():
    logits = torch.randn(12, 6)
    targets = sinkhorn_knopp(logits, 0.1, iterations=3)
    torch.testing.assert_close(targets.double(), _naive_sinkhorn(logits, 0.1, 3), rtol=1e-5, atol=1e-7)
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(12))  # each sample: a distribution
    # Prototype marginals move towards B / K = 2 (far closer than a plain softmax's) and
    # reach it exactly as the iterations grow.
    softmax_gap = (torch.softmax(logits / 0.1, -1).sum(dim=0) - 2.0).abs().max()
    assert (targets.sum(dim=0) - 2.0).abs().max() < 0.5 * softmax_gap
    converged = sinkhorn_knopp(logits, 0.1, iterations=200)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((6,), 2.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(12))


def _count_collectives(monkeypatch) -> list[tuple[str, tuple[int, ...]]]:
    import vla_dino.ssl.centering as centering

    calls = []
    monkeypatch.setattr(centering, "all_reduce_sum", lambda t: calls.append(("sum", tuple(t.shape))) or t)
    monkeypatch.setattr(centering, "all_reduce_max", lambda t: calls.append(("max", tuple(t.shape))) or t)
    return calls


def test_sinkhorn_spends_one_max_and_one_sum_per_iteration(monkeypatch):
    calls = _count_collectives(monkeypatch)
    logits = torch.randn(12, 6)
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.1, iterations=3).double(), _naive_sinkhorn(logits, 0.1, 3),
                               rtol=1e-5, atol=1e-7)
    assert calls == [("max", (1,)), ("sum", (7,)), ("sum", (6,)), ("sum", (6,))]  # row sums + B, then row sums
    with pytest.raises(ValueError, match="iterations=0"):
        sinkhorn_knopp(logits, 0.1, iterations=0)


def test_joint_sinkhorn_equals_separate_calls_with_one_call_s_collectives(monkeypatch):
    # DINO's CLS rows and iBOT's masked patches: different B and K, one of them empty on this rank
    cls_rows, patches, empty = torch.randn(12, 6) * 3, torch.randn(30, 10) * 3, torch.randn(0, 4)
    separate = [sinkhorn_knopp(part, 0.1, iterations=3) for part in (cls_rows, patches, empty)]
    calls = _count_collectives(monkeypatch)
    joint = sinkhorn_knopp_joint([cls_rows, patches, empty], 0.1, iterations=3)
    for got, expected in zip(joint, separate):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)
    # one max of the three peaks, then one sum per iteration carrying every problem's row sums (+ each B)
    assert calls == [("max", (3,)), ("sum", (6 + 10 + 4 + 3,)), ("sum", (20,)), ("sum", (20,))]


@pytest.mark.parametrize("centering", ["sinkhorn", "softmax"])
def test_joint_targets_equal_each_head_alone_in_one_all_reduce_per_sum(monkeypatch, centering):
    dino_logits, ibot_logits = torch.randn(8, 6), torch.randn(5, 9)
    alone = [TeacherTargets(6, centering), TeacherTargets(9, centering)]
    together = [TeacherTargets(6, centering), TeacherTargets(9, centering)]
    for _ in range(2):  # the second call sees the softmax centres the first one moved
        expected = [head(part, 0.2) for head, part in zip(alone, (dino_logits, ibot_logits))]
        calls = _count_collectives(monkeypatch)
        got = joint_targets(together, [dino_logits, ibot_logits], 0.2)
        monkeypatch.undo()
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)
        for a, t in zip(alone, together):
            torch.testing.assert_close(t.center_norm(), a.center_norm())
        if centering == "softmax":
            assert calls == [("sum", (6 + 1 + 9 + 1,))]  # both centres' row sums and counts
        else:
            assert [kind for kind, _ in calls] == ["max", "sum", "sum", "sum"]
    with pytest.raises(ValueError, match="disagree"):
        joint_targets([TeacherTargets(6, "sinkhorn"), TeacherTargets(9, "softmax")], [dino_logits, ibot_logits], 0.2)
    with pytest.raises(ValueError, match="2 heads for 1"):
        joint_targets(together, [dino_logits], 0.2)


def test_sinkhorn_is_stable_at_small_temperature_and_shift_invariant():
    logits = torch.rand(8, 5) * 2 - 1  # cosine logits; exp(1 / 0.012) overflows fp32 unshifted
    targets = sinkhorn_knopp(logits.bfloat16(), 0.012)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(sinkhorn_knopp(logits + 7.0, 0.5), sinkhorn_knopp(logits, 0.5))


def test_softmax_center_targets_and_update():
    center = SoftmaxCenter(3, momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(center(logits, 0.5), torch.softmax(logits / 0.5, -1))  # centre starts at 0
    torch.testing.assert_close(center.center, 0.1 * logits.mean(0, keepdim=True))
    expected = torch.softmax((logits - 0.1 * logits.mean(0)) / 0.5, -1)
    torch.testing.assert_close(center(logits, 0.5), expected)
    torch.testing.assert_close(center.center, 0.19 * logits.mean(0, keepdim=True))
    center(torch.zeros(0, 3), 0.5)  # no rows anywhere (no masked patches): centre kept
    torch.testing.assert_close(center.center, 0.19 * logits.mean(0, keepdim=True))


def test_teacher_targets_rejects_unknown_centering():
    with pytest.raises(ValueError, match="centering"):
        TeacherTargets(4, "mean")
