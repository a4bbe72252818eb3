"""jobflow Makers, one module per stage of the active-learning loop.

- :mod:`makers.labelling`: reference labels (CHGNet stand-in, any ASE calculator,
  atomate2 DFT codes), one job per single point for real DFT.
- :mod:`makers.training`: the MACE ensemble (n_sub disjoint subsets x n_seed seeds).
- :mod:`makers.ensemble`: the ensemble as an ASE calculator, with uncertainties.
- :mod:`makers.exploration`: MLIP-MD driven by the ensemble mean, scoring frames.
- :mod:`makers.selection`: the paper's acceptance probabilities and sigma^A.
- :mod:`makers.evaluation`: test-set errors and the reference statistics.
- :mod:`makers.sampling`: initial data (harmonic stochastic sampling, aiMD import).
"""
