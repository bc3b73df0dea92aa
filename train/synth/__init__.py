"""The synthetic speech corpus: TTS adapters with phone timings (tts), phone sets (phones), mouth targets (visemes)."""
