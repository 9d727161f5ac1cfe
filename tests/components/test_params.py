from pathlib import Path

import pytest
import yaml

from components.errors import ParamsError
from components.params import flatten, load_params, with_updates
from components.params_file import set_values_in_text, update_params_file
from tests.conftest import PROJECT, base_raw, make_params


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_project_params_load() -> None:
    params = load_params(PROJECT / "params.yaml")
    assert params.data.source == "omniglot"  # the embedded default
    assert "meta.inner_lr" in flatten(params)


def test_unknown_key_named(tmp_path: Path) -> None:
    raw = base_raw()
    raw["meta"]["inner_lrr"] = 0.1
    with pytest.raises(ParamsError, match=r"meta\.inner_lrr: unknown key"):
        load_params(write(tmp_path, raw))


def test_wrong_type_named(tmp_path: Path) -> None:
    raw = base_raw()
    raw["train"]["steps"] = "many"
    with pytest.raises(ParamsError, match=r"train\.steps: .*integer.*got 'many'"):
        load_params(write(tmp_path, raw))


def test_negative_learning_rate_message(tmp_path: Path) -> None:
    raw = base_raw()
    raw["meta"]["inner_lr"] = -1
    with pytest.raises(ParamsError, match=r"meta\.inner_lr: must be > 0, got -1"):
        load_params(write(tmp_path, raw))


def test_fractions_must_sum_to_one(tmp_path: Path) -> None:
    raw = base_raw()
    raw["data"]["split"]["fractions"] = [0.5, 0.2, 0.2]
    with pytest.raises(ParamsError, match=r"data\.split: fractions must sum to 1"):
        load_params(write(tmp_path, raw))


def test_k_shot_plus_query_over_min_images(tmp_path: Path) -> None:
    raw = base_raw()
    raw["meta"]["k_shot"] = 15
    raw["meta"]["k_query"] = 10
    with pytest.raises(ParamsError, match=r"k_shot \+ meta.k_query = 25 must be <= data.min_images_per_class"):
        load_params(write(tmp_path, raw))


def test_set_pool_is_for_the_ladder(tmp_path: Path) -> None:
    raw = base_raw()
    raw["model"]["set_pool"] = "mean_max"  # with arch conv
    with pytest.raises(ParamsError, match=r"model: model\.set_pool 'mean_max' is for model\.arch ladder"):
        load_params(write(tmp_path, raw))
    raw["model"]["set_pool"] = "sum"
    with pytest.raises(ParamsError, match=r"model\.set_pool: .*'mean'.*'mean_max'.*got 'sum'"):
        load_params(write(tmp_path, raw))
    raw["model"].update(set_pool="mean_max", arch="ladder")
    assert load_params(write(tmp_path, raw)).model.set_pool == "mean_max"


def test_context_warp_is_for_the_ladder_and_set_finetune_names_its_modes(tmp_path: Path) -> None:
    raw = base_raw()
    raw["model"]["context_warp"] = True  # with arch conv
    with pytest.raises(ParamsError, match=r"model: model\.context_warp is for model\.arch ladder"):
        load_params(write(tmp_path, raw))
    raw["model"]["arch"] = "ladder"
    assert load_params(write(tmp_path, raw)).model.context_warp
    raw["model"].update(arch="conv", context_warp=False, global_latent=16)
    with pytest.raises(ParamsError, match=r"model: model\.global_latent is for model\.arch ladder"):
        load_params(write(tmp_path, raw))
    raw["model"]["global_latent"] = -1
    with pytest.raises(ParamsError, match=r"model\.global_latent"):
        load_params(write(tmp_path, raw))
    raw["model"].update(arch="ladder", global_latent=16)
    assert load_params(write(tmp_path, raw)).model.global_latent == 16
    raw["eval"]["set_finetune"] = "loo"
    with pytest.raises(ParamsError, match=r"eval\.set_finetune: .*'joint'.*'leave_one_out'.*got 'loo'"):
        load_params(write(tmp_path, raw))


def test_set_override_revalidates() -> None:
    assert make_params("meta.inner_lr=0.01").meta.inner_lr == 0.01
    with pytest.raises(ParamsError, match=r"meta\.inner_lr"):
        make_params("meta.inner_lr=-3")
    with pytest.raises(ParamsError, match="expected key.path=value"):
        make_params("meta.inner_lr")


def test_with_updates_and_digest() -> None:
    a = make_params()
    b = with_updates(a, {"meta.outer_lr": 0.005})
    assert b.meta.outer_lr == 0.005 and a.digest() != b.digest()
    assert with_updates(a, {}).digest() == a.digest()


