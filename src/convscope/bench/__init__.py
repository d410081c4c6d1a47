"""Benchmarks that train with `convscope.train` and measure with `convscope.analysis` and `convscope.deploy`: the
mixer bench (`bench.mixers`). A layer of its own above those three, below the CLI, as it uses all of them."""
