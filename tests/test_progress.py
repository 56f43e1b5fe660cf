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


def test_a_resumed_pass_says_where_it_resumes():
    out = io.StringIO()
    progress.Progress("dissection", 1000, start=640, stream=out)
    assert out.getvalue() == "dissection: resuming at sample 640 of 1000\n"
    fresh = io.StringIO()
    progress.Progress("dissection", 1000, stream=fresh)
    assert fresh.getvalue() == ""


def test_training_log_gives_rate_and_eta_once_it_can(monkeypatch, tmp_path, capsys):
    from jaxdissect.training import loop
    clock = {"now": 50.0}
    monkeypatch.setattr(loop.time, "time", lambda: clock["now"])
    log = loop.MetricLog(str(tmp_path), total_steps=1100, name="gan")
    log.log(100, {"loss": 1.0}, items_per_step=32)          # the first log (after compiling): no rate yet
    clock["now"] = 60.0
    log.log(200, {"loss": 0.5}, items_per_step=32)          # 100 steps in 10 s: 320 items/s, 900 steps left
    first, second = capsys.readouterr().err.splitlines()
    assert first == "[gan] step 100/1100 (rate and eta from the next log) loss=1", first
    assert second == "[gan] step 200/1100 320.0 items/s eta 1.5 min loss=0.5", second


def test_a_resumed_dissection_says_so(tmp_path, monkeypatch, capsys):
    import planted
    from jaxdissect.dissection import engine, sources
    gen = planted.PlantedGenerator()
    settings = engine.DissectSettings(layers=("layer",), samples=100, batch_size=16, checkpoint_every=2,
                                      checkpoint_minutes=0, bins=16,
                                      top_k=2)
    source = sources.GeneratedSamples(gen, gen.init(), planted.PlantedSegmenter(), None, settings.layers, 1,
                                      settings.seed)
    real_fold, calls = engine._fold_batch, []

    def dying_fold(*args):
        calls.append(1)
        if len(calls) == 3:        # the main pass's 3rd batch, after a checkpoint at the 2nd
            raise KeyboardInterrupt
        return real_fold(*args)
    monkeypatch.setattr(engine, "_fold_batch", dying_fold)
    try:
        engine.collect_statistics(source, settings, str(tmp_path))
    except KeyboardInterrupt:
        pass
    assert "resuming" not in capsys.readouterr().err
    monkeypatch.setattr(engine, "_fold_batch", real_fold)
    engine.collect_statistics(source, settings, str(tmp_path))
    assert "dissection (units x classes): resuming at sample 32 of 100\n" in capsys.readouterr().err


def test_an_interrupted_progress_line_is_ended_before_what_follows():
    out = io.StringIO()
    bar = progress.Progress("pass", 100, stream=out, interval=0)
    bar.update(10)
    progress.end_line()
    out.write("error: ...\n")
    assert out.getvalue().splitlines()[-1] == "error: ..."
    bar.update(100)                       # a finished line needs no ending
    progress.end_line()
    assert out.getvalue().endswith("s  \n")
