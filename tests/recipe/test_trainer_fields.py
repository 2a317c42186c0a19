"""trainer_args are checked against SFTConfig's real fields, in `sft validate` without importing TRL."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.errors import RecipeError
from sft_cli.recipe.trainer_fields import check_trainer_args, source_field_names
from sft_cli.training.setup import trainer_arg_names


def test_names_read_from_sources_equal_the_real_dataclass_fields():
    assert source_field_names() == trainer_arg_names()


def test_check_accepts_real_fields_and_rejects_typos_and_reserved():
    names = source_field_names()
    check_trainer_args({"neftune_noise_alpha": 5, "optim": "adamw_torch"}, names)
    with pytest.raises(RecipeError) as info:
        check_trainer_args({"neftune_noise_alfa": 5, "output_dir": "x"}, names)
    assert info.value.problems == [
        "trainer_args.neftune_noise_alfa: not an SFTConfig field; did you mean 'neftune_noise_alpha'?",
        "trainer_args.output_dir: set by sft itself; use the recipe's own keys",
    ]


def test_validate_reports_trainer_args_typo(make_recipe, tiny_path):
    path = make_recipe(tiny_path, trainer_args={"optimm": "adamw_torch"})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "did you mean 'optim'?" in result.output
