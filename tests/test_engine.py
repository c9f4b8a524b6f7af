"""The training engine: per-example records, dynamics summaries, resume after a crash, every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.data import load_dataset
from audit.train.engine import TrainSpec, augment_batch, summarize_dynamics, train_model
from audit.train.models import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_small():
    ds = load_dataset("digits")
    tr = ds.split_indices("train")[:400]
    return torch.from_numpy(ds.images[tr]), torch.as_tensor(ds.labels[tr])


def test_summarize_dynamics_exact():
    correct = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], bool)  # (E=4, N=4)
    margin = np.arange(16, dtype=np.float32).reshape(4, 4)
    d = summarize_dynamics(margin, correct, np.zeros_like(margin))
    assert d["forgetting"].tolist() == [0, 1, 1, 0]
    assert d["first_learned"].tolist() == [1, 3, 2, -1]
    assert np.allclose(d["aum"], margin.mean(0))


@pytest.mark.parametrize("method", ["natural", "pgd", "fgsm", "trades"])
def test_every_method_learns_and_records(method, digits_small):
    x, y = digits_small
    torch.manual_seed(0)
    spec = TrainSpec(method=method, epochs=6, batch_size=32, lr=0.1, eps=0.1, step_size=0.05, steps=3)
    res = train_model(build_model("mlp", (1, 8, 8), 10), x, y, spec, device=CPU, progress=False)
    assert res.margin.shape == res.correct.shape == res.loss.shape == (6, 400)
    assert np.isfinite(res.loss).all() and np.isfinite(res.margin).all()
    # learns: records are on the inputs trained on, adversarial for pgd/fgsm, clean for natural/trades
    assert res.correct[-1].mean() >= (0.6 if method in ("pgd", "fgsm") else 0.8)
    assert res.correct[-1].mean() > res.correct[0].mean()
    assert len(res.tracin) == 4 and abs(sum(w for _, w, _ in res.tracin) - res.lrs.sum()) < 1e-5


@pytest.mark.parametrize("augment", ["none", "shift"])
def test_interrupted_training_resumes_to_the_same_weights(digits_small, tmp_path, augment):
    x, y = digits_small
    spec = TrainSpec(method="natural", epochs=5, batch_size=64, lr=0.1, augment=augment)
    torch.manual_seed(0)
    full = train_model(build_model("mlp", (1, 8, 8), 10), x, y, spec, device=CPU, progress=False)

    class Crash(RuntimeError):
        pass

    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    calls = {"n": 0}
    steps_per_epoch = 400 // 64 + 1

    def crash_in_epoch_3(module, inputs):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch + 3:
            raise Crash

    handle = model.register_forward_pre_hook(crash_in_epoch_3)
    ckpt = tmp_path / "natural.resume.pt"
    with pytest.raises(Crash):
        train_model(model, x, y, spec, device=CPU, checkpoint=ckpt, progress=False)
    handle.remove()
    assert ckpt.exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # epochs 0 and 1 finished
    torch.manual_seed(123)  # a different process: nothing but the checkpoint carries over
    resumed = train_model(build_model("mlp", (1, 8, 8), 10), x, y, spec, device=CPU, checkpoint=ckpt,
                          progress=False)
    assert not ckpt.exists()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(full.margin, resumed.margin)
    assert [e for e, _, _ in full.tracin] == [e for e, _, _ in resumed.tracin]


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img (C, H, W) moved down dy and right dx pixels, zero-filled."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = img[:, max(0, -dy):h - max(0, dy),
                                                                        max(0, -dx):w - max(0, dx)]
    return out


@pytest.mark.parametrize("kind", ["shift", "shift+flip"])
def test_augment_batch_moves_each_image_by_at_most_two_pixels(kind):
    torch.manual_seed(0)
    x = torch.rand(24, 2, 28, 28)
    out = augment_batch(x, kind, torch.Generator().manual_seed(5))
    assert out.shape == x.shape
    assert torch.equal(out, augment_batch(x, kind, torch.Generator().manual_seed(5)))  # seeded: resumable
    found = []
    for i in range(len(x)):
        views = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in ((False, True) if "flip" in kind else (False,))
                 if torch.equal(out[i], _shifted(x[i].flip(-1) if f else x[i], dy, dx))]
        assert len(views) == 1, i
        found.append(views[0])
    assert len({v[:2] for v in found}) > 5  # shifts differ from image to image
    if "flip" in kind:
        assert 0 < sum(v[2] for v in found) < len(found)
    assert augment_batch(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, "rotate", torch.Generator())


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("mnist_cnn", (1, 28, 28)), ("resnet18", (3, 32, 32))])
def test_models_take_01_images_and_expose_features(arch, shape):
    m = build_model(arch, shape, 7, width=0.25).eval()
    x = torch.rand(3, *shape)
    h = m.features(x)
    assert m(x).shape == (3, 7) and torch.allclose(m.head(h), m(x), atol=1e-5)


@pytest.mark.parametrize("damage", ["missing-record", "wrong-shape", "other-model"])
def test_a_damaged_resume_file_is_discarded_and_training_starts_over(digits_small, tmp_path, damage):
    """Issue #22 item 9: a resume checkpoint missing one record made every rerun die with KeyError. Now it is
    checked before anything is loaded, deleted, and the training runs from the start, as a fresh one does."""
    x, y = digits_small
    spec = TrainSpec(method="natural", epochs=3, batch_size=64, lr=0.1)
    torch.manual_seed(0)
    fresh = train_model(build_model("mlp", (1, 8, 8), 10), x, y, spec, device=CPU, progress=False)
    ckpt = tmp_path / "natural.resume.pt"
    model = build_model("mlp", (1, 8, 8), 10)
    state = {"model": model.state_dict(), "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
             "epoch": 1, "loss": torch.zeros(2, len(y)), "margin": torch.zeros(2, len(y)),
             "correct": torch.zeros(2, len(y), dtype=torch.bool), "lrs": torch.zeros(2),
             "tracin_epochs": torch.tensor([]), "tracin_weights": torch.tensor([]), "tracin_states": []}
    if damage == "missing-record":
        del state["margin"]
    elif damage == "wrong-shape":
        state["loss"] = torch.zeros(2, 7)
    else:
        state["model"] = build_model("mlp", (1, 8, 8), 3).state_dict()
    torch.save(state, ckpt)
    torch.manual_seed(0)
    again = train_model(build_model("mlp", (1, 8, 8), 10), x, y, spec, device=CPU, checkpoint=ckpt, progress=False)
    assert not ckpt.exists()
    for a, b in zip(fresh.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_stop_after_ends_training_at_the_epoch_it_says_and_keeps_those_records():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(64) % 4
    seen = []

    def stop(epoch, model):
        seen.append((epoch, model.training))
        return epoch == 2

    spec = TrainSpec(arch="mlp", epochs=6, batch_size=16, seed=0)
    torch.manual_seed(0)
    res = train_model(build_model("mlp", (1, 8, 8), 4, 0.5), x, y, spec, device=torch.device("cpu"),
                      progress=False, stop_after=stop)
    assert [e for e, _ in seen] == [0, 1, 2] and res.margin.shape == (3, 64) and len(res.lrs) == 3
    assert all(training for _, training in seen) and not res.model.training
    torch.manual_seed(0)
    full = train_model(build_model("mlp", (1, 8, 8), 4, 0.5), x, y, spec, device=torch.device("cpu"), progress=False)
    assert full.margin.shape == (6, 64)
    # the epochs run are the full run's first three (same weights, schedule and batches)
    np.testing.assert_allclose(res.lrs, full.lrs[:3], rtol=1e-6)
    np.testing.assert_allclose(res.margin, full.margin[:3], rtol=1e-5, atol=1e-5)
