"""curves.png as a reader sees it: an accuracy axis that never passes 100% and whole-numbered epoch ticks."""
from __future__ import annotations

from convscope.train.report import curves_figure, plot_curves

HISTORY = [dict(epoch=e, train_loss=2.0 / e, eval_loss=2.1 / e, top1=t1, top5=t5)
           for e, t1, t5 in ((1, 60.0, 97.0), (2, 80.0, 99.5), (3, 90.0, 100.0))]


def test_accuracy_axis_capped_and_epochs_integral(tmp_path):
    fig = curves_figure(HISTORY)
    fig.canvas.draw()
    loss_ax, acc_ax = fig.axes
    lo, hi = acc_ax.get_ylim()
    assert 0 <= lo < 60 and 99.5 < hi <= 100
    for ax in (loss_ax, acc_ax):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plot_curves(tmp_path / "c.png", HISTORY)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_percent_axis_is_not_capped():
    """A PSNR axis (dB) keeps its own range: only a percentage stops at 100."""
    history = [dict(epoch=e, train_loss=1.0, eval_loss=1.0, psnr=p) for e, p in ((1, 120.0), (2, 130.0))]
    fig = curves_figure(history, scores={"psnr": "PSNR"}, axis="PSNR (dB)")
    assert fig.axes[1].get_ylim()[1] > 130
