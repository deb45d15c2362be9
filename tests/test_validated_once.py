"""Each value of `probe run` and `probes.record` is validated in one place, once: the Probe options by
`probes.spec.ProbeSpec.check`, the sampling by `scd.sampling_spec.SamplingSpec.check` (the cache policy inside it, by
`CachePolicy.check`, once for the chunk). The test counts the validations that run in one valid command and one valid
`record(...).save()`, and checks that a bad value of each kind is refused by its one validator through both doors."""

import traceback

import pytest

import probes
import probes.choices
import probes.spec
import scd.contract
import scd.sampling_spec
from probe_cli import main
from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.zoo import load_model, save_model
from tests.conftest import randomize


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"])), path / "model.safetensors")
    return path


@pytest.fixture
def validations(monkeypatch):
    """How many times each validator ran (a checked CachePolicy asked again for its chunk is not a validation)."""
    counts = {"ProbeSpec.check": 0, "checked_layers": 0, "SamplingSpec.check": 0, "CachePolicy.check": 0}
    probe_check, sampling_check = probes.spec.ProbeSpec.check.__func__, scd.sampling_spec.SamplingSpec.check.__func__
    layers_check, policy_check = probes.choices.checked_layers, scd.contract.CachePolicy.check

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    def policy(self, frames_per_block=1):
        counts["CachePolicy.check"] += self.checked_for != frames_per_block
        return policy_check(self, frames_per_block)

    monkeypatch.setattr(probes.spec.ProbeSpec, "check", classmethod(counted("ProbeSpec.check", probe_check)))
    monkeypatch.setattr(scd.sampling_spec.SamplingSpec, "check",
                        classmethod(counted("SamplingSpec.check", sampling_check)))
    monkeypatch.setattr(probes.spec, "checked_layers", counted("checked_layers", layers_check))
    monkeypatch.setattr(probes.choices, "checked_layers", counted("checked_layers", layers_check))
    monkeypatch.setattr(scd.contract.CachePolicy, "check", policy)
    return counts


ONCE = {"ProbeSpec.check": 1, "checked_layers": 1, "SamplingSpec.check": 1, "CachePolicy.check": 1}


@pytest.mark.parametrize("flags", [(), ("--window", "3", "--sink-frames", "1", "--timesteps", "1000,500")],
                         ids=["defaults", "window-and-timesteps"])
def test_probe_run_validates_each_value_once(checkpoint, tmp_path, validations, flags):
    assert main(["run", "--model", str(checkpoint), "--layers", "1,3", "--context", "2", "--frames", "2", "--steps", "2",
                 "--out", str(tmp_path / "run"), "--quiet", *flags]) == 0
    assert validations == ONCE


def test_a_sweep_validates_each_value_once_for_all_its_items(checkpoint, tmp_path, validations):
    assert main(["run", "--model", str(checkpoint), "--layer", "1", "--context", "2", "--frames", "2", "--steps", "2",
                 "--clip", "0-1", "--seeds", "2", "--out", str(tmp_path / "sweep"), "--quiet"]) == 0
    assert validations == ONCE


def test_record_validates_each_value_once(checkpoint, tmp_path, validations):
    from scd.contract import CachePolicy

    probes.record(load_model(checkpoint), 0, frames=2, steps=2, context_frames=2, layers=[1, 3],
                  cache_policy=CachePolicy(3, 1)).save(tmp_path / "run")
    assert validations == ONCE


def _refused_in(error: BaseException) -> str:
    """The function whose `raise` refused the value (the innermost frame of the traceback)."""
    return traceback.extract_tb(error.__traceback__)[-1].name


@pytest.mark.parametrize("flags, option, validator", [
    (("--layers", "9"), {"layers": [9]}, "check"),
    (("--capture", "logits"), {"capture": ["logits"]}, "check"),
    (("--bands", "999"), {"bands": 999}, "check"),
    (("--hook", "hook_x"), {"hook": "hook_x"}, "check"),
    (("--timesteps", "1000,0", "--steps", "2"), {"timesteps": [1000, 0]}, "check"),
    (("--shift", "2000"), {"shift": 2000.0}, "check"),
    (("--window", "1", "--sink-frames", "1"), {"cache_policy": scd.contract.CachePolicy(1, 1)}, "check"),
], ids=["layers", "capture", "bands", "hook", "timesteps", "shift", "window"])
def test_a_bad_value_is_refused_by_its_one_validator_through_both_doors(checkpoint, tmp_path, capsys, monkeypatch,
                                                                       flags, option, validator):
    """probe run (in process: the refusal's traceback is caught at the command's boundary) and probes.record refuse
    the value in the same function, with the same words but for the value's name."""
    import probe_cli.cli as cli

    caught = []
    ours = cli._ours
    monkeypatch.setattr(cli, "_ours", lambda error: caught.append(error) or ours(error))
    layer = () if "--layers" in flags else ("--layer", "1")
    assert main(["run", "--model", str(checkpoint), "--context", "2", "--frames", "2", "--steps", "2", *layer,
                 "--out", str(tmp_path / "run"), "--quiet", *flags]) == 2
    assert not (tmp_path / "run").exists()
    options = {"frames": 2, "steps": 2, "context_frames": 2, "layers": [1], **option}
    with pytest.raises(ValueError) as raised:
        probes.record(load_model(checkpoint), 0, **options)
    (cli_error,) = caught
    assert _refused_in(cli_error) == _refused_in(raised.value) == validator
    assert type(cli_error) is type(raised.value)
    assert str(cli_error).split("accepted:")[1] == str(raised.value).split("accepted:")[1]
