"""Write docs/recipe.md from the recipe schema (the same text `sft init` writes).

Usage: python scripts/write_recipe_reference.py
"""

from pathlib import Path

from sft_cli.recipe.starter import recipe_reference

if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "recipe.md"
    target.write_text(recipe_reference(), encoding="utf-8")
    print(f"wrote {target}")