def test_update_file_keeps_comments(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text((PROJECT / "params.yaml").read_text())
    update_params_file(p, {"data.source": "image_folder", "data.path": "/x/y", "data.split.seed": 7})
    text = p.read_text()
    assert "# omniglot (embedded" in text
    params = load_params(p)
    assert (params.data.source, params.data.path, params.data.split.seed) == ("image_folder", "/x/y", 7)
    assert params.meta == load_params(PROJECT / "params.yaml").meta


def test_update_file_refuses_invalid(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    original = (PROJECT / "params.yaml").read_text()
    p.write_text(original)
    with pytest.raises(ParamsError, match="data.channels"):
        update_params_file(p, {"data.channels": 2})
    assert p.read_text() == original


def test_set_values_in_text_nested_only_in_section() -> None:
    text = "a:\n  seed: 1  # c\nb:\n  seed: 2\n"
    assert set_values_in_text(text, {"b.seed": 5}) == "a:\n  seed: 1  # c\nb:\n  seed: 5\n"


def test_a_tune_trial_keeps_the_upright_share_of_training() -> None:
    """A trial trains tune.max_steps steps: the upright phase keeps its share of them."""
    from components.tuning import trial_params

    params = make_params("train.steps=3900", "meta.rotate_classes=true", "meta.upright_steps=900", "tune.max_steps=130")
    trial = trial_params(params, {"meta.outer_lr": 0.002})
    assert trial.train.steps == 130 and trial.meta.upright_steps == 30 and trial.meta.outer_lr == 0.002
    assert trial_params(make_params("meta.upright_steps=0", "tune.max_steps=50"), {}).meta.upright_steps == 0


@pytest.mark.parametrize("lrs", ["[0.0]", "[]", "[-0.001, 0.001]"])
def test_finetune_lrs_need_a_positive_rate_and_no_negative_one(lrs: str) -> None:
    """`scratch` starts from a fresh network: with lr 0 alone it would be an untrained one."""
    with pytest.raises(ParamsError, match=r"eval\.finetune_lrs"):
        make_params(f"eval.finetune_lrs={lrs}")


@pytest.mark.parametrize("scales", ["[]", "[0.0, 1.0]", "[1.0, 1.0]"])
def test_iwae_proposal_scales_must_be_distinct_and_positive(scales: str) -> None:
    with pytest.raises(ParamsError, match=r"eval\.nll_proposal_scales"):
        make_params(f"eval.nll_proposal_scales={scales}")


def test_extractor_auto_is_inception_for_rgb_and_domain_for_grayscale() -> None:
    assert make_params("data.channels=1").extractor_kind() == "domain"
    assert make_params("data.channels=3").extractor_kind() == "inception"
    assert make_params("data.channels=3", "eval.extractor=domain").extractor_kind() == "domain"
    assert make_params("data.channels=1", "eval.extractor=inception").extractor_kind() == "inception"
    with pytest.raises(ParamsError, match="eval.extractor"):
        make_params("eval.extractor=clip")


@pytest.mark.parametrize("name", ["omniglot", "faces", "celeba"])
def test_each_configuration_overlay_applies_to_params_yaml(name: str, tmp_path: Path) -> None:
    """configs/*.yaml hold only what differs from params.yaml: written into a copy of it, every
    overlay value is there, every other value and comment is params.yaml's, and it loads as the
    overlay does without the file step."""
    from components.params_file import apply_overlay

    overlay = PROJECT / "configs" / f"{name}.yaml"
    target = tmp_path / "params.yaml"
    target.write_text((PROJECT / "params.yaml").read_text())
    updates = apply_overlay(target, overlay)
    assert updates and all(key.split(".")[0] in {"data", "model", "meta", "train", "eval"} for key in updates)
    defaults, written = flatten(load_params(PROJECT / "params.yaml")), flatten(load_params(target))
    assert written == flatten(load_params(PROJECT / "params.yaml", overlay=overlay))
    for key, value in written.items():
        assert value == (updates[key] if key in updates else defaults[key]), key
    assert all(v != defaults[k] for k, v in updates.items())  # an overlay holds only what differs
    kept = [line for line in (PROJECT / "params.yaml").read_text().splitlines() if line.lstrip().startswith("#")]
    assert kept and all(line in target.read_text() for line in kept)  # comments kept


def test_a_bad_overlay_is_refused_and_params_yaml_is_untouched(tmp_path: Path) -> None:
    from components.params_file import apply_overlay

    target = tmp_path / "params.yaml"
    target.write_text((PROJECT / "params.yaml").read_text())
    before = target.read_text()
    (tmp_path / "typo.yaml").write_text("model:\n  kl_wieght: 0.3\n")
    with pytest.raises(ParamsError, match=r"typo.yaml: model.kl_wieght is not a key of params.yaml"):
        apply_overlay(target, tmp_path / "typo.yaml")
    (tmp_path / "bad.yaml").write_text("model:\n  kl_weight: -1\n")
    with pytest.raises(ParamsError, match=r"model.kl_weight: must be > 0"):
        apply_overlay(target, tmp_path / "bad.yaml")
    with pytest.raises(ParamsError, match=r"params file not found: .*missing.yaml"):
        apply_overlay(target, tmp_path / "missing.yaml")
    assert target.read_text() == before


def test_pixel_scale_needs_the_gaussian_likelihood(tmp_path: Path) -> None:
    raw = base_raw()
    raw["model"]["pixel_scale"] = True  # with the Bernoulli likelihood
    with pytest.raises(ParamsError, match=r"model: model\.pixel_scale needs model\.likelihood gaussian"):
        load_params(write(tmp_path, raw))
    raw["model"].update(likelihood="gaussian", binarize=False)
    assert load_params(write(tmp_path, raw)).model.pixel_scale
