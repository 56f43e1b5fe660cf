"""The progress line: rate and eta count from the first update, so a compiling first step does not skew them."""
import io

from jaxdissect import progress


def test_rate_and_eta_leave_out_the_time_before_the_first_update(monkeypatch):
    clock = {"now": 100.0}
    monkeypatch.setattr(progress.time, "time", lambda: clock["now"])
    out = io.StringIO()
    bar = progress.Progress("pass", 100, stream=out, interval=0)
    clock["now"] = 160.0                  # the first batch of 10 compiled for a minute
    bar.update(10)
    assert "10/100 samples" in out.getvalue() and "eta" in out.getvalue()
    clock["now"] = 162.0                  # then 20 samples in 2 s: 10/s, 70 left
    bar.update(30)
    last = out.getvalue().split("\r")[-1]
    assert "30/100 samples 10.0/s eta 7s" in last, last
    clock["now"] = 169.0
    bar.update(100)
    assert out.getvalue().endswith("100/100 samples 10.0/s 69s  \n")
