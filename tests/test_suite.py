"""ablations.suite: any key of the config tree is a factor, every level has one label, and the committed results keep
their identity."""

from __future__ import annotations


from dataclasses import replace

import pytest

from ablations.suite import SuiteError, expand_trials, load_suite
from tests.helpers import NET, REPO, suite_file, trials_of


def test_a_key_of_the_tree_a_trainer_argument_and_a_class_swap_are_factors(tmp_path) -> None:
    path = suite_file(
        tmp_path,
        name="deep",
        model={"class_path": NET, "init_args": {"width": 4}},
        specs=["baseline"],
        factors={"model.init_args.blocks": [1, 2], "trainer.gradient_clip_val": [0, 1.0]},
    )
    trials = trials_of(path)
    assert [t.cell for t in trials] == [
        "baseline,blocks=1,gradient_clip_val=0",
        "baseline,blocks=1,gradient_clip_val=1",
        "baseline,blocks=2,gradient_clip_val=0",
        "baseline,blocks=2,gradient_clip_val=1",
    ]
    last = trials[-1].record()
    assert last["settings"]["model"] == {"class_path": NET, "init_args": {"blocks": 2, "width": 4}}
    assert last["settings"]["trainer"] == {"gradient_clip_val": 1.0}
    assert last["levels"] == {"blocks": "2", "gradient_clip_val": "1"}
    assert last["factors"] == {"model.init_args.blocks": 2, "trainer.gradient_clip_val": 1.0}
    assert len({t.settings_hash for t in trials}) == 4

    swap = trials_of(
        suite_file(
            tmp_path, name="deep", specs=["baseline"], factors={"model": ["lit_cifar.NotebookCNN", {"class_path": NET}]}
        )
    )
    assert [t.cell for t in swap] == ["baseline,model=NotebookCNN", "baseline,model=TinyResNet"]
    assert "model" not in swap[0].hashed_settings()  # the default model keeps the hash it always had
    assert [t.levels() for t in swap] == [{"model": "NotebookCNN"}, {"model": "TinyResNet"}]


def test_spec_factor_levels_are_labelled_and_the_shipped_suites_keep_their_hashes() -> None:
    full = load_suite("full")
    trials = expand_trials(full, full.settings)
    assert trials[5].name == "dropout=0.25/seed=2" and trials[5].settings_hash == "e222cef6e534eef8"
    assert trials[5].levels()["dropout"] == "dropout=0.25" and trials[5].levels()["batchnorm"] == "baseline"
    assert trials[5].record()["levels"] == trials[5].levels()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"trainer": {"max_epochs": 3}}, "trainer.max_epochs is set by the epochs setting"),
        ({"factors": {"trainer.precision": ["bf16-mixed"]}}, "is set by the precision setting"),
        ({"factors": {"model.width": [1, 2]}}, "model.init_args.NAME"),
        ({"factors": {"data.init_args.size": [1]}}, "needs data: {class_path: ...}"),
        ({"factors": {"model.init_args.width": [4], "trainer.width": [1]}}, "share the short name width"),
    ],
)
def test_a_key_the_tree_cannot_take_is_refused_naming_what_to_use(tmp_path, content, message) -> None:
    with pytest.raises(SuiteError, match=message.replace("{", r"\{").replace(".", r"\.")):
        load_suite(str(suite_file(tmp_path, name="deep", specs=["baseline"], **content)))


def test_every_committed_result_keeps_the_hash_its_suite_gives_it_now() -> None:
    """A refactor of the config layer cannot silently change identity: each committed factorial result's settings
    and hash are what its suite, read today, gives its cell."""
    from ablations.store import read_result

    full = load_suite("full")
    trials = {t.name: t for t in expand_trials(full, replace(full.settings, limit_train=10000, seeds=(0,)))}
    folders = sorted((REPO / "logs" / "factorial" / "full").glob("*/seed=0"))
    assert len(folders) == len(trials) == 96
    for folder in folders:
        result = read_result(folder)
        trial = trials[f"{folder.parent.name}/seed=0"]
        assert (result["settings"], result["settings_hash"]) == (trial.hashed_settings(), trial.settings_hash)
        assert result["levels"] == trial.levels()
