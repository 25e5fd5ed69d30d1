import torch

from luser_fast import reference
from luser_fast.physics import Radon
from luser_fast.profile import LiveTensorBytes, SavedTensorBytes, training_memory


def test_saved_bytes_counts_unique_storages():
    x = torch.randn(64, 64, requires_grad=True)
    with SavedTensorBytes() as saved:
        y = (x * x).sin()          # mul saves x (once, the same storage twice); sin saves x*x
    assert saved.count == 2 and saved.bytes == 2 * 64 * 64 * 4
    y.sum().backward()


def test_live_bytes_peak_tracks_allocation_and_free():
    with LiveTensorBytes() as live:
        a = torch.empty(1000, dtype=torch.float64)
        b = a + 1
        del a
        c = b * 2
        del b, c
    assert live.peak == 16000 and live.current == 0


def test_peak_grows_with_depth_for_lu():
    op = Radon(24, angles=12)
    x = torch.rand(2, 1, 24, 24)
    y = op(x)
    shallow = training_memory(reference.LU(op, iterations=2, channels=8, depth=3), y, x)
    deep = training_memory(reference.LU(op, iterations=2, channels=8, depth=6), y, x)
    assert deep.saved_bytes > 1.5 * shallow.saved_bytes
    assert deep.peak_bytes > shallow.peak_bytes > 0


def test_luser_memory_independent_of_solver_iterations():
    op = Radon(32, angles=16)
    x = torch.rand(2, 1, 32, 32)
    y = op(x)
    reports = []
    for max_iter in (10, 100):
        torch.manual_seed(0)
        # tol=0 is not allowed; a tiny tol forces every iteration to run
        model = reference.LUSER(op, iterations=3, channels=8,
                                solver_kwargs={"tol": 1e-30, "max_iter": max_iter})
        reports.append(training_memory(model, y, x))
        assert all((i.iterations == max_iter).all() for i in model.last_solver_info)
    a, b = reports
    assert abs(a.saved_bytes - b.saved_bytes) <= 0.02 * a.saved_bytes
    lu = training_memory(reference.LU(op, iterations=3, channels=8, depth=5), y, x)
    assert lu.saved_bytes > a.saved_bytes
