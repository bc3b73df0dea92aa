"""Training-side code: the synthetic corpus and the generator's training (DESIGN.md §7). Imports engine/, never the reverse."""
