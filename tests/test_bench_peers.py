"""The side-by-side harness (benchmarks/peers.py, compare.py, montage.py) measures what it says.

No peer needs to be installed: the tests use our own CLI and stand-in commands.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder of the repository, not installed
    sys.path.insert(0, str(REPO))

from benchmarks import compare as C  # noqa: E402
from benchmarks import montage as M  # noqa: E402
from benchmarks import peers as P  # noqa: E402


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    from napari_focusdeep.training.simulate import synthetic_scene

    sharp, _ = synthetic_scene((120, 160), channels=3, seed=3)
    return sharp


def _write_rgb16(path: Path, img: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor((np.clip(img, 0, 1) * 65535 + 0.5).astype(np.uint16), cv2.COLOR_RGB2BGR))


def test_score_undoes_another_anchor_and_ranks_blur_lower(tmp_path, truth):
    # a tool anchored to another frame: 1.5 % magnified and shifted by a few pixels
    h, w = truth.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0, 1.015)
    m[:, 2] += (2.5, -1.5)
    moved = cv2.warpAffine(truth, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    _write_rgb16(tmp_path / "moved.png", moved)
    _write_rgb16(tmp_path / "blurred.png", cv2.GaussianBlur(truth, (0, 0), 1.5))
    s_moved = C.score(tmp_path / "moved.png", truth)
    s_blur = C.score(tmp_path / "blurred.png", truth)
    assert s_moved["scale"] == pytest.approx(1.015, abs=2e-3)
    assert s_moved["psnr"] > 30  # registration recovers it (interpolation costs a little)
    assert s_blur["psnr"] < s_moved["psnr"] - 3
    assert s_blur["ssim"] < s_moved["ssim"]


def test_read_image_handles_alpha_gray_and_float(tmp_path):
    import tifffile

    gray = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    ga = np.stack([(gray * 65535).astype(np.uint16), np.full((12, 10), 65535, np.uint16)], axis=-1)
    tifffile.imwrite(tmp_path / "ga.tif", ga)  # enfuse writes gray + alpha
    out = M.read_image(tmp_path / "ga.tif")
    assert out.shape == (12, 10) and out.dtype == np.float32
    assert np.allclose(out, gray, atol=1e-4)
    rgba = np.zeros((12, 10, 4), np.uint8)
    rgba[..., 2] = 255  # red in OpenCV's BGRA order
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    out = M.read_image(tmp_path / "rgba.png")
    assert out.shape == (12, 10, 3) and out[0, 0].tolist() == [1.0, 0.0, 0.0]
    tifffile.imwrite(tmp_path / "f.tif", gray * 1.0)  # rawhdr writes float32
    assert np.allclose(M.read_image(tmp_path / "f.tif"), gray)


def test_available_and_missing_say_how_to_install(monkeypatch):
    assert "focusdeep" in P.available(["focusdeep"])
    real = P._which
    monkeypatch.setattr(P, "_which", lambda name: None if name == "enfuse" else real(name))
    assert P.available(["focusdeep", "enfuse"]) == ["focusdeep"]
    assert "apt-get install enfuse" in P.missing(["enfuse"])["enfuse"]
    with pytest.raises(P.PeerError, match="not installed"):
        P.run_peer("enfuse", [Path("a.png")], Path("out.tif"))
    with pytest.raises(ValueError, match="unknown peer"):
        P.available(["nope"])


def test_run_peer_times_our_cli_and_refuses_to_overwrite(tmp_path):
    pytest.importorskip("psutil")  # RSS polling; napari brings it, the core package does not
    from napari_focusdeep.training.simulate import sample_stack

    sim = sample_stack((64, 80), 4)
    frames = []
    for i, f in enumerate(sim.frames):
        frames.append(tmp_path / f"f{i}.png")
        cv2.imwrite(str(frames[-1]), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.tif"
    run = P.run_peer_measured("focusdeep", frames, out, timeout=300)
    assert out.exists() and run.seconds > 0 and run.peak_rss > 10 * 2**20
    assert M.read_image(out).shape == (64, 80, 3)
    with pytest.raises(FileExistsError):
        P.run_peer("focusdeep", frames, out)


def _stand_in(code: str):
    def commands(frames, out, work):
        return [[sys.executable, "-c", code, str(out)]]

    return commands


def test_failures_timeouts_and_memory_cap_become_peer_errors(tmp_path, monkeypatch):
    pytest.importorskip("psutil")
    def peer(name: str, code: str) -> None:
        monkeypatch.setitem(P.PEERS, name, P.Peer(name, name, (), "-", _stand_in(code)))

    peer("crash", "import sys; print('bad frame'); sys.exit(3)")
    peer("slow", "import time; time.sleep(30)")
    peer("hog", "import time; import numpy as np; a = np.ones(600 * 2**20 // 8); time.sleep(30)")
    peer("silent", "pass")
    frames = [tmp_path / "x.png"]
    with pytest.raises(P.PeerError, match="exited with 3: bad frame"):
        P.run_peer_measured("crash", frames, tmp_path / "a.tif")
    with pytest.raises(P.PeerError, match="timed out"):
        P.run_peer_measured("slow", frames, tmp_path / "b.tif", timeout=1.0)
    with pytest.raises(P.PeerError, match="memory cap"):
        P.run_peer_measured("hog", frames, tmp_path / "c.tif", mem_cap=300 * 2**20, timeout=20)
    with pytest.raises(P.PeerError, match="wrote no"):
        P.run_peer_measured("silent", frames, tmp_path / "d.tif")


def _row(name: str, **psnr: float | None) -> dict:
    return {"stack": name, "frames": 5, "tools": {t: ({"ok": True, "psnr": v, "ssim": 0.9} if v is not None else {"ok": False, "error": "x"}) for t, v in psnr.items()}}


def test_summary_counts_wins_and_picks_the_best_complete_peer():
    q = {
        "tools": ["focusdeep", "focusweave", "rawhdr"],
        "rows": [
            _row("a", focusdeep=30.0, focusweave=29.0, rawhdr=None),  # a crashed peer does not beat us
            _row("b", focusdeep=30.0, focusweave=31.0, rawhdr=40.0),
            _row("c", focusdeep=33.0, focusweave=31.0, rawhdr=None),
        ],
    }
    s = C.summarise_quality(q)
    assert s["wins"] == 2 and s["n_stacks"] == 3
    # rawhdr's mean (40 dB over one stack) is not comparable: the best peer must have run every stack
    assert s["best_peer"] == "focusweave"
    assert s["margin_db"] == pytest.approx(31.0 - 30.333333, abs=1e-4)
    assert s["target_wins_met"] is False and s["target_margin_met"] is False
    assert "NOT met" in C.render({"quality": {**q, "shape": [8, 8]}})


def test_montage_registers_results_and_writes_a_png(tmp_path, truth):
    h, w = truth.shape[:2]
    m = np.float32([[1, 0, 3], [0, 1, -2]])
    shifted = cv2.warpAffine(truth, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    blurred = cv2.GaussianBlur(truth, (0, 0), 2.0)
    out = tmp_path / "montage.png"
    boxes = M.make_montage({"ours": truth, "shifted": shifted, "blurred": blurred}, "ours", out, n_crops=3, crop=40)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 3 * 224
    assert len(boxes) == 3
    for y, x, bh, bw in boxes:
        assert 0 <= y and y + bh <= h and 0 <= x and x + bw <= w
    # the shifted copy registers back: once aligned it matches the reference closely
    warped, cc, _ = M.register_to(shifted, truth)
    assert cc > 0.99
    assert np.abs(warped[10:-10, 10:-10] - truth[10:-10, 10:-10]).mean() < 0.01


def test_pyramid_is_tuned_on_stacks_apart_from_the_scored_set():
    from benchmarks import tune_pyramid as T

    dev = {(s.source, s.seed) for s in T.DEV}
    scored = {(s.source, s.seed) for s in C.SYNTH + C.TUNING}
    assert len(T.DEV) == 8 and not dev & scored
    assert not {s.seed for s in T.DEV} & {s.seed for s in C.SYNTH + C.TUNING}
    opts = T.candidates([1.5, 2])
    assert opts == {"tau=1.5": {"tau": 1.5}, "tau=2": {"tau": 2.0}, "max selection": {"noise": 0}}
