"""The benchmark suite: each module measures one pipeline and writes benchmarks/results/ with its command."""
