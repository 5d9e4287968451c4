"""The ablation harness: `python -m ablations.run` sweeps RegularizationSpecs and reports mean +- std."""
