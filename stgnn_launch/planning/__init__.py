"""Planning: every decision a run makes before it reads data, each in one function, and the memory it needs.

    machine.py   what a node offers a rank (cores, GPUs and their memory)
    layout.py    where the data lives and how it is shared: shard, node sharing, data device (decided once)
    probe.py     a model's activation bytes, measured on tiny batches
    estimate.py  the memory estimate of a Layout, per term, host and device
    fit.py       the fit check, the suggestions and the automatic batch size (decided once per run)
    plan.py      the Plan a rank reads: the Layout, the batch, threads, learning rate

Each module imports only those above it in this list: no circle.
"""
