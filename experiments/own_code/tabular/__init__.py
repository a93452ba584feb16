"""Tier 1 of "your own code": a model and a dataset of your own, by import path.

experiments/configs/own_model.yaml names them (`data.dataset: tabular.data:breast_cancer`,
`train.model: tabular.nets:mlp`) and ships this folder with `code: experiments/own_code`.
raytune_ctr's loop trains them, so every figure (time, throughput, memory, FLOPs, MFU),
checkpoints, DDP pools and ASHA work as for its built-in models.
"""
