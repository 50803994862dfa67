"""Dataset-aware model profiling (`stgnn-profile`): train each candidate briefly on the target dataset,
extrapolate its converged validation MAE from the early learning curve, rank the candidates, and
optionally check that ranking against full training and against a reference dataset's ranking."""
