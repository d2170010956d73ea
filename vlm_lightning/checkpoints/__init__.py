"""Run checkpoints: validated reading and atomic writing, and the trained structure they carry."""
