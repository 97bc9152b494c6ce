"""``python -m fp8attn.bench``."""

from fp8attn.bench.cli import main

raise SystemExit(main())
