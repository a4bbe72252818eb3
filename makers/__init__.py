"""jobflow Makers, one module per stage of the active-learning loop (``active_mlip.makers``).

- :mod:`~active_mlip.makers.labelling`: reference labels (CHGNet stand-in, any ASE
  calculator, atomate2 DFT codes), one job per single point for real DFT.
- :mod:`~active_mlip.makers.dft_runs`: one checked DFT single point (atomate2's static
  Maker; a failed or unconverged run is a recorded reason, never a label).
- :mod:`~active_mlip.makers.dft_e0s`: E0s of a DFT labeller from isolated-atom jobs.
- :mod:`~active_mlip.makers.dft_presets`: named DFT input presets tuned for forces
  (``docs/dft.md``).
- :mod:`~active_mlip.makers.dft_environment`, :mod:`~active_mlip.makers.dft_makers`: the
  DFT code's executable and FHI-aims species defaults, checked in each static job.
- :mod:`~active_mlip.makers.relax`: R0 relaxed with the labeller.
- :mod:`~active_mlip.makers.sampling`: force constants, harmonic sampling, aiMD import.
- :mod:`~active_mlip.makers.training`: the MACE ensemble (n_sub disjoint subsets x n_seed
  seeds), each member in its own process (:mod:`~active_mlip.makers.mace_runner`).
- :mod:`~active_mlip.makers.ensemble`: the ensemble as an ASE calculator, with uncertainties.
- :mod:`~active_mlip.makers.exploration`: MLIP-MD as jobs; the engine is
  :mod:`~active_mlip.makers.walkers` (with :mod:`~active_mlip.makers.npt`), its settings
  and documents :mod:`~active_mlip.makers.exploration_settings`.
- :mod:`~active_mlip.makers.selection`: the paper's acceptance probabilities and sigma^A.
- :mod:`~active_mlip.makers.evaluation`: test-set errors and the reference statistics.
- :mod:`~active_mlip.makers.diagnostics`: the screening verdict (missing / hallucinated / ok).
- :mod:`~active_mlip.makers.schemas`: documents shared by the stages.
"""

# Imported as a bare top-level "makers" (from the repository root): refuse, or every
# module would exist twice, under two names.
if __name__ != "active_mlip.makers":
    raise ImportError(
        "import active_mlip.makers, not makers: the folder installs as part of active_mlip "
        "(pip install -e .)"
    )
