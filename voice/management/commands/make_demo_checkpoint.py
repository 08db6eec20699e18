"""Write the tiny random-weight demo checkpoint that the server uses when no model is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from voice.conf import demo_dir
from voice.engine.demo_checkpoint import write_demo_checkpoint


class Command(BaseCommand):
    help = "Write a tiny random-weight Moshi checkpoint (Hub repo layout) for running without real weights."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dest", type=Path, default=None, help="Folder to write (default: DEMO_CHECKPOINT_DIR).")
        parser.add_argument("--context", type=int, default=500, help="LM context in 80 ms frames.")
        parser.add_argument("--force", action="store_true", help="Overwrite an existing checkpoint.")

    def handle(self, *args: Any, dest: Path | None, context: int, force: bool, **options: Any) -> None:
        dest = dest or demo_dir()
        if (dest / "config.json").is_file() and not force:
            self.stdout.write(f"demo checkpoint already at {dest} (use --force to rewrite)")
            return
        write_demo_checkpoint(dest, context=context)
        self.stdout.write(self.style.SUCCESS(f"wrote demo checkpoint (random weights) to {dest}"))
