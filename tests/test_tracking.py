"""W&B logging: each metric family carries its own step, so probes logged after training keep their steps."""

from annot.tracking import Tracker


def test_steps_ride_beside_the_metrics(monkeypatch, tmp_path):
    """W&B drops a log whose global step is below the last one; FSDP runs log probes (steps 0, 2, 4)
    after the training losses (steps 1-4), so annot logs `<family>/step` with define_metric instead."""
    import wandb

    calls = []

    class Run:
        def define_metric(self, name, step_metric=None):
            calls.append(("define", name, step_metric))

        def log(self, data, step=None):
            calls.append(("log", data, step))

    monkeypatch.setattr(wandb, "init", lambda **kw: Run())
    t = Tracker(True, project="p", name="n", group=None, config={}, run_dir=tmp_path)
    assert ("define", "belief/*", "belief/step") in calls and ("define", "train/*", "train/step") in calls
    t.log({"train/loss": 1.5, "train/lr": 1e-3}, step=4)
    t.log({"belief/pooled": 0.25}, step=0)
    logs = [c for c in calls if c[0] == "log"]
    assert logs == [("log", {"train/loss": 1.5, "train/lr": 1e-3, "train/step": 4}, None),
                    ("log", {"belief/pooled": 0.25, "belief/step": 0}, None)]  # no global step: none dropped


def test_disabled_tracker_does_nothing(monkeypatch, tmp_path):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(AssertionError("init called")))
    t = Tracker(False, project="p", name="n", group=None, config={}, run_dir=tmp_path)
    t.log({"train/loss": 1.0}, step=1)
    t.finish()
